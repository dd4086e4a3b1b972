"""The tour (scripts/tour.sh, what `make demo` runs) succeeds in a test host, twice in a row
(it is idempotent), and shows every step the issues promise: names within and across
networks (issue 4), a published port reached from the host in kernel mode and through the
one userland proxy after the tour restarted its throwaway cnmd (issue 3), the map, an
explain and traces of a published port and of a blocked packet (issue 11), and cnmd put
back as it was."""

from __future__ import annotations

import re

from harness import HOST_ADDR, REPO, TestHost, venv_bin

TOUR = REPO / "scripts" / "tour.sh"
PORT = 8080


def section(out: str, title: str) -> str:
    """The output of the tour step titled ``title`` (up to the next step)."""
    match = re.search(rf"== \d+\. {re.escape(title)} ==\n(.*?)(?=\n== \d+\. |\Z)", out, re.S)
    assert match, f"the tour has no step {title!r}:\n{out}"
    return match.group(1)


def fetched(text: str, url: str) -> str:
    """What the tour printed for ``busybox wget -qO- URL`` (the line after the command)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.endswith(f"busybox wget -qO- {url}"):
            return lines[i + 1].strip() if i + 1 < len(lines) else ""
    raise AssertionError(f"the tour did not fetch {url}:\n{text}")


def listeners(text: str) -> dict[int, str]:
    """``ss -ltnp`` lines in ``text``: port -> the users:(…) part."""
    found = {}
    for line in text.splitlines():
        m = re.match(r"LISTEN\s+\d+\s+\d+\s+\S+:(\d+)\s+\S+\s+(users:.*)", line)
        if m:
            found[int(m.group(1))] = m.group(2)
    return found


def cnmd_cmdline(host: TestHost) -> list[str]:
    """The command line of the process listening on the host's cnmd socket."""
    out = host.run(["ss", "-xlpnH", f"src {host.socket_path}"]).stdout
    pid = re.search(r"pid=(\d+)", out)
    assert pid, f"no process listens on {host.socket_path}: {out!r}"
    return host.run(["cat", f"/proc/{pid.group(1)}/cmdline"]).stdout.split("\0")


def check_run(out: str) -> None:
    for expected in (
        "$ cnm network ls",
        "$ cnm network inspect bridge",
        "iflink",
        "master cnm0",
        "$ cnm exec tour-a ping",
        "isolated",
        "nft list table ip cnm",
        "Tour complete.",
    ):
        assert expected in out, f"tour output lacks {expected!r}"

    names = section(out, "Names on a user-defined network")
    assert "nameserver 127.0.0.11" in names
    assert "1 packets received" in names, "tour-c pings tour-d by name"
    assert re.search(r"Name:\s+tour-d\nAddress: 10\.222\.0\.\d+", names), names
    assert "not found, as expected" in section(out, "...and only there")

    ports = section(out, "Publishing a port")
    web = fetched(ports, f"http://127.0.0.1:{PORT}/hostname")
    assert re.fullmatch(r"[0-9a-f]{12}", web), f"127.0.0.1:{PORT} did not reach tour-web: {web!r}"
    assert fetched(ports, f"http://{HOST_ADDR}:{PORT}/hostname") == web, "the host's address reaches it too"
    assert f"80/tcp -> 0.0.0.0:{PORT}" in ports
    assert f"0.0.0.0:{PORT}->80/tcp" in ports, "cnm ps shows the PORTS column"

    nat = section(out, "The NAT rules")
    assert re.search(
        rf"tcp \. {PORT} comment \"cnm:[0-9a-f]+ \(tour-web on bridge\)\" : 172\.17\.0\.\d+ \. 80", nat
    ), "the DNAT map holds tour-web's port (its owner in the comment, and the names)"
    assert '"cnmd"' in listeners(nat)[PORT], "kernel mode: cnmd holds the port"

    drawn = section(out, "Seeing inside: the map")
    assert "$ cnm network map\nhost uplink " in drawn, drawn
    for name in ("tour-a", "tour-b", "tour-web"):
        assert re.search(rf"<-> {name} eth0 172\.17\.0\.\d+/16 ", drawn), (name, drawn)
    assert f"port 0.0.0.0:{PORT}->80/tcp" in drawn
    explained = section(out, "Seeing inside: one container explained")
    assert re.search(r"eth0: ifindex \d+, iflink (\d+) = the host veth's ifindex", explained), explained
    assert f"  published 0.0.0.0:{PORT} -> 80/tcp\n    tcp . {PORT} comment" in explained
    assert "$ nft list map ip cnm ports-any" in explained
    assert re.search(r"conntrack: [1-9]\d* live entr", explained), "the tour's fetch left a flow"
    path = section(out, "Seeing inside: a packet's path to a published port")
    assert f"$ cnm trace world host:{PORT}\ntrace world (" in path, path
    assert re.search(
        rf"DNAT to tour-web \(172\.17\.0\.\d+:80\) by the published port {PORT}/tcp \(tour-web on bridge\)",
        path,
    ), path
    assert "a published port may enter" in path and "\n=> delivered" in path, path
    blocked = section(out, "Seeing inside: a blocked packet")
    assert "$ cnm trace tour-c tour-a/icmp\ntrace tour-c (" in blocked, blocked
    assert "=> dropped: forward: dropped by isolation: network 'tour-net' (bridge br-" in blocked, blocked
    assert "may not forward to network 'bridge' (bridge cnm0)" in blocked, blocked
    assert "rule: oifname @bridges drop" in blocked, blocked

    proxy = section(out, "The userland proxy")
    assert fetched(proxy, f"http://127.0.0.1:{PORT}/hostname") == web
    web2 = fetched(proxy, f"http://127.0.0.1:{PORT + 1}/hostname")
    assert re.fullmatch(r"[0-9a-f]{12}", web2) and web2 != web
    held = listeners(proxy)
    assert set(held) == {PORT, PORT + 1}, proxy
    pids = {re.search(r'\("cnmd",pid=(\d+)', users).group(1) for users in held.values()}  # type: ignore[union-attr]
    assert len(pids) == 1, f"one cnmd process serves every published port: {held}"
    assert "ip daddr 127.0.0.0/8 return" in proxy
    assert fetched(section(out, "Back to kernel mode"), f"http://127.0.0.1:{PORT + 1}/hostname") == web2


def documented_steps() -> list[str]:
    """The step titles of docs/tour.md's numbered list, in order."""
    doc = (REPO / "docs" / "tour.md").read_text()
    return re.findall(r"^\d+\. \*\*(.+?)\*\*", doc, re.M)


def test_tour_runs_and_is_idempotent(fresh_cnmhost: TestHost) -> None:
    env = {"CNM": venv_bin("cnm"), "TOUR_PAUSE": "0", "TOUR_RESTART_CNMD": "1", "TOUR_PORT": str(PORT)}
    before = cnmd_cmdline(fresh_cnmhost)
    for run in ("first", "second"):
        proc = fresh_cnmhost.run(["bash", str(TOUR)], env=env, timeout=300, check=False)
        assert proc.returncode == 0, f"{run} tour run failed:\n{proc.stdout}\n{proc.stderr}"
        check_run(proc.stdout)
        printed = re.findall(r"== \d+\. (.+?) ==", proc.stdout)
        assert printed == documented_steps(), "docs/tour.md describes the steps the tour prints"
    after = cnmd_cmdline(fresh_cnmhost)
    assert "--userland-proxy" not in " ".join(after), "the tour put cnmd back in kernel mode"
    assert after[-len(before) + 1 :] == before[1:], "cnmd runs with the flags it had before the tour"
    assert fresh_cnmhost.cnm("ps", "-a", "-q").stdout.split() == []
    networks = fresh_cnmhost.cnm("network", "ls").stdout
    assert "tour-net" not in networks and "tour-other" not in networks
