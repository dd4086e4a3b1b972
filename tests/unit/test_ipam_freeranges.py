"""FreeRanges (the per-pool free-address index) against a plain set, by hypothesis."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cnm.ipam.default import FreeRanges

FIRST, LAST = 10, 90

ops = st.lists(
    st.one_of(
        st.tuples(st.just("take"), st.integers(0, 100)),
        st.tuples(st.just("give"), st.integers(FIRST, LAST)),
        st.tuples(st.just("take_range"), st.integers(0, 100), st.integers(0, 30)),
        st.tuples(st.just("give_range"), st.integers(FIRST, LAST), st.integers(0, 30)),
        st.tuples(st.just("lowest"), st.integers(0, 100), st.integers(0, 100)),
        st.tuples(st.just("nth"), st.integers(0, 100), st.integers(0, 100), st.integers(0, 20)),
    ),
    max_size=80,
)


@settings(max_examples=400, deadline=None)
@given(st.sets(st.integers(0, 100)), ops)
def test_matches_a_set(used, operations):
    fr = FreeRanges(FIRST, LAST, used)
    model = set(range(FIRST, LAST + 1)) - used
    for op in operations:
        if op[0] == "take":
            assert fr.take(op[1]) == (op[1] in model)
            model.discard(op[1])
        elif op[0] == "give":
            fr.give(op[1])
            model.add(op[1])
        elif op[0] == "take_range":
            lo, hi = op[1], op[1] + op[2]
            fr.take_range(lo, hi)
            model -= set(range(lo, hi + 1))
        elif op[0] == "give_range":
            lo, hi = op[1], min(LAST, op[1] + op[2])
            fr.give_range(lo, hi)
            model |= set(range(lo, hi + 1))
        elif op[0] == "lowest":
            lo, hi = op[1], op[2]
            expected = min((v for v in model if lo <= v <= hi), default=None)
            assert fr.lowest(lo, hi) == expected
        else:
            lo, hi, n = op[1:]
            inside = sorted(v for v in model if lo <= v <= hi)
            assert fr.nth(lo, hi, n) == (inside[n] if n < len(inside) else None)
        # invariants: sorted, disjoint, not touching (fully merged), and the same members
        starts, ends = fr._starts, fr._ends
        assert all(s <= e for s, e in zip(starts, ends, strict=True))
        assert all(ends[i] + 1 < starts[i + 1] for i in range(len(starts) - 1))
        assert {v for v in range(0, 101) if v in fr} == model
        assert fr.count(0, 100) == len(model)
        for v in (FIRST, 50, LAST):
            end = fr.run_end(v)
            if v in model:
                assert end is not None and all(x in model for x in range(v, end + 1)) and end + 1 not in model
            else:
                assert end is None
