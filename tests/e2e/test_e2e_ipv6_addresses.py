"""IPv6 addresses through the CLI and the API (issue 12): a dual-stack network with a given
or a default (host-specific ULA) /64, ``--ip6`` on run and connect, inspect's v6 fields,
addresses kept across a restart, and bad input refused with nothing changed.  What the
kernel does with the addresses is tested where the data plane is (this file checks the
API and the store)."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import signal
import sqlite3
from typing import Any

import pytest
from e2e_util import inspect, network_inspect, run_sleeper, sandbox_key
from harness import TestHost


def store_keys(host: TestHost, prefix: str) -> dict[str, Any]:
    """The daemon's store documents under ``prefix`` (read-only, beside the daemon)."""
    db = sqlite3.connect(f"file:{host.data_root / 'cnm.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT key, doc FROM kv WHERE key >= ? AND key < ?", (prefix, prefix + "\uffff"))
        return {key: json.loads(doc) for key, doc in rows}
    finally:
        db.close()


def ula_of(host: TestHost) -> ipaddress.IPv6Network:
    """Docker 27+'s host pool: fd + 40 bits of sha256(host id), a /48."""
    daemon_id = (host.data_root / "daemon-id").read_text().strip()
    gid = int.from_bytes(hashlib.sha256(daemon_id.encode()).digest()[:8], "big") & (2**40 - 1)
    return ipaddress.IPv6Network(((0xFD << 120) | (gid << 80), 48))


def v6_of(host: TestHost, name: str, network: str) -> tuple[str, int, str]:
    settings = inspect(host, name)[0]["NetworkSettings"]["Networks"][network]
    return settings["GlobalIPv6Address"], settings["GlobalIPv6PrefixLen"], settings["IPv6Gateway"]


def test_dual_stack_network_inspect_connect_and_restart(fresh_cnmhost: TestHost) -> None:
    host = fresh_cnmhost
    host.cnm(
        "network", "create", "--ipv6", "--subnet", "10.61.0.0/24", "--subnet", "2001:db8:61::/64", "dual"
    )
    net = network_inspect(host, "dual")
    assert net["EnableIPv6"] is True
    assert net["IPAM"]["Config"] == [{"Subnet": "10.61.0.0/24"}, {"Subnet": "2001:db8:61::/64"}]
    ls = host.cnm("network", "ls", "--filter", "name=dual", "--format", "{{.Name}} {{.IPv4}} {{.IPv6}}")
    assert ls.stdout.split() == ["dual", "true", "true"]

    run_sleeper(host, "aa", "--network", "dual")
    run_sleeper(host, "bb", "--network", "dual", "--ip6", "2001:db8:61::f00d")
    assert v6_of(host, "aa", "dual") == ("2001:db8:61::2", 64, "2001:db8:61::1")
    assert v6_of(host, "bb", "dual") == ("2001:db8:61::f00d", 64, "2001:db8:61::1")
    bb = inspect(host, "bb")[0]
    assert bb["NetworkSettings"]["Networks"]["dual"]["IPAMConfig"]["IPv6Address"] == "2001:db8:61::f00d"
    containers = network_inspect(host, "dual")["Containers"]
    assert containers[bb["Id"]]["IPv6Address"] == "2001:db8:61::f00d/64"
    # the addresses are on the containers' interfaces (reaching each other is the data
    # plane's test, with the v6 firewall)
    for name, address in (("aa", "2001:db8:61::2"), ("bb", "2001:db8:61::f00d")):
        addrs = host.ip_json("-6", "addr", "show", "dev", "eth0", netns=sandbox_key(host, name))
        assert address in {a["local"] for a in addrs[0]["addr_info"]}, (name, addrs)

    # connect with --ip6, to a container on the default bridge
    run_sleeper(host, "cc")
    host.cnm("network", "connect", "--ip6", "2001:db8:61::beef", "dual", "cc")
    assert v6_of(host, "cc", "dual") == ("2001:db8:61::beef", 64, "2001:db8:61::1")
    # the default bridge (no --ipv6 given to cnmd) stays IPv4-only
    assert v6_of(host, "cc", "bridge") == ("", 0, "")
    assert inspect(host, "cc")[0]["NetworkSettings"]["GlobalIPv6Address"] == ""

    # the store holds every v6 address with its owner
    owners = store_keys(host, "ipam/address/" + net["Id"] + "/")
    v6 = {k.rsplit("/", 1)[1]: d["owner"] for k, d in owners.items() if ":" in k.rsplit("/", 1)[1]}
    assert set(v6) == {"2001:db8:61::1", "2001:db8:61::2", "2001:db8:61::f00d", "2001:db8:61::beef"}
    assert v6["2001:db8:61::1"] == "gateway"

    before = {n: v6_of(host, n, "dual") for n in ("aa", "bb", "cc")}
    host.kill_daemon(signal.SIGKILL)
    host.start_daemon()
    assert {n: v6_of(host, n, "dual") for n in ("aa", "bb", "cc")} == before
    run_sleeper(host, "dd", "--network", "dual")
    assert v6_of(host, "dd", "dual")[0] == "2001:db8:61::3"

    # disconnect frees the v6 address in the store
    host.cnm("network", "disconnect", "dual", "cc")
    owners = store_keys(host, "ipam/address/" + net["Id"] + "/")
    assert not any(k.endswith("/2001:db8:61::beef") for k in owners)
    host.cnm("rm", "-f", "aa", "bb", "cc", "dd")
    host.cnm("network", "rm", "dual")
    assert store_keys(host, "ipam/pool6/") == {}
    assert store_keys(host, "ipam/address/" + net["Id"] + "/") == {}


def test_default_v6_subnet_is_a_64_of_the_host_ula(fresh_cnmhost: TestHost) -> None:
    host = fresh_cnmhost
    ula = ula_of(host)
    # the first /64 of the pool is on the host (an address of its uplink): it is skipped
    first = ipaddress.IPv6Network((int(ula.network_address), 64))
    host.run(["ip", "-6", "addr", "add", f"{first.network_address + 5}/64", "dev", "wan0", "nodad"])
    host.cnm("network", "create", "--ipv6", "auto1")
    host.cnm("network", "create", "--ipv6", "auto2")
    got = []
    for name in ("auto1", "auto2"):
        config = network_inspect(host, name)["IPAM"]["Config"]
        assert len(config) == 2 and ":" not in config[0]["Subnet"]
        subnet = ipaddress.IPv6Network(config[1]["Subnet"])
        assert subnet.prefixlen == 64 and subnet.subnet_of(ula)
        assert config[1]["Gateway"] == str(subnet.network_address + 1)
        got.append(subnet)
    assert got[0] != got[1] and first not in got
    run_sleeper(host, "aa", "--network", "auto1")
    assert v6_of(host, "aa", "auto1") == (
        str(got[0].network_address + 2),
        64,
        str(got[0].network_address + 1),
    )
    host.cnm("rm", "-f", "aa")


@pytest.mark.daemon_flags("--default-address-pool", "base=fd12:3456:7800::/40,size=64")
def test_v6_default_address_pool_flag(fresh_cnmhost: TestHost) -> None:
    host = fresh_cnmhost
    host.cnm("network", "create", "--ipv6", "p1")
    config = network_inspect(host, "p1")["IPAM"]["Config"]
    assert config[0]["Subnet"].startswith("172.")  # Docker's IPv4 defaults stay
    assert config[1]["Subnet"] == "fd12:3456:7800::/64"


@pytest.mark.daemon_flags("--ipv6", "--fixed-cidr-v6", "2001:db8:17::/64")
def test_default_bridge_ipv6_flags(fresh_cnmhost: TestHost) -> None:
    host = fresh_cnmhost
    bridge = network_inspect(host, "bridge")
    assert bridge["EnableIPv6"] is True
    assert bridge["IPAM"]["Config"] == [
        {"Subnet": "172.17.0.0/16", "Gateway": "172.17.0.1"},
        {"Subnet": "2001:db8:17::/64", "Gateway": "2001:db8:17::1"},
    ]
    run_sleeper(host, "aa")
    settings = inspect(host, "aa")[0]["NetworkSettings"]
    # the deprecated top-level fields come from the default bridge
    assert (settings["GlobalIPv6Address"], settings["GlobalIPv6PrefixLen"], settings["IPv6Gateway"]) == (
        "2001:db8:17::2",
        64,
        "2001:db8:17::1",
    )
    host.cnm("rm", "-f", "aa")


def test_bad_ipv6_input_changes_nothing(fresh_cnmhost: TestHost) -> None:
    host = fresh_cnmhost
    host.cnm("network", "create", "--ipv6", "--subnet", "2001:db8:62::/64", "dual")
    host.cnm("network", "create", "v4only")
    run_sleeper(host, "aa")
    before = (
        host.cnm("network", "ls", "-q").stdout,
        {k: v for k, v in store_keys(host, "ipam/").items() if not k.startswith("ipam/space/")},
        inspect(host, "aa")[0]["NetworkSettings"]["Networks"],
    )
    bad = [
        (["network", "create", "--ipv6", "--subnet", "2001:db8:62::/80", "overlap"], "overlaps"),
        (["network", "create", "--subnet", "2001:db8:63::/64", "noflag"], "IPv6 is not enabled"),
        (["network", "create", "--ipv6", "--subnet", "fe80::/64", "ll"], "link-local"),
        (["network", "create", "--ipv6", "--subnet", "2001:db8:64::1/64", "hostbits"], "host bits"),
        (["network", "connect", "--ip6", "2001:db8:99::5", "dual", "aa"], "no configured subnet"),
        (["network", "connect", "--ip6", "2001:db8:62::5", "v4only", "aa"], "has no IPv6"),
        (["network", "connect", "--ip6", "not-an-address", "dual", "aa"], "invalid IPv6 address"),
    ]
    for argv, needle in bad:
        result = host.cnm(*argv, check=False)
        assert result.returncode != 0, argv
        assert needle in result.stderr, (argv, result.stderr)
        after = (
            host.cnm("network", "ls", "-q").stdout,
            {k: v for k, v in store_keys(host, "ipam/").items() if not k.startswith("ipam/space/")},
            inspect(host, "aa")[0]["NetworkSettings"]["Networks"],
        )
        assert after == before, argv
    host.cnm("rm", "-f", "aa")
