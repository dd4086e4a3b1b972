"""``cnm version`` and ``cnm info`` (the short form of Docker's output)."""

from __future__ import annotations

import os
import sys

from cnm.cli import flags as F
from cnm.cli.client import API_VERSION
from cnm.cli.context import Cli
from cnm.cli.errors import CliError

VERSION = F.Command(
    "cnm version",
    "",
    "Show the cnm version information",
    [F.flag("-f", "--format", default="", help="Format output using a custom template")],
    max_args=0,
)

_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}


def _rows(pairs: list[tuple[str, object]], indent: str, width: int) -> str:
    return "".join(f"{indent}{(k + ':').ljust(width)}{v}\n" for k, v in pairs)


def client_info() -> dict:
    from cnm import __version__

    return {
        "Version": __version__,
        "ApiVersion": API_VERSION,
        "PythonVersion": sys.version.split()[0],
        "Os": sys.platform,
        "Arch": _ARCH.get(os.uname().machine, os.uname().machine),
    }


def render_version(client: dict, server: dict | None) -> str:
    """Docker's ``version`` layout: a Client section, then Server with its components."""
    out = "Client:\n" + _rows(
        [
            ("Version", client["Version"]),
            ("API version", client["ApiVersion"]),
            ("Python version", client["PythonVersion"]),
            ("OS/Arch", f"{client['Os']}/{client['Arch']}"),
        ],
        " ",
        19,
    )
    if server is None:
        return out
    out += f"\nServer: {(server.get('Platform') or {}).get('Name', '')}".rstrip() + "\n"
    components = server.get("Components") or [
        {
            "Name": "Engine",
            "Version": server.get("Version", ""),
            "Details": {
                k: server.get(k, "")
                for k in (
                    "ApiVersion",
                    "MinAPIVersion",
                    "GitCommit",
                    "GoVersion",
                    "Os",
                    "Arch",
                    "Experimental",
                    "BuildTime",
                )
            },
        }
    ]
    for comp in components:
        d = comp.get("Details") or {}
        out += f" {comp.get('Name', '')}:\n"
        if comp.get("Name") == "Engine":
            out += _rows(
                [
                    ("Version", comp.get("Version", "")),
                    (
                        "API version",
                        f"{d.get('ApiVersion', '')} (minimum version {d.get('MinAPIVersion', '')})",
                    ),
                    ("Go version", d.get("GoVersion", "")),
                    ("Git commit", d.get("GitCommit", "")),
                    ("Built", d.get("BuildTime", "")),
                    ("OS/Arch", f"{d.get('Os', '')}/{d.get('Arch', '')}"),
                    ("Experimental", d.get("Experimental", "false")),
                ],
                "  ",
                18,
            )
        else:
            out += _rows([("Version", comp.get("Version", ""))] + sorted(d.items()), "  ", 18)
    return out


def cmd_version(cli: Cli, argv: list[str]) -> int:
    v, _, _ = F.parse(VERSION, argv)
    client = client_info()
    server_error = None
    try:
        server = cli.client.call("GET", "/version") or {}
    except CliError as exc:
        server, server_error = None, exc
    if v["format"]:
        from cnm.cli.template import Template, TemplateError

        try:
            cli.out(Template(v["format"]).execute({"Client": client, "Server": server}) + "\n")
        except TemplateError as exc:
            raise CliError(f"template parsing error: {exc}") from None
    else:
        cli.out(render_version(client, server))
    if server_error is not None:
        raise server_error
    return 0


INFO = F.Command(
    "cnm info",
    "",
    "Display system-wide information",
    [F.flag("-f", "--format", default="", help="Format output using a custom template")],
    max_args=0,
)


def render_info(info: dict) -> str:
    """The server part of Docker's ``info`` (the fields cnmd reports)."""
    from cnm.cli.format import bytes_size

    lines = [
        "Server:",
        f" Containers: {info.get('Containers', 0)}",
        f"  Running: {info.get('ContainersRunning', 0)}",
        f"  Paused: {info.get('ContainersPaused', 0)}",
        f"  Stopped: {info.get('ContainersStopped', 0)}",
        f" Images: {info.get('Images', 0)}",
    ]
    simple = [
        ("Server Version", "ServerVersion"),
        ("Storage Driver", "Driver"),
        ("Logging Driver", "LoggingDriver"),
        ("Cgroup Driver", "CgroupDriver"),
        ("Cgroup Version", "CgroupVersion"),
    ]
    lines += [f" {label}: {info[key]}" for label, key in simple if info.get(key) not in (None, "")]
    plugins = info.get("Plugins") or {}
    if plugins.get("Network"):
        lines += [" Plugins:", f"  Network: {' '.join(plugins['Network'])}"]
    fw = (info.get("FirewallBackend") or {}).get("Driver")
    if fw:
        lines.append(f" Firewall Backend: {fw}")
    more = [
        ("Kernel Version", "KernelVersion"),
        ("Operating System", "OperatingSystem"),
        ("OSType", "OSType"),
        ("Architecture", "Architecture"),
        ("CPUs", "NCPU"),
    ]
    lines += [f" {label}: {info[key]}" for label, key in more if info.get(key) not in (None, "")]
    if info.get("MemTotal"):
        lines.append(f" Total Memory: {bytes_size(info['MemTotal'])}")
    for label, key in (("Name", "Name"), ("ID", "ID"), ("Docker Root Dir", "DockerRootDir")):
        if info.get(key):
            lines.append(f" {label}: {info[key]}")
    lines.append(f" Debug Mode: {'true' if info.get('Debug') else 'false'}")
    lines.append(f" Experimental: {'true' if info.get('ExperimentalBuild') else 'false'}")
    lines.append(f" Live Restore Enabled: {'true' if info.get('LiveRestoreEnabled') else 'false'}")
    pools = info.get("DefaultAddressPools") or []
    if pools:
        lines.append(" Default Address Pools:")
        lines += [f"   Base: {p.get('Base')}, Size: {p.get('Size')}" for p in pools]
    out = "\n".join(lines) + "\n"
    for warning in info.get("Warnings") or []:
        out += f"{warning}\n"
    return out


def cmd_info(cli: Cli, argv: list[str]) -> int:
    v, _, _ = F.parse(INFO, argv)
    info = cli.client.call("GET", "/info") or {}
    if v["format"]:
        from cnm.cli.template import Template, TemplateError

        try:
            cli.out(Template(v["format"]).execute(info) + "\n")
        except TemplateError as exc:
            raise CliError(f"template parsing error: {exc}") from None
        return 0
    client = client_info()
    cli.out(f"Client:\n Version:    {client['Version']}\n Debug Mode: false\n\n" + render_info(info))
    return 0
