"""``cnm inspect`` (container → image → network, like Docker) and the shared inspect printer."""

from __future__ import annotations

from collections.abc import Callable

from cnm.cli import flags as F
from cnm.cli.client import quote
from cnm.cli.context import Cli
from cnm.cli.errors import CliError, DaemonError


def print_inspect(cli: Cli, names: list[str], fetch: Callable[[str], object], fmt: str) -> int:
    """Fetch each name and print a JSON array (4-space indent) or one template line per object.

    Objects that cannot be fetched are reported on stderr after the output; exit 1 then.
    """
    elements: list[object] = []
    errors: list[str] = []
    for name in names:
        try:
            elements.append(fetch(name))
        except DaemonError as exc:
            errors.append(str(exc))
        except CliError as exc:
            if exc.exit_code == 0:
                raise
            errors.append(str(exc))
    if fmt:
        from cnm.cli.template import Template, TemplateError

        try:
            tmpl = Template(fmt.replace("\\t", "\t").replace("\\n", "\n"), missingkey="error")
            cli.out("".join(tmpl.execute(e) + "\n" for e in elements))
        except TemplateError as exc:
            raise CliError(f"template parsing error: {exc}") from None
    else:
        import json

        cli.out(json.dumps(elements, indent=4, ensure_ascii=False) + "\n")
    if errors:
        cli.err("\n".join(errors) + "\n")
        return 1
    return 0


INSPECT = F.Command(
    "cnm inspect",
    "NAME|ID [NAME|ID...]",
    "Return low-level information on cnm objects",
    [
        F.flag("-f", "--format", default="", help="Format output using a custom template"),
        F.flag("-s", "--size", kind=F.BOOL, help="Display total file sizes if the type is container"),
        F.flag("--type", default="", help="Only inspect objects of the given type"),
    ],
    min_args=1,
)

_KINDS = ("container", "image", "network")


def _paths(size: bool) -> dict[str, tuple[str, dict | None]]:
    return {
        "container": ("/containers/{}/json", {"size": "1"} if size else None),
        "image": ("/images/{}/json", None),
        "network": ("/networks/{}", None),
    }


def cmd_inspect(cli: Cli, argv: list[str]) -> int:
    v, names, _ = F.parse(INSPECT, argv)
    kind = v["type"]
    if kind and kind not in _KINDS:
        raise CliError(f'"{kind}" is not a valid value for --type')
    paths = _paths(v["size"])

    def fetch(name: str) -> object:
        for k in _KINDS:
            if kind and k != kind:
                continue
            path, query = paths[k]
            try:
                return cli.client.call("GET", path.format(quote(name, "/:" if k == "image" else ":")), query)
            except DaemonError as exc:
                if kind or exc.status != 404:
                    raise
        raise CliError(f"Error: No such object: {name}")

    return print_inspect(cli, names, fetch, v["format"])


CONTAINER_INSPECT = F.Command(
    "cnm container inspect",
    "CONTAINER [CONTAINER...]",
    "Display detailed information on one or more containers",
    [
        F.flag("-f", "--format", default="", help="Format output using a custom template"),
        F.flag("-s", "--size", kind=F.BOOL, help="Display total file sizes"),
    ],
    min_args=1,
)


def cmd_container_inspect(cli: Cli, argv: list[str]) -> int:
    v, names, _ = F.parse(CONTAINER_INSPECT, argv)
    query = {"size": "1"} if v["size"] else None
    return print_inspect(
        cli, names, lambda n: cli.client.call("GET", f"/containers/{quote(n)}/json", query), v["format"]
    )


IMAGE_INSPECT = F.Command(
    "cnm image inspect",
    "IMAGE [IMAGE...]",
    "Display detailed information on one or more images",
    [F.flag("-f", "--format", default="", help="Format output using a custom template")],
    min_args=1,
)


def cmd_image_inspect(cli: Cli, argv: list[str]) -> int:
    v, names, _ = F.parse(IMAGE_INSPECT, argv)
    return print_inspect(
        cli, names, lambda n: cli.client.call("GET", f"/images/{quote(n, '/:')}/json"), v["format"]
    )
