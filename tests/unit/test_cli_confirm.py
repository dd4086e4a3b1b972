"""The prompt before prune: Docker's words, and nothing is sent unless the user says yes."""

from __future__ import annotations

import io

import pytest

from cnm.cli.commands import control, network
from cnm.cli.context import Cli


class StubClient:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def call(self, method: str, path: str, query=None, body=None):
        self.calls.append((method, path))
        return {}


def cli_with(answer: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Cli, io.StringIO, StubClient]:
    out = io.StringIO()
    cli = Cli(host="unix:///nonexistent", env={"CNM_NO_AUTOSTART": "1"}, stdout=out, stderr=io.StringIO())
    stub = StubClient()
    cli._client = stub  # type: ignore[assignment]
    monkeypatch.setattr("sys.stdin", io.StringIO(answer))
    return cli, out, stub


@pytest.mark.parametrize(
    "cmd,path,warning",
    [
        (network.cmd_prune, "/networks/prune", "custom networks not used by at least one container"),
        (control.cmd_prune, "/containers/prune", "all stopped containers"),
    ],
)
@pytest.mark.parametrize("answer,sent", [("y\n", True), ("YES\n", True), ("n\n", False), ("", False)])
def test_prune_asks_first(monkeypatch, cmd, path, warning, answer, sent) -> None:
    cli, out, stub = cli_with(answer, monkeypatch)
    assert cmd(cli, []) == 0
    assert out.getvalue().startswith("WARNING! This will remove ") and warning in out.getvalue()
    assert "Are you sure you want to continue? [y/N] " in out.getvalue()
    assert stub.calls == ([("POST", path)] if sent else [])


def test_force_skips_the_prompt(monkeypatch) -> None:
    cli, out, stub = cli_with("", monkeypatch)
    assert network.cmd_prune(cli, ["-f"]) == 0
    assert "WARNING" not in out.getvalue() and stub.calls == [("POST", "/networks/prune")]
