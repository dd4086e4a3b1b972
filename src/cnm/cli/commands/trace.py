"""``cnm trace SRC DST[:PORT][/tcp|udp|icmp] [--live]``: a packet's path, hop by hop.

cnmd works it out from the kernel (``POST /cnm/v1/trace``); this module prints it: one
line per hop, the command that shows the same fact (a ``$`` line), the rules each hook met,
the verdict and why.  ``render_trace`` is a pure function of the JSON, for the tests.
"""

from __future__ import annotations

from cnm.cli import flags as F
from cnm.cli.context import Cli
from cnm.cli.errors import CliError

TRACE = F.Command(
    "cnm trace",
    "SRC DST[:PORT][/tcp|udp|icmp]",
    "Show the path a packet takes (SRC, DST: a container, host, world or an IP address; [IPV6]:PORT)",
    [
        F.flag(
            "-6", "--ipv6", kind=F.BOOL, help="Trace over IPv6 (the default when an end is an IPv6 address)"
        ),
        F.flag("--live", kind=F.BOOL, help="Send one real probe and show what nft monitor trace saw"),
        F.flag("-v", "--verbose", kind=F.BOOL, help="Also list every rule each hook met"),
        F.flag("--format", help="json: cnmd's answer as it is"),
    ],
    min_args=2,
    max_args=2,
)


def render_trace(t: dict, verbose: bool = False) -> str:
    """The text of ``cnm trace`` for cnmd's JSON ``t``."""
    out = [f"trace {t['source']} -> {t['destination']}"]
    if t.get("saddr"):
        out[0] += f"  ({t['saddr']} -> {t['daddr']})"
    for i, hop in enumerate(t.get("hops") or (), 1):
        out.append(f"{i:2}. {hop['text']}")
        if hop.get("command"):
            out.append(f"      $ {hop['command']}")
        if verbose:
            out += [f"        {rule}" for rule in hop.get("rules") or ()]
    out.append(f"=> {t['verdict']}: {t['reason']}" if t.get("reason") else f"=> {t['verdict']}")
    if t.get("probe"):
        out.append("")
        out.append(f"live: {t['probe']}")
        out += [f"  {line}" for line in t.get("live") or ()]
        out.append(f"=> {t.get('live_verdict', '')}")
    for problem in t.get("problems") or ():
        out.append(f"note: {problem}")
    return "\n".join(out) + "\n"


def cmd_trace(cli: Cli, argv: list[str]) -> int:
    v, (src, dst), _ = F.parse(TRACE, argv)
    if v["format"] not in (None, "", "json"):
        raise CliError(f"invalid --format {v['format']!r}: expected json (or none, for text)")
    query = {"source": src, "destination": dst, "live": "1" if v["live"] else "0"}
    if v["ipv6"]:
        query["family"] = "6"
    resp = cli.client.request("POST", "/cnm/v1/trace", query)
    try:
        body = resp.read()
    finally:
        resp.close()
    if v["format"] == "json":
        cli.out(body.decode() + "\n")
        return 0
    import json

    cli.out(render_trace(json.loads(body), bool(v["verbose"])))
    return 0
