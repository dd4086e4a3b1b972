"""``cnm image import|load|tag|ls|rm`` (and the shortcuts ``images``, ``rmi``, ``import``,
``load``, ``tag``), and ``cnm export``, which makes the file ``import`` takes."""

from __future__ import annotations

import sys

from cnm.cli import flags as F
from cnm.cli.client import quote
from cnm.cli.context import Cli
from cnm.cli.errors import CliError, DaemonError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing/collections.abc costs start-up time
if TYPE_CHECKING:
    from collections.abc import Iterator

    from cnm.cli.client import Response

IMPORT = F.Command(
    "cnm image import",
    "file|- [REPOSITORY[:TAG]]",
    "Import the contents from a tarball to create a filesystem image",
    [
        F.flag("-m", "--message", default="", help="Set commit message for imported image"),
        F.flag("--platform", default="", help="Set platform if server is multi-platform capable"),
    ],
    min_args=1,
    max_args=2,
    aliases=("cnm image import", "cnm import"),
)


def split_ref(ref: str) -> tuple[str, str]:
    """``name[:tag]`` → (name, tag); a colon before the last ``/`` is a registry port, not a tag."""
    head, slash, last = ref.rpartition("/")
    if ":" in last:
        name, _, tag = last.rpartition(":")
        return head + slash + name, tag
    return ref, ""


def _file_chunks(path: str) -> Iterator[bytes]:
    """The tarball as 64 KiB pieces (``-`` is stdin), so large images stream without buffering."""
    if path == "-":
        stream = sys.stdin.buffer
        while chunk := stream.read(65536):
            yield chunk
        return
    with open(path, "rb") as fh:
        while chunk := fh.read(65536):
            yield chunk


def cmd_import(cli: Cli, argv: list[str]) -> int:
    v, args, _ = F.parse(IMPORT, argv)
    source = args[0]
    if source != "-":
        import os

        if "://" in source:
            raise CliError("importing from a URL is not supported by cnm; download the file first")
        if not os.path.isfile(source):
            raise CliError(f"open {source}: no such file or directory")
    name, tag = split_ref(args[1]) if len(args) > 1 else ("", "")
    query = {
        "fromSrc": "-",
        "repo": name or None,
        "tag": tag or None,
        "message": v["message"] or None,
        "platform": v["platform"] or None,
    }
    resp = cli.client.request(
        "POST", "/images/create", query, _file_chunks(source), {"Content-Type": "application/x-tar"}
    )
    _print_messages(cli, resp)
    return 0


def _print_messages(cli: Cli, resp: Response) -> None:
    """Print a JSON message stream's ``status``/``stream`` texts; raise its error, if any."""
    import json

    try:
        text = resp.read().decode(errors="replace")
    finally:
        resp.close()
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            msg = json.loads(line)
        except ValueError:
            cli.out(line + "\n")
            continue
        if msg.get("error") or msg.get("errorDetail"):
            raise CliError((msg.get("errorDetail") or {}).get("message") or msg.get("error"))
        if msg.get("status"):
            cli.out(msg["status"] + "\n")
        if msg.get("stream"):
            cli.out(msg["stream"])


LOAD = F.Command(
    "cnm image load",
    "",
    "Load an image from a tar archive or STDIN (what docker save writes)",
    [
        F.flag("-i", "--input", default="", help="Read from tar archive file, instead of STDIN"),
        F.flag("-q", "--quiet", kind=F.BOOL, help="Suppress the load output"),
        F.flag(
            "--platform", default="", help="Load only the given platform (cnm loads the one of this machine)"
        ),
    ],
    max_args=0,
    aliases=("cnm image load", "cnm load"),
)


def cmd_load(cli: Cli, argv: list[str]) -> int:
    import os

    v, _, _ = F.parse(LOAD, argv)
    source = v["input"] or "-"
    if source == "-" and sys.stdin.isatty():
        raise CliError("requested load from stdin, but stdin is empty")
    if source != "-" and not os.path.isfile(source):
        raise CliError(f"open {source}: no such file or directory")
    query = {"quiet": "1" if v["quiet"] else "0", "platform": v["platform"] or None}
    resp = cli.client.request(
        "POST", "/images/load", query, _file_chunks(source), {"Content-Type": "application/x-tar"}
    )
    _print_messages(cli, resp)
    return 0


TAG = F.Command(
    "cnm image tag",
    "SOURCE_IMAGE[:TAG] TARGET_IMAGE[:TAG]",
    "Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE",
    [],
    min_args=2,
    max_args=2,
    aliases=("cnm image tag", "cnm tag"),
)


def cmd_tag(cli: Cli, argv: list[str]) -> int:
    _, (source, target), _ = F.parse(TAG, argv)
    repo, tag = split_ref(target)
    resp = cli.client.request(
        "POST", f"/images/{quote(source, '/:@')}/tag", {"repo": repo, "tag": tag or None}
    )
    resp.close()
    return 0


EXPORT = F.Command(
    "cnm container export",
    "CONTAINER",
    "Export a container's filesystem as a tar archive",
    [F.flag("-o", "--output", default="", help="Write to a file, instead of STDOUT")],
    min_args=1,
    max_args=1,
    aliases=("cnm container export", "cnm export"),
)


def cmd_export(cli: Cli, argv: list[str]) -> int:
    """Streams the tar to the file (or stdout); a file left half-written by a failure is
    removed, so a FILE that exists afterwards is a whole export."""
    import contextlib
    import os

    v, (container,), _ = F.parse(EXPORT, argv)
    if not v["output"] and sys.stdout.isatty():
        raise CliError("cowardly refusing to save to a terminal. Use the -o flag or redirect")
    resp = cli.client.request("GET", f"/containers/{quote(container)}/export")
    try:
        if not v["output"]:
            sys.stdout.flush()
            out = sys.stdout.buffer
            for chunk in resp.chunks():
                out.write(chunk)
            out.flush()
            return 0
        try:
            with open(v["output"], "wb") as fh:
                for chunk in resp.chunks():
                    fh.write(chunk)
        except OSError as exc:
            raise CliError(f"failed to export container: {exc}") from exc
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(v["output"])
            raise
    finally:
        resp.close()
    return 0


LS = F.Command(
    "cnm images",
    "[REPOSITORY[:TAG]]",
    "List images",
    [
        F.flag("-a", "--all", kind=F.BOOL, help="Show all images (default hides intermediate images)"),
        F.flag("--digests", kind=F.BOOL, help="Show digests"),
        F.flag("-f", "--filter", kind=F.LIST, help="Filter output based on conditions provided"),
        F.flag("--format", default="", help="Format output using a custom template"),
        F.flag("--no-trunc", kind=F.BOOL, help="Don't truncate output"),
        F.flag("-q", "--quiet", kind=F.BOOL, help="Only show image IDs"),
    ],
    max_args=1,
    aliases=("cnm image ls", "cnm image list", "cnm images"),
)

LS_TABLE = "table {{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}"
LS_HEADERS = {
    "Repository": "REPOSITORY",
    "Tag": "TAG",
    "ID": "IMAGE ID",
    "CreatedSince": "CREATED",
    "CreatedAt": "CREATED AT",
    "Size": "SIZE",
    "Digest": "DIGEST",
    "Containers": "CONTAINERS",
}


def image_rows(images: list[dict], trunc: bool, now: float | None = None) -> list[dict]:
    """One row per tag (``<none>`` when untagged), Docker's ``imageContext`` fields."""
    from cnm.cli.format import go_time, human_size, since, truncate_id

    rows = []
    for img in images:
        tags = [t for t in img.get("RepoTags") or [] if t != "<none>:<none>"] or ["<none>:<none>"]
        created = img.get("Created", 0) or 0
        for ref in tags:
            repo, tag = split_ref(ref) if ref != "<none>:<none>" else ("<none>", "<none>")
            rows.append(
                {
                    "Repository": repo,
                    "Tag": tag or "<none>",
                    "ID": truncate_id(img.get("Id", "")) if trunc else img.get("Id", ""),
                    "CreatedSince": since(created, now) if created else "N/A",
                    "CreatedAt": go_time(created),
                    "Size": human_size(img.get("Size", 0) or 0, 3),
                    "Digest": "<none>",
                    "Containers": "N/A" if img.get("Containers", -1) == -1 else str(img["Containers"]),
                }
            )
    return rows


def cmd_ls(cli: Cli, argv: list[str]) -> int:
    from cnm.cli.listing import filters_param, render

    v, args, _ = F.parse(LS, argv)
    filters = list(v["filter"]) + ([f"reference={args[0]}"] if args else [])
    images = (
        cli.client.call(
            "GET", "/images/json", {"all": "1" if v["all"] else None, "filters": filters_param(filters)}
        )
        or []
    )
    rows = image_rows(images, not v["no_trunc"])
    if v["quiet"]:
        seen: list[str] = []
        for r in rows:
            if r["ID"] not in seen:
                seen.append(r["ID"])
        cli.out("".join(i + "\n" for i in seen))
        return 0
    cli.out(render(rows, v["format"], LS_TABLE, LS_HEADERS))
    return 0


RM = F.Command(
    "cnm rmi",
    "IMAGE [IMAGE...]",
    "Remove one or more images",
    [
        F.flag("-f", "--force", kind=F.BOOL, help="Force removal of the image"),
        F.flag("--no-prune", kind=F.BOOL, help="Do not delete untagged parents"),
    ],
    min_args=1,
    aliases=("cnm image rm", "cnm image remove", "cnm rmi"),
)


def cmd_rm(cli: Cli, argv: list[str]) -> int:
    v, names, _ = F.parse(RM, argv)
    query = {"force": "1" if v["force"] else None, "noprune": "1" if v["no_prune"] else None}
    status = 0
    for name in names:
        try:
            items = cli.client.call("DELETE", f"/images/{quote(name, '/:')}", query) or []
        except DaemonError as exc:
            cli.err(f"{exc}\n")
            status = 1
            continue
        for item in items:
            for key in ("Untagged", "Deleted"):
                if item.get(key):
                    cli.out(f"{key}: {item[key]}\n")
    return status


SAVE = F.Command(
    "cnm image save",
    "IMAGE [IMAGE...]",
    "Not in cnm (it keeps no layers to save): export a container instead",
    [F.flag("-o", "--output", default="", help="Write to a file, instead of STDOUT")],
    min_args=1,
    aliases=("cnm image save", "cnm save"),
)


def cmd_save(cli: Cli, argv: list[str]) -> int:
    F.parse(SAVE, argv)
    raise CliError(
        "cnm does not save images to archives; to carry a container's filesystem elsewhere, "
        "export it: cnm export -o FILE CONTAINER (then cnm image import FILE NAME)"
    )
