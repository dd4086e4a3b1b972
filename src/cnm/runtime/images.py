"""Images: root-filesystem tars unpacked under ``<data-root>/images``, found by tag or id.

Layout (self-contained on disk; the daemon's SQLite store does not know about images):

    <data-root>/images/<hex>/rootfs/      the unpacked tar, the read-only lower layer
    <data-root>/images/<hex>/image.json   the ``Image`` record (without its tags)
    <data-root>/images/repositories.json  {"name:tag": "sha256:<hex>", ...}

``ImageStore`` loads both into memory at construction, so ``find`` and ``list`` never touch
the disk.  Mutations (``import_tar``, ``load_archive``, ``tag``, ``remove``) write the files
atomically (temp + rename).  They are synchronous: the runtime runs the slow ones on a
worker thread and serialises mutations with its own lock.

An imported image is one root filesystem tar (``docker import``); a loaded one is a
``docker save`` archive whose layers are applied in order into one directory
(``cnm.runtime.archive`` reads the archive and applies whiteouts), its config kept.
Records written before a field existed load with that field's default.
"""

from __future__ import annotations

import builtins
import datetime as _dt
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from cnm.errors import CnmError, InvalidArgument, NotFound
from cnm.model.container import Image
from cnm.runtime.archive import (
    RootfsWriter,
    SaveArchive,
    SavedImage,
    apply_saved_layer,
    familiar_name,
    open_tar,
    tree_size,
)

log = logging.getLogger("cnm.runtime")

_INDEX = "repositories.json"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEXPREFIX = re.compile(r"^[0-9a-f]{1,64}$")
# Docker's reference grammar, the parts an import takes: [host[:port]/]path[:tag].
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?/)"
_NAME = re.compile(rf"^{_DOMAIN}?{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")


def now_rfc3339() -> str:
    """The current UTC time as Docker prints it (``2024-05-01T12:00:00.123456Z``)."""
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class Loaded:
    """One image of a loaded archive, and the tags the archive gave it."""

    image: Image
    tags: tuple[str, ...]


def normalize_reference(reference: str) -> str:
    """``name[:tag]`` -> ``name:tag`` (tag ``latest`` by default); InvalidArgument when
    the text is not a reference Docker would accept."""
    name, tag = split_reference(reference)
    return f"{name}:{tag}"


def split_reference(reference: str) -> tuple[str, str]:
    """``(name, tag)`` of a ``name[:tag]`` reference; InvalidArgument on bad syntax."""
    text = reference.strip()
    name, tag = text, "latest"
    slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > slash:  # a colon before the last slash is a registry port, not a tag
        name, tag = text[:colon], text[colon + 1 :]
    if "@" in text:
        raise InvalidArgument(f"invalid reference format: digests are not supported: {reference}")
    if name != name.lower() and _NAME.match(name.lower()):
        raise InvalidArgument("invalid reference format: repository name must be lowercase")
    if not name or not _NAME.match(name) or not _TAG.match(tag):
        raise InvalidArgument(f"invalid reference format: {reference!r}")
    return name, tag


class ImageStore:
    """Owns ``<data-root>/images``: unpacking, the records, the tag index.

    Promises: an image directory exists only once fully unpacked (unpacking happens in a
    temporary sibling that is renamed into place); the index and records on disk always
    parse; ``find``/``list`` answer from memory.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        os.makedirs(root, mode=0o700, exist_ok=True)
        self._images: dict[str, Image] = {}  # id -> record, repo_tags left empty
        self._tags: dict[str, str] = {}  # "name:tag" -> id
        self._load()

    # -- lookups ---------------------------------------------------------------------------
    def rootfs(self, image_id: str) -> str:
        """The unpacked root filesystem of ``image_id`` (``sha256:<hex>``)."""
        return os.path.join(self.root, _hex(image_id), "rootfs")

    def list(self) -> list[Image]:
        """Every image with its tags, newest first (as ``docker images`` sorts)."""
        return sorted(
            (self._with_tags(i) for i in self._images.values()), key=lambda i: i.created, reverse=True
        )

    def find(self, reference: str) -> Image:
        """By ``name[:tag]``, full id (with or without ``sha256:``), or a unique id prefix."""
        image_id = self._resolve(reference)
        if image_id is None:
            raise NotFound(f"No such image: {reference}")
        return self._with_tags(self._images[image_id])

    def _resolve(self, reference: str) -> str | None:
        try:  # clients may send the qualified name (docker.io/library/busybox)
            tagged = self._tags.get(normalize_reference(familiar_name(reference)))
        except InvalidArgument:
            tagged = None
        if tagged is not None:
            return tagged
        text = reference.removeprefix("sha256:")
        if not _HEXPREFIX.match(text):
            return None
        if _HEX64.match(text):
            full = f"sha256:{text}"
            return full if full in self._images else None
        matches = [i for i in self._images if i.startswith(f"sha256:{text}")]
        return matches[0] if len(matches) == 1 else None

    def _with_tags(self, image: Image) -> Image:
        tags = tuple(sorted(t for t, i in self._tags.items() if i == image.id))
        return replace(image, repo_tags=tags)

    # -- mutations -------------------------------------------------------------------------
    def import_tar(self, reference: str, tar_path: str) -> Image:
        """Unpack ``tar_path`` (plain, gzip, bzip2 or xz) as image ``reference``.  The id is
        the sha256 of the file's bytes, so importing the same file twice unpacks it once;
        the tag moves to the new image (the old one keeps its other tags or dangles)."""
        tag = normalize_reference(reference)
        digest = _sha256_file(tar_path)
        image_id = f"sha256:{digest}"
        if image_id not in self._images:
            self._images[image_id] = self._unpack(image_id, tar_path)
        self._tags[tag] = image_id
        self._write_index()
        return self._with_tags(self._images[image_id])

    def tag(self, source: str, target: str) -> Image:
        """Point tag ``target`` (``name[:tag]``) at the image ``source`` names; a tag that
        named another image moves, as in Docker."""
        tag = normalize_reference(familiar_name(target))  # a bad target is reported first, as in Docker
        image_id = self._resolve(source)
        if image_id is None:
            raise NotFound(f"No such image: {source}")
        self._tags[tag] = image_id
        self._write_index()
        return self._with_tags(self._images[image_id])

    def load_archive(self, path: str) -> builtins.list[Loaded]:
        """Load every image of the ``docker save`` archive at ``path``.  The archive's
        structure (manifest, configs, tags, every layer present) is checked before anything
        is written; a layer refused midway leaves no trace of its image.  An image already
        here (same config digest) is not unpacked again; the archive's tags move to the
        loaded images."""
        with SaveArchive(path) as archive:
            saved = archive.images()
            planned = [
                (s, image_from_config(s.id, s.config), tuple(normalize_reference(t) for t in s.repo_tags))
                for s in saved
            ]
            out = []
            for item, image, tags in planned:
                if image.id not in self._images:
                    self._images[image.id] = self._install(
                        image.id, functools.partial(_apply_layers, archive, item, image)
                    )
                for tag in tags:
                    self._tags[tag] = image.id
                self._write_index()
                out.append(Loaded(self._with_tags(self._images[image.id]), tags))
        return out

    def remove(self, reference: str) -> Image:
        """By tag: untag, and delete the image once no tag is left.  By id: delete the image
        and all its tags.  Returns the image as it was before removal."""
        image_id = self._resolve(reference)
        if image_id is None:
            raise NotFound(f"No such image: {reference}")
        before = self._with_tags(self._images[image_id])
        by_tag = None
        try:
            name = normalize_reference(reference)
            by_tag = name if self._tags.get(name) == image_id else None
        except InvalidArgument:
            pass
        if by_tag is not None:
            del self._tags[by_tag]
        else:
            for tag in [t for t, i in self._tags.items() if i == image_id]:
                del self._tags[tag]
        if image_id not in self._tags.values():
            del self._images[image_id]
            self._write_index()
            shutil.rmtree(os.path.join(self.root, _hex(image_id)), ignore_errors=True)
        else:
            self._write_index()
        return before

    # -- disk ------------------------------------------------------------------------------
    def _load(self) -> None:
        for entry in os.scandir(self.root):
            record = os.path.join(entry.path, "image.json")
            if not (
                entry.is_dir(follow_symlinks=False) and _HEX64.match(entry.name) and os.path.exists(record)
            ):
                continue
            try:
                with open(record, encoding="utf-8") as fh:
                    data = json.load(fh)
                known = {f.name for f in fields(Image)} - {"repo_tags"}
                values: dict[str, Any] = {
                    k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known
                }
                image = Image(repo_tags=(), **values)
            except (OSError, ValueError, TypeError) as exc:
                log.warning("ignoring image %s: unreadable record: %s", entry.name, exc)
                continue
            self._images[image.id] = image
        index = os.path.join(self.root, _INDEX)
        if os.path.exists(index):
            with open(index, encoding="utf-8") as fh:
                self._tags = {t: i for t, i in json.load(fh).items() if i in self._images}

    def _write_index(self) -> None:
        _write_json(os.path.join(self.root, _INDEX), dict(sorted(self._tags.items())))

    def _unpack(self, image_id: str, tar_path: str) -> Image:
        return self._install(
            image_id,
            lambda rootfs: Image(
                id=image_id, repo_tags=(), created=now_rfc3339(), size=unpack_rootfs(tar_path, rootfs)
            ),
        )

    def _install(self, image_id: str, fill: Callable[[str], Image]) -> Image:
        """Run ``fill(rootfs)`` in a staging directory and rename it into place: the image's
        directory appears complete or not at all."""
        final = os.path.join(self.root, _hex(image_id))
        staging = tempfile.mkdtemp(prefix=".import-", dir=self.root)
        try:
            rootfs = os.path.join(staging, "rootfs")
            os.mkdir(rootfs, 0o755)
            image = fill(rootfs)
            record = asdict(image)
            del record["repo_tags"]
            _write_json(os.path.join(staging, "image.json"), record)
            shutil.rmtree(final, ignore_errors=True)  # a half-removed leftover
            os.rename(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return image


def unpack_rootfs(tar_path: str, dest: str) -> int:
    """Extract the tar at ``tar_path`` into ``dest`` safely; return the bytes of regular files.

    Refuses (InvalidArgument; nothing partial is kept by the caller) members that would
    land outside ``dest``: see ``archive.RootfsWriter``.  Skips device nodes and FIFOs (the
    runtime gives each container its own /dev).  Keeps owners, modes (setuid, sticky) and
    symlinks as they are: it is a root filesystem, and symlink targets are resolved inside
    the container.
    """
    writer = RootfsWriter(dest)
    try:
        with open_tar(tar_path) as tar:
            writer.extract_all(tar)
    except CnmError:
        raise
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InvalidArgument(f"cannot import {tar_path}: {exc}") from exc
    return writer.size


def _apply_layers(archive: SaveArchive, saved: SavedImage, image: Image, rootfs: str) -> Image:
    """Apply ``saved``'s layers, bottom first, into ``rootfs``; ``image`` with its size."""
    writer = RootfsWriter(rootfs)
    diff_ids: list[str | None] = list(image.layers) if len(image.layers) == len(saved.layers) else []
    for name, diff_id in zip(saved.layers, diff_ids or [None] * len(saved.layers), strict=True):
        try:
            apply_saved_layer(writer, archive.layer(name), name, diff_id)
        except CnmError:
            raise
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise InvalidArgument(f"cannot apply layer {name}: {exc}") from exc
    return replace(image, size=tree_size(rootfs))


def image_from_config(image_id: str, config: dict[str, Any]) -> Image:
    """The ``Image`` an image config (image-spec JSON) describes; InvalidArgument naming the
    field when one has the wrong type."""
    run = config.get("config") or config.get("container_config") or {}
    if not isinstance(run, dict):
        raise InvalidArgument("image config: config must be an object")

    def strings(key: str) -> tuple[str, ...] | None:
        value = run.get(key)
        if value is None:
            return None
        if isinstance(value, str) and key in ("Cmd", "Entrypoint"):  # Docker's StrSlice
            return (value,)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidArgument(f"image config: {key} must be a list of strings")
        return tuple(value)

    def text(key: str, where: dict[str, Any]) -> str:
        value = where.get(key) or ""
        if not isinstance(value, str):
            raise InvalidArgument(f"image config: {key} must be a string")
        return value

    ports = run.get("ExposedPorts") or {}
    if not isinstance(ports, dict):
        raise InvalidArgument("image config: ExposedPorts must be an object")
    labels = run.get("Labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise InvalidArgument("image config: Labels must map names to strings")
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise InvalidArgument("image config: rootfs.diff_ids must be a list of strings")
    return Image(
        id=image_id,
        repo_tags=(),
        created=text("created", config) or now_rfc3339(),
        cmd=strings("Cmd") or (),
        entrypoint=strings("Entrypoint") or None,
        env=strings("Env") or (),
        workdir=text("WorkingDir", run),
        user=text("User", run),
        exposed_ports=tuple(p if "/" in p else f"{p}/tcp" for p in ports),
        layers=tuple(diff_ids),
        labels=dict(labels),
    )


def _hex(image_id: str) -> str:
    return image_id.removeprefix("sha256:")


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise InvalidArgument(f"cannot read {path}: {exc.strerror}") from exc
    return digest.hexdigest()


def _write_json(path: str, data: object) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1)
        fh.write("\n")
    os.replace(tmp, path)
