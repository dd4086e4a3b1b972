"""pflag semantics of the CLI's flag parser."""

from __future__ import annotations

import pytest

from cnm.cli import flags as F
from cnm.cli.errors import UsageError

CMD = F.Command(
    "cnm t",
    "IMAGE [CMD...]",
    "test",
    [
        F.flag("-d", "--detach", kind=F.BOOL),
        F.flag("-i", kind=F.BOOL),
        F.flag("-t", kind=F.BOOL),
        F.flag("-e", "--env", kind=F.LIST),
        F.flag("-p", "--publish", kind=F.LIST),
        F.flag("--name"),
        F.flag("--rm", kind=F.BOOL),
        F.flag("-n", "--num", kind=F.INT, default=-1),
        F.flag("-o", kind=F.MAP),
    ],
    min_args=1,
    interspersed=False,
)


def test_combined_attached_and_equals_forms():
    v, pos, changed = F.parse(
        CMD,
        [
            "-dit",
            "-eA=1",
            "-e",
            "B=2",
            "--env=C=3",
            "-p80:80",
            "--name=x",
            "--rm=false",
            "-n",
            "3",
            "-o",
            "k=v",
            "img",
            "sh",
            "-c",
            "--name",
            "y",
        ],
    )
    assert v["detach"] and v["i"] and v["t"]
    assert v["env"] == ["A=1", "B=2", "C=3"] and v["publish"] == ["80:80"]
    assert v["name"] == "x" and v["rm"] is False and v["num"] == 3 and v["o"] == {"k": "v"}
    assert pos == ["img", "sh", "-c", "--name", "y"]
    assert "rm" in changed and "detach" in changed


@pytest.mark.parametrize(
    "argv, message, code",
    [
        (["--nope", "img"], "unknown flag: --nope\nSee 'cnm t --help'.", 125),
        (["-x", "img"], "unknown shorthand flag: 'x' in -x\nSee 'cnm t --help'.", 125),
        (["--name"], "flag needs an argument: --name\nSee 'cnm t --help'.", 125),
        (
            ["-n", "z", "img"],
            'invalid argument "z" for "-n, --num" flag: strconv.ParseInt: parsing "z": invalid syntax'
            "\nSee 'cnm t --help'.",
            125,
        ),
        (
            [],
            "\"cnm t\" requires at least 1 argument.\nSee 'cnm t --help'.\n\nUsage:  cnm t [OPTIONS] IMAGE [CMD...]"
            "\n\ntest",
            1,
        ),
    ],
)
def test_errors(argv, message, code):
    with pytest.raises(UsageError) as err:
        F.parse(CMD, argv)
    assert str(err.value) == message and err.value.exit_code == code


def test_double_dash_and_help():
    _, pos, _ = F.parse(CMD, ["--", "-d"])
    assert pos == ["-d"]
    with pytest.raises(F.HelpRequested):
        F.parse(CMD, ["--help"])
    assert "Usage:  cnm t [OPTIONS] IMAGE [CMD...]" in CMD.help_text()
