"""What the layer contracts cannot see by themselves.

The contracts live in one place: ``[tool.importlinter]`` in pyproject.toml, checked by
``lint-imports`` (``make lint``).  import-linter reads every static import; this file adds
what it cannot read, and proves the contracts bite:

* dynamic imports (``__import__``, ``importlib.import_module``, names built from strings)
  in src/ are turned into static imports in a copy of the package and the contracts are
  checked on that copy, so a lazy import obeys the same rules as any other; one whose
  target cannot be read from the code (no literal ``cnm.<layer>.`` prefix) is refused;
* every contract breaks when a module in a copy of src/ breaks it, whatever the form of
  the import (absolute, relative, ``from cnm import x``, inside a function, dynamic);
* nothing in the repo cites the team's shared folder outside it.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "cnm"
REPO = SRC.parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

# -- dynamic imports ----------------------------------------------------------------------------


def _literal_prefix(node: ast.expr) -> tuple[str, bool]:
    """The constant head of a string expression, and whether that is the whole string."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value, True
    if isinstance(node, ast.JoinedStr):  # f"cnm.cli.commands.{name}"
        head = ""
        for part in node.values:
            if not (isinstance(part, ast.Constant) and isinstance(part.value, str)):
                return head, False
            head += part.value
        return head, True
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):  # "cnm.x." + name
        head, whole = _literal_prefix(node.left)
        if not whole:
            return head, False
        tail, whole = _literal_prefix(node.right)
        return head + tail, whole
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):  # "cnm.x.%s" % name
        head, _ = _literal_prefix(node.left)
        return head.split("%", 1)[0], False
    if (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format"
    ):  # "cnm.x.{}".format(name)
        head, _ = _literal_prefix(node.func.value)
        return head.split("{", 1)[0], False
    return "", False


def _is_dynamic_import(call: ast.Call) -> bool:
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return name in ("import_module", "__import__") and bool(call.args)


def dynamic_imports(module: str, path: Path) -> list[tuple[int, str, bool]]:
    """(line, name or name prefix, whether the name is whole) of each dynamic import."""
    found = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and _is_dynamic_import(node):
            head, whole = _literal_prefix(node.args[0])
            if head.startswith("."):  # import_module(".x", package=__package__)
                dots = len(head) - len(head.lstrip("."))
                base = package.split(".")[: len(package.split(".")) - (dots - 1)]
                head = ".".join([*base, head[dots:]]) if head[dots:] else ".".join(base)
            found.append((node.lineno, head, whole))
    return found


def static_stand_ins(root: Path) -> dict[Path, list[str]]:
    """For each module under ``root`` (a ``cnm`` package) with dynamic imports of cnm, the
    ``import`` lines that say the same statically; AssertionError for a dynamic import
    whose target is unknowable (no literal prefix naming a cnm package) or absent."""
    stand_ins: dict[Path, list[str]] = {}
    for module, path in modules(root):
        for line, head, whole in dynamic_imports(module, path):
            where = f"{path.relative_to(root.parent)}:{line}"
            if not head.startswith("cnm.") and head != "cnm":
                assert whole or ("." in head and head.split(".")[0] != "cnm"), (
                    f"{where}: a dynamic import whose name cannot be read ({head!r}...): "
                    "import statically, or start the name with a literal 'cnm.<package>.'"
                )
                continue  # not cnm: nothing of the layers
            if whole:
                targets = [head]
            else:
                package = head.rpartition(".")[0]
                assert package.count(".") >= 1, (
                    f"{where}: a dynamic import of {head!r}... may reach any layer; "
                    "name the package literally ('cnm.<package>.')"
                )
                targets = [m for m, _ in modules(root) if m.startswith(package + ".")]
                assert targets, f"{where}: {package} has no modules"
            stand_ins.setdefault(path, []).extend(f"import {t}  # stand-in for line {line}" for t in targets)
    return stand_ins


def modules(root: Path) -> list[tuple[str, Path]]:
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        out.append((".".join(rel.parts).removesuffix(".__init__"), path))
    return out


# -- running the contracts on a copy of src/ ----------------------------------------------------


def contracts() -> dict[str, str]:
    """{contract id: contract name} from pyproject.toml."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["id"]: c["name"] for c in config["contracts"]}


def copy_of_src(tmp_path: Path) -> Path:
    shutil.copytree(SRC, tmp_path / "cnm", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path / "cnm"


def add_stand_ins(root: Path) -> None:
    for path, lines in static_stand_ins(root).items():
        path.write_text(path.read_text() + "\n" + "\n".join(lines) + "\n")


def lint_imports(where: Path) -> tuple[int, dict[str, str]]:
    """Run lint-imports on the ``cnm`` under ``where``: its exit status and, per broken
    contract name, the report of what broke it."""
    assert LINT_IMPORTS.exists(), "import-linter is missing: pip install -e '.[test]'"
    proc = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(where / "pyproject.toml")],
        cwd=where,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(where)},
        timeout=120,
    )
    text = proc.stdout + proc.stderr
    assert "Contracts:" in text, text  # it ran (a config error prints no tally)
    broken: dict[str, str] = {}
    if "Broken contracts" in text:
        report = text.split("Broken contracts", 1)[1]
        # each section: the contract's name, a line of dashes as long, then its violations
        heads = list(re.finditer(r"^(.+)\n(-+)$", report, re.M))
        for head, nxt in zip(heads, [*heads[1:], None], strict=True):
            if len(head.group(1)) == len(head.group(2)):
                broken[head.group(1)] = report[head.end() : nxt.start() if nxt else len(report)]
    return proc.returncode, broken


def test_the_contracts_hold_with_dynamic_imports_made_static(tmp_path: Path) -> None:
    """src/ keeps every contract, its dynamic imports counted as the imports they are."""
    root = copy_of_src(tmp_path)
    add_stand_ins(root)
    status, broken = lint_imports(tmp_path)
    assert (status, list(broken)) == (0, [])


def test_dynamic_imports_in_src_are_seen() -> None:
    """The CLI loads its commands lazily: those imports are found and made static."""
    stand_ins = static_stand_ins(SRC)
    cli_main = SRC / "cli" / "main.py"
    assert any("import cnm.cli.commands.network" in line for line in stand_ins.get(cli_main, []))


@pytest.mark.parametrize(
    "source",
    [
        "importlib.import_module(name)",
        "__import__(f'{package}.x')",
        "importlib.import_module('cnm.' + layer)",
        "importlib.import_module(f'cnm.{layer}.x')",
    ],
)
def test_a_dynamic_import_that_cannot_be_read_is_refused(tmp_path: Path, source: str) -> None:
    root = tmp_path / "cnm"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "bad.py").write_text(f"import importlib\n{source}\n")
    with pytest.raises(AssertionError, match="dynamic import"):
        static_stand_ins(root)


# One planted violation per contract (and per form of import); each is added to a copy of
# src/ as a new module or appended to an existing one.  (path, code, contract id)
PLANTED = [
    ("dns/_bad_relative.py", "from ..engine import controller\n", "layers"),
    ("model/_bad_package.py", "from cnm import store\n", "layers"),
    ("kernel/_bad_in_function.py", "def f():\n    import cnm.firewall.api\n", "layers"),
    ("store/_bad_dynamic.py", "import importlib\nimportlib.import_module('cnm.ipam.api')\n", "layers"),
    ("portmap/_bad_dynamic.py", "__import__(f'cnm.engine.{NAME}')\n", "layers"),
    ("dns/_bad_sibling.py", "from cnm.portmap import ranges\n", "services"),
    ("runtime/_bad_sibling.py", "from .. import dns\n", "services"),
    ("ipam/_bad.py", "from cnm.firewall import api\n", "firewall-ipam"),
    ("cli/_bad.py", "from cnm.model import values\n", "cli"),
    ("cli/_bad_dynamic.py", "__import__('cnm.api.app')\n", "cli"),
    ("drivers/_bad.py", "from . import bridge\n", "drivers"),
    ("firewall/render_nft.py", "from . import render_ipt\n", "firewall-nft"),
    ("firewall/render_ipt.py", "from cnm.firewall import nftables\n", "firewall-ipt"),
    ("engine/_bad_kernel.py", "from cnm.kernel.netlink import LinuxKernel\n", "backends"),
    ("ipam/_bad_store.py", "import cnm.store.sqlite\n", "backends"),
    ("engine/_bad_store.py", "from cnm.store import sqlite\n", "backends"),
    ("api/_bad_store.py", "from ..store.etcd import EtcdStore\n", "backends"),
    ("engine/_bad_fake.py", "from cnm.kernel import fake\n", "fakes"),
]


def test_every_contract_can_fail(tmp_path: Path) -> None:
    """Each planted violation breaks its contract, and every contract is broken by one."""
    root = copy_of_src(tmp_path)
    for rel, code, _ in PLANTED:
        path = root / rel
        path.write_text((path.read_text() + "\n" if path.exists() else "") + code)
    (root / "overlay").mkdir()  # a new package that no floor was given
    (root / "overlay" / "__init__.py").write_text("")
    add_stand_ins(root)
    status, broken = lint_imports(tmp_path)
    names = contracts()
    assert status != 0
    assert re.search(r"not listed as layers:\s+- cnm\.overlay$", broken[names["layers"]], re.M)
    assert {contract for _, _, contract in PLANTED} == set(names), "a contract without a planted violation"
    for rel, _, contract in PLANTED:
        module = "cnm." + rel.removesuffix(".py").replace("/", ".")
        assert names[contract] in broken, f"{contract} kept despite {rel}"
        assert re.search(rf"^[-\s]*{re.escape(module)} ->", broken[names[contract]], re.M), (
            f"{contract} broken, but not by {module}:\n{broken[names[contract]]}"
        )


# -- the repo stands on its own -----------------------------------------------------------------

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
