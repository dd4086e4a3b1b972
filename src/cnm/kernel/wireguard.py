"""WireGuard for encrypted overlays, the parts without I/O: keys, the UAPI text protocol, the
peer plan, the commands a person would type, MTUs, and when and how static keys rotate.

Owns:

* keys: ``KeyPair.generate()`` makes a Curve25519 pair in-process (the ``cryptography``
  package, OpenSSL's X25519), clamped as ``wg genkey`` clamps, so ``wg show`` prints the same
  key; ``check_key`` refuses anything that is not 32 bytes of base64, without ever echoing a
  private key;
* the cross-platform userspace API (UAPI) that wireguard-go serves on its unix socket:
  ``encode_set`` and ``decode_get``/``decode_errno``, text ``key=value`` lines with keys in hex;
* ``plan_peers``: what must change to go from the peers a device has to the peers wanted --
  nothing at all when they agree, so every caller can be idempotent;
* the ``wg set …`` lines that say the same thing to a person (private keys never logged);
* ``tunnel_mtu``: an IPv4 underlay loses 60 bytes to WireGuard, VXLAN inside loses 50 more;
* rotation: ``rotation_step`` (announce the next key, later switch to it) and
  ``desired_peers`` (the peers a host wants from the other nodes' records, the announced
  next keys staged without allowed IPs), which together keep a rotation's gap to the time
  a record takes to reach the other hosts.

A rotation, on host A with peers B…:

1. *announce* (``grace`` before the switch is due): A makes the next pair and publishes its
   public key beside the current one.  Each B adds it as a peer with A's endpoint, no
   allowed IPs and no keepalive: it can complete a handshake but carries nothing yet, and B
   never initiates towards it (A could not answer before it switches).
2. *switch*: A sets the new private key (its sessions restart: wireguard-go drops the old
   keypairs), then publishes the new key as current.  A's next packet starts a handshake,
   which each B completes on the staged peer.  Each B then moves A's allowed IPs to the new
   key and removes the old peer, in one UAPI set (``plan_peers`` puts the moves before the
   removals, so A's addresses always have a peer) -- as soon as the record arrives, or
   earlier when B sees a handshake on the staged key (``desired_peers(handshakes=…)``).
"""

from __future__ import annotations

import base64
import binascii
import enum
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network, ip_address, ip_network

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cnm.errors import InvalidArgument, KernelError
from cnm.kernel.api import WgPeer, WgPeerStatus, WgSpec

KEY_BYTES = 32
WG_OVERHEAD = 60  # outer IPv4 20 + UDP 8 + WireGuard data header 16 + Poly1305 tag 16
VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
MIN_MTU = 576

# -- keys ---------------------------------------------------------------------------------------


def _clamp(raw: bytes) -> bytes:
    """A Curve25519 scalar as ``wg genkey`` writes it (X25519 clamps on use anyway)."""
    key = bytearray(raw)
    key[0] &= 248
    key[31] = (key[31] & 127) | 64
    return bytes(key)


def check_key(text: str, what: str = "public key") -> bytes:
    """The 32 bytes of a base64 WireGuard key; InvalidArgument naming ``what`` otherwise.  A
    private key's text is never repeated in the message."""
    shown = "" if "private" in what else f" {text!r}"
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise InvalidArgument(f"invalid WireGuard {what}{shown}: not base64") from None
    if len(raw) != KEY_BYTES:
        raise InvalidArgument(f"invalid WireGuard {what}{shown}: {len(raw)} bytes, expected {KEY_BYTES}")
    return raw


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def public_key(private_key: str) -> str:
    """The public key of ``private_key`` (both base64), as ``wg pubkey`` computes it."""
    raw = check_key(private_key, "private key")
    return _b64(X25519PrivateKey.from_private_bytes(raw).public_key().public_bytes_raw())


def generate_private_key() -> str:
    return _b64(_clamp(X25519PrivateKey.generate().private_bytes_raw()))


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A WireGuard key pair, base64; the private half never shows in a repr."""

    private: str = field(repr=False)
    public: str

    @classmethod
    def generate(cls) -> KeyPair:
        private = generate_private_key()
        return cls(private=private, public=public_key(private))

    @classmethod
    def from_private(cls, private: str) -> KeyPair:
        return cls(private=private, public=public_key(private))


# -- interfaces ---------------------------------------------------------------------------------

_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


def check_ifname(ifname: str) -> str:
    if not _IFNAME.match(ifname) or ifname in (".", ".."):
        raise InvalidArgument(f"invalid WireGuard interface name {ifname!r}: 1-15 of A-Z a-z 0-9 _ . -")
    return ifname


def check_spec(spec: WgSpec) -> WgSpec:
    """``spec`` validated before anything starts: name, key, port, MTU."""
    check_ifname(spec.ifname)
    if spec.private_key:
        check_key(spec.private_key, "private key")
    if not 0 < spec.listen_port <= 65535:
        raise InvalidArgument(f"invalid WireGuard listen port {spec.listen_port}")
    if not MIN_MTU <= spec.mtu <= 65535:
        raise InvalidArgument(f"invalid WireGuard MTU {spec.mtu}")
    return spec


# -- the UAPI text protocol ----------------------------------------------------------------------


def _hex(key: str, what: str) -> str:
    return check_key(key, what).hex()


def _from_hex(text: str, what: str) -> str:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise KernelError(f"WireGuard device sent a malformed {what}") from None
    if len(raw) != KEY_BYTES:
        raise KernelError(f"WireGuard device sent a {what} of {len(raw)} bytes")
    return _b64(raw)


def _peer_lines(peer: WgPeer) -> list[str]:
    lines = [f"public_key={_hex(peer.public_key, 'public key')}"]
    if peer.endpoint is not None:
        address, port = peer.endpoint
        lines.append(f"endpoint={address}:{port}")
    lines.append(f"persistent_keepalive_interval={peer.keepalive}")
    lines.append("replace_allowed_ips=true")
    lines.extend(f"allowed_ip={net}" for net in peer.allowed_ips)
    return lines


def encode_set(
    *,
    private_key: str | None = None,
    listen_port: int | None = None,
    replace_peers: bool = False,
    peers: Sequence[WgPeer] = (),
    remove: Sequence[str] = (),
) -> bytes:
    """One UAPI ``set`` request: the device's private key and port when given, then each of
    ``peers`` (added, or brought to its endpoint, keepalive and exactly its allowed IPs; an
    endpoint of None leaves the learnt one), then each key of ``remove`` removed.  wireguard-go
    applies a request under one lock, in order."""
    lines = ["set=1"]
    if private_key is not None:
        lines.append(f"private_key={_hex(private_key, 'private key')}")
    if listen_port is not None:
        lines.append(f"listen_port={listen_port}")
    if replace_peers:
        lines.append("replace_peers=true")
    for peer in peers:
        lines.extend(_peer_lines(peer))
    for key in remove:
        lines.extend([f"public_key={_hex(key, 'public key')}", "remove=true"])
    return ("\n".join(lines) + "\n\n").encode("ascii")


GET = b"get=1\n\n"


@dataclass(frozen=True, slots=True)
class DeviceState:
    """A ``get`` answer: the device's private key (base64, "" when unset), port and peers."""

    private_key: str = field(repr=False)
    listen_port: int
    peers: tuple[WgPeerStatus, ...] = ()


def decode_errno(text: str, what: str) -> None:
    """Raise KernelError unless the answer ``text`` ends with ``errno=0``."""
    for line in reversed(text.strip().splitlines()):
        if line.startswith("errno="):
            code = line[len("errno=") :]
            if code != "0":
                raise KernelError(f"{what}: the WireGuard device answered errno={code}")
            return
    raise KernelError(f"{what}: the WireGuard device's answer has no errno")


def _endpoint(text: str) -> tuple[IPv4Address, int] | None:
    host, sep, port = text.rpartition(":")
    if not sep:
        return None
    try:
        address = ip_address(host.strip("[]"))
        number = int(port)
    except ValueError:
        return None
    return (address, number) if isinstance(address, IPv4Address) else None


@dataclass(slots=True)
class _PeerFields:
    key: str
    endpoint: tuple[IPv4Address, int] | None = None
    allowed: list[IPv4Network] = field(default_factory=list)
    keepalive: int = 0
    sec: int = 0
    nsec: int = 0
    rx: int = 0
    tx: int = 0

    def status(self) -> WgPeerStatus:
        peer = WgPeer(self.key, self.endpoint, tuple(self.allowed), self.keepalive)
        return WgPeerStatus(
            peer=peer, last_handshake=self.sec + self.nsec / 1e9, rx_bytes=self.rx, tx_bytes=self.tx
        )


_PEER_INTS = {
    "persistent_keepalive_interval": "keepalive",
    "last_handshake_time_sec": "sec",
    "last_handshake_time_nsec": "nsec",
    "rx_bytes": "rx",
    "tx_bytes": "tx",
}


def decode_get(text: str, what: str = "get") -> DeviceState:
    """Parse a UAPI ``get`` answer (keys hex; unknown keys ignored; IPv6 allowed IPs and
    endpoints, which cnm never configures, dropped)."""
    decode_errno(text, what)
    private = ""
    port = 0
    peers: list[_PeerFields] = []
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        try:
            if key == "private_key":
                private = _from_hex(value, "private key")
            elif key == "listen_port":
                port = int(value)
            elif key == "public_key":
                peers.append(_PeerFields(key=_from_hex(value, "public key")))
            elif not peers:
                continue
            elif key == "endpoint":
                peers[-1].endpoint = _endpoint(value)
            elif key == "allowed_ip":
                net = ip_network(value, strict=False)
                if isinstance(net, IPv4Network):
                    peers[-1].allowed.append(net)
            elif key in _PEER_INTS:
                setattr(peers[-1], _PEER_INTS[key], int(value))
        except ValueError:
            raise KernelError(f"{what}: the WireGuard device sent a malformed {key} line") from None
    return DeviceState(private_key=private, listen_port=port, peers=tuple(p.status() for p in peers))


# -- the peer plan --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerPlan:
    """Peers to add or bring up to date, then keys to remove; empty = nothing to do."""

    upsert: tuple[WgPeer, ...] = ()
    remove: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.upsert or self.remove)


def check_peers(peers: Iterable[WgPeer]) -> list[WgPeer]:
    """``peers`` validated: well-formed keys, each key once, each allowed IP with one peer
    only (WireGuard would silently give it to the last), keepalive 0..65535, ports 1..65535."""
    found: list[WgPeer] = []
    keys: set[str] = set()
    owners: dict[IPv4Network, str] = {}
    for peer in peers:
        check_key(peer.public_key)
        if peer.public_key in keys:
            raise InvalidArgument(f"WireGuard peer {peer.public_key} is given twice")
        keys.add(peer.public_key)
        if not 0 <= peer.keepalive <= 65535:
            raise InvalidArgument(f"invalid persistent keepalive {peer.keepalive} for peer {peer.public_key}")
        if peer.endpoint is not None and not 0 < peer.endpoint[1] <= 65535:
            raise InvalidArgument(f"invalid endpoint port {peer.endpoint[1]} for peer {peer.public_key}")
        for net in peer.allowed_ips:
            other = owners.setdefault(net, peer.public_key)
            if other != peer.public_key:
                raise InvalidArgument(
                    f"allowed IP {net} is given to two WireGuard peers: {other} and {peer.public_key}"
                )
        found.append(peer)
    return found


def _same(have: WgPeer, want: WgPeer) -> bool:
    return (
        (want.endpoint is None or have.endpoint == want.endpoint)
        and set(have.allowed_ips) == set(want.allowed_ips)
        and have.keepalive == want.keepalive
    )


def plan_peers(current: Iterable[WgPeer], desired: Iterable[WgPeer], *, exact: bool = True) -> PeerPlan:
    """The change from ``current`` to ``desired``: the desired peers that are missing or
    differ, and (``exact``) the current ones not desired.  Updates come before removals, so
    allowed IPs moving from a removed key to a new one always have a peer."""
    want = check_peers(desired)
    have = {peer.public_key: peer for peer in current}
    upsert = tuple(p for p in want if p.public_key not in have or not _same(have[p.public_key], p))
    wanted = {p.public_key for p in want}
    remove = tuple(key for key in have if exact and key not in wanted)
    return PeerPlan(upsert=upsert, remove=remove)


# -- the commands a person would type ---------------------------------------------------------------


def peer_command(ifname: str, peer: WgPeer) -> list[str]:
    """``wg set IF peer KEY [endpoint IP:PORT] persistent-keepalive N|off allowed-ips A,B``
    (``allowed-ips`` replaces the list, as the UAPI request does)."""
    argv = ["wg", "set", ifname, "peer", peer.public_key]
    if peer.endpoint is not None:
        argv += ["endpoint", f"{peer.endpoint[0]}:{peer.endpoint[1]}"]
    argv += ["persistent-keepalive", str(peer.keepalive) if peer.keepalive else "off"]
    argv += ["allowed-ips", ",".join(str(net) for net in peer.allowed_ips)]
    return argv


def remove_command(ifname: str, key: str) -> list[str]:
    return ["wg", "set", ifname, "peer", key, "remove"]


def device_command(ifname: str, *, listen_port: int | None = None, private_key: bool = False) -> list[str]:
    """``wg set IF [listen-port N] [private-key /dev/stdin]``: the key itself is fed on stdin,
    so the line holds no secret."""
    argv = ["wg", "set", ifname]
    if listen_port is not None:
        argv += ["listen-port", str(listen_port)]
    if private_key:
        argv += ["private-key", "/dev/stdin"]
    return argv


def plan_commands(ifname: str, plan: PeerPlan) -> list[list[str]]:
    return [peer_command(ifname, p) for p in plan.upsert] + [remove_command(ifname, k) for k in plan.remove]


# -- MTU ----------------------------------------------------------------------------------------------


def tunnel_mtu(underlay_mtu: int) -> int:
    """The WireGuard interface's MTU over an IPv4 underlay of ``underlay_mtu`` (a padded
    packet never exceeds it: wireguard-go pads to 16 bytes only up to the MTU)."""
    mtu = underlay_mtu - WG_OVERHEAD
    if mtu - VXLAN_OVERHEAD < MIN_MTU:
        raise InvalidArgument(f"underlay MTU {underlay_mtu} is too small for VXLAN over WireGuard")
    return mtu


def vxlan_mtu_over_tunnel(underlay_mtu: int) -> int:
    """The MTU of a VXLAN device whose packets go through the WireGuard tunnel."""
    return tunnel_mtu(underlay_mtu) - VXLAN_OVERHEAD


# -- rotation --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RotationPolicy:
    """Rotate the static key every ``interval`` seconds (0 = never), announcing the next key
    ``grace`` seconds before using it: long enough for every host to see the record."""

    interval: float
    grace: float = 10.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.interval) and self.interval >= 0):
            raise InvalidArgument(f"invalid WireGuard key rotation interval {self.interval!r}")
        if not (math.isfinite(self.grace) and self.grace >= 0):
            raise InvalidArgument(f"invalid WireGuard key rotation grace {self.grace!r}")
        if self.interval and self.grace >= self.interval:
            raise InvalidArgument(
                f"WireGuard key rotation interval {self.interval:g} s must exceed its grace {self.grace:g} s"
            )


@dataclass(frozen=True, slots=True)
class KeyState:
    """A host's keys: the one in use since ``since``, and the announced next one."""

    current: KeyPair
    since: float
    next: KeyPair | None = None
    announced: float = 0.0

    @property
    def published(self) -> tuple[str, str]:
        """(public key, next public key or "") for the node record."""
        return self.current.public, self.next.public if self.next is not None else ""


class Step(enum.Enum):
    WAIT = "wait"
    ANNOUNCE = "announce"  # publish state.next's public key beside the current one
    SWITCH = "switch"  # set state.current's private key on the device, then publish it alone


def rotation_step(
    state: KeyState, policy: RotationPolicy, now: float, generate: Callable[[], KeyPair] = KeyPair.generate
) -> tuple[Step, KeyState, float]:
    """What to do at ``now``: the step, the state after it, and when to ask again."""
    if not policy.interval:
        return Step.WAIT, state, math.inf
    if state.next is None:
        due = state.since + policy.interval - policy.grace
        if now < due:
            return Step.WAIT, state, due
        return Step.ANNOUNCE, replace(state, next=generate(), announced=now), now + policy.grace
    switch_at = state.announced + policy.grace
    if now < switch_at:
        return Step.WAIT, state, switch_at
    return Step.SWITCH, KeyState(current=state.next, since=now), now + policy.interval - policy.grace


@dataclass(frozen=True, slots=True)
class NodeTunnel:
    """What another node's record says of its tunnel: keys, underlay endpoint, tunnel address."""

    public_key: str
    endpoint: tuple[IPv4Address, int]
    address: IPv4Address
    next_public_key: str = ""


def desired_peers(
    nodes: Iterable[NodeTunnel], *, keepalive: int = 25, handshakes: Mapping[str, float] | None = None
) -> list[WgPeer]:
    """The peers a host wants for the other ``nodes``: each node's current key routes its
    tunnel address; an announced next key is staged (endpoint only).  A staged key whose
    handshake is newer than the current key's (``handshakes``: key -> last handshake, from
    the device's status) has been switched to already: it takes the address at once."""
    seen = handshakes or {}
    peers = []
    for node in nodes:
        current, staged = node.public_key, node.next_public_key
        if staged and seen.get(staged, 0.0) > seen.get(current, 0.0):
            current, staged = staged, ""
        peers.append(WgPeer(current, node.endpoint, (IPv4Network(node.address),), keepalive))
        if staged and staged != current:
            peers.append(WgPeer(staged, node.endpoint))
    return peers
