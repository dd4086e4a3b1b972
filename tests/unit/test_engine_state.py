"""engine.state: the indexed record tables behind the hot-path queries."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cnm.engine.state import IndexedTable, State
from cnm.model.endpoint import EndpointRecord, SandboxRecord
from cnm.store.docs_memory import MemoryStore


def ep(i: int, container: str, network: str, seq: int = 0) -> EndpointRecord:
    return EndpointRecord(
        id=f"ep{i}",
        network_id=network,
        container_id=container,
        sandbox_id="sb",
        name=container,
        created_seq=seq,
    )


def test_index_follows_every_kind_of_change():
    table: IndexedTable[EndpointRecord] = IndexedTable("container_id", "network_id")
    table["ep1"] = ep(1, "c1", "n1")
    table["ep2"] = ep(2, "c1", "n2")
    table.setdefault("ep3", ep(3, "c2", "n1"))
    assert [e.id for e in table.by("container_id", "c1")] == ["ep1", "ep2"]
    assert [e.id for e in table.by("network_id", "n1")] == ["ep1", "ep3"]
    # a record moving to another container leaves the old bucket
    table["ep2"] = replace(table["ep2"], container_id="c2")
    assert [e.id for e in table.by("container_id", "c1")] == ["ep1"]
    assert [e.id for e in table.by("container_id", "c2")] == ["ep3", "ep2"]
    # replaced in place keeps its position
    table["ep1"] = replace(table["ep1"], name="renamed")
    assert table.by("network_id", "n1")[0].name == "renamed"
    assert table.pop("ep1").id == "ep1"
    assert table.pop("missing", None) is None
    with pytest.raises(KeyError):
        table.pop("missing")
    del table["ep3"]
    assert table.by("network_id", "n1") == []
    table.update({"ep4": ep(4, "c3", "n3")})
    key, _ = table.popitem()
    assert key == "ep4" and table.by("container_id", "c3") == []
    table.clear()
    assert table.by("container_id", "c2") == [] and not table


def test_state_queries_use_the_indexes_and_survive_commit_and_direct_writes():
    state = State(MemoryStore())
    state.commit(put=[ep(1, "c1", "n1", seq=1), ep(2, "c1", "n2", seq=0), ep(3, "c2", "n1")])
    state.commit(put=[SandboxRecord(id="sb1", container_id="c1", key="/run/x", hostname="h")])
    assert [e.id for e in state.endpoints_of_container("c1")] == ["ep2", "ep1"]  # by created_seq
    assert {e.id for e in state.endpoints_of_network("n1")} == {"ep1", "ep3"}
    assert state.sandbox_of("c1").id == "sb1" and state.sandbox_of("c2") is None
    # the engine writes endpoints directly while a start is in progress, and pops on undo
    state.endpoints["ep9"] = ep(9, "c2", "n2")
    assert [e.id for e in state.endpoints_of_container("c2")] == ["ep3", "ep9"]
    state.endpoints.pop("ep9", None)
    state.commit(delete=[state.endpoints["ep3"]])
    assert state.endpoints_of_container("c2") == [] and state.endpoints_of_network("n2")[0].id == "ep2"
    state.load()  # reload from the store rebuilds the indexes
    assert [e.id for e in state.endpoints_of_container("c1")] == ["ep2", "ep1"]
    assert state.sandbox_of("c1").id == "sb1"
