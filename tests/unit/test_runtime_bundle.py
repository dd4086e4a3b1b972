"""config.json generation and user resolution (cnm.runtime.bundle): pure, no root."""

from __future__ import annotations

import json
import os

import pytest

from cnm.errors import InvalidArgument, RuntimeFailure
from cnm.model.container import ContainerConfig, Image, Mount
from cnm.runtime import bundle
from cnm.runtime.bundle import User

IMAGE = Image(id="sha256:" + "a" * 64, repo_tags=("busybox:latest",), created="", cmd=("/bin/sh",))


def config(**kw) -> ContainerConfig:
    return ContainerConfig(image="busybox", **kw)


def make_spec(**kw) -> dict:
    args = dict(
        args=["sleep", "1d"],
        env=["PATH=/bin"],
        cwd="",
        user=User(0, 0),
        hostname="web",
        netns_path="/run/cnm/netns/abc",
        cgroups_path="/cnm/abc",
        binds=[("/data/c/hostname", "/etc/hostname"), ("/data/c/hosts", "/etc/hosts")],
    )
    args.update(kw)
    return bundle.oci_config(**args)


class TestProcessArgs:
    def test_cmd_given(self):
        assert bundle.process_args(config(cmd=("echo", "hi")), IMAGE) == ["echo", "hi"]

    def test_entrypoint_plus_cmd(self):
        assert bundle.process_args(config(entrypoint=("sh", "-c"), cmd=("id",)), IMAGE) == ["sh", "-c", "id"]

    def test_entrypoint_drops_image_cmd(self):
        assert bundle.process_args(config(entrypoint=("top",)), IMAGE) == ["top"]

    def test_image_cmd_fallback(self):
        image = Image(id=IMAGE.id, repo_tags=(), created="", cmd=("httpd", "-f"))
        assert bundle.process_args(config(), image) == ["httpd", "-f"]

    def test_no_command_is_refused_as_docker_does(self):
        image = Image(id=IMAGE.id, repo_tags=(), created="")  # an import carries no cmd
        with pytest.raises(InvalidArgument, match="No command specified"):
            bundle.process_args(config(), image)

    def test_empty_entrypoint_takes_the_image_cmd(self):
        assert bundle.process_args(config(entrypoint=("",)), IMAGE) == ["/bin/sh"]
        with pytest.raises(InvalidArgument, match="No command specified"):
            bundle.process_args(config(entrypoint=("",)), Image(id=IMAGE.id, repo_tags=(), created=""))


class TestProcessEnv:
    def test_image_env_hostname_then_config(self):
        env = bundle.process_env(config(env=("A=1",)), IMAGE, "web")
        assert env == [bundle.DEFAULT_PATH, "HOSTNAME=web", "A=1"]

    def test_config_overrides_in_place(self):
        env = bundle.process_env(config(env=("PATH=/x", "HOSTNAME=h2")), IMAGE, "web")
        assert env == ["PATH=/x", "HOSTNAME=h2"]

    def test_tty_adds_term(self):
        assert "TERM=xterm" in bundle.process_env(config(tty=True), IMAGE, "web")

    def test_path_added_when_image_has_none(self):
        image = Image(id=IMAGE.id, repo_tags=(), created="", env=("X=1",))
        assert bundle.process_env(config(), image, "h")[0] == bundle.DEFAULT_PATH


class TestOciConfig:
    def test_shape(self):
        spec = make_spec()
        assert spec["ociVersion"] == "1.0.2"
        assert spec["root"] == {"path": "rootfs", "readonly": False}
        assert spec["hostname"] == "web"
        proc = spec["process"]
        assert proc["terminal"] is False
        assert proc["args"] == ["sleep", "1d"]
        assert proc["cwd"] == "/"
        assert proc["user"] == {"uid": 0, "gid": 0}
        assert set(proc["capabilities"]["bounding"]) == set(bundle.DEFAULT_CAPABILITIES)
        assert "CAP_SYS_ADMIN" not in proc["capabilities"]["effective"]
        assert proc["rlimits"] == [
            {"type": "RLIMIT_NOFILE", "hard": bundle.NOFILE_LIMIT, "soft": bundle.NOFILE_LIMIT}
        ]
        assert spec["linux"]["cgroupsPath"] == "/cnm/abc"
        assert "/proc/kcore" in spec["linux"]["maskedPaths"]
        assert "/proc/sys" in spec["linux"]["readonlyPaths"]
        json.dumps(spec)  # serialisable as is

    def test_network_namespace_by_path(self):
        namespaces = make_spec()["linux"]["namespaces"]
        assert {"type": "network", "path": "/run/cnm/netns/abc"} in namespaces
        assert {ns["type"] for ns in namespaces} == {"pid", "ipc", "uts", "mount", "network"}

    def test_host_network_has_no_network_namespace(self):
        namespaces = make_spec(netns_path=None)["linux"]["namespaces"]
        assert "network" not in {ns["type"] for ns in namespaces}
        assert {ns["type"] for ns in namespaces} == {"pid", "ipc", "uts", "mount"}

    def test_mounts(self):
        mounts = {m["destination"]: m for m in make_spec()["mounts"]}
        assert mounts["/proc"]["type"] == "proc"
        assert mounts["/dev"]["type"] == "tmpfs"
        assert mounts["/dev/pts"]["type"] == "devpts"
        assert mounts["/dev/shm"]["type"] == "tmpfs"
        assert mounts["/dev/mqueue"]["type"] == "mqueue"
        assert mounts["/sys"]["type"] == "sysfs" and "ro" in mounts["/sys"]["options"]
        assert mounts["/sys/fs/cgroup"]["type"] == "cgroup"
        assert mounts["/etc/hostname"] == {
            "destination": "/etc/hostname",
            "type": "bind",
            "source": "/data/c/hostname",
            "options": ["rbind", "rprivate"],
        }
        assert mounts["/etc/hosts"]["source"] == "/data/c/hosts"
        # /dev comes before what is mounted below it
        order = [m["destination"] for m in make_spec()["mounts"]]
        assert order.index("/dev") < order.index("/dev/pts") < order.index("/dev/shm")

    def test_user_and_groups(self):
        proc = make_spec(user=User(1000, 100, (5, 20)), cwd="/srv", nofile=4096)["process"]
        assert proc["user"] == {"uid": 1000, "gid": 100, "additionalGids": [5, 20]}
        assert proc["cwd"] == "/srv"
        assert proc["rlimits"][0]["soft"] == 4096

    def test_nofile_limit_never_above_our_hard_limit(self):
        import resource

        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        limit = bundle.nofile_limit()
        assert limit <= bundle.NOFILE_LIMIT
        assert hard == resource.RLIM_INFINITY or limit <= hard

    def test_write_config(self, tmp_path):
        bundle.write_config(str(tmp_path), make_spec())
        with open(tmp_path / "config.json") as fh:
            assert json.load(fh)["hostname"] == "web"
        assert not (tmp_path / "config.json.tmp").exists()


@pytest.fixture
def rootfs(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\n"
        "# comment\n"
        "www:x:33:33:www:/var/www:/bin/false\n"
        "alice:x:1000:1000::/home/alice:/bin/sh\n"
    )
    (etc / "group").write_text(
        "root:x:0:\nwww:x:33:\nalice:x:1000:\nstaff:x:50:alice,bob\naudio:x:29:alice\n"
    )
    return str(tmp_path)


class TestResolveUser:
    def test_default_root(self, rootfs):
        assert bundle.resolve_user(rootfs, "") == User(0, 0, ())

    def test_by_name(self, rootfs):
        assert bundle.resolve_user(rootfs, "www") == User(33, 33, ())

    def test_supplementary_groups(self, rootfs):
        assert bundle.resolve_user(rootfs, "alice") == User(1000, 1000, (29, 50))

    def test_by_uid_known(self, rootfs):
        assert bundle.resolve_user(rootfs, "1000").gid == 1000

    def test_by_uid_unknown(self, rootfs):
        assert bundle.resolve_user(rootfs, "4242") == User(4242, 0, ())

    def test_uid_gid(self, rootfs):
        assert bundle.resolve_user(rootfs, "4242:4343") == User(4242, 4343, ())

    def test_name_and_group_name(self, rootfs):
        assert bundle.resolve_user(rootfs, "www:staff") == User(33, 50, ())

    def test_unknown_name(self, rootfs):
        with pytest.raises(
            RuntimeFailure, match="unable to find user nobody: no matching entries in passwd file"
        ):
            bundle.resolve_user(rootfs, "nobody")

    def test_unknown_group(self, rootfs):
        with pytest.raises(RuntimeFailure, match="unable to find group wheel"):
            bundle.resolve_user(rootfs, "www:wheel")

    def test_no_passwd_file(self, tmp_path):
        assert bundle.resolve_user(str(tmp_path), "123:45") == User(123, 45, ())
        with pytest.raises(RuntimeFailure):
            bundle.resolve_user(str(tmp_path), "www")

    def test_symlink_out_of_rootfs_is_not_followed(self, tmp_path):
        root = tmp_path / "root"
        (root / "etc").mkdir(parents=True)
        outside = tmp_path / "outside"
        outside.write_text("evil:x:7:7::/:/bin/sh\n")
        os.symlink(str(outside), root / "etc" / "passwd")
        with pytest.raises(RuntimeFailure):
            bundle.resolve_user(str(root), "evil")


class TestUserMounts:
    def test_binds_and_tmpfs(self):
        mounts = [
            Mount(type="bind", source="/srv/a", target="/data/sub", read_only=True),
            Mount(type="bind", source="/srv", target="/data", options=("rshared",)),
            Mount(type="tmpfs", target="/run", options=("size=1m", "exec")),
        ]
        spec = make_spec(mounts=mounts)
        user = [m for m in spec["mounts"] if m["destination"] in ("/data", "/data/sub", "/run")]
        assert user == [  # parents first
            {"destination": "/data", "type": "bind", "source": "/srv", "options": ["rbind", "rshared"]},
            {
                "destination": "/run",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "nodev", "size=1m", "exec"],
            },
            {
                "destination": "/data/sub",
                "type": "bind",
                "source": "/srv/a",
                "options": ["rbind", "rprivate", "ro"],
            },
        ]

    def test_a_user_mount_replaces_the_hosts_file_bind(self):
        spec = make_spec(mounts=[Mount(type="bind", source="/my/hosts", target="/etc/hosts")])
        hosts = [m for m in spec["mounts"] if m["destination"] == "/etc/hosts"]
        assert [m["source"] for m in hosts] == ["/my/hosts"]

    def test_merge_options(self):
        assert bundle.merge_options(["noexec", "nosuid", "size=1m", "exec", "size=2m"]) == [
            "nosuid",
            "exec",
            "size=2m",
        ]
