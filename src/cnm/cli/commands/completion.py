"""``cnm completion bash``: print the shell completion script (bash only, as yet)."""

from __future__ import annotations

from cnm.cli import flags as F
from cnm.cli.context import Cli
from cnm.cli.errors import UsageError

COMPLETION = F.Command(
    "cnm completion", "SHELL", "Generate the autocompletion script for the specified shell",
    min_args=1, max_args=1,
)  # fmt: skip
SHELLS = ("bash",)


def cmd_completion(cli: Cli, argv: list[str]) -> int:
    from cnm.cli import usage
    from cnm.cli.completion import bash_script
    from cnm.cli.main import COMMANDS, GROUPS

    _, (shell,), _ = F.parse(COMPLETION, argv)
    if shell not in SHELLS:
        raise UsageError(
            f'unsupported shell "{shell}": cnm completes {", ".join(SHELLS)}\n{COMPLETION.see_help()}'
        )
    verbs = {key: usage.declaration(COMMANDS, key) for key in COMMANDS}
    groups = {group: [k.split(" ", 1)[1] for k in COMMANDS if k.startswith(group + " ")] for group in GROUPS}
    top = [k for k in COMMANDS if " " not in k] + list(GROUPS) + ["help"]
    cli.out(bash_script(verbs, groups, top))
    return 0
