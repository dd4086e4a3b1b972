"""NameTable: Docker's name rules for the embedded DNS server, without sockets."""

from __future__ import annotations

import random
from ipaddress import IPv4Address, IPv6Address

import pytest

from cnm.dns.records import NameTable, Upstream
from cnm.errors import InvalidArgument

A1, A2, A3 = IPv4Address("10.1.0.2"), IPv4Address("10.1.0.3"), IPv4Address("10.2.0.2")


def table() -> NameTable:
    t = NameTable(rng=random.Random(7))
    # sandbox "web" on networks front (first) and back; "api" on back; "db" on data only
    t.set_endpoint(
        "sb-web", "n-front", "front", "web", ("web", "www", "abcdef123456"), IPv4Address("10.0.0.2")
    )
    t.set_endpoint("sb-web", "n-back", "back", "web", ("web",), A1)
    t.set_endpoint("sb-api", "n-back", "back", "api", ("api", "API-host"), A2)
    t.set_endpoint("sb-db", "n-data", "data", "db", ("db",), A3)
    return t


def test_names_resolve_within_a_network_case_insensitively():
    t = table()
    assert t.lookup_a("sb-web", "api") == [A2]
    assert t.lookup_a("sb-web", "API.") == [A2]
    assert t.lookup_a("sb-web", "api-host") == [A2]
    assert t.lookup_a("sb-api", "web") == [A1]  # api sees web's address on *their* network
    assert t.lookup_a("sb-web", "abcdef123456") == [IPv4Address("10.0.0.2")]


def test_names_do_not_resolve_across_networks():
    t = table()
    assert t.lookup_a("sb-db", "api") is None
    assert t.lookup_a("sb-api", "db") is None
    assert t.lookup_a("sb-api", "www") is None  # www is web's alias on front only
    assert t.lookup_a("unknown-sandbox", "api") is None
    assert t.lookup_ptr("sb-db", A2) is None


def test_first_attached_network_that_knows_the_name_answers():
    t = table()
    # web is on front and back; it asks for itself: front was attached first
    assert t.lookup_a("sb-web", "web") == [IPv4Address("10.0.0.2")]


def test_name_dot_network_qualification():
    t = table()
    t.set_endpoint("sb-x", "n-dotted", "my.net", "x.y", ("x.y",), IPv4Address("10.9.0.2"))
    t.set_endpoint("sb-web", "n-dotted", "my.net", "web", ("web",), IPv4Address("10.9.0.3"))
    assert t.lookup_a("sb-web", "web.back") == [A1]
    assert t.lookup_a("sb-web", "WEB.front") == [IPv4Address("10.0.0.2")]
    assert t.lookup_a("sb-web", "api.back") == [A2]
    assert t.lookup_a("sb-web", "api.front") is None  # api is not on front
    assert t.lookup_a("sb-api", "web.front") is None  # api is not attached to front
    assert t.lookup_a("sb-web", "x.y") == [IPv4Address("10.9.0.2")]  # full name first
    assert t.lookup_a("sb-web", "x.y.my.net") == [IPv4Address("10.9.0.2")]  # a.b in network c.d
    assert t.lookup_a("sb-web", "x.y.my") is None


def test_alias_shared_by_several_containers_answers_all_shuffled():
    t = NameTable(rng=random.Random(1))
    addresses = [IPv4Address(f"10.5.0.{i}") for i in range(2, 8)]
    for i, addr in enumerate(addresses):
        t.set_endpoint(f"sb{i}", "n", "net", f"c{i}", (f"c{i}", "pool"), addr)
    orders = {tuple(t.lookup_a("sb0", "pool")) for _ in range(30)}
    assert all(sorted(order) == addresses for order in orders)
    assert len(orders) > 1


def test_name_without_ipv6_gives_empty_aaaa_and_unknown_gives_none():
    t = table()
    assert t.lookup_aaaa("sb-web", "api") == []
    assert t.lookup_aaaa("sb-web", "nope") is None
    t.set_endpoint("sb-v6", "n-back", "back", "six", ("six",), None, address6=IPv6Address("fd00::6"))
    assert t.lookup_aaaa("sb-web", "six") == [IPv6Address("fd00::6")]
    assert t.lookup_a("sb-web", "six") == []
    assert t.lookup_ptr("sb-web", "fd00::6") == "six.back"


def test_ptr_answers_container_name_dot_network():
    t = table()
    assert t.lookup_ptr("sb-web", A2) == "api.back"
    assert t.lookup_ptr("sb-web", "10.1.0.3") == "api.back"
    assert t.lookup_ptr("sb-web", "10.1.0.99") is None
    assert t.lookup_ptr("sb-web", "not an address") is None


def test_changes_are_visible_at_once():
    t = table()
    t.remove_endpoint("sb-api", "n-back")
    assert t.lookup_a("sb-web", "api") is None
    assert t.lookup_ptr("sb-web", A2) is None
    t.remove_endpoint("sb-api", "n-back")  # idempotent
    # rename: the old name is gone, the new one answers
    t.set_endpoint("sb-web", "n-back", "back", "web2", ("web2",), A1)
    assert t.lookup_a("sb-web", "web.back") is None
    assert t.lookup_a("sb-web", "web2") == [A1]
    assert t.lookup_ptr("sb-web", A1) == "web2.back"


def test_remove_sandbox_forgets_everything_and_networks_vanish():
    t = table()
    t.configure("sb-db", [("10.0.0.1", 53, True)])
    t.remove_sandbox("sb-db")
    t.remove_sandbox("sb-db")
    assert not t.knows_sandbox("sb-db")
    assert t.config("sb-db").upstreams == ()
    assert "data" not in t._network_ids and "n-data" not in t._networks
    # a network whose name is reused by a new id after the old one emptied
    t.set_endpoint("sb-db", "n-data2", "data", "db", ("db",), A3)
    assert t.lookup_a("sb-db", "db.data") == [A3]


def test_address_reused_by_another_sandbox_keeps_its_ptr():
    t = NameTable()
    t.set_endpoint("old", "n", "net", "old", ("old",), A1)
    t.set_endpoint("new", "n", "net", "new", ("new",), A1)  # stale record of "old"
    t.remove_endpoint("old", "n")
    assert t.lookup_ptr("new", A1) == "new.net"


def test_link_aliases_are_local_to_the_linking_sandbox():
    t = table()
    t.set_endpoint("sb-web", "n-back", "back", "web", ("web",), A1, links={"db-alias": "api"})
    assert t.lookup_a("sb-web", "db-alias") == [A2]
    assert t.lookup_a("sb-api", "db-alias") is None


def test_resolver_config():
    t = NameTable()
    t.configure(
        "sb", [("192.0.2.1", 53, True), Upstream(IPv4Address("192.0.2.2"), 5353, False)], internal_only=True
    )
    config = t.config("sb")
    assert config.upstreams[0] == Upstream(IPv4Address("192.0.2.1"), 53, True)
    assert config.usable_upstreams() == (Upstream(IPv4Address("192.0.2.2"), 5353, False),)
    t.configure("sb", [("192.0.2.1",)])
    assert t.config("sb").usable_upstreams() == (Upstream(IPv4Address("192.0.2.1"), 53, False),)
    with pytest.raises(InvalidArgument):
        t.configure("sb", [("not-an-ip", 53, True)])
    with pytest.raises(InvalidArgument):
        t.configure("sb", [("192.0.2.1", 0, True)])


def test_invalid_records_are_refused():
    t = NameTable()
    with pytest.raises(InvalidArgument):
        t.set_endpoint("", "n", "net", "c", (), A1)
    with pytest.raises(InvalidArgument):
        t.set_endpoint("sb", "n", "net", "", (), A1)


def test_lookup_cost_does_not_depend_on_container_count():
    """Structure, not timing: a lookup touches one dict per network and per label."""
    t = NameTable()
    for i in range(5000):
        t.set_endpoint(f"sb{i}", "n", "net", f"c{i}", (f"c{i}",), IPv4Address(167772160 + i + 2))
    assert len(t._networks["n"].by_name) == 5000
    assert t.lookup_a("sb0", "c4999") == [IPv4Address(167772160 + 4999 + 2)]
    for i in range(5000):
        t.remove_sandbox(f"sb{i}")
    assert t._networks == {} and t._sandboxes == {} and t._network_ids == {}
