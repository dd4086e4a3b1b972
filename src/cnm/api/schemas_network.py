"""Docker's network JSON <-> cnm's model: ``Network`` and ``EndpointResource`` out,
``CreateRequest`` and ``EndpointSettings`` in.

Field order is Go's marshal order (moby ``api/types/network``), because ``docker network
inspect`` prints the server's bytes verbatim.  ``IPAM.Options`` and ``IPAM.Config`` echo
what the user sent (null vs ``{}``; a subnet without a gateway has no ``Gateway`` key).
"""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import IPv4Address
from typing import Any

from cnm.api.http import get_bool, get_dict, get_list, get_str, get_str_list, get_str_map
from cnm.api.schemas_system import NOT_SWARM_MANAGER
from cnm.engine.cluster import Node
from cnm.errors import InvalidArgument, Unavailable
from cnm.ipam.api import check_ipam_driver
from cnm.model.endpoint import EndpointRecord, EndpointRequest
from cnm.model.network import (
    GLOBAL_DRIVERS,
    OPT_ENABLE_IPV6,
    IpamConfig,
    NetworkRecord,
    NetworkSpec,
    bool_option,
    validate_options,
)
from cnm.model.values import (
    check_usable_subnet,
    check_usable_subnet6,
    parse_ip,
    parse_ip_network,
    parse_ipv4,
    parse_ipv6,
    parse_mac,
    parse_network_name,
)

# -- out ------------------------------------------------------------------------------------


def ipam_config_json(cfg: IpamConfig) -> dict[str, Any]:
    """One ``IPAMConfig``: only the keys the user gave (all are omitempty)."""
    out: dict[str, Any] = {}
    if cfg.subnet is not None:
        out["Subnet"] = str(cfg.subnet)
    if cfg.ip_range is not None:
        out["IPRange"] = str(cfg.ip_range)
    if cfg.gateway is not None:
        out["Gateway"] = str(cfg.gateway)
    if cfg.aux_addresses:
        out["AuxiliaryAddresses"] = {k: str(v) for k, v in cfg.aux_addresses.items()}
    return out


def _ipam_config_list(net: NetworkRecord) -> list[dict[str, Any]] | None:
    """Per family, IPv4 first: the user's entries verbatim, or (none given) the subnet
    IPAM settled on with its gateway; null for a network without IPAM (host, none)."""
    if not net.ipam and net.subnet is None and net.subnet6 is None:
        return None  # host / null: no IPAM at all
    out: list[dict[str, Any]] = []
    allocated = (
        (False, net.subnet, net.ip_range, net.gateway),
        (True, net.subnet6, net.ip_range6, net.gateway6),
    )
    for v6, subnet, ip_range, gateway in allocated:
        given = [ipam_config_json(c) for c in net.ipam if c.is_v6 == v6]
        if given:
            out += given
        elif subnet is not None and (not v6 or net.enable_ipv6):
            entry: dict[str, Any] = {"Subnet": str(subnet)}
            if ip_range is not None:
                entry["IPRange"] = str(ip_range)
            if gateway is not None:
                entry["Gateway"] = str(gateway)
            out.append(entry)
    return out


def endpoint_resource_json(ep: EndpointRecord) -> dict[str, Any]:
    """The value of ``Containers[<container id>]`` in network inspect."""
    return {
        "Name": ep.name,
        "EndpointID": ep.id,
        "MacAddress": ep.mac,
        "IPv4Address": str(ep.address) if ep.address is not None else "",
        "IPv6Address": str(ep.address6) if ep.address6 is not None else "",
    }


def endpoint_resource_key(ep: EndpointRecord) -> str:
    """Docker keys by container id; an endpoint without a sandbox is ``ep-<id>``."""
    return ep.container_id if ep.sandbox_id else f"ep-{ep.id}"


def network_json(
    net: NetworkRecord, endpoints: list[EndpointRecord] | None = None, peers: list[Node] | None = None
) -> dict[str, Any]:
    """Docker's ``network.Inspect`` (which is also the list ``Summary``).  ``endpoints``
    None renders ``Containers: {}`` as the list does; ``peers`` (a global network's
    hosts) adds Docker's ``Peers`` (omitted when None, as Go's omitempty does)."""
    out = {
        "Name": net.name,
        "Id": net.id,
        "Created": net.created,
        "Scope": net.scope,
        "Driver": net.driver,
        "EnableIPv4": True,
        "EnableIPv6": net.enable_ipv6,
        "IPAM": {
            "Driver": net.ipam_driver,
            "Options": dict(net.ipam_options) if net.ipam_options is not None else None,
            "Config": _ipam_config_list(net),
        },
        "Internal": net.internal,
        "Attachable": net.attachable,
        "Ingress": False,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": False,
        "Containers": {endpoint_resource_key(ep): endpoint_resource_json(ep) for ep in endpoints or ()},
        "Options": dict(net.options),
        "Labels": dict(net.labels),
    }
    if peers:
        out["Peers"] = [{"Name": node.name, "IP": node.address} for node in peers]
    return out


def endpoint_settings_json(
    request: EndpointRequest,
    *,
    network_id: str = "",
    endpoint: EndpointRecord | None = None,
    dns_names: list[str] | None = None,
) -> dict[str, Any]:
    """Docker's ``EndpointSettings`` (container inspect / list).  Without a live
    ``endpoint`` the operational fields are blank, as Docker shows a stopped container;
    the requested MAC is still echoed (moby keeps it until the endpoint exists)."""
    ipam: dict[str, Any] | None = None
    if request.ipv4_address is not None or request.ipv6_address is not None or request.link_local_ips:
        ipam = {"IPv4Address": str(request.ipv4_address)} if request.ipv4_address is not None else {}
        if request.ipv6_address is not None:
            ipam["IPv6Address"] = str(request.ipv6_address)
        if request.link_local_ips:
            ipam["LinkLocalIPs"] = [str(ip) for ip in request.link_local_ips]
    if endpoint is not None:
        mac = endpoint.mac
        gateway = str(endpoint.gateway) if endpoint.gateway is not None else ""
        address = str(endpoint.address.ip) if endpoint.address is not None else ""
        prefix = endpoint.address.network.prefixlen if endpoint.address is not None else 0
        endpoint_id = endpoint.id
        network_id = endpoint.network_id
        gateway6 = str(endpoint.gateway6) if endpoint.gateway6 is not None else ""
        address6 = str(endpoint.address6.ip) if endpoint.address6 is not None else ""
        prefix6 = endpoint.address6.network.prefixlen if endpoint.address6 is not None else 0
    else:
        mac, gateway, address, prefix, endpoint_id = request.mac_address or "", "", "", 0, ""
        gateway6, address6, prefix6 = "", "", 0
    return {
        "IPAMConfig": ipam,
        "Links": list(request.links) if request.links_given or request.links else None,
        "Aliases": list(request.aliases) if request.aliases_given or request.aliases else None,
        "MacAddress": mac,
        "DriverOpts": dict(request.driver_opts) if request.driver_opts is not None else None,
        "GwPriority": 0,
        "NetworkID": network_id,
        "EndpointID": endpoint_id,
        "Gateway": gateway,
        "IPAddress": address,
        "IPPrefixLen": prefix,
        "IPv6Gateway": gateway6,
        "GlobalIPv6Address": address6,
        "GlobalIPv6PrefixLen": prefix6,
        "DNSNames": dns_names,
    }


# -- in -------------------------------------------------------------------------------------


def _parse_ipam_entry(entry: Any) -> IpamConfig:
    if not isinstance(entry, dict):
        raise InvalidArgument("invalid IPAM config: expected an object")
    subnet_s, range_s = get_str(entry, "Subnet"), get_str(entry, "IPRange")
    gateway_s = get_str(entry, "Gateway")
    aux_raw = get_str_map(entry, "AuxiliaryAddresses") or {}
    subnet = parse_ip_network(subnet_s, "subnet") if subnet_s else None
    if subnet is not None:
        if subnet.version == 6:
            check_usable_subnet6(subnet)
        else:
            check_usable_subnet(subnet)
    if subnet is None and (range_s or gateway_s or aux_raw):
        raise InvalidArgument(
            "invalid pool request: an ip-range, gateway or auxiliary address needs a subnet"
        )
    config = IpamConfig(
        subnet=subnet,
        ip_range=parse_ip_network(range_s, "ip-range") if range_s else None,
        gateway=parse_ip(gateway_s, "gateway") if gateway_s else None,
        aux_addresses={k: parse_ip(v, f"auxiliary address {k}") for k, v in aux_raw.items()},
    )
    if subnet is not None:
        values = (config.ip_range, config.gateway, *config.aux_addresses.values())
        for value in values:
            if value is not None and value.version != subnet.version:
                raise InvalidArgument(
                    f"invalid network config:\n{value} is an IPv{value.version} value but subnet "
                    f"{subnet} is IPv{subnet.version}"
                )
    return config


def _enable_ipv6(body: dict[str, Any], options: Mapping[str, str]) -> bool:
    """``EnableIPv6``, or when the field is absent Docker's option fallback
    ``com.docker.network.enable_ipv6``."""
    if body.get("EnableIPv6") is not None:
        return get_bool(body, "EnableIPv6")
    return bool_option(options, OPT_ENABLE_IPV6, False)


def parse_network_create(body: dict[str, Any]) -> NetworkSpec:
    """Validate a ``POST /networks/create`` body into a ``NetworkSpec``.  The rules that
    need state (predefined names, duplicates, overlaps, drivers) are the controller's."""
    name = parse_network_name(get_str(body, "Name"))
    if body.get("EnableIPv4") is False:
        raise InvalidArgument("networks without IPv4 are not supported by cnm")
    # Docker hands swarm networks to the swarm, which refuses them on a node outside one
    # (cnm never joins a swarm); overlay networks are global ones in the cluster store.
    scope = get_str(body, "Scope")
    driver = get_str(body, "Driver") or "bridge"
    if scope == "swarm" or get_bool(body, "Ingress"):
        raise Unavailable(NOT_SWARM_MANAGER)
    if get_bool(body, "ConfigOnly"):
        raise InvalidArgument("ConfigOnly networks are not supported by cnm")
    if get_str(get_dict(body, "ConfigFrom"), "Network"):
        raise InvalidArgument("ConfigFrom networks are not supported by cnm")
    own_scope = "global" if driver in GLOBAL_DRIVERS else "local"
    if scope not in ("", own_scope):
        raise InvalidArgument(f"scope {scope!r} is not supported for {driver} networks: they are {own_scope}")
    ipam = get_dict(body, "IPAM")
    ipam_driver = check_ipam_driver(get_str(ipam, "Driver") or "default")
    entries = get_list(ipam, "Config") or []
    options = get_str_map(body, "Options") or {}
    validate_options(options)
    return NetworkSpec(
        name=name,
        driver=driver,
        internal=get_bool(body, "Internal"),
        attachable=get_bool(body, "Attachable"),
        enable_ipv6=_enable_ipv6(body, options),
        ipam_driver=ipam_driver,
        ipam_options=get_str_map(ipam, "Options"),
        ipam=tuple(_parse_ipam_entry(e) for e in entries),
        options=options,
        labels=get_str_map(body, "Labels") or {},
    )


def parse_endpoint_settings(settings: Mapping[str, Any] | None) -> EndpointRequest:
    """Docker's ``EndpointSettings`` input (connect body, ``EndpointsConfig`` values)."""
    if settings is None:
        return EndpointRequest()
    if not isinstance(settings, dict):
        raise InvalidArgument("invalid endpoint settings: expected an object")
    ipam = get_dict(settings, "IPAMConfig")
    ip4 = get_str(ipam, "IPv4Address")
    ip6 = get_str(ipam, "IPv6Address")
    link_local = []
    for text in get_str_list(ipam, "LinkLocalIPs") or ():
        try:
            link_local.append(IPv4Address(text))
        except ValueError:
            if ":" in text:
                raise InvalidArgument(
                    f"invalid link-local IP address {text}: IPv6 is not supported by cnm"
                ) from None
            raise InvalidArgument(f"invalid link-local IP address: {text}") from None
    mac = get_str(settings, "MacAddress")
    aliases = get_str_list(settings, "Aliases")
    links = get_str_list(settings, "Links")
    return EndpointRequest(
        ipv4_address=parse_ipv4(ip4, "IPv4 address") if ip4 else None,
        ipv6_address=parse_ipv6(ip6, "IPv6 address") if ip6 else None,
        mac_address=parse_mac(mac) if mac else None,
        aliases=tuple(aliases or ()),
        links=tuple(links or ()),
        driver_opts=get_str_map(settings, "DriverOpts"),
        link_local_ips=tuple(link_local),
        aliases_given=aliases is not None,
        links_given=links is not None,
    )
