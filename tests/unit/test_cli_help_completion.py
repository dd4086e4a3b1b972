"""`cnm --help`, group help, `cnm help …`, and the bash completion script, as a user meets them."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from cnm.cli import usage
from cnm.cli.completion import positional_kinds
from cnm.cli.main import COMMANDS, GROUPS


def cnm(*args: str) -> subprocess.CompletedProcess[str]:
    env = {"CNM_NO_AUTOSTART": "1", "CNM_HOST": "unix:///nonexistent", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "cnm.cli", *args], capture_output=True, text=True, env=env)


def test_top_level_help_lists_every_verb_with_its_line() -> None:
    page = cnm("--help").stdout
    for verb in [k for k in COMMANDS if " " not in k]:
        line = next((ln for ln in page.splitlines() if ln.split()[:1] == [verb]), None)
        assert line is not None, f"{verb} missing from cnm --help"
        assert line.split(None, 1)[1] == usage.declaration(COMMANDS, verb).description
    assert "  rename      Rename a container" in page
    for group in GROUPS:
        assert f"  {group.ljust(10)}  Manage {group}s" in page


@pytest.mark.parametrize("group", GROUPS)
def test_group_help_lists_subcommands_with_descriptions_and_no_aliases(group: str) -> None:
    for args in ([group, "--help"], [group], ["help", group]):
        page = cnm(*args).stdout
        assert f"Usage:  cnm {group} COMMAND" in page, args
        rows = page.split("Commands:\n", 1)[1].split("\n\n", 1)[0].splitlines()
        verbs = [row.split()[0] for row in rows]
        assert "list" not in verbs and "remove" not in verbs  # aliases of ls and rm
        for row in rows:
            verb, text = row.split(None, 1)
            assert text == usage.declaration(COMMANDS, f"{group} {verb}").description


def test_help_verb_shows_the_verbs_page() -> None:
    assert cnm("help", "network", "connect").stdout == cnm("network", "connect", "--help").stdout
    assert cnm("help", "run").stdout.startswith("\nUsage:  cnm run [OPTIONS] IMAGE")
    assert cnm("help").stdout == cnm("--help").stdout
    bad = cnm("help", "nosuchverb")
    assert bad.returncode != 0 and "unknown help topic: nosuchverb" in bad.stderr


def test_positional_kinds_follow_the_usage_line() -> None:
    assert positional_kinds("CONTAINER [CONTAINER...]") == ["containers", "containers+"]
    assert positional_kinds("NETWORK CONTAINER") == ["networks", "containers"]
    assert positional_kinds("IMAGE [COMMAND] [ARG...]") == ["images", "-", "-+"]


def test_completion_refuses_an_unknown_shell() -> None:
    proc = cnm("completion", "fish")
    assert proc.returncode == 125 and 'unsupported shell "fish"' in proc.stderr and proc.stdout == ""


# The daemon, as the script asks it: a shell function standing in for `cnm`.
FAKE_CNM = r"""
cnm() {
    [[ "$1" == -H ]] && { echo "at-$2"; return; }  # names from the daemon the line names
    case "$*" in
        *"ps -a --format"*) printf 'web\nweb2\napi\n' ;;
        *"network ls --format"*) printf 'bridge\nbackend\nfrontend\n' ;;
        *"images --format"*) printf 'busybox:latest\n' ;;
    esac
}
"""


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> str:
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    proc = cnm("completion", "bash")
    assert proc.returncode == 0, proc.stderr
    path = tmp_path_factory.mktemp("completion") / "cnm.bash"
    path.write_text(proc.stdout)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    return str(path)


def complete(script: str, line: str) -> list[str]:
    """COMPREPLY for ``line`` (the cursor at its end; a trailing space starts a new word)."""
    words = line.split()
    if line.endswith(" "):
        words.append("")
    program = (
        FAKE_CNM + f"source {script}\n"
        + "COMP_WORDS=(" + " ".join(f"'{w}'" for w in words) + f")\nCOMP_CWORD={len(words) - 1}\n"
        + '_cnm\nprintf "%s\\n" "${COMPREPLY[@]}"\n'
    )  # fmt: skip
    out = subprocess.run(["bash", "-c", program], capture_output=True, text=True, env={})
    assert out.returncode == 0, out.stderr
    return sorted(w for w in out.stdout.splitlines() if w)


@pytest.mark.parametrize(
    "line,expected",
    [
        ("cnm ne", ["network"]),
        ("cnm re", ["rename", "restart"]),
        ("cnm network c", ["connect", "create"]),
        ("cnm network connect ", ["backend", "bridge", "frontend"]),
        ("cnm network connect backend w", ["web", "web2"]),
        ("cnm network connect --alias x backend a", ["api"]),  # --alias takes a value
        ("cnm network connect backend web ", []),  # both arguments given
        ("cnm stop web w", ["web", "web2"]),  # CONTAINER [CONTAINER...] repeats
        ("cnm run --network ", ["backend", "bridge", "frontend"]),
        ("cnm run -d --network backend b", ["busybox:latest"]),
        ("cnm run busybox ", []),  # the command is the user's
        ("cnm network disconnect --f", ["--force"]),
        ("cnm -H unix:///x.sock ps --a", ["--all"]),
        ("cnm --ho", ["--host"]),
        ("cnm -H unix:///x.sock stop ", ["at-unix:///x.sock"]),
    ],
)
def test_bash_completion(script: str, line: str, expected: list[str]) -> None:
    assert complete(script, line) == expected


def test_every_declared_flag_is_completed(script: str) -> None:
    run_flags = {
        name for f in usage.declaration(COMMANDS, "run").flags for name in f.names if name.startswith("--")
    }
    assert set(complete(script, "cnm run --")) == run_flags | {"--help"}
