"""``GET /events`` through real clients: the docker CLI 28 (``docker events --since
--until --filter --format``) reads back, after the fact, what a container's life on a
user network emitted; ``cnm events`` streams live events until it is stopped."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest
from e2e_util import IMAGE
from harness import TestHost, venv_bin

DOCKER = "/usr/local/bin/docker"


def docker(host: TestHost, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {"DOCKER_HOST": host.host_uri, "DOCKER_CONFIG": str(host.tmp / "docker-config")}
    return host.run([DOCKER, *args], timeout=60, env=env, check=check)


def _window(host: TestHost) -> tuple[str, str]:
    """A life on a user network, and the [since, until] window (unix seconds) around it."""
    since = f"{time.time() - 1:.3f}"
    host.cnm("network", "create", "evnet")
    host.cnm("run", "-d", "--name", "ev1", "--network", "evnet", "--label", "tier=web", IMAGE, "sleep", "1d")
    host.cnm("rename", "ev1", "ev2")
    host.cnm("stop", "-t", "1", "ev2", timeout=90)
    host.cnm("rm", "ev2")
    host.cnm("network", "rm", "evnet")
    until = f"{time.time() + 0.001:.3f}"
    time.sleep(0.1)  # until is in the past when the request arrives: the stream ends
    return since, until


@pytest.fixture(scope="module")
def window(cnmhost: TestHost) -> tuple[str, str]:
    return _window(cnmhost)


def _json_events(host: TestHost, since: str, until: str, *filters: str) -> list[dict]:
    args = ["events", "--since", since, "--until", until, "--format", "{{json .}}"]
    for f in filters:
        args += ["--filter", f]
    out = docker(host, *args).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.mark.skipif(not os.path.exists(DOCKER), reason=f"{DOCKER} (docker CLI 28) not installed")
def test_docker_events_after_the_fact_in_order(cnmhost: TestHost, window: tuple[str, str]) -> None:
    events = _json_events(cnmhost, *window)
    expected = [
        ("network", "create"),
        ("container", "create"),
        ("container", "start"),
        ("container", "rename"),
        ("container", "kill"),
        ("container", "die"),
        ("container", "stop"),
        ("container", "destroy"),
        ("network", "destroy"),
    ]
    first_seen = list(dict.fromkeys((e["Type"], e["Action"]) for e in events))  # kill comes twice: 15, 9
    assert [p for p in first_seen if p in expected] == expected, first_seen
    by_action: dict[tuple[str, str], dict] = {}
    for e in events:
        by_action.setdefault((e["Type"], e["Action"]), e)
    create = by_action[("container", "create")]
    assert create["status"] == "create" and create["id"] == create["Actor"]["ID"] and create["from"] == IMAGE
    assert create["Actor"]["Attributes"] == {"image": IMAGE, "name": "ev1", "tier": "web"}
    assert create["scope"] == "local" and create["time"] == create["timeNano"] // 1_000_000_000
    assert by_action[("container", "rename")]["Actor"]["Attributes"]["oldName"] == "/ev1"
    assert by_action[("container", "kill")]["Actor"]["Attributes"]["signal"] == "15"
    assert by_action[("container", "die")]["Actor"]["Attributes"]["exitCode"] in ("137", "143")
    connect = by_action[("network", "connect")]
    assert connect["Actor"]["Attributes"] == {"name": "evnet", "type": "bridge", "container": create["id"]}
    assert by_action[("network", "disconnect")]["Actor"]["Attributes"]["container"] == create["id"]
    stamps = [e["timeNano"] for e in events]
    assert stamps == sorted(stamps)


@pytest.mark.skipif(not os.path.exists(DOCKER), reason=f"{DOCKER} (docker CLI 28) not installed")
def test_docker_events_filters(cnmhost: TestHost, window: tuple[str, str]) -> None:
    nets = _json_events(cnmhost, *window, "type=network", "network=evnet")
    assert [e["Action"] for e in nets] == ["create", "connect", "disconnect", "destroy"]
    dies = _json_events(cnmhost, *window, "container=ev2", "event=die")
    assert [(e["Action"], e["Actor"]["Attributes"]["name"]) for e in dies] == [("die", "ev2")]
    labelled = _json_events(cnmhost, *window, "label=tier=web")
    assert labelled and {e["Type"] for e in labelled} == {"container"}
    assert not _json_events(cnmhost, *window, "label=tier=db")
    by_image = _json_events(cnmhost, *window, f"image={IMAGE}", "event=create")
    assert [e["Actor"]["Attributes"]["name"] for e in by_image] == ["ev1"]


@pytest.mark.skipif(not os.path.exists(DOCKER), reason=f"{DOCKER} (docker CLI 28) not installed")
def test_docker_events_default_line(cnmhost: TestHost, window: tuple[str, str]) -> None:
    args = ["events", "--since", window[0], "--until", window[1], "--filter", "event=rename"]
    out = docker(cnmhost, *args).stdout.splitlines()
    assert len(out) == 1, out
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}(Z|[+-]\d\d:\d\d) container rename [0-9a-f]{64} "
        r"\(image=busybox, name=ev2, oldName=/ev1, tier=web\)",
        out[0],
    ), out
    relative = docker(cnmhost, "events", "--since", "10m", "--until", "0s", "--filter", "event=rename").stdout
    assert relative.splitlines() == out  # durations are relative to now (the CLI converts them)
    rfc3339 = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(window[0]) - 1))
    assert (
        cnmhost.cnm(
            "events", "--since", rfc3339, "--until", "0s", "--filter", "event=rename"
        ).stdout.splitlines()
        == out
    )


def test_cnm_events_matches_docker_and_streams_live(cnmhost: TestHost, window: tuple[str, str]) -> None:
    since, until = window
    past = cnmhost.cnm("events", "--since", since, "--until", until, "--filter", "event=rename").stdout
    assert re.fullmatch(
        r"\S+ container rename [0-9a-f]{64} \(image=busybox, name=ev2, oldName=/ev1, tier=web\)\n", past
    )
    fmt = cnmhost.cnm("events", "--since", since, "--until", until, "--format", "{{.Type}} {{.Action}}",
                      "--filter", "network=evnet").stdout  # fmt: skip
    assert fmt.splitlines() == ["network create", "network connect", "network disconnect", "network destroy"]
    proc = cnmhost.spawn(
        [venv_bin("cnm"), "-H", cnmhost.host_uri, "events", "--filter", "type=container",
         "--format", "{{.Action}} {{.Actor.Attributes.name}}"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(0.5)  # subscribed before the first change
        cnmhost.cnm("create", "--name", "live1", IMAGE, "true")
        cnmhost.cnm("rm", "live1")
        assert proc.stdout is not None
        lines = [proc.stdout.readline().strip() for _ in range(2)]
        assert lines == ["create live1", "destroy live1"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_events_bad_time_is_a_clear_error(cnmhost: TestHost) -> None:
    res = cnmhost.cnm("events", "--since", "yesterday", check=False)
    assert res.returncode != 0 and "--since" in res.stderr and "yesterday" in res.stderr


@pytest.mark.skipif(not os.path.exists(DOCKER), reason=f"{DOCKER} (docker CLI 28) not installed")
def test_docker_restart_emits_restart_after_start(cnmhost: TestHost) -> None:
    cnmhost.cnm("run", "-d", "--name", "evr", IMAGE, "sleep", "1d")
    try:
        since = f"{time.time():.3f}"
        docker(cnmhost, "restart", "-t", "0", "evr")
        until = f"{time.time() + 0.001:.3f}"
        time.sleep(0.1)
        actions = [e["Action"] for e in _json_events(cnmhost, since, until, "container=evr")]
        assert list(dict.fromkeys(actions)) == ["kill", "die", "stop", "start", "restart"], actions
        since = f"{time.time():.3f}"
        assert docker(cnmhost, "exec", "evr", "sh", "-c", "exit 3", check=False).returncode == 3
        until = f"{time.time() + 0.001:.3f}"
        time.sleep(0.1)
        execs = _json_events(cnmhost, since, until, "container=evr", "event=exec_start", "event=exec_die")
        assert [e["Action"] for e in execs] == ["exec_start: sh -c exit 3", "exec_die"], execs
        assert execs[1]["Actor"]["Attributes"]["exitCode"] == "3"
    finally:
        cnmhost.cnm("rm", "-f", "evr", check=False)


@pytest.mark.skipif(not os.path.exists(DOCKER), reason=f"{DOCKER} (docker CLI 28) not installed")
def test_docker_image_events_tag_untag_delete(cnmhost: TestHost) -> None:
    since = f"{time.time():.3f}"
    image_id = json.loads(cnmhost.cnm("image", "inspect", IMAGE).stdout)[0]["Id"]
    docker(cnmhost, "tag", IMAGE, "evtag:1")
    docker(cnmhost, "rmi", "evtag:1")
    until = f"{time.time() + 0.001:.3f}"
    time.sleep(0.1)
    events = _json_events(cnmhost, since, until, "type=image")
    assert [(e["Action"], e["Actor"]["Attributes"]["name"]) for e in events][0] == ("tag", "evtag:1")
    assert [e["Action"] for e in events] == ["tag", "untag"]  # busybox keeps its own tag
    assert {e["Actor"]["ID"] for e in events} == {e["id"] for e in events} == {image_id}
    assert cnmhost.cnm("image", "inspect", IMAGE).returncode == 0  # untagged, not deleted
    docker(cnmhost, "tag", IMAGE, "evtag:2")
    since = f"{time.time():.3f}"
    cnmhost.cnm("rmi", "evtag:2")
    cnmhost.cnm("tag", IMAGE, "evtag:3")
    until = f"{time.time() + 0.001:.3f}"
    time.sleep(0.1)
    events = _json_events(cnmhost, since, until, "type=image", "image=evtag")
    assert [(e["Action"], e["Actor"]["Attributes"]["name"]) for e in events] == [("tag", "evtag:3")]


COMPOSE = "/usr/bin/docker-compose"


@pytest.mark.skipif(not os.path.exists(COMPOSE), reason=f"{COMPOSE} (docker-compose 1.29) not installed")
def test_compose_events_streams_its_project(cnmhost: TestHost) -> None:
    project = cnmhost.tmp / "evproj"
    project.mkdir()
    (project / "docker-compose.yml").write_text(
        f"version: '3'\nservices:\n  app:\n    image: {IMAGE}\n    command: sleep 1d\n    stop_grace_period: 1s\n"
    )
    env = {"DOCKER_HOST": cnmhost.host_uri, "COMPOSE_PROJECT_NAME": "evproj"}
    compose = [COMPOSE, "--project-directory", str(project), "-f", str(project / "docker-compose.yml")]
    cnmhost.run([*compose, "up", "-d"], timeout=120, env=env)
    proc = cnmhost.spawn(
        [*compose, "events", "--json"], stdout=subprocess.PIPE, text=True, env=cnmhost.environ() | env
    )
    try:
        time.sleep(2)  # compose subscribes (filtered by the project's label) before the stop
        cnmhost.run([*compose, "stop"], timeout=120, env=env)
        assert proc.stdout is not None
        seen = []
        while "stop" not in seen:
            line = proc.stdout.readline()
            assert line, f"compose events ended early after {seen}"
            event = json.loads(line)
            assert event["type"] == "container" and event["service"] == "app", event
            seen.append(event["action"])
        assert "kill" in seen and "die" in seen, seen
        assert seen.index("kill") < seen.index("die") < seen.index("stop"), seen
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        cnmhost.run([*compose, "down"], timeout=120, env=env, check=False)
