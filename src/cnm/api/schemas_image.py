"""Docker's image JSON (``ImageSummary``, ``ImageInspect``, delete responses)."""

from __future__ import annotations

import platform
from typing import Any

from cnm.api.schemas_container import unix_time
from cnm.model.container import ZERO_TIME, Image

_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def image_summary_json(img: Image) -> dict[str, Any]:
    return {
        "Containers": -1,
        "Created": unix_time(img.created),
        "Id": img.id,
        "Labels": {},
        "ParentId": "",
        "RepoDigests": [],
        "RepoTags": list(img.repo_tags),
        "SharedSize": -1,
        "Size": img.size,
    }


def image_inspect_json(img: Image) -> dict[str, Any]:
    config: dict[str, Any] = {
        "Env": list(img.env),
        "Cmd": list(img.cmd) if img.cmd else None,
        "WorkingDir": img.workdir,
        "Entrypoint": None,
        "Labels": None,
    }
    if img.exposed_ports:
        config["ExposedPorts"] = {p: {} for p in img.exposed_ports}
    return {
        "Id": img.id,
        "RepoTags": list(img.repo_tags),
        "RepoDigests": [],
        "Parent": "",
        "Comment": "Imported from -",
        "Created": img.created,
        "DockerVersion": "",
        "Author": "",
        "Config": config,
        "Architecture": _ARCH,
        "Os": "linux",
        "Size": img.size,
        "GraphDriver": {"Data": {}, "Name": "overlay"},
        "RootFS": {"Type": "layers", "Layers": []},
        "Metadata": {"LastTagTime": ZERO_TIME},
    }


def image_delete_json(img: Image) -> list[dict[str, str]]:
    return [*({"Untagged": tag} for tag in img.repo_tags), {"Deleted": img.id}]
