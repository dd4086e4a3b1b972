"""Docker's presentation rules: tables, durations, sizes, PORTS, ps rows, natural sort."""

from __future__ import annotations

import pytest

from cnm.cli.commands.container import container_row, port_lines
from cnm.cli.errors import CliError
from cnm.cli.format import (
    bytes_size,
    displayable_ports,
    ellipsis,
    human_duration,
    human_size,
    natural_sorted,
    tabwrite,
    truncate_id,
)
from cnm.cli.listing import render


def test_tabwriter_matches_docker_spacing():
    out = tabwrite(["NETWORK ID\tNAME\tDRIVER\tSCOPE", "0123456789ab\tbridge\tbridge\tlocal"])
    assert out == ("NETWORK ID     NAME      DRIVER    SCOPE\n0123456789ab   bridge    bridge    local\n")


@pytest.mark.parametrize(
    "seconds, text",
    [
        (0.5, "Less than a second"),
        (1, "1 second"),
        (5, "5 seconds"),
        (59, "59 seconds"),
        (60, "About a minute"),
        (119, "About a minute"),
        (120, "2 minutes"),
        (3599, "59 minutes"),
        (3600, "About an hour"),
        (5400, "2 hours"),
        (47 * 3600, "47 hours"),
        (48 * 3600, "2 days"),
        (14 * 86400, "2 weeks"),
        (60 * 86400, "2 months"),
        (3 * 365 * 86400, "3 years"),
    ],
)
def test_human_duration(seconds, text):
    assert human_duration(seconds) == text


def test_sizes_and_ids():
    assert human_size(4_400_000, 3) == "4.4MB"
    assert human_size(999) == "999B"
    assert human_size(1_234_567, 3) == "1.23MB"
    assert bytes_size(16_684_539_904) == "15.54GiB"
    assert truncate_id("sha256:" + "a" * 64) == "a" * 12
    assert ellipsis("httpd -f -p 80 -h /www", 20) == "httpd -f -p 80 -h /…"


def test_displayable_ports_groups_like_docker():
    ports = [
        {"IP": "0.0.0.0", "PrivatePort": 8000, "PublicPort": 8000, "Type": "tcp"},
        {"IP": "0.0.0.0", "PrivatePort": 8001, "PublicPort": 8001, "Type": "tcp"},
        {"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"},
        {"IP": "::", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"},
        {"PrivatePort": 443, "Type": "tcp"},
        {"PrivatePort": 53, "Type": "udp"},
    ]
    assert displayable_ports(ports) == (
        "53/udp, 443/tcp, 0.0.0.0:8000-8001->8000-8001/tcp, 0.0.0.0:8080->80/tcp, [::]:8080->80/tcp"
    )
    assert displayable_ports([]) == ""


def test_ps_row_and_table():
    c = {
        "Id": "c268f1" + "0" * 58,
        "Names": ["/web", "/app/web"],
        "Image": "busybox",
        "ImageID": "sha256:" + "9" * 64,
        "Command": "httpd -f -p 80 -h /www",
        "Created": 1000,
        "State": "running",
        "Status": "Up 3 seconds",
        "Ports": [],
        "Labels": {"k": "v"},
        "NetworkSettings": {"Networks": {"bridge": {}, "a": {}}},
    }
    row = container_row(c, True, now=1005)
    assert row["ID"] == "c268f1000000" and row["Names"] == "web"
    assert row["Command"] == '"httpd -f -p 80 -h /…"' and row["RunningFor"] == "5 seconds ago"
    assert row["Networks"] == "a,bridge"
    full = container_row(c, False, now=1005)
    assert full["Names"] == "web,app/web" and full["Command"] == '"httpd -f -p 80 -h /www"'
    out = render(
        [row], 'table {{.ID}}\\t{{.Names}}\\t{{.Label "k"}}', "", {"ID": "CONTAINER ID", "Names": "NAMES"}
    )
    assert out == "CONTAINER ID   NAMES     K\nc268f1000000   web       v\n"
    assert render([row], "{{.Names}}", "", {}) == "web\n"
    with pytest.raises(CliError, match='template parsing error: template: :1: function "nope" not defined'):
        render([row], "{{nope}}", "", {})


def test_port_lines_natural_sorted():
    ports = {
        "9000/tcp": [{"HostIp": "0.0.0.0", "HostPort": "9000"}],
        "80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}, {"HostIp": "::", "HostPort": "8080"}],
        "53/udp": None,
    }
    assert port_lines(ports, None, "web") == [
        "80/tcp -> 0.0.0.0:8080",
        "80/tcp -> [::]:8080",
        "9000/tcp -> 0.0.0.0:9000",
    ]
    assert port_lines(ports, "80/tcp", "web") == ["0.0.0.0:8080", "[::]:8080"]
    with pytest.raises(CliError, match="No public port '53/udp' published for web"):
        port_lines(ports, "53/udp", "web")


def test_natural_sort():
    assert natural_sorted(["net10", "net2", "net1", "a"]) == ["a", "net1", "net2", "net10"]
