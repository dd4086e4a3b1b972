"""Docker's image JSON (``ImageSummary``, ``ImageInspect``, delete responses)."""

from __future__ import annotations

import platform
from typing import Any

from cnm.api.schemas_container import unix_time
from cnm.model.container import ZERO_TIME, Image
from cnm.runtime.images import Loaded

_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def image_summary_json(img: Image) -> dict[str, Any]:
    return {
        "Containers": -1,
        "Created": unix_time(img.created),
        "Id": img.id,
        "Labels": dict(img.labels),
        "ParentId": "",
        "RepoDigests": [],
        "RepoTags": list(img.repo_tags),
        "SharedSize": -1,
        "Size": img.size,
    }


def image_inspect_json(img: Image) -> dict[str, Any]:
    config: dict[str, Any] = {
        "User": img.user,
        "Env": list(img.env),
        "Cmd": list(img.cmd) if img.cmd else None,
        "WorkingDir": img.workdir,
        "Entrypoint": list(img.entrypoint) if img.entrypoint else None,
        "Volumes": None,
        "Labels": dict(img.labels) or None,
    }
    if img.exposed_ports:
        config["ExposedPorts"] = {p: {} for p in img.exposed_ports}
    return {
        "Id": img.id,
        "RepoTags": list(img.repo_tags),
        "RepoDigests": [],
        "Parent": "",
        "Comment": "" if img.layers else "Imported from -",
        "Created": img.created,
        "DockerVersion": "",
        "Author": "",
        "Config": config,
        # Docker before API 1.45 sent the config of the build container too; older clients
        # (docker-compose 1.x) read its Volumes.
        "ContainerConfig": dict(config),
        "Architecture": _ARCH,
        "Os": "linux",
        "Size": img.size,
        "GraphDriver": {"Data": {}, "Name": "overlay"},
        "RootFS": {"Type": "layers", "Layers": list(img.layers)},
        "Metadata": {"LastTagTime": ZERO_TIME},
    }


def load_stream_json(loaded: list[Loaded]) -> list[dict[str, str]]:
    """The messages ``POST /images/load`` streams: one per tag, or the id of an untagged
    image (Docker's ``Loaded image: NAME`` / ``Loaded image ID: ID``)."""
    out = []
    for item in loaded:
        if item.tags:
            out += [{"stream": f"Loaded image: {tag}\n"} for tag in item.tags]
        else:
            out.append({"stream": f"Loaded image ID: {item.image.id}\n"})
    return out


def image_delete_json(img: Image) -> list[dict[str, str]]:
    return [*({"Untagged": tag} for tag in img.repo_tags), {"Deleted": img.id}]
