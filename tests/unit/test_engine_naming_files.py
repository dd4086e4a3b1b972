"""engine.naming: a container's /etc files are rewritten in place only when their content
changes, and the host's resolv.conf is parsed again only when it changed."""

from __future__ import annotations

import os
from pathlib import Path

from cnm.engine.naming import Naming
from cnm.engine.state import State
from cnm.model.container import Container, ContainerConfig
from cnm.model.endpoint import SandboxRecord
from cnm.store.memory import MemoryStore


class Runtime:
    def __init__(self, root: Path) -> None:
        self.root = root

    def container_dir(self, container_id: str) -> str:
        path = self.root / container_id
        path.mkdir(exist_ok=True)
        return str(path)


def setup(tmp_path: Path):
    resolv = tmp_path / "host-resolv.conf"
    resolv.write_text("nameserver 192.0.2.53\n")
    naming = Naming(State(MemoryStore()), Runtime(tmp_path), host_resolv_conf=str(resolv))
    container = Container(id="c1" * 32, name="web", created="", config=ContainerConfig(image="busybox"))
    sandbox = SandboxRecord(id="sb1", container_id=container.id, key="/run/x", hostname="web")
    return naming, container, sandbox, resolv


def test_unchanged_files_are_not_rewritten_but_outside_edits_are_repaired(tmp_path, monkeypatch):
    naming, container, sandbox, _ = setup(tmp_path)
    writes: list[str] = []
    real_open = os.open

    def counting_open(path, flags, *args):
        if flags & os.O_WRONLY:
            writes.append(path)
        return real_open(path, flags, *args)

    monkeypatch.setattr("cnm.engine.naming.os.open", counting_open)
    naming.write_files(container, sandbox, [], host_mode=False)
    paths = naming.paths(container.id)
    inodes = {p: os.stat(p).st_ino for p in (paths.hostname, paths.hosts, paths.resolv_conf)}
    assert Path(paths.hostname).read_text() == "web\n"
    assert "nameserver 192.0.2.53" in Path(paths.resolv_conf).read_text()
    assert len(writes) == 3
    # Same content: no write at all.
    naming.write_files(container, sandbox, [], host_mode=False)
    assert len(writes) == 3
    # Someone else changed a file (longer or shorter): it is rewritten, in place.
    Path(paths.hostname).write_text("somebody-else-wrote-this-long-name\n")
    naming.write_files(container, sandbox, [], host_mode=False)
    assert Path(paths.hostname).read_text() == "web\n" and writes[3:] == [paths.hostname]
    assert {p: os.stat(p).st_ino for p in inodes} == inodes
    # A shorter content than before leaves no stale tail.
    naming.write_files(
        container,
        SandboxRecord(id="sb1", container_id=container.id, key="/run/x", hostname="w"),
        [],
        host_mode=False,
    )
    assert Path(paths.hostname).read_text() == "w\n"
    naming.forget(container.id)
    assert not any(p.startswith(str(tmp_path / container.id)) for p in naming._written)


def test_host_resolv_conf_is_parsed_again_only_when_it_changes(tmp_path):
    naming, container, sandbox, resolv = setup(tmp_path)
    first = naming._host_resolv()
    assert naming._host_resolv() is first  # cached
    resolv.write_text("nameserver 198.51.100.7\nnameserver 198.51.100.8\n")
    second = naming._host_resolv()
    assert second is not first and list(second.nameservers) == ["198.51.100.7", "198.51.100.8"]
    resolv.unlink()
    assert list(naming._host_resolv().nameservers) == []
