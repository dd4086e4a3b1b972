"""``cnm network ls|create|inspect|rm|connect|disconnect|prune`` (Docker's ``network`` verbs).

``connect``/``disconnect`` are on the benchmarked path: they import nothing beyond the
client, and send one request each.
"""

from __future__ import annotations

from cnm.cli import flags as F
from cnm.cli.client import quote
from cnm.cli.context import Cli
from cnm.cli.errors import CliError, DaemonError

CONNECT = F.Command(
    "cnm network connect",
    "NETWORK CONTAINER",
    "Connect a container to a network",
    [
        F.flag("--alias", kind=F.LIST, help="Add network-scoped alias for the container"),
        F.flag("--driver-opt", kind=F.LIST, help="driver options for the network"),
        F.flag(
            "--gw-priority", kind=F.INT, default=0, help="Highest gw-priority provides the default gateway"
        ),
        F.flag("--ip", help="IPv4 address (e.g., 172.30.100.104)"),
        F.flag("--ip6", help="IPv6 address (e.g., 2001:db8::33)"),
        F.flag("--link", kind=F.LIST, help="Add link to another container"),
        F.flag("--link-local-ip", kind=F.LIST, help="Add a link-local address for the container"),
    ],
    min_args=2,
    max_args=2,
)

DISCONNECT = F.Command(
    "cnm network disconnect",
    "NETWORK CONTAINER",
    "Disconnect a container from a network",
    [F.flag("-f", "--force", kind=F.BOOL, help="Force the container to disconnect from a network")],
    min_args=2,
    max_args=2,
)


def connect_body(container: str, v: dict) -> dict:
    """The body Docker's CLI sends for ``network connect`` (a full EndpointSettings)."""
    ipam: dict = {}
    if v["ip"]:
        ipam["IPv4Address"] = v["ip"]
    if v["ip6"]:
        ipam["IPv6Address"] = v["ip6"]
    if v["link_local_ip"]:
        ipam["LinkLocalIPs"] = list(v["link_local_ip"])
    driver_opts: dict[str, str] = {}
    for opt in v["driver_opt"]:
        k, eq, val = opt.partition("=")
        if not eq:
            raise CliError("invalid key value pair format in driver options")
        driver_opts[k.strip().lower()] = val.strip().lower()
    return {
        "Container": container,
        "EndpointConfig": {
            "IPAMConfig": ipam,
            "Links": list(v["link"]) or None,
            "Aliases": list(v["alias"]) or None,
            "MacAddress": "",
            "DriverOpts": driver_opts,
            "GwPriority": v["gw_priority"],
            "NetworkID": "",
            "EndpointID": "",
            "Gateway": "",
            "IPAddress": "",
            "IPPrefixLen": 0,
            "IPv6Gateway": "",
            "GlobalIPv6Address": "",
            "GlobalIPv6PrefixLen": 0,
            "DNSNames": None,
        },
    }


def cmd_connect(cli: Cli, argv: list[str]) -> int:
    v, (net, container), _ = F.parse(CONNECT, argv)
    cli.client.request("POST", f"/networks/{quote(net)}/connect", body=connect_body(container, v)).close()
    return 0


def cmd_disconnect(cli: Cli, argv: list[str]) -> int:
    v, (net, container), _ = F.parse(DISCONNECT, argv)
    cli.client.request(
        "POST", f"/networks/{quote(net)}/disconnect", body={"Container": container, "Force": v["force"]}
    ).close()
    return 0


LS = F.Command(
    "cnm network ls",
    "",
    "List networks",
    [
        F.flag("-f", "--filter", kind=F.LIST, help='Provide filter values (e.g. "driver=bridge")'),
        F.flag("--format", default="", help="Format output using a custom template"),
        F.flag("--no-trunc", kind=F.BOOL, help="Do not truncate the output"),
        F.flag("-q", "--quiet", kind=F.BOOL, help="Only display network IDs"),
    ],
    max_args=0,
    aliases=("cnm network ls", "cnm network list"),
)

LS_TABLE = "table {{.ID}}\t{{.Name}}\t{{.Driver}}\t{{.Scope}}"
LS_HEADERS = {
    "ID": "NETWORK ID",
    "Name": "NAME",
    "Driver": "DRIVER",
    "Scope": "SCOPE",
    "IPv4": "IPV4",
    "IPv6": "IPV6",
    "Internal": "INTERNAL",
    "Labels": "LABELS",
    "CreatedAt": "CREATED AT",
}


def network_row(n: dict, trunc: bool) -> dict:
    """Docker's ``networkContext`` fields for one network of ``GET /networks``."""
    from cnm.cli.format import go_time, parse_rfc3339, truncate_id
    from cnm.cli.listing import bool_str, labels_str

    labels = n.get("Labels") or {}
    created = n.get("Created") or ""
    return {
        "ID": truncate_id(n.get("Id", "")) if trunc else n.get("Id", ""),
        "Name": n.get("Name", ""),
        "Driver": n.get("Driver", ""),
        "Scope": n.get("Scope", ""),
        "IPv4": bool_str(n.get("EnableIPv4", True)),
        "IPv6": bool_str(n.get("EnableIPv6")),
        "Internal": bool_str(n.get("Internal")),
        "Labels": labels_str(labels),
        "Label": lambda name: labels.get(name, ""),
        "CreatedAt": go_time(parse_rfc3339(created)) if created else "",
    }


def cmd_ls(cli: Cli, argv: list[str]) -> int:
    from cnm.cli.format import natural_sorted
    from cnm.cli.listing import filters_param, render

    v, _, _ = F.parse(LS, argv)
    nets = cli.client.call("GET", "/networks", {"filters": filters_param(v["filter"])}) or []
    order = {name: i for i, name in enumerate(natural_sorted(n.get("Name", "") for n in nets))}
    nets = sorted(nets, key=lambda n: order[n.get("Name", "")])
    rows = [network_row(n, not v["no_trunc"]) for n in nets]
    fmt = "{{.ID}}" if v["quiet"] else v["format"]
    cli.out(render(rows, fmt, LS_TABLE, LS_HEADERS))
    return 0


def _parse_aux(item: str) -> str:
    if "=" not in item:
        raise ValueError(f"bad format for aux-address: {item} (expected name=ip)")
    return item


CREATE = F.Command(
    "cnm network create",
    "NETWORK",
    "Create a network",
    [
        F.flag("--attachable", kind=F.BOOL, help="Enable manual container attachment"),
        F.flag(
            "--aux-address",
            kind=F.MAP,
            validate=_parse_aux,
            help="Auxiliary IPv4 or IPv6 addresses used by Network driver",
        ),
        F.flag("-d", "--driver", default="bridge", help="Driver to manage the Network"),
        F.flag("--gateway", kind=F.LIST, help="IPv4 or IPv6 Gateway for the master subnet"),
        F.flag("--internal", kind=F.BOOL, help="Restrict external access to the network"),
        F.flag("--ip-range", kind=F.LIST, help="Allocate container ip from a sub-range"),
        F.flag("--ipam-driver", default="default", help="IP Address Management Driver"),
        F.flag("--ipam-opt", kind=F.MAP, help="Set IPAM driver specific options"),
        F.flag("--ipv4", kind=F.BOOL, default=True, help="Enable or disable IPv4 address assignment"),
        F.flag("--ipv6", kind=F.BOOL, help="Enable or disable IPv6 address assignment"),
        F.flag("--label", kind=F.LIST, help="Set metadata on a network"),
        F.flag("-o", "--opt", kind=F.MAP, help="Set driver specific options"),
        F.flag("--scope", default="", help="Control the network's scope"),
        F.flag("--subnet", kind=F.LIST, help="Subnet in CIDR format that represents a network segment"),
    ],
    min_args=1,
    max_args=1,
)


def _subnet_contains(subnet: str, data: str) -> bool:
    """``subnetMatches``: does CIDR ``subnet`` contain ``data`` (an IP or a CIDR's address)?"""
    import ipaddress

    try:
        net = ipaddress.ip_network(subnet, strict=False)
    except ValueError:
        raise CliError(f"invalid subnet: invalid CIDR address: {subnet}") from None
    try:
        if "/" in data:
            ip = ipaddress.ip_interface(data).ip
        else:
            ip = ipaddress.ip_address(data)
    except ValueError:
        if "/" in data:
            raise CliError(f"invalid CIDR address: {data}") from None
        return False
    return ip.version == net.version and ip in net


def ipam_config(
    subnets: list[str], ranges: list[str], gateways: list[str], aux: dict[str, str]
) -> list[dict]:
    """``createIPAMConfig``: group --ip-range/--gateway/--aux-address under their --subnet."""
    if len(subnets) < len(ranges) or len(subnets) < len(gateways):
        raise CliError("every ip-range or gateway must have a corresponding subnet")
    data: dict[str, dict] = {}
    for s in subnets:
        for k in data:
            if _subnet_contains(s, k) or _subnet_contains(k, s):
                raise CliError("multiple overlapping subnet configuration is not supported")
        _subnet_contains(s, s.split("/")[0])  # validates the CIDR
        data[s] = {"Subnet": s}
    for what, values in (("range", ranges), ("gateway", gateways)):
        key = "IPRange" if what == "range" else "Gateway"
        for r in values:
            match = False
            for s in subnets:
                if not _subnet_contains(s, r):
                    continue
                if data[s].get(key):
                    many = "ranges" if what == "range" else "gateways"
                    prep = "on" if what == "range" else "for"
                    raise CliError(
                        f"cannot configure multiple {many} ({r}, {data[s][key]}) {prep} the same subnet ({s})"
                    )
                data[s][key] = r
                match = True
            if not match:
                raise CliError(f"no matching subnet for {what} {r}")
    for name, addr in aux.items():
        match = False
        for s in subnets:
            if _subnet_contains(s, addr):
                data[s].setdefault("AuxiliaryAddresses", {})[name] = addr
                match = True
        if not match:
            raise CliError(f"no matching subnet for aux-address {addr}")
    # Go's IPAMConfig field order: Subnet, IPRange, Gateway, AuxiliaryAddresses
    order = ("Subnet", "IPRange", "Gateway", "AuxiliaryAddresses")
    return [{k: d[k] for k in order if k in d} for d in data.values()]


def create_body(name: str, v: dict, changed: set[str]) -> dict:
    """The ``POST /networks/create`` body Docker's CLI sends."""
    body: dict = {"Name": name, "Driver": v["driver"], "Scope": v["scope"]}
    if "ipv4" in changed:
        body["EnableIPv4"] = v["ipv4"]
    if "ipv6" in changed:
        body["EnableIPv6"] = v["ipv6"]
    body["IPAM"] = {
        "Driver": v["ipam_driver"],
        "Config": ipam_config(v["subnet"], v["ip_range"], v["gateway"], v["aux_address"]),
        "Options": dict(v["ipam_opt"]),
    }
    body.update(
        {
            "Internal": v["internal"],
            "Attachable": v["attachable"],
            "Ingress": False,
            "ConfigOnly": False,
            "Options": dict(v["opt"]),
            "Labels": {k: val for k, _, val in (lab.partition("=") for lab in v["label"])},
        }
    )
    return body


def cmd_create(cli: Cli, argv: list[str]) -> int:
    v, (name,), changed = F.parse(CREATE, argv)
    resp = cli.client.call("POST", "/networks/create", body=create_body(name, v, changed)) or {}
    if resp.get("Warning"):
        cli.err(f"WARNING: {resp['Warning']}\n")
    cli.out(resp.get("Id", "") + "\n")
    return 0


INSPECT = F.Command(
    "cnm network inspect",
    "NETWORK [NETWORK...]",
    "Display detailed information on one or more networks",
    [
        F.flag("-f", "--format", default="", help="Format output using a custom template"),
        F.flag("-v", "--verbose", kind=F.BOOL, help="Verbose output for diagnostics"),
    ],
    min_args=1,
)


def cmd_inspect(cli: Cli, argv: list[str]) -> int:
    from cnm.cli.commands.inspect import print_inspect

    v, names, _ = F.parse(INSPECT, argv)
    query = {"verbose": "true"} if v["verbose"] else None

    def fetch(name: str) -> object:
        return cli.client.call("GET", f"/networks/{quote(name)}", query)

    return print_inspect(cli, names, fetch, v["format"])


RM = F.Command(
    "cnm network rm",
    "NETWORK [NETWORK...]",
    "Remove one or more networks",
    [F.flag("-f", "--force", kind=F.BOOL, help="Do not error if the network does not exist")],
    min_args=1,
    aliases=("cnm network rm", "cnm network remove"),
)


def cmd_rm(cli: Cli, argv: list[str]) -> int:
    v, names, _ = F.parse(RM, argv)
    status = 0
    for name in names:
        try:
            cli.client.request("DELETE", f"/networks/{quote(name)}").close()
        except DaemonError as exc:
            if v["force"] and exc.status == 404:
                continue
            cli.err(f"{exc}\n")
            status = 1
            continue
        cli.out(f"{name}\n")
    return status


PRUNE = F.Command(
    "cnm network prune",
    "",
    "Remove all unused networks",
    [
        F.flag("--filter", kind=F.LIST, help='Provide filter values (e.g. "until=<timestamp>")'),
        F.flag("-f", "--force", kind=F.BOOL, help="Do not prompt for confirmation"),
    ],
    max_args=0,
)


def cmd_prune(cli: Cli, argv: list[str]) -> int:
    from cnm.cli.listing import filters_param

    v, _, _ = F.parse(PRUNE, argv)
    warning = "This will remove all custom networks not used by at least one container."
    if not v["force"] and not cli.confirm(warning):
        return 0
    resp = cli.client.call("POST", "/networks/prune", {"filters": filters_param(v["filter"])}) or {}
    deleted = resp.get("NetworksDeleted") or []
    if deleted:
        cli.out("Deleted Networks:\n" + "".join(f"{n}\n" for n in deleted))
    return 0
