"""DESIGN.md's layering, checked on the source: a module imports only from layers below
its own (or its own package), drivers and firewall backends never import siblings, and the
CLI imports nothing of the engine's."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "cnm"

# bottom to top, as in DESIGN.md's picture
LAYERS = [
    "errors", "model", "store", "kernel", "firewall", "ipam", "drivers", "dns", "portmap",
    "runtime", "engine", "api", "daemon", "cli",
]
RANK = {name: i for i, name in enumerate(LAYERS)}
# pairs on different rungs that must still not know each other
FORBIDDEN = {("ipam", "firewall"), ("firewall", "ipam"), ("dns", "engine"), ("portmap", "engine")}
# modules any layer may use: the contracts ("api.py") of lower layers are the seams
SHARED_TOP = {"cnm"}  # cnm/__init__.py: version only


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "cnm"


def imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    return [m for m in found if m == "cnm" or m.startswith("cnm.")]


def modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        out.append((".".join(rel.parts).removesuffix(".__init__"), path))
    return out


@pytest.mark.parametrize("module,path", modules(), ids=lambda v: v if isinstance(v, str) else "")
def test_layering(module: str, path: Path) -> None:
    mine = layer_of(module)
    if mine not in RANK:
        return
    for target in imports(path):
        theirs = layer_of(target)
        if theirs in SHARED_TOP or theirs == mine:
            if mine == "drivers" and theirs == "drivers":
                allowed = target in ("cnm.drivers.api", "cnm.drivers") or module == "cnm.drivers.registry"
                assert allowed, f"{module} imports a sibling driver {target}"
            if mine == "firewall" and theirs == "firewall" and module.endswith(("nftables", "iptables")):
                assert not target.endswith(("nftables", "iptables", "render_ipt", "render_nft")) or (
                    target.rsplit(".", 1)[-1].removeprefix("render_") in module
                ), f"{module} imports a sibling backend {target}"
            continue
        if mine == "cli" and target != "cnm.errors":  # the one exception tree is shared
            pytest.fail(f"the CLI talks HTTP only; {module} imports {target}")
        assert (mine, theirs) not in FORBIDDEN, f"{module} must not import {target}"
        assert RANK[theirs] < RANK[mine], f"{module} ({mine}) imports {target} ({theirs}) from a higher layer"
