"""Ranges on one axis (thresholds, age rules, plausibility limits) and criteria: a range with
the guideline line it comes from. The one interval type of the service."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from marshmallow import ValidationError, fields, post_load, validates_schema

from cds.knowledge.citations import CitationRef, CitationRefSchema
from cds.knowledge.loader import Strict

@dataclass(frozen=True)
class Interval:
    """A range on one axis: lower bound (``above`` > / ``at_least`` >=) and upper bound
    (``below`` < / ``at_most`` <=); either side may be open."""

    lower: float | None = None
    lower_inclusive: bool = False
    upper: float | None = None
    upper_inclusive: bool = False

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "Interval":
        lower, lower_inc = (data["at_least"], True) if "at_least" in data else (data.get("above"), False)
        upper, upper_inc = (data["at_most"], True) if "at_most" in data else (data.get("below"), False)
        return cls(None if lower is None else float(lower), lower_inc,
                   None if upper is None else float(upper), upper_inc)

    def mapped(self, table: Mapping[float, float]) -> "Interval":
        """The same interval with each bound replaced by ``table[bound]`` (a cut-off as a
        guideline states it in another unit); KeyError for a bound the table lacks."""
        return Interval(None if self.lower is None else table[self.lower], self.lower_inclusive,
                        None if self.upper is None else table[self.upper], self.upper_inclusive)

    def contains_point(self, x: float) -> bool:
        if self.lower is not None and (x < self.lower or (x == self.lower and not self.lower_inclusive)):
            return False
        if self.upper is not None and (x > self.upper or (x == self.upper and not self.upper_inclusive)):
            return False
        return True

    def relation(self, value: float, comparator: str | None = None) -> str:
        """Where a reported value lies: 'inside', 'outside' or 'unknown'.

        A comparator ('<8', '>150') makes the value a half-line; it is 'inside' only when
        the whole half-line is, 'outside' only when none of it is, else 'unknown' (no guess).
        """
        if comparator in (None, ""):
            return "inside" if self.contains_point(value) else "outside"
        # the reported set of possible true values, as an Interval
        if comparator in ("<", "<="):
            reported = Interval(None, False, value, comparator == "<=")
        elif comparator in (">", ">="):
            reported = Interval(value, comparator == ">=", None, False)
        else:
            return "unknown"
        if self.covers(reported):
            return "inside"
        if not self.intersects(reported):
            return "outside"
        return "unknown"

    def covers(self, other: "Interval") -> bool:
        if self.lower is not None:
            if other.lower is None or other.lower < self.lower:
                return False
            if other.lower == self.lower and other.lower_inclusive and not self.lower_inclusive:
                return False
        if self.upper is not None:
            if other.upper is None or other.upper > self.upper:
                return False
            if other.upper == self.upper and other.upper_inclusive and not self.upper_inclusive:
                return False
        return True

    def intersects(self, other: "Interval") -> bool:
        lo, lo_inc = _max_lower((self.lower, self.lower_inclusive), (other.lower, other.lower_inclusive))
        hi, hi_inc = _min_upper((self.upper, self.upper_inclusive), (other.upper, other.upper_inclusive))
        if lo is None or hi is None:
            return True
        return lo < hi or (lo == hi and lo_inc and hi_inc)

    def describe(self, unit: str = "") -> str:
        """Human text of the rule, e.g. '< 20 ng/mL', '≤ -2.5', '≥ 20 and < 30 ng/mL'."""
        u = f" {unit}" if unit else ""
        parts = []
        if self.lower is not None:
            parts.append(f"{'≥' if self.lower_inclusive else '>'} {fmt_number(self.lower)}")
        if self.upper is not None:
            parts.append(f"{'≤' if self.upper_inclusive else '<'} {fmt_number(self.upper)}")
        return " and ".join(parts) + u


def _max_lower(a: tuple[float | None, bool], b: tuple[float | None, bool]) -> tuple[float | None, bool]:
    if a[0] is None:
        return b
    if b[0] is None:
        return a
    if a[0] != b[0]:
        return a if a[0] > b[0] else b
    return (a[0], a[1] and b[1])


def _min_upper(a: tuple[float | None, bool], b: tuple[float | None, bool]) -> tuple[float | None, bool]:
    if a[0] is None:
        return b
    if b[0] is None:
        return a
    if a[0] != b[0]:
        return a if a[0] < b[0] else b
    return (a[0], a[1] and b[1])


def fmt_number(x: float) -> str:
    """Numbers as a clinician reads them: up to 2 decimals, no trailing zeros, '-' sign."""
    if x == 0:
        return "0"
    text = f"{x:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def fmt_on_side(x: float, interval: "Interval | None", *, fixed: int | None = None) -> str:
    """``x`` as ``fmt_number`` shows it (or with ``fixed`` decimals: 1 for scores), with as
    many more decimals (up to 6) as it takes for the shown number to lie on the same side of
    ``interval``'s bounds as ``x`` itself: an ALM/BMI of 0.78896 below a 0.789 cut-off is
    shown as 0.78896, never as 0.79; a T-score of -2.45 is -2.45, never -2.5."""
    text = f"{x:.{fixed}f}" if fixed is not None else fmt_number(x)
    if interval is None or (interval.lower is None and interval.upper is None):
        return text
    inside = interval.contains_point(x)
    decimals = fixed if fixed is not None else 2
    while interval.contains_point(float(text)) != inside and decimals < 6:
        decimals += 1
        whole, _, frac = f"{x:.{decimals}f}".partition(".")
        frac = frac.rstrip("0").ljust(fixed or 0, "0")   # no trailing zeros past the fixed ones
        text = f"{whole}.{frac}" if frac else whole
    return text


@dataclass(frozen=True)
class Criterion:
    """One threshold with its citation (what the card shows under 'How it was classified')."""

    interval: Interval
    citation: str
    where: str

    @classmethod
    def of(cls, interval: Interval, ref: CitationRef) -> "Criterion":
        return cls(interval, ref.id, ref.where)


# --------------------------------------------------------------------------- schemas
BOUND_KEYS = ("above", "at_least", "below", "at_most")


def check_bounds(data: Mapping[str, Any]) -> None:
    if "above" in data and "at_least" in data:
        raise ValidationError("give either 'above' or 'at_least', not both", "at_least")
    if "below" in data and "at_most" in data:
        raise ValidationError("give either 'below' or 'at_most', not both", "at_most")
    if not any(k in data for k in BOUND_KEYS):
        raise ValidationError("needs at least one bound (above, at_least, below, at_most)", "_schema")
    for key in BOUND_KEYS:
        if key in data and not math.isfinite(data[key]):
            raise ValidationError("must be a finite number", key)
    lo = data.get("above", data.get("at_least"))
    hi = data.get("below", data.get("at_most"))
    if lo is not None and hi is not None and lo >= hi:
        raise ValidationError(f"empty range: lower bound {lo} is not below upper bound {hi}", "_schema")


class BoundsSchema(Strict):
    """``above`` / ``at_least`` / ``below`` / ``at_most``: at least one, a non-empty range.
    Subclasses add fields and build their object with ``Interval.from_mapping(data)``."""

    above = fields.Float()
    at_least = fields.Float()
    below = fields.Float()
    at_most = fields.Float()

    @validates_schema
    def _bounds(self, data: dict[str, Any], **_: Any) -> None:
        check_bounds(data)


def check_disjoint(where: str, intervals: list[Interval]) -> None:
    """No two ranges overlap (a value is in at most one band); ValidationError at ``where``."""
    for i, a in enumerate(intervals):
        for j, b in enumerate(intervals):
            if j > i and a.intersects(b):
                raise ValidationError(f"{where}[{i}] and {where}[{j}] overlap "
                                      f"({a.describe()} / {b.describe()})", where)


class IntervalSchema(BoundsSchema):
    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> Interval:
        return Interval.from_mapping(data)


class CriterionSchema(BoundsSchema):
    """A range and the guideline line that states it."""

    citation = fields.Nested(CitationRefSchema, required=True)

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> Criterion:
        return Criterion.of(Interval.from_mapping(data), data["citation"])
