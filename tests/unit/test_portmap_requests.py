"""port_requests: every publish syntax the CLI sends, through the API's create parser."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from cnm.api.schemas_container import parse_container_create
from cnm.cli.portspec import parse_expose, parse_publish
from cnm.errors import InvalidArgument
from cnm.model.container import ContainerConfig, Image, PortBindingRequest
from cnm.model.ports import ANY, PortRequest
from cnm.portmap.requests import expand_port_key, parse_port_key, port_requests

LO = IPv4Address("127.0.0.1")
UNSET = None  # no host IP given: the publishing network's default binding address applies
IMAGE = Image(id="sha256:x", repo_tags=("busybox:latest",), created="")


def config_for(publish: list[str], expose: list[str] = (), publish_all: bool = False) -> ContainerConfig:
    """The config cnmd builds from what ``cnm run -p ... --expose ... [-P]`` sends."""
    exposed, bindings = parse_publish(list(publish))
    exposed = parse_expose(list(expose), exposed)
    body = {
        "Image": "busybox",
        "ExposedPorts": exposed,
        "HostConfig": {"PortBindings": bindings, "PublishAllPorts": publish_all},
    }
    config, _ = parse_container_create(body)
    return config


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("80", [PortRequest("tcp", 80)]),
        ("8080:80", [PortRequest("tcp", 80, UNSET, 8080, 8080)]),
        ("127.0.0.1:8080:80/udp", [PortRequest("udp", 80, LO, 8080, 8080)]),
        ("127.0.0.1::80", [PortRequest("tcp", 80, LO)]),
        ("8080:80/sctp", [PortRequest("sctp", 80, UNSET, 8080, 8080)]),
        (
            "8000-8001:80-81",
            [PortRequest("tcp", 80, UNSET, 8000, 8000), PortRequest("tcp", 81, UNSET, 8001, 8001)],
        ),
        ("8000-9000:80", [PortRequest("tcp", 80, UNSET, 8000, 9000)]),
        ("80-82", [PortRequest("tcp", p) for p in (80, 81, 82)]),
        ("published=5000,target=80", [PortRequest("tcp", 80, UNSET, 5000, 5000)]),
        ("published=5000,target=80,protocol=udp", [PortRequest("udp", 80, UNSET, 5000, 5000)]),
        ("published=5000,target=80,host_ip=127.0.0.1", [PortRequest("tcp", 80, LO, 5000, 5000)]),
        ("target=80", [PortRequest("tcp", 80)]),
        ("0.0.0.0:8080:80", [PortRequest("tcp", 80, ANY, 8080, 8080)]),  # given: never replaced
    ],
)
def test_every_cli_syntax(spec, expected):
    assert port_requests(config_for([spec]), IMAGE) == expected


def test_several_bindings_of_one_port_and_duplicates():
    config = config_for(["8080:80", "127.0.0.1:9090:80", "8080:80", "53:53/udp", "53:53"])
    assert port_requests(config, IMAGE) == [
        PortRequest("tcp", 53, UNSET, 53, 53),
        PortRequest("udp", 53, UNSET, 53, 53),
        PortRequest("tcp", 80, UNSET, 8080, 8080),
        PortRequest("tcp", 80, LO, 9090, 9090),
    ]


def test_expose_alone_publishes_nothing():
    assert port_requests(config_for([], ["80", "1000-1002/udp"]), IMAGE) == []


def test_publish_all_covers_exposed_ports_ranges_and_the_image_without_an_explicit_binding():
    image = Image(id="sha256:x", repo_tags=(), created="", exposed_ports=("443/tcp", "80/tcp"))
    config = config_for(["8080:80"], ["1000-1001/udp"], publish_all=True)
    assert port_requests(config, image) == [
        PortRequest("tcp", 80, UNSET, 8080, 8080),  # the explicit binding wins over -P
        PortRequest("tcp", 443),
        PortRequest("udp", 1000),
        PortRequest("udp", 1001),
    ]


def test_publish_all_expands_a_range_key_from_another_client():
    config = ContainerConfig(image="b", exposed_ports=("7000-7002/tcp",), publish_all=True)
    assert [r.container_port for r in port_requests(config)] == [7000, 7001, 7002]


def test_a_key_with_no_bindings_is_only_exposed_unless_publish_all():
    config = ContainerConfig(image="b", port_bindings={"80/tcp": ()})
    assert port_requests(config) == []
    assert port_requests(
        ContainerConfig(image="b", port_bindings={"80/tcp": ()}, publish_all=True, exposed_ports=("80/tcp",))
    ) == [PortRequest("tcp", 80)]


def test_host_port_zero_is_ephemeral():
    config = ContainerConfig(image="b", port_bindings={"80/tcp": (PortBindingRequest("", "0"),)})
    assert port_requests(config) == [PortRequest("tcp", 80)]


@pytest.mark.parametrize(
    "key, bindings, message",
    [
        ("0/tcp", [PortBindingRequest()], 'invalid port specification: "0/tcp"'),
        ("65536/tcp", [PortBindingRequest()], 'invalid port specification: "65536/tcp"'),
        ("80/icmp", [PortBindingRequest()], 'invalid port specification: "80/icmp"'),
        ("http/tcp", [PortBindingRequest()], 'invalid port specification: "http/tcp"'),
        ("80/tcp", [PortBindingRequest("", "8o8o")], 'invalid port specification: "8o8o"'),
        ("80/tcp", [PortBindingRequest("", "70000")], 'invalid port specification: "70000"'),
        ("80/tcp", [PortBindingRequest("", "9000-8000")], 'invalid port specification: "9000-8000"'),
        (
            "80-81/tcp",
            [PortBindingRequest("", "8000")],
            "invalid ranges specified for container and host Ports",
        ),
        ("80/tcp", [PortBindingRequest("::g", "8080")], "invalid host IP address '::g'.*IPv4 or IPv6"),
        ("80/tcp", [PortBindingRequest("[::1", "8080")], "invalid host IP address"),
        ("80/tcp", [PortBindingRequest("fe80::1%eth0", "8080")], "scoped IPv6 address"),
        ("80/tcp", [PortBindingRequest("[10.0.0.1]", "8080")], "brackets are for IPv6"),
        ("80/tcp", [PortBindingRequest("ff02::1", "8080")], "not a unicast address"),
        ("80/tcp", [PortBindingRequest("localhost", "8080")], "invalid host IP address 'localhost'"),
    ],
)
def test_invalid_requests_are_refused_with_dockers_words(key, bindings, message):
    config = ContainerConfig(image="b", port_bindings={key: tuple(bindings)})
    with pytest.raises(InvalidArgument, match=message.replace("(", r"\(")):
        port_requests(config)


def test_the_api_refuses_bad_bindings_at_create():
    with pytest.raises(InvalidArgument, match='invalid port specification: "x"'):
        parse_container_create(
            {"Image": "b", "HostConfig": {"PortBindings": {"80/tcp": [{"HostPort": "x"}]}}}
        )
    with pytest.raises(InvalidArgument, match='invalid port specification: "80/foo"'):
        parse_container_create({"Image": "b", "ExposedPorts": {"80/foo": {}}})


def test_keys():
    assert parse_port_key("80") == ("tcp", 80, 80)
    assert parse_port_key("1000-1002/UDP") == ("udp", 1000, 1002)
    assert expand_port_key("1000-1002/udp") == ["1000/udp", "1001/udp", "1002/udp"]
