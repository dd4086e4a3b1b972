"""Tar archives in and out of root filesystems: safe extraction, image layers with their
whiteouts, ``docker save`` archives, and a container's layered filesystem as one tar.

Extraction (``RootfsWriter``) never writes outside its destination: members with absolute
names, ``..`` components, a parent that resolves (through a symlink extracted earlier)
outside, or hard links to anything outside are refused with InvalidArgument, naming the
member.  Owners, modes and symlinks are kept as they are (a symlink's target is resolved
inside the container, never here).  Device nodes and FIFOs are skipped: every container gets
its own /dev.

Layers follow the image-spec's whiteouts: ``DIR/.wh.NAME`` deletes ``DIR/NAME`` of the layers
below, ``DIR/.wh..wh..opq`` hides everything the layers below put in ``DIR``.

``SaveArchive`` reads what ``docker save`` writes: ``manifest.json`` with each image's config
and layers, as ``<id>/layer.tar`` (Docker before 25) or ``blobs/sha256/<hex>`` (Docker 25+,
beside an OCI ``index.json``); an archive with only the OCI ``index.json`` is read too.
References inside the archive (manifest entries, symlinked layers) must stay inside it.
``apply_saved_layer`` applies one layer and checks it against its ``diff_id``.

``write_layered_tar`` is the other direction: the union of overlay layers (upper first, its
whiteouts and opaque directories honoured) as one tar, what ``docker export`` streams.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
import os
import platform
import posixpath
import shutil
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

from cnm.errors import CnmError, InvalidArgument

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
_AUFS_META = ".wh..wh."
_OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
_MAX_LINK_HOPS = 16
_MAX_JSON = 16 << 20  # a manifest or config larger than this is not one
_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())

_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root + os.sep)


class RootfsWriter:
    """Writes tar members into ``dest`` (an existing directory), refusing every escape.

    ``extract`` is for a plain root filesystem; ``apply_layer`` for one image layer over the
    layers already written (whiteouts delete, opaque markers hide).  ``size`` counts the
    bytes of regular files written.
    """

    def __init__(self, dest: str) -> None:
        self.dest = os.path.realpath(dest)
        self.size = 0

    # -- names -------------------------------------------------------------------------
    def _relative(self, name: str, what: str = "path") -> str:
        """``name`` normalised relative to ``dest`` ("" for the root itself)."""
        if os.path.isabs(name):
            raise InvalidArgument(f"invalid tar member {name!r}: {what} escapes the root filesystem")
        rel = posixpath.normpath(name)
        if rel == "..":
            raise InvalidArgument(f"invalid tar member {name!r}: {what} escapes the root filesystem")
        if rel.startswith("../"):
            raise InvalidArgument(f"invalid tar member {name!r}: {what} escapes the root filesystem")
        return "" if rel == "." else rel

    def _parent_inside(self, rel: str, member: str, what: str = "path") -> str:
        """The host path of ``rel``, once its parent is known to resolve inside ``dest``."""
        target = os.path.join(self.dest, rel)
        parent = os.path.realpath(os.path.dirname(target))
        if not _inside(self.dest, parent):
            raise InvalidArgument(f"invalid tar member {member!r}: {what} escapes the root filesystem")
        return target

    # -- plain members -----------------------------------------------------------------
    def extract(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> str | None:
        """Write ``member`` (read from ``tar``); its relative name, or None when skipped."""
        if member.isdev() or member.isfifo():
            return None
        original = member.name
        rel = self._relative(original)
        if not rel:
            return None
        target = self._parent_inside(rel, original)
        if member.islnk():
            # The source's directory must resolve inside; a source that is itself a
            # symlink is linked as the symlink (link(2) does not follow it).
            link = self._relative(member.linkname, "hard link")
            self._parent_inside(link, original, "hard link")
            if not link:
                raise InvalidArgument(f"invalid tar member {original!r}: hard link to the root")
            member.linkname = link
        # Never write through something already there (a symlink planted by an earlier
        # member would redirect the write outside ``dest``).
        if os.path.lexists(target) and not (
            member.isdir() and os.path.isdir(target) and not os.path.islink(target)
        ):
            _remove(target)
        member.name = rel
        try:
            tar.extract(member, self.dest, set_attrs=True, numeric_owner=True, filter="fully_trusted")
        finally:
            member.name = original
        if member.isreg():
            self.size += member.size
        return rel

    def extract_all(self, tar: tarfile.TarFile) -> None:
        for member in tar:
            self.extract(tar, member)

    # -- layers ------------------------------------------------------------------------
    def apply_layer(self, tar: tarfile.TarFile) -> None:
        """Apply one layer over what ``dest`` holds.  Whiteouts refer to the layers below
        only, so a path this layer writes is never deleted by this layer's markers, in
        whatever order the tar lists them."""
        written: set[str] = set()  # paths this layer wrote
        touched: set[str] = set()  # ... and every directory above them
        for member in tar:
            rel = self._relative(member.name)
            head, base = posixpath.split(rel)
            if rel.startswith(_AUFS_META) and rel != OPAQUE:
                continue  # AUFS bookkeeping of old layers (.wh..wh.plnk …): not files
            if base == OPAQUE:
                self._opaque(head, member.name, written, touched)
            elif base.startswith(WHITEOUT):
                self._whiteout(head, base[len(WHITEOUT) :], member.name)
            elif (done := self.extract(tar, member)) is not None:
                written.add(done)
                while done:
                    touched.add(done)
                    done = posixpath.dirname(done)

    def _whiteout(self, head: str, name: str, member: str) -> None:
        if name in ("", ".", "..") or "/" in name:
            raise InvalidArgument(f"invalid tar member {member!r}: not a whiteout of a name")
        target = self._parent_inside(posixpath.join(head, name), member)
        if os.path.lexists(target):
            _remove(target)

    def _opaque(self, head: str, member: str, written: set[str], touched: set[str]) -> None:
        directory = self._parent_inside(head, member) if head else self.dest
        if not _inside(self.dest, os.path.realpath(directory)):
            raise InvalidArgument(f"invalid tar member {member!r}: path escapes the root filesystem")
        if os.path.isdir(directory) and not os.path.islink(directory):
            self._clear(head, written, touched)

    def _clear(self, head: str, written: set[str], touched: set[str]) -> None:
        """Delete what lies under ``head`` that this layer did not write."""
        with os.scandir(os.path.join(self.dest, head)) as entries:
            children = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
        for name, is_dir in children:
            rel = posixpath.join(head, name) if head else name
            if is_dir and rel in touched:
                self._clear(rel, written, touched)
            elif rel not in written:
                _remove(os.path.join(self.dest, rel))


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def tree_size(root: str) -> int:
    """Bytes of the regular files under ``root``, each inode counted once."""
    seen: set[int] = set()
    total = 0
    for top, _dirs, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(top, name))
            if stat.S_ISREG(st.st_mode) and st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_size
    return total


# -- docker save archives -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SavedImage:
    """One image of a ``docker save`` archive: its config (the bytes, whose sha256 is the
    image id, and the parsed JSON), its repo tags, and its layers' member names, bottom
    first."""

    config_bytes: bytes
    config: dict[str, Any]
    repo_tags: tuple[str, ...]
    layers: tuple[str, ...]
    id: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", "sha256:" + hashlib.sha256(self.config_bytes).hexdigest())


class SaveArchive:
    """An open ``docker save`` archive (a file: members are read by name, in any order).

    Use as a context manager; ``images`` lists what it holds, ``layer(name)`` opens one layer
    as a tar stream (compressed or not).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._tar = open_tar(path)
        try:
            self._members: dict[str, tarfile.TarInfo] = {}
            for member in self._tar.getmembers():
                name = posixpath.normpath(member.name.lstrip("/")) if member.name else ""
                self._members.setdefault(name, member)
        except CnmError:
            raise
        except (tarfile.TarError, OSError, EOFError) as exc:
            self._tar.close()
            raise InvalidArgument(f"cannot read {path} as a docker save archive: {exc}") from exc

    def __enter__(self) -> SaveArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self._tar.close()

    # -- members -------------------------------------------------------------------------
    def _member(self, name: str, referrer: str) -> tarfile.TarInfo:
        """The regular-file member ``name`` refers to, following links inside the archive."""
        for _ in range(_MAX_LINK_HOPS):
            rel = posixpath.normpath(name) if name else ""
            if os.path.isabs(name) or rel == ".." or rel.startswith("../"):
                raise InvalidArgument(f"{referrer} refers to {name!r}, outside the archive")
            member = self._members.get(rel)
            if member is None:
                raise InvalidArgument(f"{referrer} refers to {name!r}, which the archive lacks")
            if member.isreg():
                return member
            if member.issym():
                name = posixpath.join(posixpath.dirname(rel), member.linkname)
            elif member.islnk():
                name = member.linkname
            else:
                raise InvalidArgument(f"{referrer} refers to {name!r}, which is not a file")
            referrer = f"{rel} (a link)"
        raise InvalidArgument(f"{referrer}: too many links")

    def _read(self, name: str, referrer: str) -> bytes:
        member = self._member(name, referrer)
        if member.size > _MAX_JSON:
            raise InvalidArgument(f"{name} is too large for a manifest or image config")
        stream = self._tar.extractfile(member)
        assert stream is not None  # a regular file
        return stream.read()

    def _json(self, name: str, referrer: str) -> Any:
        try:
            return json.loads(self._read(name, referrer))
        except ValueError as exc:
            raise InvalidArgument(f"{name} in the archive is not valid JSON: {exc}") from exc

    def layer(self, name: str) -> IO[bytes]:
        stream = self._tar.extractfile(self._member(name, "manifest.json"))
        assert stream is not None
        return stream

    # -- images --------------------------------------------------------------------------
    def images(self) -> list[SavedImage]:
        """Every image the archive holds; InvalidArgument naming what is missing or wrong."""
        if "manifest.json" in self._members:
            return self._from_manifest()
        if "index.json" in self._members:
            return self._from_oci_index()
        raise InvalidArgument(
            f"{self.path} is not a docker save archive: it has neither manifest.json nor index.json"
        )

    def _from_manifest(self) -> list[SavedImage]:
        manifest = self._json("manifest.json", "the archive")
        if not isinstance(manifest, list) or not manifest:
            raise InvalidArgument("manifest.json lists no images")
        out = []
        for i, entry in enumerate(manifest):
            where = f"manifest.json entry {i}"
            if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
                raise InvalidArgument(f"{where} has no Config")
            layers = entry.get("Layers") or []
            tags = entry.get("RepoTags") or []
            if not _strings(layers) or not _strings(tags):
                raise InvalidArgument(f"{where}: Layers and RepoTags must be lists of strings")
            out.append(self._image(entry["Config"], where, tuple(layers), tuple(tags)))
        return out

    def _from_oci_index(self) -> list[SavedImage]:
        index = self._json("index.json", "the archive")
        out = []
        for descriptor in _descriptors(index, "index.json"):
            tags = _oci_tags(descriptor.get("annotations") or {})
            manifest = self._resolve_manifest(descriptor, "index.json")
            config = manifest.get("config") or {}
            layers = manifest.get("layers") or []
            if not isinstance(config, dict) or not isinstance(config.get("digest"), str):
                raise InvalidArgument("an image manifest in index.json has no config")
            names = tuple(_blob(d.get("digest") if isinstance(d, dict) else None) for d in layers)
            out.append(self._image(_blob(config["digest"]), "index.json", names, tags))
        if not out:
            raise InvalidArgument("index.json lists no images")
        return out

    def _resolve_manifest(self, descriptor: dict[str, Any], referrer: str) -> dict[str, Any]:
        """Follow image indexes (multi-platform) down to this machine's image manifest."""
        for _ in range(_MAX_LINK_HOPS):
            doc = self._json(_blob(descriptor.get("digest")), referrer)
            if not isinstance(doc, dict):
                raise InvalidArgument(f"{descriptor.get('digest')} is not a manifest")
            if doc.get("mediaType") not in (_OCI_INDEX, _DOCKER_LIST) and "manifests" not in doc:
                return doc
            candidates = _descriptors(doc, str(descriptor.get("digest")))
            ours = [d for d in candidates if _platform_matches(d.get("platform"))]
            if not ours:
                raise InvalidArgument(f"the archive has no image for linux/{_ARCH}")
            descriptor = ours[0]
        raise InvalidArgument("image indexes nested too deeply")

    def _image(
        self, config_name: str, where: str, layers: tuple[str, ...], tags: tuple[str, ...]
    ) -> SavedImage:
        raw = self._read(config_name, where)
        try:
            config = json.loads(raw)
        except ValueError as exc:
            raise InvalidArgument(f"the image config {config_name} is not valid JSON: {exc}") from exc
        if not isinstance(config, dict):
            raise InvalidArgument(f"the image config {config_name} is not a JSON object")
        diff_ids = (config.get("rootfs") or {}).get("diff_ids")
        if isinstance(diff_ids, list) and len(diff_ids) != len(layers):
            raise InvalidArgument(
                f"{where} lists {len(layers)} layers but its config {config_name} has {len(diff_ids)}"
            )
        for name in layers:
            self._member(name, where)  # every layer is there before anything is written
        return SavedImage(raw, config, tags, layers)


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _blob(digest: object) -> str:
    if not isinstance(digest, str) or ":" not in digest:
        raise InvalidArgument(f"invalid digest {digest!r} in the archive")
    algorithm, _, hexdigest = digest.partition(":")
    if not algorithm.isalnum() or not hexdigest.isalnum():
        raise InvalidArgument(f"invalid digest {digest!r} in the archive")
    return f"blobs/{algorithm}/{hexdigest}"


def _descriptors(doc: object, where: str) -> list[dict[str, Any]]:
    manifests = doc.get("manifests") if isinstance(doc, dict) else None
    if not isinstance(manifests, list) or not all(isinstance(m, dict) for m in manifests):
        raise InvalidArgument(f"{where} has no list of manifests")
    return manifests


def _platform_matches(value: object) -> bool:
    if not isinstance(value, dict):
        return True
    return bool(value.get("os", "linux") == "linux" and value.get("architecture", _ARCH) == _ARCH)


def _oci_tags(annotations: dict[str, Any]) -> tuple[str, ...]:
    """The name an OCI index gives a manifest: containerd's full name, else a ref.name that
    is a whole reference (a bare tag names nothing we could list)."""
    name = annotations.get("io.containerd.image.name")
    if not isinstance(name, str):
        name = annotations.get("org.opencontainers.image.ref.name")
        if not isinstance(name, str) or not any(c in name for c in ":/"):
            return ()
    return (familiar_name(name),)


def familiar_name(reference: str) -> str:
    """``docker.io/library/busybox:1`` -> ``busybox:1``, as Docker prints references."""
    for prefix in ("docker.io/library/", "index.docker.io/library/", "docker.io/", "index.docker.io/"):
        if reference.startswith(prefix):
            return reference[len(prefix) :]
    return reference


def open_tar(path: str) -> tarfile.TarFile:
    """The tar file at ``path`` (plain, gzip, bzip2 or xz), with random access; InvalidArgument
    naming the file when it is none of these."""
    try:
        return tarfile.open(path, mode="r:*")
    except tarfile.ReadError as exc:
        raise InvalidArgument(f"{path} is not a tar archive (plain, gzip, bzip2 or xz)") from exc


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _Digesting:
    """A read-only stream that hashes what passes through it."""

    def __init__(self, raw: _Readable) -> None:
        self.raw = raw
        self.hash = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.hash.update(data)
        return data

    def digest_to_end(self) -> str:
        """``sha256:<hex>`` of everything, reading what the tar reader left (its padding)."""
        while self.read(1 << 20):
            pass
        return f"sha256:{self.hash.hexdigest()}"


def _decompressed(stream: IO[bytes], name: str) -> _Readable:
    head = stream.peek(6)[:6] if hasattr(stream, "peek") else b""
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=stream, mode="rb")
    if head.startswith(b"BZh"):
        return bz2.BZ2File(stream)
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(stream)
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        raise InvalidArgument(f"layer {name} is zstd-compressed, which cnm cannot read")
    return stream


def apply_saved_layer(writer: RootfsWriter, stream: IO[bytes], name: str, diff_id: str | None) -> None:
    """Apply the layer ``name`` (plain, gzip, bzip2 or xz) with ``writer``, then check that
    its uncompressed bytes are the ``diff_id`` the image config promises (a truncated or
    altered layer is refused; the caller discards what was written)."""
    digesting = _Digesting(_decompressed(stream, name))
    with tarfile.open(fileobj=digesting, mode="r|") as tar:  # type: ignore[call-overload]
        writer.apply_layer(tar)
    digest = digesting.digest_to_end()
    if diff_id and diff_id.startswith("sha256:") and digest != diff_id:
        raise InvalidArgument(f"layer {name} does not match the image config: {digest}, expected {diff_id}")


# -- the other direction: layers -> one tar ------------------------------------------------------


def _is_whiteout(entry: os.DirEntry[str]) -> bool:
    st = entry.stat(follow_symlinks=False)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: str) -> bool:
    for name in _OPAQUE_XATTRS:
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return False


def write_layered_tar(layers: list[str], out: IO[bytes]) -> None:
    """Write the union of ``layers`` (directories, uppermost first) to ``out`` as a tar
    stream: overlayfs' view of them, without mounting anything.  An upper layer's
    whiteouts (0/0 character devices) hide the name below; an opaque directory
    (``trusted.overlay.opaque=y``) hides the directories below it.  Hard links within the
    result stay hard links; sockets are left out."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for rel, path in _union([d for d in layers if os.path.isdir(d)], ""):
            info = tar.gettarinfo(path, arcname=rel)
            if info is None:  # a socket
                continue
            info.uname = info.gname = ""  # numeric owners: the host's user names mean nothing inside
            if info.isreg():
                with open(path, "rb") as fh:
                    tar.addfile(info, fh)
            else:
                tar.addfile(info)


def _union(dirs: list[str], rel: str) -> Iterator[tuple[str, str]]:
    """(relative name, host path) of every entry under ``rel``; ``dirs`` are the layers'
    directories for ``rel`` that are visible, uppermost first."""
    chosen: dict[str, tuple[int, os.DirEntry[str]]] = {}
    hidden: set[str] = set()
    for i, directory in enumerate(dirs):
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name in chosen or entry.name in hidden:
                    continue
                if i < len(dirs) - 1 and _is_whiteout(entry):
                    hidden.add(entry.name)
                    continue
                chosen[entry.name] = (i, entry)
    for name in sorted(chosen):
        i, entry = chosen[name]
        child = f"{rel}/{name}" if rel else name
        yield child, entry.path
        if not entry.is_dir(follow_symlinks=False):
            continue
        below = [entry.path]
        if not _is_opaque(entry.path):
            for lower in dirs[i + 1 :]:
                path = os.path.join(lower, name)
                if not os.path.isdir(path) or os.path.islink(path):
                    break  # a file (or link) of that name hides the directories further down
                below.append(path)
                if _is_opaque(path):
                    break
        yield from _union(below, child)
