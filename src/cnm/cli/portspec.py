"""Port specs as Docker's CLI parses them (``go-connections/nat`` and ``opts``).

Owns ``-p/--publish`` (``nat.ParsePortSpec``: ``80``, ``8080:80``, ``ip:8080:80/udp``,
``ip::80``, ``[v6]:8080:80``, ranges, ``8000-8010:80``; the long form
``published=,target=,protocol=,host_ip=``) and ``--expose`` (``80``, ``1000-1002/udp``).
Errors are ``ValueError`` with Docker's wording.
"""

from __future__ import annotations

_PROTOS = ("tcp", "udp", "sctp")


def _is_ip(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def split_proto_port(raw: str) -> tuple[str, str]:
    """``nat.SplitProtoPort``: "80/udp" → ("udp", "80"); "80" → ("tcp", "80")."""
    parts = raw.split("/")
    if not raw or not parts[0]:
        return "", ""
    if len(parts) == 1:
        return "tcp", raw
    if not parts[1]:
        return "tcp", parts[0]
    return parts[1], parts[0]


def _parse_uint16(text: str) -> int:
    if not text.isdigit():
        raise ValueError(text)
    value = int(text)
    if value > 65535:
        raise ValueError(text)
    return value


def parse_port_range(ports: str) -> tuple[int, int]:
    """``nat.ParsePortRange``: "80" → (80, 80); "80-90" → (80, 90)."""
    if not ports:
        raise ValueError("empty string specified for ports")
    if "-" not in ports:
        value = _parse_uint16(ports)
        return value, value
    start_s, end_s = ports.split("-", 1)[0], ports.split("-")[1]
    start, end = _parse_uint16(start_s), _parse_uint16(end_s)
    if end < start:
        raise ValueError("invalid range specified for port: " + ports)
    return start, end


def _split_parts(raw: str) -> tuple[str, str, str]:
    parts = raw.split(":")
    n = len(parts)
    if n == 1:
        return "", "", parts[0]
    if n == 2:
        return "", parts[0], parts[1]
    if n == 3:
        return parts[0], parts[1], parts[2]
    return ":".join(parts[:-2]), parts[-2], parts[-1]


def to_standard_notation(spec: str) -> str:
    """The long form ``published=8080,target=80,protocol=udp[,host_ip=ip]`` → ``[ip:]8080:80/udp``."""
    if "=" not in spec:
        return spec
    params = {"protocol": "tcp"}
    for param in spec.split(","):
        k, eq, v = param.partition("=")
        if not eq or not k:
            raise ValueError(f"invalid publish opts format (should be name=value but got '{param}')")
        params[k] = v
    host_ip = params.get("host_ip", "")
    if ":" in host_ip:
        host_ip = f"[{host_ip}]"
    prefix = f"{host_ip}:" if host_ip else ""
    return f"{prefix}{params.get('published', '')}:{params.get('target', '')}/{params['protocol']}"


def parse_port_spec(raw: str) -> list[tuple[str, dict[str, str]]]:
    """``nat.ParsePortSpec``: one spec → [("80/tcp", {"HostIp": "", "HostPort": "8080"}), …]."""
    ip, host_port, container_port = _split_parts(raw)
    proto, container_port = split_proto_port(container_port)
    if ip and ip[0] == "[":
        if not ip.endswith("]"):
            raise ValueError(f"invalid IP address {ip}: missing ']' in address")
        ip = ip[1:-1]
    if ip and not _is_ip(ip):
        raise ValueError("invalid IP address: " + ip)
    if not container_port:
        raise ValueError(f"no port specified: {raw}<empty>")
    try:
        start, end = parse_port_range(container_port)
    except ValueError:
        raise ValueError("invalid containerPort: " + container_port) from None
    hstart = hend = 0
    if host_port:
        try:
            hstart, hend = parse_port_range(host_port)
        except ValueError:
            raise ValueError("invalid hostPort: " + host_port) from None
    if host_port and (end - start) != (hend - hstart) and end != start:
        raise ValueError(
            f"invalid ranges specified for container and host Ports: {container_port} and {host_port}"
        )
    if proto.lower() not in _PROTOS:
        raise ValueError("invalid proto: " + proto)
    out = []
    for i in range(end - start + 1):
        hp = str(hstart + i) if host_port else ""
        if start == end and hstart != hend:
            hp = f"{hp}-{hend}"
        out.append((f"{start + i}/{proto.lower()}", {"HostIp": ip, "HostPort": hp}))
    return out


def parse_publish(specs: list[str]) -> tuple[dict[str, dict], dict[str, list[dict[str, str]]]]:
    """``nat.ParsePortSpecs`` over ``-p`` values → (ExposedPorts, PortBindings), keys sorted like Go's JSON."""
    exposed: dict[str, dict] = {}
    bindings: dict[str, list[dict[str, str]]] = {}
    for spec in specs:
        for port, binding in parse_port_spec(to_standard_notation(spec)):
            exposed.setdefault(port, {})
            bindings.setdefault(port, []).append(binding)
    return dict(sorted(exposed.items())), dict(sorted(bindings.items()))


def parse_expose(values: list[str], exposed: dict[str, dict]) -> dict[str, dict]:
    """Merge ``--expose`` values (``80``, ``80/udp``, ``1000-1002``) into ``exposed``."""
    out = dict(exposed)
    for e in values:
        if ":" in e:
            raise ValueError(f"invalid port format for --expose: {e}")
        proto, port = split_proto_port(e)
        try:
            start, end = parse_port_range(port)
        except ValueError as exc:
            raise ValueError(f"invalid range format for --expose: {e}, error: {exc}") from None
        for p in range(start, end + 1):
            out.setdefault(f"{p}/{proto}", {})
    return dict(sorted(out.items()))
