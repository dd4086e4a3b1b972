"""Images: root-filesystem tars unpacked under ``<data-root>/images``, found by tag or id.

Layout (self-contained on disk; the daemon's SQLite store does not know about images):

    <data-root>/images/<hex>/rootfs/      the unpacked tar, the read-only lower layer
    <data-root>/images/<hex>/image.json   the ``Image`` record (without its tags)
    <data-root>/images/repositories.json  {"name:tag": "sha256:<hex>", ...}

``ImageStore`` loads both into memory at construction, so ``find`` and ``list`` never touch
the disk.  Mutations (``import_tar``, ``remove``) write the files atomically (temp + rename).
They are synchronous: the runtime runs ``import_tar`` on a worker thread and serialises
mutations with its own lock.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import asdict, fields, replace
from typing import Any

from cnm.errors import CnmError, InvalidArgument, NotFound, RuntimeFailure
from cnm.model.container import Image

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
        try:
            tagged = self._tags.get(normalize_reference(reference))
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
                values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
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
        final = os.path.join(self.root, _hex(image_id))
        staging = tempfile.mkdtemp(prefix=".import-", dir=self.root)
        try:
            rootfs = os.path.join(staging, "rootfs")
            os.mkdir(rootfs, 0o755)
            size = unpack_rootfs(tar_path, rootfs)
            image = Image(id=image_id, repo_tags=(), created=now_rfc3339(), size=size)
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

    Refuses (RuntimeFailure, nothing partial is kept by the caller) members with absolute
    names, names escaping ``dest`` through ``..`` or through a symlink extracted earlier, and
    hard links pointing outside.  Skips device nodes and FIFOs (the runtime gives each
    container its own /dev).  Keeps owners, modes (setuid, sticky) and symlinks as they are:
    it is a root filesystem, and symlink targets are resolved inside the container.
    """
    dest = os.path.realpath(dest)
    size = 0
    try:
        with tarfile.open(tar_path, mode="r:*") as tar:
            for member in tar:
                if member.isdev() or member.isfifo():
                    continue
                name = os.path.normpath(member.name)
                if name in (".", ""):
                    continue
                if os.path.isabs(member.name) or name == ".." or name.startswith("../"):
                    raise RuntimeFailure(
                        f"invalid tar member {member.name!r}: path escapes the root filesystem"
                    )
                target = os.path.join(dest, name)
                parent = os.path.realpath(os.path.dirname(target))
                if parent != dest and not parent.startswith(dest + os.sep):
                    raise RuntimeFailure(
                        f"invalid tar member {member.name!r}: path escapes the root filesystem"
                    )
                if member.islnk():
                    link = os.path.normpath(member.linkname)
                    if os.path.isabs(member.linkname) or link == ".." or link.startswith("../"):
                        raise RuntimeFailure(
                            f"invalid tar member {member.name!r}: hard link escapes the root filesystem"
                        )
                    source_dir = os.path.realpath(os.path.dirname(os.path.join(dest, link)))
                    if source_dir != dest and not source_dir.startswith(dest + os.sep):
                        raise RuntimeFailure(
                            f"invalid tar member {member.name!r}: hard link escapes the root filesystem"
                        )
                    member.linkname = link
                # Never write through something already there (a symlink planted by an
                # earlier member would redirect the write outside ``dest``).
                if os.path.lexists(target) and not (
                    member.isdir() and os.path.isdir(target) and not os.path.islink(target)
                ):
                    if os.path.isdir(target) and not os.path.islink(target):
                        shutil.rmtree(target)
                    else:
                        os.unlink(target)
                member.name = name
                tar.extract(member, dest, set_attrs=True, numeric_owner=True, filter="fully_trusted")
                if member.isreg():
                    size += member.size
    except CnmError:
        raise
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise RuntimeFailure(f"cannot import {tar_path}: {exc}") from exc
    return size


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
