"""tests/consistency.py on dual-stack networks: quiet on a healthy host (masqueraded and
routed v6 subnets, v6 published ports, a v4-only container whose [::] binding is the
proxy's), and each IPv6 fault planted behind cnmd's back is found: in the ``ip6 cnm``
table with nftables, in ip6tables with the iptables backend, and inside a container."""

from __future__ import annotations

import pytest
from consistency import dns_answers, problems
from harness import TestHost

ROUTED = "com.docker.network.bridge.gateway_mode_ipv6=routed"


def dual_stack(host: TestHost) -> dict[str, str]:
    """Two v6 networks (one routed), a container publishing a port on each, a v4-only one
    publishing too; {name: endpoint id}."""
    host.cnm("network", "create", "--ipv6", "--subnet", "2001:db8:71::/64", "six")
    host.cnm("network", "create", "--ipv6", "--subnet", "2001:db8:72::/64", "-o", ROUTED, "rt")
    host.cnm("run", "-d", "--name", "web6", "--network", "six", "-p", "18091:80", "busybox", "sleep", "1d")
    host.cnm("run", "-d", "--name", "rt6", "--network", "rt", "-p", "18092:80", "busybox", "sleep", "1d")
    host.cnm("run", "-d", "--name", "v4", "-p", "18093:80", "busybox", "sleep", "1d")
    eps = {}
    for name in ("web6", "rt6", "v4"):
        (net,) = host.api("GET", f"/containers/{name}/json").json()["NetworkSettings"]["Networks"].values()
        eps[name] = net["EndpointID"]
    return eps


def found_all(host: TestHost, expected: list[str]) -> None:
    found = "\n".join(problems(host))
    for text in expected:
        assert text in found, f"{text!r} not in:\n{found}"


def test_checker_sees_v6_faults_with_nftables(fresh_cnmhost: TestHost) -> None:
    host = fresh_cnmhost
    eps = dual_stack(host)
    assert problems(host) == []
    # the DNS probe asks AAAA too: web6 resolves to its v6 address
    web6 = host.api("GET", "/containers/web6/json").json()["NetworkSettings"]
    answer = dns_answers(host, web6["SandboxKey"], ["web6"], "dns6")
    assert answer == {"web6": [web6["Networks"]["six"]["GlobalIPv6Address"]]}

    rt = host.api("GET", "/networks/rt").json()["Id"]
    a_key = host.api("GET", "/containers/web6/json").json()["NetworkSettings"]["SandboxKey"]
    r_key = host.api("GET", "/containers/rt6/json").json()["NetworkSettings"]["SandboxKey"]
    host.run(["nft", "flush", "map", "ip6", "cnm", "ports-any"])
    host.run(["nft", "flush", "set", "ip6", "cnm", "published"])
    host.run(["nft", "delete", "element", "ip6", "cnm", "routed", f'{{ "br-{rt[:12]}" }}'])
    host.netns_exec(a_key, ["ip", "-6", "addr", "add", "2001:db8:71::99/64", "dev", "eth0", "nodad"])
    host.netns_exec(r_key, ["ip", "-6", "route", "del", "default"])
    found_all(
        host,
        [
            f"port tcp . 18091 of endpoint {eps['web6'][:12]}: nft ip6 ports-any holds None",
            f"port tcp . 18092 of endpoint {eps['rt6'][:12]}: nft ip6 ports-any holds None",
            f"of endpoint {eps['rt6'][:12]}: nft ip6 published holds None, want the element",
            f"network rt: nft ip6 set routed lacks br-{rt[:12]}",
            "eth0 has IPv6 ['2001:db8:71::99/64', '2001:db8:71::2/64'], recorded 2001:db8:71::2/64",
            "IPv6 default route None, recorded via 2001:db8:72::1 dev eth0",
        ],
    )
    # the v4-only container's [::] binding is the proxy's: nothing asked of the ip6 table
    assert not [p for p in problems(host) if eps["v4"][:12] in p]


@pytest.mark.daemon_flags("--firewall-backend", "iptables")
def test_checker_sees_v6_faults_with_iptables(fresh_cnmhost: TestHost) -> None:
    host = fresh_cnmhost
    eps = dual_stack(host)
    assert problems(host) == []

    for tool in ("ip6tables-nft", "ip6tables-legacy"):
        host.run([tool, "-t", "nat", "-F", f"CNM-P-{eps['web6'][:12]}"], check=False)
        host.run([tool, "-F", "CNM-PUBLISHED"], check=False)
    found_all(
        host,
        [
            f"port tcp/18091 of endpoint {eps['web6'][:12]}: no DNAT rule in CNM-P-{eps['web6'][:12]} (ip6tables)",
            "ip6tables CNM-PUBLISHED lacks 2001:db8:72::2/128 tcp/80",
        ],
    )
