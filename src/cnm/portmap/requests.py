"""From a container's config to the host ports it asks for.

Owns the daemon side of ``-p``/``-P``: ``HostConfig.PortBindings`` (keys ``80/tcp``, values
host IP + host port text as Docker's CLI sends them) and ``PublishAllPorts`` over the
container's and the image's ``ExposedPorts``, validated with moby's messages
(``daemon/container.go:validatePortBindings``) and turned into ``PortRequest`` values.
Pure: no sockets, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv6Address, ip_address

from cnm.errors import InvalidArgument
from cnm.model.container import ContainerConfig, Image, PortBindingRequest
from cnm.model.ports import ANY, PROTOCOLS, HostIP, PortRequest, host_ip_order, join_host_port

MAX_PORT = 65535


def _spec_error(text: str) -> InvalidArgument:
    # moby: errors.Errorf("invalid port specification: %q", ...) -- Go's %q quotes with "
    return InvalidArgument(f'invalid port specification: "{text}"')


def _parse_number(text: str, whole: str, *, allow_zero: bool) -> int:
    if not text.isdigit():
        raise _spec_error(whole)
    value = int(text)
    if value > MAX_PORT or (value == 0 and not allow_zero):
        raise _spec_error(whole)
    return value


def parse_port_range(text: str, whole: str | None = None, *, allow_zero: bool = False) -> tuple[int, int]:
    """``80`` -> (80, 80); ``8000-8010`` -> (8000, 8010).  ``whole`` is what an error quotes."""
    whole = text if whole is None else whole
    lo_text, dash, hi_text = text.partition("-")
    lo = _parse_number(lo_text, whole, allow_zero=allow_zero)
    hi = _parse_number(hi_text, whole, allow_zero=allow_zero) if dash else lo
    if hi < lo:
        raise _spec_error(whole)
    return lo, hi


def parse_port_key(key: str) -> tuple[str, int, int]:
    """A PortMap / ExposedPorts key (``80``, ``80/udp``, ``1000-1002/udp``) ->
    (protocol, first port, last port).  Port 0, ports above 65535 and protocols other
    than tcp/udp/sctp are Docker's ``invalid port specification``."""
    port, _, proto = key.partition("/")
    proto = (proto or "tcp").lower()
    if proto not in PROTOCOLS:
        raise _spec_error(key)
    lo, hi = parse_port_range(port, key)
    return proto, lo, hi


def expand_port_key(key: str) -> list[str]:
    """``1000-1002/udp`` -> ``["1000/udp", "1001/udp", "1002/udp"]``; ``80`` -> ``["80/tcp"]``."""
    proto, lo, hi = parse_port_key(key)
    return [f"{p}/{proto}" for p in range(lo, hi + 1)]


def parse_host_ip(text: str) -> HostIP | None:
    """A binding's ``HostIp``: an IPv4 or IPv6 address (``::1`` or ``[::1]``); empty is
    None: not given, the network's default binding address applies.  A scoped IPv6
    address (``fe80::1%eth0``), a multicast or broadcast address is refused: no host
    socket can be bound to it for every container."""
    if not text:
        return None
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if "%" in bare:
        raise InvalidArgument(
            f"invalid host IP address {text!r} in port binding: "
            "a scoped IPv6 address (with %zone) cannot be published on"
        )
    try:
        address = ip_address(bare)
    except ValueError:
        raise InvalidArgument(
            f"invalid host IP address {text!r} in port binding: not an IPv4 or IPv6 address"
        ) from None
    if bare is not text and not isinstance(address, IPv6Address):
        raise InvalidArgument(f"invalid host IP address {text!r} in port binding: brackets are for IPv6")
    if address.is_multicast or str(address) == "255.255.255.255":
        raise InvalidArgument(f"invalid host IP address {text!r} in port binding: not a unicast address")
    return address


def _binding_requests(key: str, bindings: Iterable[PortBindingRequest]) -> list[PortRequest]:
    proto, lo, hi = parse_port_key(key)
    out: list[PortRequest] = []
    for binding in bindings:
        host_ip = parse_host_ip(binding.host_ip)
        if binding.host_port:
            hlo, hhi = parse_port_range(binding.host_port, allow_zero=True)
        else:
            hlo = hhi = 0
        if lo == hi:
            # One container port: a host range means "any free port of that range".
            out.append(PortRequest(proto, lo, host_ip, hlo, hhi))
            continue
        # A container range maps 1:1 onto a host range of the same length (or each to
        # an ephemeral port), as go-connections' ParsePortSpec expands it client-side.
        if hlo == 0 and hhi == 0:
            out.extend(PortRequest(proto, p, host_ip) for p in range(lo, hi + 1))
        elif hhi - hlo == hi - lo:
            out.extend(
                PortRequest(proto, p, host_ip, hlo + i, hlo + i) for i, p in enumerate(range(lo, hi + 1))
            )
        else:
            raise InvalidArgument(
                f"invalid ranges specified for container and host Ports: {lo}-{hi} and {binding.host_port}"
            )
    return out


def port_requests(config: ContainerConfig, image: Image | None = None) -> list[PortRequest]:
    """Every host port ``config`` asks for, validated, duplicates dropped, in a stable
    order (container port, protocol, host IP, host port).

    - ``PortBindings``: each binding is one request; an empty ``HostPort`` (or ``0``) is an
      ephemeral port, ``8000-8010`` on one container port is any free port of that range.
      A key with no bindings publishes nothing (it is only exposed).
    - ``PublishAllPorts``: every port exposed by the container or its image that has no
      explicit binding gets an ephemeral port on the network's default binding address.
      Exposed ranges are expanded.
    - A binding without a host IP keeps None: the network that publishes decides
      (``com.docker.network.bridge.host_binding_ipv4``, else 0.0.0.0).
    - Host IPs are IPv4 or IPv6 (``::1``, ``[::1]``); anything else is ``InvalidArgument``.
    The caller decides whether the network mode publishes at all (host, none and
    ``container:`` modes do not).
    """
    requests: list[PortRequest] = []
    bound: set[tuple[str, int]] = set()
    for key, bindings in config.port_bindings.items():
        got = _binding_requests(key, bindings)
        requests.extend(got)
        bound.update((r.protocol, r.container_port) for r in got)
    if config.publish_all:
        exposed = [*config.exposed_ports, *(image.exposed_ports if image is not None else ())]
        for key in exposed:
            proto, lo, hi = parse_port_key(key)
            for port in range(lo, hi + 1):
                if (proto, port) not in bound:
                    bound.add((proto, port))
                    requests.append(PortRequest(proto, port))
    unique = sorted(
        dict.fromkeys(requests),
        key=lambda r: (r.container_port, r.protocol, host_ip_order(r.host_ip), r.host_port),
    )
    _check_host_ports_once(unique)
    return unique


def _overlap(a: HostIP | None, b: HostIP | None) -> bool:
    """Whether two host addresses can hold the same port only once: None (not given yet)
    overlaps everything, the unspecified address every address of its family."""
    if a is None or b is None:
        return True
    return a.version == b.version and (a == b or a.is_unspecified or b.is_unspecified)


def _check_host_ports_once(requests: Iterable[PortRequest]) -> None:
    """InvalidArgument when two requests ask for the same fixed host port and protocol on
    overlapping host addresses (0.0.0.0 overlaps every IPv4 address, ``::`` every IPv6
    one, an address not given yet both): only one can ever have it."""
    held: dict[tuple[str, int], list[PortRequest]] = {}
    for r in requests:
        if r.host_port == 0 or r.host_port != r.host_port_end:
            continue  # ephemeral or "any free port of a range": each gets its own
        for other in held.get((r.protocol, r.host_port), ()):
            if _overlap(other.host_ip, r.host_ip):
                ip = other.host_ip
                if ip is None or ip.is_unspecified:
                    ip = r.host_ip
                where = join_host_port(ip if ip is not None else ANY, r.host_port)
                raise InvalidArgument(
                    f"host port {where}/{r.protocol} is published twice: for container ports "
                    f"{other.container_port}/{r.protocol} and {r.container_port}/{r.protocol}"
                )
        held.setdefault((r.protocol, r.host_port), []).append(r)
