"""Terminology: value sets, units and data-quality limits, loaded once from rules/.

``load_terminology(rules_dir)`` reads three files with ``loader.load_yaml``
and a marshmallow schema each, checks them against each other, and builds the
lookup tables ``normalize`` uses on every request (plain dicts, built once):

- ``valuesets.yaml``: Observation codes → kind (+ DXA site, laterality,
  property), Condition and medication codes → categories, medication text
  keywords, orderables for card suggestions (format: docs of the terms brief);
- ``units.yaml``: per kind the canonical UCUM unit and the accepted UCUM codes
  with their conversion into it;
- ``data_quality.yaml``: plausibility bounds per kind (canonical unit), the
  Observation / Condition / medication statuses that are trusted.

Any malformed or inconsistent file raises ``RulesError`` naming the file and
the field (e.g. ``units.yaml: kinds.bmd: no unit entry for kind 'bmd'``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from marshmallow import ValidationError, fields, post_load, validate, validates_schema

from cds.knowledge.intervals import Interval
from cds.knowledge.loader import NAME, RulesError, Strict, load_yaml
from cds.knowledge.vocabulary import KINDS, LATERALITIES, OBSERVATION_STATUSES, PROPERTIES, SITES

VALUESETS_FILE = "valuesets.yaml"
UNITS_FILE = "units.yaml"
DATA_QUALITY_FILE = "data_quality.yaml"

# 25(OH)D fractions: a D2 or D3 result is part of the total (rules/vitamin_d.yaml `d2_medications`)
FRACTIONS = ("d2", "d3")

# Prefetch: how many Observations (newest first) the EHR is asked for. 200 covers
# years of DXA/vitamin D/vitals history for the listed codes only, and stays within
# the page size FHIR servers commonly allow.
OBSERVATION_COUNT = 200


# --------------------------------------------------------------------------- schemas
class CodeEntrySchema(Strict):
    system = fields.String(required=True, validate=validate.Length(min=1))
    code = fields.String(required=True, validate=validate.Length(min=1))
    display = fields.String(required=True, validate=validate.Length(min=1))
    source = fields.String(required=True, validate=validate.Length(min=1))
    site = fields.String(validate=validate.OneOf(SITES))
    laterality = fields.String(validate=validate.OneOf(LATERALITIES))
    property = fields.String(validate=validate.OneOf(PROPERTIES))
    fraction = fields.String(validate=validate.OneOf(FRACTIONS))
    tty = fields.String()
    note = fields.String()


class ObservationKindSchema(Strict):
    title = fields.String(required=True)
    codes = fields.List(fields.Nested(CodeEntrySchema), required=True,
                        validate=validate.Length(min=1))
    note = fields.String()


class CategorySchema(Strict):
    title = fields.String(required=True)
    codes = fields.List(fields.Nested(CodeEntrySchema), load_default=list)
    text_keywords = fields.List(fields.String(validate=validate.Length(min=3)), load_default=list)
    note = fields.String()

    @validates_schema
    def _keywords_lower(self, data: dict[str, Any], **_: Any) -> None:
        bad = [k for k in data.get("text_keywords", ()) if k != k.lower() or k != k.strip()]
        if bad:
            raise ValidationError(f"keywords must be lower-case and trimmed: {bad}",
                                  "text_keywords")
        if not data.get("codes") and not data.get("text_keywords"):
            raise ValidationError("a category needs codes or text_keywords", "codes")


class UnverifiedSchema(Strict):
    system = fields.String(required=True)
    code = fields.String(required=True)
    why = fields.String(required=True)
    display = fields.String()
    source = fields.String()
    note = fields.String()


class ValueSetsSchema(Strict):
    version = fields.Integer(required=True, validate=validate.Equal(1))
    code_systems = fields.Dict(keys=fields.String(validate=NAME),
                               values=fields.String(validate=validate.Length(min=3)),
                               required=True)
    observations = fields.Dict(keys=fields.String(validate=NAME),
                               values=fields.Nested(ObservationKindSchema), required=True)
    conditions = fields.Dict(keys=fields.String(validate=NAME),
                             values=fields.Nested(CategorySchema), load_default=dict)
    medications = fields.Dict(keys=fields.String(validate=NAME),
                              values=fields.Nested(CategorySchema), load_default=dict)
    orderables = fields.Dict(keys=fields.String(validate=NAME),
                             values=fields.Nested(CodeEntrySchema), load_default=dict)
    reports = fields.Dict(keys=fields.String(validate=NAME),
                          values=fields.Nested(CategorySchema), load_default=dict)
    unverified = fields.List(fields.Nested(UnverifiedSchema), load_default=list)


class AcceptedUnitSchema(Strict):
    code = fields.String(required=True, validate=validate.Length(min=1))
    multiply = fields.Float(validate=validate.Range(min=0, min_inclusive=False))
    divide = fields.Float(validate=validate.Range(min=0, min_inclusive=False))
    property = fields.String(validate=validate.OneOf(PROPERTIES))
    cite = fields.String(required=True)

    @validates_schema
    def _one_factor(self, data: dict[str, Any], **_: Any) -> None:
        if ("multiply" in data) == ("divide" in data):
            raise ValidationError("give exactly one of multiply / divide", "multiply")


class UnitKindSchema(Strict):
    canonical = fields.String(required=True, validate=validate.Length(min=1))
    unitless = fields.Boolean(load_default=False)
    accept = fields.List(fields.Nested(AcceptedUnitSchema), required=True,
                         validate=validate.Length(min=1))

    @validates_schema
    def _canonical_accepted(self, data: dict[str, Any], **_: Any) -> None:
        codes = [a["code"] for a in data.get("accept", ())]
        if len(set(codes)) != len(codes):
            raise ValidationError("a unit code is listed twice", "accept")
        canon = [a for a in data.get("accept", ()) if a["code"] == data.get("canonical")]
        if not canon or canon[0].get("multiply") != 1:
            raise ValidationError("the canonical unit must be accepted with multiply: 1",
                                  "canonical")


class UnitCitationSchema(Strict):
    title = fields.String(required=True)
    url = fields.Url(required=True)
    note = fields.String()


class UnitsSchema(Strict):
    version = fields.Integer(required=True, validate=validate.Equal(1))
    ucum_system = fields.String(required=True, validate=validate.Equal("http://unitsofmeasure.org"))
    citations = fields.Dict(keys=fields.String(), values=fields.Nested(UnitCitationSchema),
                            required=True)
    kinds = fields.Dict(keys=fields.String(validate=NAME), values=fields.Nested(UnitKindSchema),
                        required=True)


class PlausibleSchema(Strict):
    low = fields.Float(required=True)
    high = fields.Float(required=True)
    low_exclusive = fields.Boolean(load_default=False)
    high_exclusive = fields.Boolean(load_default=False)
    why = fields.String(required=True, validate=validate.Length(min=10))

    @validates_schema
    def _ordered(self, data: dict[str, Any], **_: Any) -> None:
        if "low" in data and "high" in data and not data["low"] < data["high"]:
            raise ValidationError("low must be below high", "low")

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> Interval:
        """The plausible range as an Interval (exclusive ends are open)."""
        return Interval(data["low"], not data["low_exclusive"], data["high"],
                        not data["high_exclusive"])


class ObservationQualitySchema(Strict):
    accepted_status = fields.List(fields.String(validate=validate.OneOf(OBSERVATION_STATUSES)),
                                  required=True, validate=validate.Length(min=1))
    future_tolerance_days = fields.Integer(required=True, validate=validate.Range(min=0, max=30))


class ConditionQualitySchema(Strict):
    accepted_clinical_status = fields.List(fields.String(), required=True)
    excluded_verification_status = fields.List(fields.String(), required=True)


class MedicationQualitySchema(Strict):
    excluded_status = fields.List(fields.String(), required=True)
    current_status = fields.List(fields.String(), required=True)


class PatientQualitySchema(Strict):
    max_age_years = fields.Integer(required=True, strict=True, validate=validate.Range(min=100, max=150))
    why = fields.String(required=True, validate=validate.Length(min=10))


class DataQualitySchema(Strict):
    version = fields.Integer(required=True, validate=validate.Equal(1))
    patient = fields.Nested(PatientQualitySchema)
    observations = fields.Nested(ObservationQualitySchema, required=True)
    plausible = fields.Dict(keys=fields.String(validate=NAME), values=fields.Nested(PlausibleSchema),
                            required=True)
    conditions = fields.Nested(ConditionQualitySchema, required=True)
    medications = fields.Nested(MedicationQualitySchema, required=True)


# --------------------------------------------------------------------------- lookup types
@dataclass(frozen=True)
class ObservationCode:
    """What one Observation code means (from valuesets.yaml ``observations:``)."""

    kind: str
    key: str                      # "system-uri|code"
    display: str
    site: str | None = None
    laterality: str | None = None
    property: str | None = None
    fraction: str | None = None   # d2 / d3: one fraction of total 25(OH)D


@dataclass(frozen=True)
class CategoryCode:
    category: str
    key: str
    display: str


@dataclass(frozen=True)
class UnitRule:
    """One accepted UCUM code for a kind and its conversion into the canonical unit."""

    code: str
    multiply: float | None
    divide: float | None
    property: str | None

    def to_canonical(self, value: float) -> float:
        if self.multiply is not None:
            return value * self.multiply
        assert self.divide is not None   # exactly one of the two (UnitsSchema)
        return value / self.divide

    def from_canonical(self, value: float) -> float:
        if self.multiply is not None:
            return value / self.multiply
        assert self.divide is not None
        return value * self.divide


@dataclass(frozen=True)
class KindUnits:
    canonical: str
    unitless: bool
    accepted: Mapping[str, UnitRule]


@dataclass(frozen=True)
class Terminology:
    code_systems: Mapping[str, str]
    observation_codes: Mapping[str, ObservationCode]            # "system|code" → meaning
    condition_codes: Mapping[str, tuple[CategoryCode, ...]]     # "system|code" → categories
    medication_codes: Mapping[str, tuple[CategoryCode, ...]]
    medication_keywords: tuple[tuple[str, str], ...]            # (keyword, category)
    units: Mapping[str, KindUnits]
    bounds: Mapping[str, Interval]                              # plausible values per kind
    observation_status: frozenset[str]
    future_tolerance_days: int
    condition_clinical_status: frozenset[str]
    condition_verification_excluded: frozenset[str]
    medication_status_excluded: frozenset[str]
    medication_status_current: frozenset[str]
    orderables: Mapping[str, Mapping[str, str]]
    kind_titles: Mapping[str, str]
    ucum_system: str = "http://unitsofmeasure.org"
    max_age_years: int | None = None   # data_quality.yaml patient.max_age_years: older = entry error
    report_codes: Mapping[str, tuple[CategoryCode, ...]] = field(default_factory=dict)  # DiagnosticReport.code
    _prefetch: Mapping[str, str] = field(default_factory=dict)

    # ----------------------------------------------------------------- lookups
    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.kind_titles)

    def observation(self, system: str | None, code: str | None) -> ObservationCode | None:
        return self.observation_codes.get(f"{system}|{code}")

    def condition_categories(self, system: str | None, code: str | None) -> tuple[CategoryCode, ...]:
        return self.condition_codes.get(f"{system}|{code}", ())

    def medication_categories(self, system: str | None, code: str | None) -> tuple[CategoryCode, ...]:
        return self.medication_codes.get(f"{system}|{code}", ())

    def report_categories(self, system: str | None, code: str | None) -> tuple[CategoryCode, ...]:
        return self.report_codes.get(f"{system}|{code}", ())

    def canonical_unit(self, kind: str) -> str:
        return self.units[kind].canonical

    def convert(self, kind: str, value: float, from_unit: str, to_unit: str) -> float:
        """Convert between two accepted UCUM units of a kind (e.g. for showing
        25(OH)D in both ng/mL and nmol/L on a card). KeyError for a unit not accepted."""
        accepted = self.units[kind].accepted
        return accepted[to_unit].from_canonical(accepted[from_unit].to_canonical(value))

    def orderable(self, name: str) -> dict[str, str]:
        """The code a card suggestion uses: ``{"system": uri, "code": ..., "display": ...}``."""
        try:
            return dict(self.orderables[name])
        except KeyError:
            raise KeyError(f"no orderable {name!r} in {VALUESETS_FILE} (orderables:)") from None

    def prefetch_templates(self) -> dict[str, str]:
        return dict(self._prefetch)


# --------------------------------------------------------------------------- loading
def _problem(path: Path, field_path: str, message: str) -> RulesError:
    return RulesError(path, f"{field_path}: {message}")


def _resolve_system(path: Path, systems: Mapping[str, str], entry: Mapping[str, Any],
                    where: str) -> str:
    short = entry["system"]
    if short not in systems:
        raise _problem(path, f"{where}.system",
                       f"unknown code system {short!r} (not in code_systems: {sorted(systems)})")
    return systems[short]


def _categories(path: Path, section: str, systems: Mapping[str, str],
                data: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[CategoryCode, ...]]:
    out: dict[str, list[CategoryCode]] = {}
    for category, body in data.items():
        seen: set[str] = set()
        for i, entry in enumerate(body["codes"]):
            where = f"{section}.{category}.codes[{i}]"
            key = f"{_resolve_system(path, systems, entry, where)}|{entry['code']}"
            if key in seen:
                raise _problem(path, f"{where}.code", f"{entry['code']!r} is listed twice")
            seen.add(key)
            out.setdefault(key, []).append(CategoryCode(category, key, entry["display"]))
    return {k: tuple(v) for k, v in out.items()}


def _build_prefetch(observation_keys: list[str], report_keys: list[str] | None = None) -> dict[str, str]:
    # FHIR token search: system|code, several values OR-ed with ',' (FHIR R4 search §3.1.1.4.1,
    # §3.1.1.5.2). '|' is written literally as in the FHIR and CDS Hooks specifications' own
    # examples; the EHR percent-encodes the query when it sends it.
    codes = ",".join(observation_keys)
    return {
        "patient": "Patient/{{context.patientId}}",
        "observations": ("Observation?patient={{context.patientId}}"
                         f"&code={codes}&_sort=-date&_count={OBSERVATION_COUNT}"),
        # No code or status filter: conditions are matched on many SNOMED CT / ICD-10-CM codes
        # (and a filter on clinical-status would drop Conditions that carry none);
        # normalize applies data_quality.yaml's status rules.
        "conditions": "Condition?patient={{context.patientId}}",
        # No status filter: "osteoporosis therapy on record" includes completed and stopped
        # courses (e.g. a bisphosphonate drug holiday); normalize records each status.
        "medications": "MedicationRequest?patient={{context.patientId}}",
        # Many EHRs record over-the-counter vitamin D, denosumab given elsewhere and long-term
        # prednisone as MedicationStatement only; read beside MedicationRequest (same rules).
        "medicationStatements": "MedicationStatement?patient={{context.patientId}}",
        # A DXA report whose results are not coded Observations still says a DXA was done.
        **({"diagnosticReports": "DiagnosticReport?patient={{context.patientId}}"
                                 f"&code={','.join(report_keys)}"} if report_keys else {}),
    }


def _same_kinds(path: Path, section: str, declared: Mapping[str, Any],
                entries: Mapping[str, Any], what: str) -> None:
    """``entries`` (units, plausibility bounds) cover exactly the observation kinds declared in
    valuesets.yaml: a kind without an entry, or an entry for no kind, names the field."""
    for kind in declared:
        if kind not in entries:
            raise _problem(path, f"{section}.{kind}",
                           f"no {what} for kind {kind!r} (declared in {VALUESETS_FILE})")
    for kind in entries:
        if kind not in declared:
            raise _problem(path, f"{section}.{kind}",
                           f"unknown kind {kind!r} (not in {VALUESETS_FILE} observations)")


def check_kinds(path: Path, defined: Mapping[str, Any]) -> None:
    """The observation kinds the code reads (cds/knowledge/vocabulary.py ``Kind``) are exactly
    the kinds valuesets.yaml defines, in both directions: a kind the code reads that the file
    lacks, or one the file defines that nothing reads, stops start-up naming the kind (a renamed
    kind never silently turns one card into another). units.yaml and data_quality.yaml are held
    to the same kinds below; the other files' kind fields are validated by their schemas."""
    problems = [f"observations: no kind {k!r} (the code reads it: Kind in "
                f"cds/knowledge/vocabulary.py)" for k in KINDS if k not in defined]
    problems += [f"observations.{k}: kind {k!r} is defined but nothing reads it (not a Kind in "
                 f"cds/knowledge/vocabulary.py)" for k in defined if k not in KINDS]
    if problems:
        raise RulesError(path, problems)


def load_terminology(rules_dir: Path) -> Terminology:
    rules_dir = Path(rules_dir)
    vs_path = rules_dir / VALUESETS_FILE
    units_path = rules_dir / UNITS_FILE
    dq_path = rules_dir / DATA_QUALITY_FILE
    vs = load_yaml(vs_path, ValueSetsSchema())
    check_kinds(vs_path, vs["observations"])
    un = load_yaml(units_path, UnitsSchema())
    dq = load_yaml(dq_path, DataQualitySchema())

    systems: dict[str, str] = dict(vs["code_systems"])

    # Observations: each code means exactly one kind.
    observation_codes: dict[str, ObservationCode] = {}
    for kind, body in vs["observations"].items():
        for i, entry in enumerate(body["codes"]):
            where = f"observations.{kind}.codes[{i}]"
            key = f"{_resolve_system(vs_path, systems, entry, where)}|{entry['code']}"
            if key in observation_codes:
                other = observation_codes[key].kind
                raise _problem(vs_path, f"{where}.code",
                               f"{entry['code']!r} is already mapped to kind {other!r}"
                               if other != kind else f"{entry['code']!r} is listed twice")
            observation_codes[key] = ObservationCode(
                kind=kind, key=key, display=entry["display"], site=entry.get("site"),
                laterality=entry.get("laterality"), property=entry.get("property"),
                fraction=entry.get("fraction"))

    condition_codes = _categories(vs_path, "conditions", systems, vs["conditions"])
    report_codes = _categories(vs_path, "reports", systems, vs["reports"])
    medication_codes = _categories(vs_path, "medications", systems, vs["medications"])
    keywords = tuple((kw, cat) for cat, body in vs["medications"].items()
                     for kw in body["text_keywords"])

    orderables: dict[str, Mapping[str, str]] = {}
    for name, entry in vs["orderables"].items():
        uri = _resolve_system(vs_path, systems, entry, f"orderables.{name}")
        orderables[name] = MappingProxyType(
            {"system": uri, "code": entry["code"], "display": entry["display"]})

    # Units: every kind has an entry, every entry is a kind, citations resolve.
    units: dict[str, KindUnits] = {}
    _same_kinds(units_path, "kinds", vs["observations"], un["kinds"], "unit entry")
    for kind, body in un["kinds"].items():
        accepted: dict[str, UnitRule] = {}
        for i, a in enumerate(body["accept"]):
            if a["cite"] not in un["citations"]:
                raise _problem(units_path, f"kinds.{kind}.accept[{i}].cite",
                               f"unknown citation {a['cite']!r}")
            accepted[a["code"]] = UnitRule(a["code"], a.get("multiply"), a.get("divide"),
                                           a.get("property"))
        units[kind] = KindUnits(body["canonical"], body["unitless"], MappingProxyType(accepted))

    # Plausibility: every kind bounded, and nothing else.
    _same_kinds(dq_path, "plausible", vs["observations"], dq["plausible"], "plausibility bounds")
    bounds: dict[str, Interval] = dict(dq["plausible"])

    obs_q, cond_q, med_q = dq["observations"], dq["conditions"], dq["medications"]
    return Terminology(
        code_systems=MappingProxyType(systems),
        observation_codes=MappingProxyType(observation_codes),
        condition_codes=MappingProxyType(condition_codes),
        medication_codes=MappingProxyType(medication_codes),
        medication_keywords=keywords,
        units=MappingProxyType(units),
        bounds=MappingProxyType(bounds),
        observation_status=frozenset(obs_q["accepted_status"]),
        future_tolerance_days=obs_q["future_tolerance_days"],
        condition_clinical_status=frozenset(cond_q["accepted_clinical_status"]),
        condition_verification_excluded=frozenset(cond_q["excluded_verification_status"]),
        medication_status_excluded=frozenset(med_q["excluded_status"]),
        medication_status_current=frozenset(med_q["current_status"]),
        orderables=MappingProxyType(orderables),
        kind_titles=MappingProxyType({k: v["title"] for k, v in vs["observations"].items()}),
        ucum_system=un["ucum_system"],
        max_age_years=(dq.get("patient") or {}).get("max_age_years"),
        report_codes=MappingProxyType(report_codes),
        _prefetch=MappingProxyType(_build_prefetch(list(observation_codes), list(report_codes))),
    )
