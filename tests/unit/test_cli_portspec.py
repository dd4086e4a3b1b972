"""Port specs parsed as Docker's CLI does (nat.ParsePortSpec), against the research notes' table."""

from __future__ import annotations

import pytest

from cnm.cli.portspec import parse_expose, parse_port_spec, parse_publish, to_standard_notation


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("80", [("80/tcp", {"HostIp": "", "HostPort": ""})]),
        ("8080:80", [("80/tcp", {"HostIp": "", "HostPort": "8080"})]),
        ("127.0.0.1:8080:80/udp", [("80/udp", {"HostIp": "127.0.0.1", "HostPort": "8080"})]),
        ("127.0.0.1::80", [("80/tcp", {"HostIp": "127.0.0.1", "HostPort": ""})]),
        ("[::1]:8080:80", [("80/tcp", {"HostIp": "::1", "HostPort": "8080"})]),
        (
            "8000-8001:80-81",
            [("80/tcp", {"HostIp": "", "HostPort": "8000"}), ("81/tcp", {"HostIp": "", "HostPort": "8001"})],
        ),
        ("8000-8010:80", [("80/tcp", {"HostIp": "", "HostPort": "8000-8010"})]),
        ("53/SCTP", [("53/sctp", {"HostIp": "", "HostPort": ""})]),
        ("::1:8080:80", [("80/tcp", {"HostIp": "::1", "HostPort": "8080"})]),
    ],
)
def test_port_spec_table(spec, expected):
    assert parse_port_spec(spec) == expected


@pytest.mark.parametrize(
    "spec, message",
    [
        ("8000-8001:80-82", "invalid ranges specified for container and host Ports: 80-82 and 8000-8001"),
        ("abc", "invalid containerPort: abc"),
        ("x:80", "invalid hostPort: x"),
        ("1.2.3:80:80", "invalid IP address: 1.2.3"),
        ("80/icmp", "invalid proto: icmp"),
        ("8080:", "no port specified: 8080:<empty>"),
        ("70000", "invalid containerPort: 70000"),
        ("90-80", "invalid containerPort: 90-80"),
    ],
)
def test_port_spec_errors(spec, message):
    with pytest.raises(ValueError) as err:
        parse_port_spec(spec)
    assert str(err.value) == message


def test_long_form_is_rewritten():
    assert to_standard_notation("published=8080,target=80,protocol=udp") == "8080:80/udp"
    assert to_standard_notation("target=80") == ":80/tcp"
    assert to_standard_notation("published=8080,target=80,host_ip=::1") == "[::1]:8080:80/tcp"
    with pytest.raises(ValueError, match="should be name=value but got 'x'"):
        to_standard_notation("published=1,x")


def test_publish_merges_bindings_and_exposes_sorted_keys():
    exposed, bindings = parse_publish(["8080:80", "127.0.0.1:9090:80", "53/udp"])
    assert list(exposed) == ["53/udp", "80/tcp"]
    assert bindings["80/tcp"] == [
        {"HostIp": "", "HostPort": "8080"},
        {"HostIp": "127.0.0.1", "HostPort": "9090"},
    ]
    assert parse_expose(["1000-1002/udp", "80"], exposed) == {
        "1000/udp": {},
        "1001/udp": {},
        "1002/udp": {},
        "53/udp": {},
        "80/tcp": {},
    }
    with pytest.raises(ValueError, match="invalid port format for --expose: 1:2"):
        parse_expose(["1:2"], {})
