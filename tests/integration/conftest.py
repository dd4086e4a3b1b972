"""Integration tier: every test here needs root and builds its own throwaway namespaces, so
each is marked ``root`` (the suite-wide conftest skips those, with the reason, for non-root)
-- except in a module that sets ``NEEDS_ROOT = False`` (the Store conformance suite)."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = getattr(item, "module", None)
        if HERE in Path(str(item.path)).parents and getattr(module, "NEEDS_ROOT", True):
            item.add_marker(pytest.mark.root)
