"""Shell completion for ``cnm``: the bash script, rendered from the verbs' own declarations.

Pure: ``bash_script`` takes the verbs (their ``Command`` declarations) and returns the
script text, so every flag a verb declares is completed without being listed twice.  The
script completes global options, verbs and management commands, each verb's flags, and
positional arguments by what the verb's usage line names: ``CONTAINER`` from ``cnm ps -a``,
``NETWORK`` from ``cnm network ls``, ``IMAGE`` from ``cnm images`` (asked of the daemon
named by ``-H`` on the line being completed), plus networks after ``--network``/``--net``
and containers after ``--link``.
"""

from __future__ import annotations

import re

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs start-up time
if TYPE_CHECKING:
    from cnm.cli.flags import Command

# usage words -> the kind of name completed there
_KINDS = {"CONTAINER": "containers", "NETWORK": "networks", "IMAGE": "images"}
# flags whose value is a name the daemon knows
_VALUE_KINDS = {"--network": "networks", "--net": "networks", "--link": "containers"}
GLOBAL_OPTIONS = ("-H", "--host", "-D", "--debug", "-v", "--version", "--help")


def positional_kinds(usage: str) -> list[str]:
    """``"CONTAINER [CONTAINER...]"`` -> ``["containers", "containers+"]``: one entry per
    positional (``-`` when nothing is completed there), ``+`` on one that repeats."""
    kinds = []
    for word in usage.split():
        repeats = word.rstrip("]").endswith("...")
        name = re.sub(r"[^A-Z_]", "", word.split("[", 1)[-1].split("|")[0])
        kinds.append(_KINDS.get(name, "-") + ("+" if repeats else ""))
    return kinds


def _quote(word: str) -> str:
    return "'" + word.replace("'", "'\\''") + "'"


def bash_script(verbs: dict[str, Command], groups: dict[str, list[str]], top: list[str]) -> str:
    """The completion script.  ``verbs``: every verb path (``"ps"``, ``"network ls"``, aliases
    too) -> its declaration; ``groups``: group -> its verbs; ``top``: the top-level words."""
    from cnm.cli.flags import BOOL

    cases = []
    for path, command in sorted(verbs.items()):
        flags = sorted({name for f in command.flags for name in f.names} | {"--help"})
        valued = sorted({name for f in command.flags if f.kind != BOOL for name in f.names})
        kinds = " ".join(positional_kinds(command.usage))
        cases.append(
            f"        {_quote(path)}) flags={_quote(' '.join(flags))}; valued={_quote(' '.join(valued))};"
            f" args={_quote(kinds)} ;;"
        )
    group_cases = [f"        {g}) words={_quote(' '.join(sorted(v)))} ;;" for g, v in sorted(groups.items())]
    value_cases = [f"            {flag}) kind={kind} ;;" for flag, kind in sorted(_VALUE_KINDS.items())]
    return f"""# bash completion for cnm, made by `cnm completion bash`.
# Load it now:     source <(cnm completion bash)
# For every shell: cnm completion bash > /etc/bash_completion.d/cnm

_cnm_names() {{  # $1: containers | networks | images; the daemon is the one on the line
    case $1 in
        containers) "${{_cnm_cmd[@]}}" ps -a --format '{{{{.Names}}}}' 2>/dev/null ;;
        networks) "${{_cnm_cmd[@]}}" network ls --format '{{{{.Name}}}}' 2>/dev/null ;;
        images) "${{_cnm_cmd[@]}}" images --format '{{{{.Repository}}}}:{{{{.Tag}}}}' 2>/dev/null ;;
    esac
}}

_cnm() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} word verb kind="" words="" i=1 pos=0 after_valued=""
    local flags="" valued="" args=""
    local -a _cnm_cmd=(cnm) kinds
    COMPREPLY=()
    while (( i < COMP_CWORD )); do  # global options come before the verb
        word=${{COMP_WORDS[i]}}
        case $word in
            -H|--host) _cnm_cmd+=(-H "${{COMP_WORDS[i+1]}}"); (( i += 2 )); continue ;;
            -H?*) _cnm_cmd+=("$word"); (( i++ )); continue ;;
            -*) (( i++ )); continue ;;
        esac
        break
    done
    if (( i >= COMP_CWORD )); then
        if [[ $cur == -* ]]; then
            COMPREPLY=($(compgen -W {_quote(" ".join(GLOBAL_OPTIONS))} -- "$cur"))
        else
            COMPREPLY=($(compgen -W {_quote(" ".join(sorted(top)))} -- "$cur"))
        fi
        return
    fi
    verb=${{COMP_WORDS[i]}}
    (( i++ ))
    case $verb in
{chr(10).join(group_cases)}
    esac
    if [[ -n $words ]]; then
        if (( i >= COMP_CWORD )); then
            COMPREPLY=($(compgen -W "$words" -- "$cur"))
            return
        fi
        verb="$verb ${{COMP_WORDS[i]}}"
        (( i++ ))
    fi
    case $verb in
{chr(10).join(cases)}
        *) return ;;
    esac
    while (( i < COMP_CWORD )); do  # count positionals; a valued flag eats the next word
        word=${{COMP_WORDS[i]}}
        if [[ -n $after_valued ]]; then
            after_valued=""
        elif [[ $word == -* ]]; then
            [[ $word != *=* && " $valued " == *" $word "* ]] && after_valued=$word
        else
            (( pos++ ))
        fi
        (( i++ ))
    done
    if [[ -n $after_valued ]]; then
        case $after_valued in
{chr(10).join(value_cases)}
            *) return ;;
        esac
    elif [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$flags" -- "$cur"))
        return
    else
        kinds=($args)
        (( ${{#kinds[@]}} )) || return
        if (( pos < ${{#kinds[@]}} )); then
            kind=${{kinds[pos]}}
        else
            kind=${{kinds[${{#kinds[@]}}-1]}}
            [[ $kind == *+ ]] || return
        fi
        kind=${{kind%+}}
    fi
    [[ $kind == - || -z $kind ]] && return
    COMPREPLY=($(compgen -W "$(_cnm_names "$kind")" -- "$cur"))
}}

complete -F _cnm cnm
"""
