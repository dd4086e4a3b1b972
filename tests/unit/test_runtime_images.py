"""Image import, lookup, tags and removal (cnm.runtime.images), on a temporary data root."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile

import pytest

from cnm.errors import InvalidArgument, NotFound
from cnm.runtime.images import ImageStore, normalize_reference, split_reference, unpack_rootfs


def make_tar(path, entries, mode="w") -> str:
    """``entries``: (name, kind, data) with kind file/dir/symlink/hardlink/chardev."""
    with tarfile.open(path, mode) as tar:
        for name, kind, data in entries:
            info = tarfile.TarInfo(name)
            if kind == "file":
                payload = data.encode() if isinstance(data, str) else data
                info.size = len(payload)
                info.mode = 0o755
                tar.addfile(info, io.BytesIO(payload))
                continue
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, data
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, data
            elif kind == "chardev":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            elif kind == "sticky":
                info.type, info.mode = tarfile.DIRTYPE, 0o1777
            tar.addfile(info)
    return str(path)


ROOTFS = [
    ("./bin", "dir", None),
    ("./bin/busybox", "file", "#!fake busybox\n"),
    ("./bin/sh", "symlink", "/bin/busybox"),
    ("./bin/ls", "hardlink", "./bin/busybox"),
    ("./etc", "dir", None),
    ("./etc/passwd", "file", "root:x:0:0::/root:/bin/sh\n"),
    ("./tmp", "sticky", None),
    ("./dev/null", "chardev", None),
]


@pytest.fixture
def store(tmp_path):
    return ImageStore(str(tmp_path / "images"))


@pytest.fixture
def rootfs_tar(tmp_path):
    return make_tar(tmp_path / "rootfs.tar", ROOTFS)


def sha(path) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


class TestReferences:
    @pytest.mark.parametrize(
        "text,expected",
        [
            ("busybox", "busybox:latest"),
            ("busybox:1.36", "busybox:1.36"),
            ("library/busybox", "library/busybox:latest"),
            ("localhost:5000/team/app", "localhost:5000/team/app:latest"),
            ("localhost:5000/team/app:v1", "localhost:5000/team/app:v1"),
        ],
    )
    def test_normalize(self, text, expected):
        assert normalize_reference(text) == expected

    @pytest.mark.parametrize("text", ["", "Busy", "busy box", "busybox:", "busybox:a/b", "-x", "a@sha256:00"])
    def test_invalid(self, text):
        with pytest.raises(InvalidArgument, match="invalid reference format"):
            split_reference(text)


class TestImport:
    async def test_unpacks_and_records(self, store, rootfs_tar):
        image = store.import_tar("busybox", rootfs_tar)
        assert image.id == f"sha256:{sha(rootfs_tar)}"
        assert image.repo_tags == ("busybox:latest",)
        assert image.created.endswith("Z")
        assert image.size == len("#!fake busybox\n") + len("root:x:0:0::/root:/bin/sh\n")
        root = store.rootfs(image.id)
        assert os.readlink(os.path.join(root, "bin/sh")) == "/bin/busybox"
        assert (
            os.stat(os.path.join(root, "bin/ls")).st_ino == os.stat(os.path.join(root, "bin/busybox")).st_ino
        )
        assert stat.S_IMODE(os.stat(os.path.join(root, "tmp")).st_mode) == 0o1777
        assert not os.path.lexists(os.path.join(root, "dev/null"))  # device nodes are skipped
        assert os.path.exists(os.path.join(os.path.dirname(root), "image.json"))
        assert [e for e in os.listdir(store.root) if e.startswith(".import-")] == []

    @pytest.mark.parametrize("mode", ["w:gz", "w:xz", "w:bz2"])
    async def test_compressed(self, store, tmp_path, mode):
        path = make_tar(tmp_path / f"r.{mode[2:]}", ROOTFS, mode)
        image = store.import_tar("c:1", path)
        assert image.id == f"sha256:{sha(path)}"
        assert os.path.exists(os.path.join(store.rootfs(image.id), "etc/passwd"))

    def test_same_tar_twice_is_one_image(self, store, rootfs_tar):
        a = store.import_tar("a", rootfs_tar)
        b = store.import_tar("b:2", rootfs_tar)
        assert a.id == b.id
        assert store.find("a").repo_tags == ("a:latest", "b:2")
        assert len(store.list()) == 1

    def test_reimport_moves_tag(self, store, tmp_path, rootfs_tar):
        old = store.import_tar("busybox", rootfs_tar)
        other = make_tar(tmp_path / "other.tar", [("./x", "file", "x")])
        new = store.import_tar("busybox", other)
        assert new.id != old.id
        assert store.find("busybox").id == new.id
        assert store.find(old.id).repo_tags == ()  # dangling, as in Docker

    def test_persisted_and_reloaded(self, store, rootfs_tar):
        image = store.import_tar("busybox:1", rootfs_tar)
        again = ImageStore(store.root)
        assert again.find("busybox:1") == image
        assert again.list() == [image]

    def test_missing_file(self, store, tmp_path):
        with pytest.raises(InvalidArgument, match="cannot read"):
            store.import_tar("x", str(tmp_path / "nope.tar"))

    def test_not_a_tar(self, store, tmp_path):
        path = tmp_path / "junk.tar"
        path.write_bytes(b"this is not a tar file at all" * 40)
        with pytest.raises(InvalidArgument, match="junk.tar is not a tar archive"):
            store.import_tar("x", str(path))
        assert store.list() == []
        assert [e for e in os.listdir(store.root) if e.startswith(".import-")] == []

    def test_bad_reference_changes_nothing(self, store, rootfs_tar):
        with pytest.raises(InvalidArgument):
            store.import_tar("UPPER", rootfs_tar)
        assert store.list() == []


class TestUnsafeTars:
    @pytest.mark.parametrize(
        "entries",
        [
            [("/etc/passwd", "file", "x")],
            [("../escape", "file", "x")],
            [("a/../../escape", "file", "x")],
            [("./etc", "symlink", "/tmp"), ("./etc/evil", "file", "x")],
            [("./up", "symlink", ".."), ("./up/evil", "file", "x")],
            [("./h", "hardlink", "../../etc/shadow")],
            [("./h", "hardlink", "/etc/shadow")],
            [("./etc", "symlink", "/etc"), ("./h", "hardlink", "./etc/hostname")],
        ],
    )
    def test_refused(self, tmp_path, entries):
        outside = tmp_path / "outside"
        outside.mkdir()
        dest = tmp_path / "out" / "rootfs"
        dest.mkdir(parents=True)
        path = make_tar(tmp_path / "bad.tar", entries)
        before = set(os.listdir(tmp_path))
        with pytest.raises(InvalidArgument, match="escapes"):
            unpack_rootfs(path, str(dest))
        assert set(os.listdir(tmp_path)) == before
        assert os.listdir(outside) == []

    def test_symlink_replaced_not_followed(self, tmp_path):
        """A later regular file with the name of an earlier symlink replaces the link."""
        victim = tmp_path / "victim"
        victim.write_text("keep")
        dest = tmp_path / "rootfs"
        dest.mkdir()
        path = make_tar(tmp_path / "t.tar", [("./f", "symlink", str(victim)), ("./f", "file", "new")])
        unpack_rootfs(path, str(dest))
        assert victim.read_text() == "keep"
        assert (dest / "f").read_text() == "new" and not (dest / "f").is_symlink()

    def test_failed_import_leaves_no_image(self, store, tmp_path):
        path = make_tar(tmp_path / "bad.tar", [("./ok", "file", "1"), ("../escape", "file", "x")])
        with pytest.raises(InvalidArgument, match="escapes"):
            store.import_tar("bad", path)
        assert store.list() == []
        assert [e for e in os.listdir(store.root) if e != "repositories.json"] == []


class TestFind:
    @pytest.fixture
    def two(self, store, tmp_path):
        a = store.import_tar("alpha", make_tar(tmp_path / "a.tar", [("./a", "file", "a")]))
        b = store.import_tar("beta:2", make_tar(tmp_path / "b.tar", [("./b", "file", "b")]))
        return a, b

    def test_by_tag(self, store, two):
        a, b = two
        assert store.find("alpha").id == a.id
        assert store.find("alpha:latest").id == a.id
        assert store.find("beta:2").id == b.id

    def test_missing_tag(self, store, two):
        with pytest.raises(NotFound, match=r"^No such image: beta$"):
            store.find("beta")

    def test_by_full_id(self, store, two):
        a, _ = two
        assert store.find(a.id).id == a.id
        assert store.find(a.id.removeprefix("sha256:")).id == a.id

    def test_by_prefix(self, store, two):
        a, b = two
        hex_a, hex_b = a.id[7:], b.id[7:]
        n = next(i for i in range(1, 64) if hex_a[:i] != hex_b[:i])
        assert store.find(hex_a[:n]).id == a.id
        assert store.find("sha256:" + hex_b[:n]).id == b.id

    def test_ambiguous_prefix(self, store, two):
        a, b = two
        common = os.path.commonprefix([a.id, b.id])
        with pytest.raises(NotFound, match="No such image"):
            store.find(common)

    def test_garbage(self, store, two):
        for ref in ("", "sha256:", "zzz", "Alpha", "sha256:" + "0" * 64):
            with pytest.raises(NotFound, match="No such image"):
                store.find(ref)

    def test_list_newest_first(self, store, two):
        a, b = two
        assert [i.id for i in store.list()] == [b.id, a.id]


class TestRemove:
    def test_by_tag_untags_then_deletes(self, store, rootfs_tar):
        store.import_tar("one", rootfs_tar)
        image = store.import_tar("two", rootfs_tar)
        removed = store.remove("one")
        assert removed.repo_tags == ("one:latest", "two:latest")
        assert store.find(image.id).repo_tags == ("two:latest",)
        assert os.path.isdir(store.rootfs(image.id))
        store.remove("two")
        assert store.list() == []
        assert not os.path.exists(os.path.dirname(store.rootfs(image.id)))

    def test_by_id_deletes_all_tags(self, store, rootfs_tar):
        store.import_tar("one", rootfs_tar)
        image = store.import_tar("two", rootfs_tar)
        store.remove(image.id)
        assert store.list() == []
        with pytest.raises(NotFound):
            store.find("one")
        assert ImageStore(store.root).list() == []

    def test_missing(self, store):
        with pytest.raises(NotFound, match="No such image: ghost"):
            store.remove("ghost")
