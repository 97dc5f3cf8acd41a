"""Interval.relation: a value reported with a comparator ('<8', '>150') is classified only when
every value it could stand for falls on the same side, never by guess (property-based)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cds.knowledge.intervals import Interval

bound = st.one_of(st.none(), st.integers(-50, 50).map(float))


@st.composite
def intervals(draw):
    lo, hi = draw(bound), draw(bound)
    if lo is not None and hi is not None and lo >= hi:
        lo, hi = hi - 1, lo + 1
    return Interval(lo, draw(st.booleans()), hi, draw(st.booleans()))


@settings(max_examples=300, deadline=None)
@given(intervals(), st.integers(-60, 60).map(float), st.sampled_from(["<", "<=", ">", ">="]),
       st.lists(st.floats(0, 30, allow_nan=False), min_size=1, max_size=12))
def test_comparator_relation_never_guesses(interval, value, comparator, offsets):
    relation = interval.relation(value, comparator)
    # values the report could stand for
    if comparator == "<":
        candidates = [value - o for o in offsets if o > 0] + [value - 1e-9]
    elif comparator == "<=":
        candidates = [value - o for o in offsets] + [value]
    elif comparator == ">":
        candidates = [value + o for o in offsets if o > 0] + [value + 1e-9]
    else:
        candidates = [value + o for o in offsets] + [value]
    holds = {"<": lambda x: x < value, "<=": lambda x: x <= value,
             ">": lambda x: x > value, ">=": lambda x: x >= value}[comparator]
    inside = [interval.contains_point(x) for x in candidates if holds(x)]
    if relation == "inside":
        assert all(inside)
    elif relation == "outside":
        assert not any(inside)
    else:
        assert relation == "unknown"


@pytest.mark.parametrize("interval,value,comparator,expected", [
    (Interval(None, False, 20.0, False), 8.0, "<", "inside"),       # <8 is deficient (< 20)
    (Interval(None, False, 20.0, False), 20.0, "<", "inside"),      # <20 is entirely below 20
    (Interval(None, False, 20.0, False), 20.0, "<=", "unknown"),    # <=20 includes 20 itself
    (Interval(None, False, 20.0, False), 25.0, "<", "unknown"),     # <25: below or above 20?
    (Interval(150.0, True, None, False), 150.0, ">", "inside"),     # >150 is >= 150
    (Interval(100.0, False, None, False), 100.0, ">=", "unknown"),  # >=100 includes 100 (not > 100)
    (Interval(20.0, True, 30.0, False), 30.0, ">=", "outside"),
    (Interval(20.0, True, 30.0, False), 25.0, None, "inside"),
    (Interval(20.0, True, 30.0, False), 30.0, None, "outside"),
])
def test_relation_examples(interval, value, comparator, expected):
    assert interval.relation(value, comparator) == expected


def test_describe_reads_like_the_guideline():
    assert Interval(None, False, 20.0, False).describe("ng/mL") == "< 20 ng/mL"
    assert Interval(20.0, True, 30.0, False).describe("ng/mL") == "≥ 20 and < 30 ng/mL"
    assert Interval(None, False, -2.5, True).describe() == "≤ -2.5"
