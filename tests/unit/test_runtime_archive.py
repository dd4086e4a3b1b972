"""``docker save`` archives, layers with whiteouts, unsafe archives, tags, and the layered
export (cnm.runtime.archive through cnm.runtime.images), on temporary directories.  Every
archive is built here with tarfile: no network, no docker."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import stat
import tarfile

import pytest

from cnm.errors import InvalidArgument, NotFound
from cnm.model.container import ContainerConfig, Image
from cnm.runtime.archive import write_layered_tar
from cnm.runtime.bundle import process_args
from cnm.runtime.images import ImageStore


def layer(entries) -> bytes:
    """A layer tar: (name, kind, data) with kind file/dir/symlink/hardlink."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, data in entries:
            info = tarfile.TarInfo(name)
            if kind == "file":
                payload = data.encode()
                info.size, info.mode = len(payload), 0o644
                tar.addfile(info, io.BytesIO(payload))
                continue
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, data
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, data
            tar.addfile(info)
    return buf.getvalue()


def config(layers: list[bytes], **run) -> bytes:
    return json.dumps({
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-05-01T12:00:00.123456789Z",
        "config": run,
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(b).hexdigest() for b in layers]},
    }).encode()  # fmt: skip


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def add(tar: tarfile.TarFile, name: str, data: bytes | None = None, link: str | None = None) -> None:
    info = tarfile.TarInfo(name)
    if link is not None:
        info.type, info.linkname = tarfile.SYMTYPE, link
        tar.addfile(info)
    elif data is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def legacy_archive(path, layers: list[bytes], cfg: bytes, tags=("app:1",), manifest=None) -> str:
    """Docker before 25: ``<id>/layer.tar``, ``<hex>.json``, ``manifest.json`` (written last)."""
    names = []
    with tarfile.open(path, "w") as tar:
        for i, data in enumerate(layers):
            name = f"{i:064x}/layer.tar"
            add(tar, f"{i:064x}")
            add(tar, name, data)
            names.append(name)
        add(tar, f"{sha(cfg)}.json", cfg)
        entry = {"Config": f"{sha(cfg)}.json", "RepoTags": list(tags), "Layers": names}
        add(tar, "manifest.json", json.dumps(manifest if manifest is not None else [entry]).encode())
    return str(path)


def oci_archive(path, layers: list[bytes], cfg: bytes, tags=("app:1",), with_manifest=True) -> str:
    """Docker 25+: blobs under ``blobs/sha256``, ``index.json`` and ``oci-layout``, the legacy
    ``<id>/layer.tar`` names kept as symlinks into the blobs, and ``manifest.json``."""
    oci_manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": f"sha256:{sha(cfg)}",
                   "size": len(cfg)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": f"sha256:{sha(b)}",
                    "size": len(b)} for b in layers],
    }).encode()  # fmt: skip
    index = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": f"sha256:{sha(oci_manifest)}",
            "size": len(oci_manifest),
            "annotations": {"io.containerd.image.name": f"docker.io/library/{tags[0]}",
                            "org.opencontainers.image.ref.name": tags[0].split(":")[1]},
        }],
    }).encode()  # fmt: skip
    with tarfile.open(path, "w") as tar:
        add(tar, "blobs")
        add(tar, "blobs/sha256")
        for data in [*layers, cfg, oci_manifest]:
            add(tar, f"blobs/sha256/{sha(data)}", data)
        for data in layers:
            add(tar, sha(data))
            add(tar, f"{sha(data)}/layer.tar", link=f"../blobs/sha256/{sha(data)}")
        add(tar, "index.json", index)
        add(tar, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        if with_manifest:
            entry = {
                "Config": f"blobs/sha256/{sha(cfg)}",
                "RepoTags": list(tags),
                "Layers": [f"blobs/sha256/{sha(b)}" for b in layers],
            }
            add(tar, "manifest.json", json.dumps([entry]).encode())
    return str(path)


BASE = layer([
    ("bin", "dir", None),
    ("bin/sh", "file", "#!shell"),
    ("bin/ls", "hardlink", "bin/sh"),
    ("etc", "dir", None),
    ("etc/motd", "file", "hello"),
    ("etc/old.conf", "file", "old"),
    ("var", "dir", None),
    ("var/cache", "dir", None),
    ("var/cache/a", "file", "a"),
    ("var/cache/sub", "dir", None),
    ("var/cache/sub/deep", "file", "deep"),
    ("srv", "dir", None),
    ("srv/data", "dir", None),
    ("srv/data/f", "file", "f"),
])  # fmt: skip
TOP = layer([
    ("etc", "dir", None),
    ("etc/.wh.old.conf", "file", ""),  # deletes a file of the layer below
    ("etc/new.conf", "file", "new"),
    ("var/cache/new", "file", "n"),  # written before its directory's opaque marker
    ("var/cache/.wh..wh..opq", "file", ""),  # hides what the layers below put in var/cache
    ("srv/.wh.data", "file", ""),  # deletes a whole directory
    ("usr", "dir", None),
    ("usr/bin", "symlink", "../bin"),
])  # fmt: skip
RUN = {
    "Cmd": ["-g", "daemon off;"],
    "Entrypoint": ["/bin/server"],
    "Env": ["PATH=/bin", "MODE=prod"],
    "ExposedPorts": {"80/tcp": {}, "53/udp": {}},
    "WorkingDir": "/srv",
    "User": "1000:1000",
    "Labels": {"org.opencontainers.image.title": "app"},
}


@pytest.fixture
def store(tmp_path):
    return ImageStore(str(tmp_path / "images"))


def tree(root) -> dict[str, str]:
    out = {}
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(top, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                out[rel] = "-> " + os.readlink(path)
            elif os.path.isdir(path):
                out[rel] = "/"
            else:
                with open(path) as fh:
                    out[rel] = fh.read()
    return out


def tree_of_base() -> dict[str, str]:
    return {
        "bin": "/", "bin/sh": "#!shell", "bin/ls": "#!shell",
        "etc": "/", "etc/motd": "hello", "etc/old.conf": "old",
        "var": "/", "var/cache": "/", "var/cache/a": "a", "var/cache/sub": "/", "var/cache/sub/deep": "deep",
        "srv": "/", "srv/data": "/", "srv/data/f": "f",
    }  # fmt: skip


EXPECTED = {
    "bin": "/", "bin/sh": "#!shell", "bin/ls": "#!shell",
    "etc": "/", "etc/motd": "hello", "etc/new.conf": "new",
    "var": "/", "var/cache": "/", "var/cache/new": "n",
    "srv": "/", "usr": "/", "usr/bin": "-> ../bin",
}  # fmt: skip


class TestLoad:
    @pytest.mark.parametrize("layout", [legacy_archive, oci_archive])
    def test_layers_whiteouts_config_tags(self, store, tmp_path, layout):
        cfg = config([BASE, TOP], **RUN)
        [loaded] = store.load_archive(layout(tmp_path / "app.tar", [BASE, TOP], cfg))
        image = loaded.image
        assert image.id == f"sha256:{sha(cfg)}"  # Docker's image id: the config's digest
        assert loaded.tags == ("app:1",) and image.repo_tags == ("app:1",)
        assert tree(store.rootfs(image.id)) == EXPECTED
        assert os.stat(os.path.join(store.rootfs(image.id), "bin/ls")).st_nlink == 2
        assert image.cmd == ("-g", "daemon off;") and image.entrypoint == ("/bin/server",)
        assert image.env == ("PATH=/bin", "MODE=prod") and image.workdir == "/srv"
        assert image.user == "1000:1000" and set(image.exposed_ports) == {"80/tcp", "53/udp"}
        assert image.created == "2024-05-01T12:00:00.123456789Z"
        assert image.labels == {"org.opencontainers.image.title": "app"}
        assert image.layers == tuple(f"sha256:{sha(b)}" for b in (BASE, TOP))
        assert image.size == len("#!shell") + len("hello") + len("new") + len("n")
        assert ImageStore(store.root).find("app:1") == image  # the record survives a restart

    def test_oci_index_without_manifest_json(self, store, tmp_path):
        cfg = config([BASE, TOP])
        [loaded] = store.load_archive(oci_archive(tmp_path / "a.tar", [BASE, TOP], cfg, with_manifest=False))
        assert loaded.tags == ("app:1",)  # from io.containerd.image.name, made familiar
        assert tree(store.rootfs(loaded.image.id)) == EXPECTED

    def test_gzip_archive(self, store, tmp_path):
        plain = legacy_archive(tmp_path / "a.tar", [BASE], config([BASE]))
        packed = tmp_path / "a.tar.gz"
        packed.write_bytes(gzip.compress(open(plain, "rb").read()))
        [loaded] = store.load_archive(str(packed))
        assert store.find("app:1").id == loaded.image.id

    def test_aufs_metadata_skipped(self, store, tmp_path):
        aufs = layer(
            [(".wh..wh.plnk", "dir", None), (".wh..wh.plnk/1.2", "file", "x"), ("kept", "file", "k")]
        )
        [loaded] = store.load_archive(legacy_archive(tmp_path / "a.tar", [BASE, aufs], config([BASE, aufs])))
        assert tree(store.rootfs(loaded.image.id)) == {**tree_of_base(), "kept": "k"}

    @pytest.mark.parametrize("compress", [gzip.compress, bz2.compress, lzma.compress])
    def test_compressed_layer(self, store, tmp_path, compress):
        cfg = config([BASE])  # diff_ids are the digests of the uncompressed layers
        [loaded] = store.load_archive(legacy_archive(tmp_path / "a.tar", [compress(BASE)], cfg))
        assert tree(store.rootfs(loaded.image.id))["etc/old.conf"] == "old"

    def test_untagged_and_two_images(self, store, tmp_path):
        one, two = config([BASE], Cmd=["one"]), config([BASE], Cmd=["two"])
        path = tmp_path / "two.tar"
        with tarfile.open(path, "w") as tar:
            add(tar, "l/layer.tar", BASE)
            add(tar, "one.json", one)
            add(tar, "two.json", two)
            add(tar, "manifest.json", json.dumps([
                {"Config": "one.json", "RepoTags": ["one:latest", "uno:1"], "Layers": ["l/layer.tar"]},
                {"Config": "two.json", "RepoTags": None, "Layers": ["l/layer.tar"]},
            ]).encode())  # fmt: skip
        first, second = store.load_archive(str(path))
        assert first.tags == ("one:latest", "uno:1") and second.tags == ()
        assert store.find(second.image.id).repo_tags == ()
        assert store.find("uno:1").cmd == ("one",)

    def test_load_again_moves_tags_and_keeps_the_unpacked_image(self, store, tmp_path):
        cfg = config([BASE])
        [first] = store.load_archive(legacy_archive(tmp_path / "a.tar", [BASE], cfg))
        marker = os.path.join(store.rootfs(first.image.id), "marker")
        open(marker, "w").close()
        [again] = store.load_archive(legacy_archive(tmp_path / "b.tar", [BASE], cfg, tags=("app:2",)))
        assert again.image.id == first.image.id and os.path.exists(marker)  # not unpacked twice
        assert store.find("app:1").repo_tags == ("app:1", "app:2")
        other = config([BASE], Cmd=["other"])
        store.load_archive(legacy_archive(tmp_path / "c.tar", [BASE], other, tags=("app:1",)))
        assert store.find("app:1").id == f"sha256:{sha(other)}"
        assert store.find(first.image.id).repo_tags == ("app:2",)

    def test_records_written_before_the_config_fields_still_load(self, store, tmp_path):
        image_dir = os.path.join(store.root, "ab" * 32)
        os.makedirs(os.path.join(image_dir, "rootfs"))
        with open(os.path.join(image_dir, "image.json"), "w") as fh:
            json.dump(
                {
                    "id": "sha256:" + "ab" * 32,
                    "created": "2026-01-01T00:00:00Z",
                    "size": 3,
                    "cmd": [],
                    "env": ["PATH=/bin"],
                    "workdir": "",
                    "exposed_ports": [],
                },
                fh,
            )
        image = ImageStore(store.root).find("ab" * 32)
        assert image.entrypoint is None and image.user == "" and image.layers == () and image.labels == {}


class TestBadArchives:
    """Each refusal names what is wrong and leaves the store as it was."""

    def assert_unchanged(self, store):
        assert store.list() == []
        assert [e for e in os.listdir(store.root) if e != "repositories.json"] == []
        assert ImageStore(store.root).list() == []

    @pytest.mark.parametrize(
        "entries,message",
        [
            ([("../escape", "file", "x")], "escapes"),
            ([("a/../../escape", "file", "x")], "escapes"),
            ([("/etc/passwd", "file", "x")], "escapes"),
            ([("etc", "symlink", "/"), ("etc/escape", "file", "x")], "escapes"),  # absolute link
            ([("up", "symlink", ".."), ("up/escape", "file", "x")], "escapes"),  # relative link
            ([("h", "hardlink", "../../outside/secret")], "escapes"),
            ([("h", "hardlink", "/etc/passwd")], "escapes"),
            ([(".wh..", "file", "")], "whiteout"),  # would delete the directory above
            ([("../.wh.secret", "file", "")], "escapes"),
        ],
    )
    def test_unsafe_layer(self, store, tmp_path, entries, message):
        outside = tmp_path / "outside"
        outside.mkdir()
        (outside / "secret").write_text("keep")
        bad = layer(entries)
        path = legacy_archive(tmp_path / "bad.tar", [BASE, bad], config([BASE, bad]))
        with pytest.raises(InvalidArgument, match=message):
            store.load_archive(path)
        self.assert_unchanged(store)
        assert os.listdir(outside) == ["secret"] and (outside / "secret").read_text() == "keep"
        assert not (tmp_path / "escape").exists()

    def test_symlink_planted_by_a_lower_layer(self, store, tmp_path):
        """A layer's link to the host, then a later layer writing or whiting out through it."""
        outside = tmp_path / "outside"
        outside.mkdir()
        (outside / "victim").write_text("keep")
        planted = layer([("link", "symlink", str(outside))])
        for top in (
            layer([("link/new", "file", "x")]),
            layer([("link/.wh.victim", "file", "")]),
            layer([("link/.wh..wh..opq", "file", "")]),
        ):
            path = legacy_archive(tmp_path / "bad.tar", [planted, top], config([planted, top]))
            with pytest.raises(InvalidArgument, match="escapes"):
                store.load_archive(path)
            self.assert_unchanged(store)
            assert os.listdir(outside) == ["victim"] and (outside / "victim").read_text() == "keep"

    @pytest.mark.parametrize(
        "manifest,message",
        [
            ([{"Config": "../../etc/passwd", "Layers": []}], "outside the archive"),
            ([{"Config": "/etc/passwd", "Layers": []}], "outside the archive"),
            ([{"Config": "nope.json", "Layers": []}], "lacks"),
            ([{"Layers": []}], "has no Config"),
            ([], "lists no images"),
            ({"Config": "x"}, "lists no images"),
        ],
    )
    def test_bad_manifest(self, store, tmp_path, manifest, message):
        path = legacy_archive(tmp_path / "bad.tar", [BASE], config([BASE]), manifest=manifest)
        with pytest.raises(InvalidArgument, match=message):
            store.load_archive(path)
        self.assert_unchanged(store)

    def test_layer_link_leaving_the_archive(self, store, tmp_path):
        cfg = config([BASE])
        path = tmp_path / "bad.tar"
        with tarfile.open(path, "w") as tar:
            add(tar, "l/layer.tar", link="../../../etc/passwd")
            add(tar, "c.json", cfg)
            add(tar, "manifest.json", json.dumps([{"Config": "c.json", "Layers": ["l/layer.tar"]}]).encode())
        with pytest.raises(InvalidArgument, match="outside the archive"):
            store.load_archive(str(path))
        self.assert_unchanged(store)

    def test_missing_layer_is_found_before_anything_is_written(self, store, tmp_path):
        cfg = config([BASE, TOP])
        path = tmp_path / "bad.tar"
        with tarfile.open(path, "w") as tar:
            add(tar, "a/layer.tar", BASE)
            add(tar, "c.json", cfg)
            add(
                tar,
                "manifest.json",
                json.dumps(
                    [{"Config": "c.json", "RepoTags": ["x:1"], "Layers": ["a/layer.tar", "b/layer.tar"]}]
                ).encode(),
            )
        with pytest.raises(InvalidArgument, match="b/layer.tar"):
            store.load_archive(str(path))
        self.assert_unchanged(store)

    def test_layer_not_matching_its_diff_id(self, store, tmp_path):
        altered = BASE.replace(b"hello", b"HELLO")
        path = legacy_archive(tmp_path / "bad.tar", [altered], config([BASE]))
        with pytest.raises(InvalidArgument, match=r"layer 0+/layer.tar does not match the image config"):
            store.load_archive(path)
        self.assert_unchanged(store)

    def test_zstd_layer_named(self, store, tmp_path):
        zstd = b"\x28\xb5\x2f\xfd" + b"\0" * 64
        with pytest.raises(InvalidArgument, match="zstd-compressed, which cnm cannot read"):
            store.load_archive(legacy_archive(tmp_path / "z.tar", [zstd], config([zstd])))
        self.assert_unchanged(store)

    def test_layer_count_disagreeing_with_the_config(self, store, tmp_path):
        path = legacy_archive(tmp_path / "bad.tar", [BASE], config([BASE, TOP]))
        with pytest.raises(InvalidArgument, match="lists 1 layers but its config"):
            store.load_archive(path)

    def test_bad_tag_and_bad_config(self, store, tmp_path):
        with pytest.raises(InvalidArgument, match="invalid reference format"):
            store.load_archive(legacy_archive(tmp_path / "a.tar", [BASE], config([BASE]), tags=("UP:1",)))
        with pytest.raises(InvalidArgument, match="Env must be a list of strings"):
            store.load_archive(legacy_archive(tmp_path / "b.tar", [BASE], config([BASE], Env="x")))
        self.assert_unchanged(store)

    def test_not_an_archive(self, store, tmp_path):
        junk = tmp_path / "junk"
        junk.write_bytes(b"no tar here" * 100)
        with pytest.raises(InvalidArgument, match="not a tar archive"):
            store.load_archive(str(junk))
        rootfs_only = tmp_path / "rootfs.tar"
        rootfs_only.write_bytes(BASE)
        with pytest.raises(InvalidArgument, match="neither manifest.json nor index.json"):
            store.load_archive(str(rootfs_only))
        self.assert_unchanged(store)


class TestTag:
    def test_tag_moves_and_finds(self, store, tmp_path):
        [loaded] = store.load_archive(legacy_archive(tmp_path / "a.tar", [BASE], config([BASE])))
        store.tag("app:1", "localhost:5000/team/app:v2")
        store.tag(loaded.image.id[7:19], "docker.io/library/short")  # an id prefix; a qualified name
        assert store.find("short:latest").id == loaded.image.id
        assert store.find("docker.io/library/app:1").id == loaded.image.id
        assert ImageStore(store.root).find("localhost:5000/team/app:v2").repo_tags == (
            "app:1",
            "localhost:5000/team/app:v2",
            "short:latest",
        )

    def test_errors_change_nothing(self, store, tmp_path):
        store.load_archive(legacy_archive(tmp_path / "a.tar", [BASE], config([BASE])))
        with pytest.raises(NotFound, match="^No such image: nope:1$"):
            store.tag("nope:1", "x:1")
        with pytest.raises(InvalidArgument, match="invalid reference format"):
            store.tag("app:1", "Bad Name")
        with pytest.raises(InvalidArgument, match="invalid reference format"):
            store.tag("nope:1", "Bad Name")  # the target is checked first, as Docker does
        assert [i.repo_tags for i in ImageStore(store.root).list()] == [("app:1",)]


class TestEntrypoint:
    IMAGE = Image(id="sha256:" + "ab" * 32, repo_tags=(), created="", cmd=("-v",), entrypoint=("/bin/app",))

    @pytest.mark.parametrize(
        "entrypoint,cmd,args",
        [
            (None, (), ["/bin/app", "-v"]),  # the image's entrypoint and cmd
            (None, ("-q",), ["/bin/app", "-q"]),  # the container's cmd to the image's entrypoint
            (("/bin/sh",), (), ["/bin/sh"]),  # its own entrypoint: no image cmd
            (("",), (), ["-v"]),  # --entrypoint "": none, the image's cmd runs
            (("",), ("ls",), ["ls"]),
        ],
    )
    def test_docker_rule(self, entrypoint, cmd, args):
        assert process_args(ContainerConfig(image="x", entrypoint=entrypoint, cmd=cmd), self.IMAGE) == args


def _mknod_whiteout(path) -> bool:
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, 0)
    except PermissionError:
        return False
    return True


class TestLayeredExport:
    """``write_layered_tar``: overlayfs' view of an upper directory over a lower one."""

    def build(self, tmp_path):
        lower, upper = tmp_path / "lower", tmp_path / "upper"
        for d in (lower / "etc", lower / "var/cache/sub", lower / "opt", upper / "etc", upper / "var/cache"):
            d.mkdir(parents=True, exist_ok=True)
        (lower / "etc/motd").write_text("lower")
        (lower / "etc/gone").write_text("gone")
        (lower / "var/cache/old").write_text("old")
        (lower / "var/cache/sub/deep").write_text("deep")
        (lower / "opt/tool").write_text("tool")
        (upper / "etc/motd").write_text("upper")  # copied up and changed
        (upper / "etc/added").write_text("added")
        (upper / "var/cache/fresh").write_text("fresh")
        os.symlink("motd", upper / "etc/link")
        os.link(upper / "etc/added", upper / "etc/added2")
        if not _mknod_whiteout(upper / "etc/gone") or not _mknod_whiteout(upper / "opt"):
            pytest.skip("creating an overlay whiteout (a 0/0 device) needs CAP_MKNOD")
        try:
            os.setxattr(upper / "var/cache", "trusted.overlay.opaque", b"y")
        except PermissionError:
            pytest.skip("marking an opaque directory needs CAP_SYS_ADMIN")
        return [str(upper), str(lower)]

    def test_union(self, tmp_path):
        layers = self.build(tmp_path)
        buf = io.BytesIO()
        write_layered_tar(layers, buf)
        buf.seek(0)
        with tarfile.open(fileobj=buf) as tar:
            members = {m.name: m for m in tar.getmembers()}
            contents = {n: tar.extractfile(m).read().decode() for n, m in members.items() if m.isreg()}
        assert sorted(members) == ["etc", "etc/added", "etc/added2", "etc/link", "etc/motd", "var",
                                   "var/cache", "var/cache/fresh"]  # fmt: skip
        assert contents == {"etc/added": "added", "etc/motd": "upper", "var/cache/fresh": "fresh"}
        assert members["etc/added2"].islnk() and members["etc/added2"].linkname == "etc/added"
        assert members["etc/link"].issym() and members["etc/link"].linkname == "motd"
        assert all(m.uname == "" for m in members.values())

    def test_stopped_never_started(self, tmp_path):
        lower = tmp_path / "lower"
        (lower / "bin").mkdir(parents=True)
        (lower / "bin/sh").write_text("sh")
        buf = io.BytesIO()
        write_layered_tar([str(tmp_path / "no-upper-yet"), str(lower)], buf)
        buf.seek(0)
        with tarfile.open(fileobj=buf) as tar:
            assert tar.getnames() == ["bin", "bin/sh"]


class TestExportStream:
    """``rootfs.export_tar``: the tar as chunks from a writer thread through a pipe."""

    def tree(self, tmp_path):
        lower = tmp_path / "lower"
        (lower / "data").mkdir(parents=True)
        (lower / "data/big").write_bytes(os.urandom(1 << 20))  # more than a pipe holds
        return [str(tmp_path / "upper"), str(lower)]

    async def test_whole_stream(self, tmp_path):
        from cnm.runtime.rootfs import export_tar

        data = b"".join([chunk async for chunk in export_tar(self.tree(tmp_path))])
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            assert tar.getnames() == ["data", "data/big"]
            assert tar.extractfile("data/big").read() == (tmp_path / "lower/data/big").read_bytes()

    async def test_reader_leaving_early_ends_the_writer(self, tmp_path):
        import threading

        from cnm.runtime.rootfs import export_tar

        layers = self.tree(tmp_path)
        fds = set(os.listdir("/proc/self/fd"))
        chunks = export_tar(layers)
        assert await anext(chunks)
        await chunks.aclose()  # the client went away
        assert not [t for t in threading.enumerate() if t.name == "cnm-export"]
        assert set(os.listdir("/proc/self/fd")) <= fds  # both ends of the pipe closed
