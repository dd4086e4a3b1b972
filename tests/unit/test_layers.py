"""The layering of docs/architecture.md, checked on the source.

A module imports only from layers below its own (or its own package); the siblings ``dns``,
``portmap`` and ``runtime`` do not know each other; drivers and firewall backends never
import a sibling; the CLI imports nothing of cnm but ``cnm.errors``.  Every kind of import
counts: ``import``, ``from … import``, relative imports (resolved against the module's
package), and ``importlib.import_module`` / ``__import__`` with a literal name.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "cnm"
REPO = SRC.parents[1]

# bottom to top
LAYERS = [
    "errors", "model", "store", "kernel", "firewall", "ipam", "drivers", "dns", "portmap",
    "runtime", "engine", "api", "daemon", "cli",
]  # fmt: skip
RANK = {name: i for i, name in enumerate(LAYERS)}
# pairs that must not know each other even though one sits above the other
SIBLINGS = {"dns", "portmap", "runtime"}
FORBIDDEN = {("ipam", "firewall"), ("firewall", "ipam"), ("dns", "engine"), ("portmap", "engine")}
FORBIDDEN |= {(a, b) for a in SIBLINGS for b in SIBLINGS if a != b}
SHARED_TOP = {"cnm"}  # cnm/__init__.py: version only


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "cnm"


def _resolve_relative(module: str, is_package: bool, level: int, name: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def imports(module: str, path: Path) -> list[str]:
    """Every cnm module ``path`` imports, by any of the means listed above."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                target = _resolve_relative(module, is_package, node.level, node.module)
                found.append(target)
                found += [f"{target}.{a.name}" for a in node.names]  # `from . import x` may be a module
            elif node.module:
                found.append(node.module)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append(node.args[0].value)
    return [m for m in found if m == "cnm" or m.startswith("cnm.")]


def modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        out.append((".".join(rel.parts).removesuffix(".__init__"), path))
    return out


def violations(module: str, path: Path) -> list[str]:
    mine = layer_of(module)
    if mine not in RANK:
        return []
    problems = []
    for target in imports(module, path):
        theirs = layer_of(target)
        if theirs in SHARED_TOP or theirs == mine:
            if mine == "drivers" and theirs == "drivers":
                if not (target in ("cnm.drivers.api", "cnm.drivers") or module == "cnm.drivers.registry"):
                    problems.append(f"{module} imports a sibling driver {target}")
            if mine == "firewall" and module.endswith(("nftables", "iptables")):
                other = "iptables" if module.endswith("nftables") else "nftables"
                if target.endswith((other, "render_" + other[:3])):
                    problems.append(f"{module} imports a sibling backend {target}")
            continue
        if mine == "cli" and target != "cnm.errors":
            problems.append(f"the CLI talks HTTP only; {module} imports {target}")
        elif (mine, theirs) in FORBIDDEN:
            problems.append(f"{module} ({mine}) must not import {target} ({theirs})")
        elif theirs in RANK and RANK[theirs] > RANK[mine]:
            problems.append(f"{module} ({mine}) imports {target} ({theirs}) from a higher layer")
    return problems


@pytest.mark.parametrize("module,path", modules(), ids=lambda v: v if isinstance(v, str) else "")
def test_layering(module: str, path: Path) -> None:
    assert violations(module, path) == []


@pytest.mark.parametrize(
    "source",
    [
        "from cnm.engine.controller import Controller",
        "import cnm.engine",
        "from ..engine import controller",
        "from .. import engine",
        "importlib.import_module('cnm.engine.state')",
        "__import__('cnm.engine')",
        "from cnm.runtime import runc",  # a sibling on the same floor
    ],
)
def test_the_linter_sees_every_kind_of_import(tmp_path: Path, source: str) -> None:
    """A dns module importing the engine (or its sibling runtime) is caught whatever the form."""
    path = tmp_path / "bad.py"
    path.write_text(f"import importlib\n{source}\n")
    assert violations("cnm.dns.bad", path), source


def test_the_linter_allows_what_is_legal(tmp_path: Path) -> None:
    path = tmp_path / "ok.py"
    path.write_text("from . import records\nfrom cnm.model.values import Name\nimport cnm.errors\n")
    assert violations("cnm.dns.ok", path) == []


NEEDLES = [
    "../" + "shared/",
    "shared/" + "research/",
    "shared/" + "DESIGN",
]  # split: this file is scanned too


def test_nothing_in_the_repo_cites_paths_outside_it() -> None:
    """A clone must stand on its own: no file points at the team's shared folder."""
    offenders = []
    for top, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in {"images", "build", "__pycache__"}]
        for name in files:
            path = Path(top, name)
            if path.suffix not in {".py", ".md", ".sh", ".toml", ".cfg", ".service", ".socket", ""}:
                continue
            try:
                text = path.read_text()
            except (UnicodeDecodeError, OSError):
                continue
            if any(needle in text for needle in NEEDLES):
                offenders.append(str(path.relative_to(REPO)))
    assert offenders == []
