"""Clinical knowledge loaded from rules/ once at start-up.

``load_yaml`` is the one way a rules file is read: parsed with PyYAML's safe
loader and validated with a marshmallow schema; any problem stops start-up with
a RulesError naming the file and the field.

``load_rules(config)`` reads every rules file, checks them against each other
(every citation, suggestion, orderable, flag and template variable a file names
must exist), validates each suggestion's FHIR template with fhir.resources.R4B,
picks the configured guideline profiles and returns one immutable ``Rules``
object. Nothing here knows a threshold or a code: those are in the YAML.
"""
from __future__ import annotations

import copy
import math
import re
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml
from marshmallow import (RAISE, Schema, ValidationError, fields, pre_load, validate,
                         validates_schema)

from cds.config import Config, ConfigError
from cds.hooks.wire import flatten_errors


#: libyaml's safe loader when PyYAML was built with it (about 10x faster start-up), else Python's.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class RulesError(ValueError):
    """A rules file is malformed or inconsistent; the message names the file and field."""

    def __init__(self, path: Path | str, problems: list[str] | str):
        self.path = str(path)
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__(f"{self.path}: " + "; ".join(self.problems))


class UnknownProfileError(RulesError, ConfigError):
    """MSKCDS_*_PROFILE names a profile the rules file does not define (a setting error too)."""


def load_yaml(path: Path, schema: Schema | None = None) -> Any:
    """Read one rules file; validate it with ``schema`` (marshmallow) when given."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError(path, f"cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.load(text, Loader=_SAFE_LOADER)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        raise RulesError(path, f"not valid YAML: {exc}") from None
    if schema is None:
        return data
    if not isinstance(data, dict):
        raise RulesError(path, "top level must be a mapping")
    try:
        return schema.load(data)
    except ValidationError as exc:
        raise RulesError(path, [i.diagnostics for i in flatten_errors(exc.messages)]) from None


def _load(path: Path, schema: Schema) -> Any:
    """load_yaml, with marshmallow's dict-value markers taken out of field paths
    ("profiles.x.value.bands.0.below" → "profiles.x.bands[0].below")."""
    try:
        return load_yaml(path, schema)
    except RulesError as exc:
        raise RulesError(exc.path, [_tidy(p) for p in exc.problems]) from None


def _tidy(problem: str) -> str:
    head, sep, rest = problem.partition(": ")
    head = head.replace(".value.", ".").replace(".key", " (name)")
    head = re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", head)
    return head + sep + rest


# =========================================================================== vocabulary
# The names the code and the YAML share (a contract, not knowledge): findings the evaluator can
# make, the flags it can set, and the muscle-mass measures it can compute.
FINDINGS: tuple[str, ...] = (
    "vitamin-d-deficiency", "vitamin-d-insufficiency", "vitamin-d-excess",
    "osteoporosis", "low-bone-mass", "bmd-below-expected-for-age", "dxa-screening-due",
    "low-muscle-mass", "sarcopenia-probable", "sarcopenia-confirmed", "sarcopenia-severe",
    "osteosarcopenia",
)
VITAMIN_D_FINDINGS = ("vitamin-d-deficiency", "vitamin-d-insufficiency", "vitamin-d-excess")
FLAGS: tuple[str, ...] = (
    "kidney-failure",       # CKD stage 4-5 or dialysis on record (vitamin D cards)
    "on-vitamin-d",         # a vitamin D supplement on record
    "on-problem-list",      # the finding's condition is already on the problem list
    "on-therapy",           # osteoporosis therapy on record
    "dxa-old",              # bone finding and the last DXA is older than the repeat interval
    "fragility-fracture",   # a fragility fracture on record
    "mass-indeterminate",   # muscle mass measured but not classifiable (comparator, unusable)
    "gait-not-measured",    # sarcopenia confirmed, gait speed not on record
    "no-adult-regimen",     # vitamin D: patient not known to be old enough for the adult regimen
)
MASS_MEASURES = ("asm", "asm-index", "alm-bmi")
INDICATORS = ("info", "warning", "critical")
SITES = ("lumbar-spine", "total-hip", "femur", "femoral-neck", "radius", "calcaneus")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


# =========================================================================== intervals
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
        if self._covers(reported):
            return "inside"
        if not self._intersects(reported):
            return "outside"
        return "unknown"

    def _covers(self, other: "Interval") -> bool:
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

    def _intersects(self, other: "Interval") -> bool:
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


# =========================================================================== schemas
class _Strict(Schema):
    class Meta:
        unknown = RAISE


class CitationRefSchema(_Strict):
    id = fields.String(required=True, validate=validate.Length(min=1))
    where = fields.String(required=True, validate=validate.Length(min=3))


_BOUND_KEYS = ("above", "at_least", "below", "at_most")


class _BoundsMixin:
    @validates_schema
    def _bounds(self, data: dict, **kwargs: Any) -> None:
        _check_bounds(data)


def _check_bounds(data: Mapping[str, Any]) -> None:
    if "above" in data and "at_least" in data:
        raise ValidationError("give either 'above' or 'at_least', not both", "at_least")
    if "below" in data and "at_most" in data:
        raise ValidationError("give either 'below' or 'at_most', not both", "at_most")
    if not any(k in data for k in _BOUND_KEYS):
        raise ValidationError("needs at least one bound (above, at_least, below, at_most)", "_schema")
    for key in _BOUND_KEYS:
        if key in data and not math.isfinite(data[key]):
            raise ValidationError("must be a finite number", key)
    lo = data.get("above", data.get("at_least"))
    hi = data.get("below", data.get("at_most"))
    if lo is not None and hi is not None and lo >= hi:
        raise ValidationError(f"empty range: lower bound {lo} is not below upper bound {hi}", "_schema")


class IntervalSchema(_BoundsMixin, _Strict):
    above = fields.Float()
    at_least = fields.Float()
    below = fields.Float()
    at_most = fields.Float()


class CitationSchema(_Strict):
    label = fields.String(required=True, validate=validate.Length(min=3, max=120))
    title = fields.String(required=True, validate=validate.Length(min=3))
    authors = fields.String(required=True)
    journal = fields.String(required=True)
    year = fields.Integer(required=True, strict=True, validate=validate.Range(min=1900, max=2100))
    doi = fields.String(validate=validate.Regexp(r"^10\.\d{4,9}/\S+$", error="not a DOI (10.xxxx/...)"))
    url = fields.Url(required=True, schemes={"https", "http"})
    evidence = fields.String(required=True, validate=validate.Length(min=3))


class CitationsFileSchema(_Strict):
    version = fields.Integer(required=True, validate=validate.Equal(1))
    citations = fields.Dict(keys=fields.String(validate=validate.Regexp(r"^[a-z0-9][a-z0-9\-]*$")),
                            values=fields.Nested(CitationSchema), required=True,
                            validate=validate.Length(min=1))


# --- vitamin D
class GradeSchema(_BoundsMixin, _Strict):
    name = fields.String(required=True, validate=validate.Regexp(r"^[a-z][a-z\-]*$"))
    above = fields.Float()
    at_least = fields.Float()
    below = fields.Float()
    at_most = fields.Float()
    indicator = fields.String(validate=validate.OneOf(INDICATORS))
    citation = fields.Nested(CitationRefSchema, required=True)


class VitaminDBandSchema(_BoundsMixin, _Strict):
    finding = fields.String(required=True, validate=validate.OneOf(VITAMIN_D_FINDINGS))
    status = fields.String(required=True, validate=validate.Length(min=3, max=60))
    above = fields.Float()
    at_least = fields.Float()
    below = fields.Float()
    at_most = fields.Float()
    citation = fields.Nested(CitationRefSchema, required=True)
    regimen = fields.String(validate=validate.Length(min=10, max=500))
    grades = fields.List(fields.Nested(GradeSchema))


class VitaminDProfileSchema(_Strict):
    label = fields.String(required=True, validate=validate.Length(min=3, max=60))
    citation = fields.String(required=True)
    bands = fields.List(fields.Nested(VitaminDBandSchema), required=True,
                        validate=validate.Length(min=1))


class KidneyFailureSchema(_Strict):
    conditions = fields.List(fields.String(validate=validate.Length(min=1)), required=True,
                             validate=validate.Length(min=1))
    citation = fields.Nested(CitationRefSchema, required=True)


class VitaminDFileSchema(_Strict):
    version = fields.Integer(required=True, validate=validate.Equal(1))
    kind = fields.String(required=True, validate=validate.Length(min=1))
    unit = fields.String(required=True, validate=validate.Length(min=1))
    max_age_days = fields.Integer(required=True, strict=True, validate=validate.Range(min=1, max=3650))
    max_age_basis = fields.String(required=True)
    kidney_failure = fields.Nested(KidneyFailureSchema, required=True)
    supplement_medications = fields.List(fields.String(), required=True)
    regimen_min_age = fields.Integer(required=True, strict=True, validate=validate.Range(min=1, max=100))
    regimen_min_age_citation = fields.Nested(CitationRefSchema, required=True)
    stated_equivalents = fields.Dict(
        keys=fields.String(validate=validate.Length(min=1)),
        values=fields.Dict(keys=fields.Float(), values=fields.Float()), load_default=dict)
    profiles = fields.Dict(keys=fields.String(), values=fields.Nested(VitaminDProfileSchema),
                           required=True, validate=validate.Length(min=1))


# --- bone
class BandSchema(_BoundsMixin, _Strict):
    finding = fields.String(required=True, validate=validate.OneOf(FINDINGS))
    above = fields.Float()
    at_least = fields.Float()
    below = fields.Float()
    at_most = fields.Float()
    citation = fields.Nested(CitationRefSchema, required=True)


class AgeRuleSchema(_BoundsMixin, _Strict):
    above = fields.Float()
    at_least = fields.Float()
    below = fields.Float()
    at_most = fields.Float()
    citation = fields.Nested(CitationRefSchema, required=True)


class ScreeningSchema(_Strict):
    finding = fields.String(required=True, validate=validate.Equal("dxa-screening-due"))
    label = fields.String(required=True, validate=validate.Length(min=3, max=60))
    dxa_kinds = fields.List(fields.String(), required=True, validate=validate.Length(min=1))
    suppress_conditions = fields.List(fields.String(), required=True)
    suppress_medications = fields.List(fields.String(), required=True)
    female = fields.Nested(AgeRuleSchema, required=True)
    male = fields.Nested(AgeRuleSchema, required=True)


class TScoreSchema(_Strict):
    osteoporosis = fields.Nested(BandSchema, required=True)
    low_bone_mass = fields.Nested(BandSchema, required=True, data_key="low-bone-mass")


class ZScoreSchema(_Strict):
    below_expected = fields.Nested(BandSchema, required=True, data_key="below-expected")


class BoneFileSchema(_Strict):
    version = fields.Integer(required=True, validate=validate.Equal(1))
    label = fields.String(required=True, validate=validate.Length(min=3, max=60))
    diagnostic_sites = fields.List(fields.String(validate=validate.OneOf(SITES)), required=True,
                                   validate=validate.Length(min=1))
    diagnostic_sites_citation = fields.Nested(CitationRefSchema, required=True)
    t_score_min_age = fields.Integer(required=True, strict=True, validate=validate.Range(min=18, max=100))
    t_score_age_citation = fields.Nested(CitationRefSchema, required=True)
    t_score = fields.Nested(TScoreSchema, required=True)
    z_score = fields.Nested(ZScoreSchema, required=True)
    repeat_dxa_after_days = fields.Integer(required=True, strict=True, validate=validate.Range(min=30))
    repeat_dxa_citation = fields.Nested(CitationRefSchema, required=True)
    fracture_conditions = fields.List(fields.String(), required=True)
    screening = fields.Nested(ScreeningSchema, required=True)

    @validates_schema
    def _no_calcaneus(self, data: dict, **kwargs: Any) -> None:
        if "calcaneus" in data.get("diagnostic_sites", ()):
            raise ValidationError("calcaneus is a peripheral site and never diagnoses", "diagnostic_sites")


# --- sarcopenia
class SexCutoffSchema(_Strict):
    male = fields.Nested(IntervalSchema, required=True)
    female = fields.Nested(IntervalSchema, required=True)
    citation = fields.Nested(CitationRefSchema, required=True)


class MassCutoffSchema(SexCutoffSchema):
    measure = fields.String(required=True, validate=validate.OneOf(MASS_MEASURES))


class SarcopeniaProfileSchema(_Strict):
    label = fields.String(required=True, validate=validate.Length(min=3, max=60))
    citation = fields.String(required=True)
    grip = fields.Nested(SexCutoffSchema, required=True)
    mass = fields.List(fields.Nested(MassCutoffSchema), required=True, validate=validate.Length(min=1))
    gait = fields.Nested(SexCutoffSchema, required=True)


class SarcopeniaFileSchema(_Strict):
    version = fields.Integer(required=True, validate=validate.Equal(1))
    min_age = fields.Integer(required=True, strict=True, validate=validate.Range(min=1, max=100))
    min_age_citation = fields.Nested(CitationRefSchema, required=True)
    profiles = fields.Dict(keys=fields.String(), values=fields.Nested(SarcopeniaProfileSchema),
                           required=True, validate=validate.Length(min=1))


# --- cards
class FlaggedTextSchema(_Strict):
    text = fields.String(required=True, validate=validate.Length(min=3))
    unless = fields.List(fields.String(validate=validate.OneOf(FLAGS)))
    only = fields.List(fields.String(validate=validate.OneOf(FLAGS)))

    @pre_load
    def _plain_string(self, data: Any, **kwargs: Any) -> Any:
        return {"text": data} if isinstance(data, str) else data


class SuggestionRefSchema(_Strict):
    id = fields.String(required=True)
    unless = fields.List(fields.String(validate=validate.OneOf(FLAGS)))
    only = fields.List(fields.String(validate=validate.OneOf(FLAGS)))


class CardSchema(_Strict):
    title = fields.String(required=True, validate=validate.Length(min=3, max=80))
    indicator = fields.String(required=True, validate=validate.OneOf(INDICATORS))
    summary = fields.String(required=True, validate=validate.Length(min=3, max=139))
    summary_by_grade = fields.Dict(keys=fields.String(), values=fields.String(
        validate=validate.Length(min=3, max=139)))
    short = fields.String(validate=validate.Length(min=3, max=80))
    detail = fields.String(required=True, validate=validate.Length(min=3))
    next_steps = fields.List(fields.Nested(FlaggedTextSchema), required=True,
                             validate=validate.Length(min=1))
    notes = fields.Dict(keys=fields.String(validate=validate.OneOf(FLAGS)), values=fields.String())
    suggestions = fields.List(fields.Nested(SuggestionRefSchema))
    selection_behavior = fields.String(validate=validate.OneOf(["any", "at-most-one"]))
    override_reasons = fields.List(fields.String(), required=True, validate=validate.Length(min=1))
    problem_category = fields.String()
    links = fields.List(fields.String())
    evidence = fields.String(validate=validate.Length(min=3))


class SuggestionSchema(_Strict):
    label = fields.String(required=True, validate=validate.Length(min=3, max=120))
    action = fields.String(required=True, validate=validate.Length(min=3))
    recommended = fields.Boolean(load_default=False)
    resource = fields.Dict(required=True)

    @validates_schema
    def _resource_type(self, data: dict, **kwargs: Any) -> None:
        rtype = data.get("resource", {}).get("resourceType")
        if rtype not in ("ServiceRequest", "MedicationRequest", "Condition"):
            raise ValidationError("resourceType must be ServiceRequest, MedicationRequest or Condition",
                                  "resource")


class OverrideReasonsSchema(_Strict):
    system = fields.String(required=True, validate=validate.Regexp(r"^urn:mskcds(:[a-z\-]+)*$"))
    codes = fields.Dict(keys=fields.String(validate=validate.Regexp(r"^[a-z][a-z\-]*$")),
                        values=fields.String(validate=validate.Length(min=3)), required=True,
                        validate=validate.Length(min=1))


class ServiceTextSchema(_Strict):
    title = fields.String(required=True, validate=validate.Length(min=3, max=120))
    description = fields.String(required=True, validate=validate.Length(min=10, max=1000))


class CardsFileSchema(_Strict):
    version = fields.Integer(required=True, validate=validate.Equal(1))
    service = fields.Nested(ServiceTextSchema, required=True)
    finding_system = fields.String(required=True, validate=validate.Regexp(r"^urn:mskcds(:[a-z\-]+)*$"))
    override_reasons = fields.Nested(OverrideReasonsSchema, required=True)
    labels = fields.Dict(keys=fields.String(), values=fields.Raw(), required=True)
    kinds = fields.Dict(keys=fields.String(), values=fields.String(), required=True)
    measures = fields.Dict(keys=fields.String(validate=validate.OneOf(MASS_MEASURES)),
                           values=fields.String(), required=True)
    sites = fields.Dict(keys=fields.String(validate=validate.OneOf(SITES)), values=fields.String(),
                        required=True)
    units = fields.Dict(keys=fields.String(), values=fields.String(), required=True)
    findings = fields.Dict(keys=fields.String(validate=validate.OneOf(FINDINGS)),
                           values=fields.Nested(CardSchema), required=True)
    suggestions = fields.Dict(keys=fields.String(validate=validate.Regexp(r"^[a-z][a-z0-9\-]*$")),
                              values=fields.Nested(SuggestionSchema), required=True)

    @validates_schema
    def _all_findings(self, data: dict, **kwargs: Any) -> None:
        missing = [f for f in FINDINGS if f not in data.get("findings", {})]
        if missing:
            raise ValidationError(f"no card defined for: {', '.join(missing)}", "findings")


# =========================================================================== loaded objects
@dataclass(frozen=True)
class Criterion:
    """One threshold with its citation (what the card shows under 'How it was classified')."""

    interval: Interval
    citation: str
    where: str


@dataclass(frozen=True)
class Grade:
    name: str
    criterion: Criterion
    indicator: str | None


@dataclass(frozen=True)
class VitaminDBand:
    finding: str
    status: str
    criterion: Criterion
    regimen: str | None
    grades: tuple[Grade, ...]


@dataclass(frozen=True)
class VitaminDRules:
    profile_name: str
    label: str
    citation: str
    kind: str
    unit: str
    max_age_days: int
    bands: tuple[VitaminDBand, ...]
    kidney_conditions: tuple[str, ...]
    kidney_citation: Criterion
    supplement_medications: tuple[str, ...]
    regimen_min_age: int = 0
    regimen_age_citation: Criterion | None = None
    #: unit (UCUM) → {canonical cut-off: the cut-off as the guideline states it in that unit}
    stated_equivalents: Mapping[str, Mapping[float, float]] = field(default_factory=dict)

    def relation(self, interval: Interval, m: Any) -> str:
        """Where result ``m`` lies against ``interval``: compared in the unit it was reported
        in when the guideline states its cut-offs in that unit, else in the canonical unit."""
        table = self.stated_equivalents.get(m.original_unit)
        if table is not None and all(b in table for b in (interval.lower, interval.upper)
                                     if b is not None):
            return interval.mapped(table).relation(m.original_value, m.comparator)
        return interval.relation(m.value, m.comparator)


@dataclass(frozen=True)
class BoneRules:
    label: str
    screening_label: str
    diagnostic_sites: tuple[str, ...]
    sites_citation: Criterion
    t_score_min_age: int
    age_citation: Criterion
    osteoporosis: Criterion
    low_bone_mass: Criterion
    below_expected: Criterion
    repeat_dxa_after_days: int
    fracture_conditions: tuple[str, ...]
    screening_kinds: tuple[str, ...]
    suppress_conditions: tuple[str, ...]
    suppress_medications: tuple[str, ...]
    screening_age: Mapping[str, Criterion]   # "female"/"male" → age rule


@dataclass(frozen=True)
class SexCutoff:
    male: Interval
    female: Interval
    citation: str
    where: str

    def for_sex(self, sex: str) -> Criterion:
        return Criterion(self.male if sex == "male" else self.female, self.citation, self.where)


@dataclass(frozen=True)
class SarcopeniaRules:
    profile_name: str
    label: str
    citation: str
    grip: SexCutoff
    mass: tuple[tuple[str, SexCutoff], ...]    # (measure, cut-off)
    gait: SexCutoff
    min_age: int = 0
    age_citation: Criterion | None = None


@dataclass(frozen=True)
class SuggestionTemplate:
    id: str
    label: str
    action: str
    recommended: bool
    build: Callable[[Mapping[str, str]], dict[str, Any]]   # variables → FHIR resource dict


@dataclass(frozen=True)
class CardRules:
    service: Mapping[str, str]
    finding_system: str
    override_system: str
    override_reasons: Mapping[str, str]
    labels: Mapping[str, Any]
    kinds: Mapping[str, str]
    measures: Mapping[str, str]
    sites: Mapping[str, str]
    units: Mapping[str, str]
    findings: Mapping[str, Mapping[str, Any]]
    suggestions: Mapping[str, SuggestionTemplate]


@dataclass(frozen=True)
class Citation:
    id: str
    label: str
    title: str
    url: str
    year: int
    evidence: str
    doi: str | None = None


@dataclass
class Rules:
    source_dir: Path
    citations: Mapping[str, Citation] = field(default_factory=dict)
    vitamin_d: VitaminDRules | None = None
    bone: BoneRules | None = None
    sarcopenia: SarcopeniaRules | None = None
    cards: CardRules | None = None
    terminology: Any | None = None

    def prefetch_templates(self) -> dict[str, str]:
        if self.terminology is not None and hasattr(self.terminology, "prefetch_templates"):
            return dict(self.terminology.prefetch_templates())
        return {"patient": "Patient/{{context.patientId}}"}

    def service_text(self) -> dict[str, str]:
        """Title and description of the CDS service (rules/cards.yaml ``service:``)."""
        return dict(self.cards.service) if self.cards else {}

    def orderable(self, name: str) -> dict[str, str] | None:
        if self.terminology is None:
            return None
        try:
            found = self.terminology.orderable(name)
        except (KeyError, LookupError):
            return None
        return dict(found) if found else None

    def suggestions_for(self, finding: str, flags: set[str] | frozenset[str]) -> tuple[str, ...]:
        """Suggestion ids of ``finding``'s card whose flag conditions hold."""
        card = self.cards.findings[finding] if self.cards else {}
        return tuple(ref["id"] for ref in card.get("suggestions", ()) if applies(ref, flags))


def applies(item: Mapping[str, Any], flags: set[str] | frozenset[str]) -> bool:
    """A card item with ``unless``/``only`` flag lists: does it apply under ``flags``?"""
    if any(f in flags for f in item.get("unless", ())):
        return False
    only = item.get("only")
    return not only or any(f in flags for f in only)


# =========================================================================== loading
FILES = {"citations": "citations.yaml", "vitamin_d": "vitamin_d.yaml", "bone": "bone.yaml",
         "sarcopenia": "sarcopenia.yaml", "cards": "cards.yaml"}


def load_rules(config: Config, *, terminology: Any | None = None) -> Rules:
    """Load, validate and cross-check every rules file; pick the configured profiles."""
    rules_dir = Path(config.rules_dir)
    paths = {key: rules_dir / name for key, name in FILES.items()}
    if terminology is None:
        terminology = _load_terminology(rules_dir)

    raw_citations = _load(paths["citations"], CitationsFileSchema())["citations"]
    citations = {cid: Citation(id=cid, label=c["label"], title=c["title"], url=c["url"],
                               year=c["year"], evidence=c["evidence"], doi=c.get("doi"))
                 for cid, c in raw_citations.items()}

    vitamin_d = _build_vitamin_d(paths["vitamin_d"], _load(paths["vitamin_d"], VitaminDFileSchema()),
                                 config.vitamin_d_profile, citations)
    vitamin_d = complete_stated_equivalents(paths["vitamin_d"], vitamin_d, terminology)
    bone = _build_bone(paths["bone"], _load(paths["bone"], BoneFileSchema()), citations)
    sarcopenia = _build_sarcopenia(paths["sarcopenia"], _load(paths["sarcopenia"], SarcopeniaFileSchema()),
                                   config.sarcopenia_profile, citations)
    cards = _build_cards(paths["cards"], _load(paths["cards"], CardsFileSchema()), citations,
                         terminology)
    rules = Rules(source_dir=rules_dir, citations=citations, vitamin_d=vitamin_d, bone=bone,
                  sarcopenia=sarcopenia, cards=cards, terminology=terminology)
    _check_categories(paths, rules)
    return rules


def _load_terminology(rules_dir: Path) -> Any | None:
    """The value sets (normalize's module). Absent module → None (no codes, no suggestions)."""
    try:
        from . import terminology as terminology_mod  # type: ignore[attr-defined]
    except ImportError:  # TODO(issue 3): remove once cds/terminology.py has landed
        return None
    loader = getattr(terminology_mod, "load_terminology", None)
    if loader is None or not (rules_dir / "valuesets.yaml").exists():
        return None
    return loader(rules_dir)


def _criterion(path: Path, where: str, data: Mapping[str, Any], citations: Mapping[str, Citation],
               ref: Mapping[str, str] | None = None) -> Criterion:
    ref = ref if ref is not None else data["citation"]
    if ref["id"] not in citations:
        raise RulesError(path, f"{where}.citation.id: unknown citation {ref['id']!r} "
                               f"(not in citations.yaml)")
    interval = Interval.from_mapping(data) if any(k in data for k in _BOUND_KEYS) else Interval()
    return Criterion(interval, ref["id"], ref["where"].strip())


def _need_citation(path: Path, where: str, cid: str, citations: Mapping[str, Citation]) -> None:
    if cid not in citations:
        raise RulesError(path, f"{where}: unknown citation {cid!r} (not in citations.yaml)")


def _select(path: Path, profiles: Mapping[str, Any], name: str, setting: str) -> Any:
    if name not in profiles:
        raise UnknownProfileError(path, f"profiles: no profile {name!r} (set by {setting}); "
                                        f"defined: {', '.join(sorted(profiles))}")
    return profiles[name]


def _build_vitamin_d(path: Path, data: Mapping[str, Any], profile_name: str,
                     citations: Mapping[str, Citation]) -> VitaminDRules:
    built: dict[str, VitaminDRules] = {}
    for name, prof in data["profiles"].items():
        _need_citation(path, f"profiles.{name}.citation", prof["citation"], citations)
        bands = []
        for i, band in enumerate(prof["bands"]):
            where = f"profiles.{name}.bands[{i}]"
            crit = _criterion(path, where, band, citations)
            grades = []
            for j, grade in enumerate(band.get("grades", ())):
                g = _criterion(path, f"{where}.grades[{j}]", grade, citations)
                if not _interval_within(g.interval, crit.interval):
                    raise RulesError(path, f"{where}.grades[{j}]: grade {grade['name']!r} is not "
                                           f"inside its band ({crit.interval.describe()})")
                grades.append(Grade(grade["name"], g, grade.get("indicator")))
            bands.append(VitaminDBand(band["finding"], band["status"], crit,
                                      (band.get("regimen") or "").strip() or None, tuple(grades)))
        _check_disjoint(path, f"profiles.{name}.bands", [b.criterion.interval for b in bands])
        seen = [b.finding for b in bands]
        if len(seen) != len(set(seen)):
            raise RulesError(path, f"profiles.{name}.bands: a finding appears in two bands")
        built[name] = VitaminDRules(
            profile_name=name, label=prof["label"], citation=prof["citation"], kind=data["kind"],
            unit=data["unit"], max_age_days=data["max_age_days"], bands=tuple(bands),
            kidney_conditions=tuple(data["kidney_failure"]["conditions"]),
            kidney_citation=_criterion(path, "kidney_failure", data["kidney_failure"], citations),
            supplement_medications=tuple(data["supplement_medications"]),
            regimen_min_age=data["regimen_min_age"],
            regimen_age_citation=_criterion(path, "regimen_min_age_citation", {}, citations,
                                            data["regimen_min_age_citation"]),
            stated_equivalents={unit: dict(table)
                                for unit, table in data["stated_equivalents"].items()})
    return _select(path, built, profile_name, "MSKCDS_VITAMIN_D_PROFILE")


def complete_stated_equivalents(path: Path, vitamin_d: VitaminDRules,
                                terminology: Any) -> VitaminDRules:
    """Check each stated equivalent against the exact unit conversion (within 1%: catches a
    typo such as 25 for 250 nmol/L) and add the exact conversion for every cut-off the
    guideline table does not state, so that changing one threshold needs one edit."""
    if terminology is None or not vitamin_d.stated_equivalents:
        return vitamin_d
    bounds = {b for band in vitamin_d.bands
              for iv in [band.criterion.interval] + [g.criterion.interval for g in band.grades]
              for b in (iv.lower, iv.upper) if b is not None}
    completed: dict[str, dict[float, float]] = {}
    for unit, table in vitamin_d.stated_equivalents.items():
        def exact(value: float) -> float:
            try:
                return terminology.convert(vitamin_d.kind, value, vitamin_d.unit, unit)
            except KeyError:
                raise RulesError(path, f"stated_equivalents.{unit}: not a unit accepted for "
                                       f"{vitamin_d.kind} (units.yaml)") from None
        for canonical, stated in table.items():
            if abs(stated - exact(canonical)) > 0.01 * abs(exact(canonical)):
                raise RulesError(path, f"stated_equivalents.{unit}.{canonical:g}: {stated:g} is "
                                       f"not within 1% of the conversion ({exact(canonical):.1f})")
        completed[unit] = {b: table.get(b, exact(b)) for b in bounds} | dict(table)
    return dataclasses.replace(vitamin_d, stated_equivalents=completed)


def _build_bone(path: Path, data: Mapping[str, Any], citations: Mapping[str, Citation]) -> BoneRules:
    c = lambda where, d, ref=None: _criterion(path, where, d, citations, ref)  # noqa: E731
    osteo = c("t_score.osteoporosis", data["t_score"]["osteoporosis"])
    low = c("t_score.low-bone-mass", data["t_score"]["low_bone_mass"])
    _check_disjoint(path, "t_score", [osteo.interval, low.interval])
    if data["t_score"]["osteoporosis"]["finding"] != "osteoporosis" or \
            data["t_score"]["low_bone_mass"]["finding"] != "low-bone-mass" or \
            data["z_score"]["below_expected"]["finding"] != "bmd-below-expected-for-age":
        raise RulesError(path, "t_score/z_score: finding names must be osteoporosis, low-bone-mass, "
                               "bmd-below-expected-for-age")
    scr = data["screening"]
    return BoneRules(
        label=data["label"], screening_label=scr["label"],
        diagnostic_sites=tuple(data["diagnostic_sites"]),
        sites_citation=c("diagnostic_sites_citation", {}, data["diagnostic_sites_citation"]),
        t_score_min_age=data["t_score_min_age"],
        age_citation=c("t_score_age_citation", {}, data["t_score_age_citation"]),
        osteoporosis=osteo, low_bone_mass=low,
        below_expected=c("z_score.below-expected", data["z_score"]["below_expected"]),
        repeat_dxa_after_days=data["repeat_dxa_after_days"],
        fracture_conditions=tuple(data["fracture_conditions"]),
        screening_kinds=tuple(scr["dxa_kinds"]),
        suppress_conditions=tuple(scr["suppress_conditions"]),
        suppress_medications=tuple(scr["suppress_medications"]),
        screening_age={"female": c("screening.female", scr["female"]),
                       "male": c("screening.male", scr["male"])},
    )


def _build_sarcopenia(path: Path, data: Mapping[str, Any], profile_name: str,
                      citations: Mapping[str, Citation]) -> SarcopeniaRules:
    built: dict[str, SarcopeniaRules] = {}
    for name, prof in data["profiles"].items():
        where = f"profiles.{name}"
        _need_citation(path, f"{where}.citation", prof["citation"], citations)

        def cut(w: str, d: Mapping[str, Any]) -> SexCutoff:
            ref = d["citation"]
            _need_citation(path, f"{w}.citation.id", ref["id"], citations)
            return SexCutoff(Interval.from_mapping(d["male"]), Interval.from_mapping(d["female"]),
                             ref["id"], ref["where"].strip())

        measures = [m["measure"] for m in prof["mass"]]
        if len(measures) != len(set(measures)):
            raise RulesError(path, f"{where}.mass: a measure is listed twice")
        built[name] = SarcopeniaRules(
            profile_name=name, label=prof["label"], citation=prof["citation"],
            grip=cut(f"{where}.grip", prof["grip"]),
            mass=tuple((m["measure"], cut(f"{where}.mass[{i}]", m)) for i, m in enumerate(prof["mass"])),
            gait=cut(f"{where}.gait", prof["gait"]),
            min_age=data["min_age"],
            age_citation=_criterion(path, "min_age_citation", {}, citations, data["min_age_citation"]))
    return _select(path, built, profile_name, "MSKCDS_SARCOPENIA_PROFILE")


def _interval_within(inner: Interval, outer: Interval) -> bool:
    return outer._covers(inner)


def _check_disjoint(path: Path, where: str, intervals: list[Interval]) -> None:
    for i, a in enumerate(intervals):
        for j, b in enumerate(intervals):
            if j > i and a._intersects(b):
                raise RulesError(path, f"{where}[{i}] and {where}[{j}] overlap "
                                       f"({a.describe()} / {b.describe()})")


# --------------------------------------------------------------------------- cards
SAMPLE_VARIABLES = {"patient_id": "example", "regimen": "example regimen text",
                    "reason": "example reason"}
SUGGESTION_VARIABLES = frozenset(SAMPLE_VARIABLES)


def _build_cards(path: Path, data: Mapping[str, Any], citations: Mapping[str, Citation],
                 terminology: Any | None) -> CardRules:
    from cds.cards.builder import CARD_VARIABLES  # the template variables each card can use

    reasons = data["override_reasons"]["codes"]
    for name, card in data["findings"].items():
        where = f"findings.{name}"
        allowed = CARD_VARIABLES[name]
        texts = {"summary": card["summary"], "detail": card["detail"]}
        texts.update({f"summary_by_grade.{k}": v for k, v in card.get("summary_by_grade", {}).items()})
        if "short" in card:
            texts["short"] = card["short"]
        for i, step in enumerate(card["next_steps"]):
            texts[f"next_steps[{i}]"] = step["text"]
        texts.update({f"notes.{k}": v for k, v in card.get("notes", {}).items()})
        for key, text in texts.items():
            unknown = sorted(set(_PLACEHOLDER.findall(text)) - allowed)
            if unknown:
                raise RulesError(path, f"{where}.{key}: unknown template variable(s) "
                                       f"{', '.join('{' + u + '}' for u in unknown)}; "
                                       f"allowed: {', '.join(sorted(allowed))}")
        for i, ref in enumerate(card.get("suggestions", ())):
            if ref["id"] not in data["suggestions"]:
                raise RulesError(path, f"{where}.suggestions[{i}].id: unknown suggestion {ref['id']!r}")
        for i, code in enumerate(card["override_reasons"]):
            if code not in reasons:
                raise RulesError(path, f"{where}.override_reasons[{i}]: unknown reason {code!r}")
        for i, cid in enumerate(card.get("links", ())):
            _need_citation(path, f"{where}.links[{i}]", cid, citations)
        if card.get("suggestions") and "selection_behavior" not in card:
            raise RulesError(path, f"{where}.selection_behavior: required when suggestions are given")

    suggestions = {sid: _build_suggestion(path, sid, s, terminology)
                   for sid, s in data["suggestions"].items()}
    return CardRules(
        service={k: " ".join(v.split()) for k, v in data["service"].items()},
        finding_system=data["finding_system"], override_system=data["override_reasons"]["system"],
        override_reasons=dict(reasons), labels=dict(data["labels"]), kinds=dict(data["kinds"]),
        measures=dict(data["measures"]), sites=dict(data["sites"]), units=dict(data["units"]),
        findings={k: _freeze(v) for k, v in data["findings"].items()}, suggestions=suggestions)


def _freeze(card: Mapping[str, Any]) -> Mapping[str, Any]:
    out = dict(card)
    out.setdefault("suggestions", [])
    out.setdefault("notes", {})
    out.setdefault("summary_by_grade", {})
    out.setdefault("links", [])
    return out


def _build_suggestion(path: Path, sid: str, data: Mapping[str, Any],
                      terminology: Any | None) -> SuggestionTemplate:
    where = f"suggestions.{sid}.resource"
    template = data["resource"]
    orderables: dict[str, dict[str, str] | None] = {}

    def walk(node: Any, at: str) -> None:
        if isinstance(node, dict):
            if "$orderable" in node:
                if set(node) != {"$orderable"}:
                    raise RulesError(path, f"{at}: '$orderable' must stand alone")
                orderables[node["$orderable"]] = None
                return
            for k, v in node.items():
                walk(v, f"{at}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{at}[{i}]")
        elif isinstance(node, str):
            unknown = set(_PLACEHOLDER.findall(node)) - SUGGESTION_VARIABLES
            if unknown:
                raise RulesError(path, f"{at}: unknown template variable(s) {sorted(unknown)}; "
                                       f"allowed: {sorted(SUGGESTION_VARIABLES)}")
    walk(template, where)

    if terminology is not None:
        for name in orderables:
            try:
                found = terminology.orderable(name)
            except (KeyError, LookupError):
                found = None
            if not found:
                raise RulesError(path, f"{where}: orderable {name!r} is not in valuesets.yaml orderables")
            orderables[name] = {k: found[k] for k in ("system", "code", "display") if found.get(k)}

    def build(variables: Mapping[str, str]) -> dict[str, Any]:
        def sub(node: Any) -> Any:
            if isinstance(node, dict):
                if "$orderable" in node:
                    coding = orderables.get(node["$orderable"])
                    if not coding:
                        raise LookupError(node["$orderable"])
                    concept: dict[str, Any] = {"coding": [dict(coding)]}
                    if coding.get("display"):
                        concept["text"] = coding["display"]
                    return concept
                return {k: sub(v) for k, v in node.items()}
            if isinstance(node, list):
                return [sub(v) for v in node]
            if isinstance(node, str):
                return _PLACEHOLDER.sub(lambda m: str(variables[m.group(1)]), node)
            return copy.copy(node)
        return sub(template)

    suggestion = SuggestionTemplate(id=sid, label=data["label"], action=data["action"],
                                    recommended=data["recommended"], build=build)
    if terminology is not None or not orderables:
        _validate_fhir(path, where, build(SAMPLE_VARIABLES))
    return suggestion


def _validate_fhir(path: Path, where: str, resource: Mapping[str, Any]) -> None:
    from fhir.resources.R4B import get_fhir_model_class

    try:
        cls = get_fhir_model_class(resource["resourceType"])
        cls.model_validate({k: v for k, v in resource.items() if k != "resourceType"} | {
            "resourceType": resource["resourceType"]})
    except Exception as exc:  # pydantic ValidationError and friends
        first = str(exc).strip().splitlines()
        raise RulesError(path, f"{where}: not a valid FHIR R4 {resource.get('resourceType')}: "
                               f"{' '.join(first[:3])}") from None


def _check_categories(paths: Mapping[str, Path], rules: Rules) -> None:
    """Condition/medication categories the rules name must exist in the value sets (when loaded)."""
    term = rules.terminology
    if term is None:
        return
    known_conditions = _category_names(term, "condition")
    known_meds = _category_names(term, "medication")
    checks = []
    if known_conditions is not None:
        checks += [(paths["vitamin_d"], "kidney_failure.conditions", c, known_conditions)
                   for c in rules.vitamin_d.kidney_conditions]
        checks += [(paths["bone"], "screening.suppress_conditions", c, known_conditions)
                   for c in rules.bone.suppress_conditions]
        checks += [(paths["bone"], "fracture_conditions", c, known_conditions)
                   for c in rules.bone.fracture_conditions]
        checks += [(paths["cards"], f"findings.{f}.problem_category", card["problem_category"],
                    known_conditions)
                   for f, card in rules.cards.findings.items() if card.get("problem_category")]
    if known_meds is not None:
        checks += [(paths["vitamin_d"], "supplement_medications", m, known_meds)
                   for m in rules.vitamin_d.supplement_medications]
        checks += [(paths["bone"], "screening.suppress_medications", m, known_meds)
                   for m in rules.bone.suppress_medications]
    for path, where, name, known in checks:
        if name not in known:
            raise RulesError(path, f"{where}: category {name!r} is not in valuesets.yaml "
                                   f"(known: {', '.join(sorted(known))})")


def _category_names(term: Any, what: str) -> set[str] | None:
    """Category names the value sets define (from cds.terminology's code and keyword maps)."""
    codes = getattr(term, f"{what}_codes", None)
    if not isinstance(codes, Mapping):
        return None
    names = {c.category for cats in codes.values() for c in cats if hasattr(c, "category")}
    for _keyword, category in getattr(term, f"{what}_keywords", ()) or ():
        names.add(category)
    return names
