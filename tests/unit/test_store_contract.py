"""The Store protocol, checked against both backends (MemoryStore and SqliteStore)."""

from __future__ import annotations

import pytest

from cnm.errors import SystemFailure
from cnm.store.docs_memory import MemoryStore
from cnm.store.docs_sqlite import SqliteStore


@pytest.fixture(params=["memory", "sqlite"])
def store(request, tmp_path):
    s = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "cnm.db")
    yield s
    s.close()


def test_get_missing_is_none(store):
    assert store.get("network", "nope") is None


def test_put_get_roundtrip_and_copy(store):
    doc = {"name": "backend", "n": 3, "tags": ["a", "b"], "sub": {"x": None, "ok": True}}
    with store.transaction() as tx:
        tx.put("network", "id1", doc)
    doc["name"] = "mutated after put"
    got = store.get("network", "id1")
    assert got == {"name": "backend", "n": 3, "tags": ["a", "b"], "sub": {"x": None, "ok": True}}
    got["name"] = "mutated after get"
    assert store.get("network", "id1")["name"] == "backend"


def test_put_overwrites(store):
    with store.transaction() as tx:
        tx.put("k", "a", {"v": 1})
    with store.transaction() as tx:
        tx.put("k", "a", {"v": 2})
    assert store.get("k", "a") == {"v": 2}
    assert len(store.list("k")) == 1


def test_kinds_are_separate(store):
    with store.transaction() as tx:
        tx.put("network", "x", {"kind": "network"})
        tx.put("endpoint", "x", {"kind": "endpoint"})
    assert store.get("network", "x") == {"kind": "network"}
    assert store.list("endpoint") == [("x", {"kind": "endpoint"})]


def test_list_prefix_in_key_order(store):
    keys = ["n1/10.0.0.2", "n1/10.0.0.10", "n1/10.0.0.1", "n10/10.1.0.2", "n2/x", "n1", "n1/", "m"]
    with store.transaction() as tx:
        for i, k in enumerate(keys):
            tx.put("ipam.address", k, {"i": i})
    assert [k for k, _ in store.list("ipam.address", "n1/")] == sorted(k for k in keys if k.startswith("n1/"))
    assert [k for k, _ in store.list("ipam.address", "n1")] == sorted(k for k in keys if k.startswith("n1"))
    assert [k for k, _ in store.list("ipam.address")] == sorted(keys)
    assert store.list("ipam.address", "zz") == []
    assert store.list("other") == []


def test_list_prefix_with_like_metacharacters_and_unicode(store):
    keys = ["a%b", "a_b", "axb", "a%", "é1", "é2", "ê", "\U0010ffff\U0010ffffz", "\U0010ffff", "a\ud7ffq"]
    with store.transaction() as tx:
        for k in keys:
            tx.put("k", k, {})
    assert [k for k, _ in store.list("k", "a%")] == ["a%", "a%b"]
    assert [k for k, _ in store.list("k", "a_")] == ["a_b"]
    assert [k for k, _ in store.list("k", "é")] == ["é1", "é2"]
    assert [k for k, _ in store.list("k", "\U0010ffff")] == ["\U0010ffff", "\U0010ffff\U0010ffffz"]
    assert [k for k, _ in store.list("k", "a\ud7ff")] == ["a\ud7ffq"]


def test_delete_is_idempotent(store):
    with store.transaction() as tx:
        tx.put("k", "a", {})
    with store.transaction() as tx:
        tx.delete("k", "a")
        tx.delete("k", "a")
        tx.delete("k", "never-there")
    assert store.get("k", "a") is None


def test_transaction_reads_own_writes(store):
    with store.transaction() as tx:
        tx.put("k", "a", {"v": 1})
        assert tx.get("k", "a") == {"v": 1}
        assert tx.list("k") == [("a", {"v": 1})]
        tx.delete("k", "a")
        assert tx.get("k", "a") is None


def test_exception_rolls_back(store):
    with store.transaction() as tx:
        tx.put("k", "kept", {"v": 1})
    with pytest.raises(RuntimeError):
        with store.transaction() as tx:
            tx.put("k", "new", {"v": 2})
            tx.put("k", "kept", {"v": 99})
            tx.delete("k", "kept")
            raise RuntimeError("boom")
    assert store.list("k") == [("kept", {"v": 1})]


def test_nested_transaction_rolls_back_only_itself(store):
    with store.transaction() as outer:
        outer.put("k", "outer", {})
        with pytest.raises(ValueError):
            with store.transaction() as inner:
                inner.put("k", "inner", {})
                raise ValueError
        with store.transaction() as inner2:
            inner2.put("k", "inner2", {})
    assert [k for k, _ in store.list("k")] == ["inner2", "outer"]


def test_outer_failure_undoes_committed_inner(store):
    with pytest.raises(KeyError):
        with store.transaction() as outer:
            with store.transaction() as inner:
                inner.put("k", "inner", {})
            outer.put("k", "outer", {})
            raise KeyError
    assert store.list("k") == []


def test_txn_unusable_after_block(store):
    with store.transaction() as tx:
        pass
    with pytest.raises(SystemFailure):
        tx.put("k", "a", {})


def test_non_json_document_refused(store):
    with pytest.raises(SystemFailure, match="not JSON"):
        with store.transaction() as tx:
            tx.put("k", "a", {"bad": object()})
    assert store.get("k", "a") is None


def test_closed_store_refuses(store):
    store.close()
    store.close()  # idempotent
    with pytest.raises(SystemFailure):
        store.get("k", "a")
