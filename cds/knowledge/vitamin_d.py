"""rules/vitamin_d.yaml: 25(OH)D bands per guideline profile, the kidney-failure rule and the
adult-regimen age, validated into frozen dataclasses."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Protocol

from marshmallow import ValidationError, fields, post_load, validate

from cds.knowledge.citations import CitationRef, CitationRefSchema
from cds.knowledge.intervals import BoundsSchema, Criterion, Interval, check_disjoint
from cds.knowledge.loader import RulesError, Strict
from cds.knowledge.terminology import Terminology
from cds.knowledge.vocabulary import INDICATORS, KINDS, VITAMIN_D_FINDINGS, Code

FILE = "vitamin_d.yaml"


class Reported(Protocol):
    """What ``VitaminDRules.relation`` reads of a result (a cds.clinical Measurement)."""

    @property
    def value(self) -> float: ...
    @property
    def original_value(self) -> float: ...
    @property
    def original_unit(self) -> str: ...
    @property
    def comparator(self) -> str | None: ...


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
class VitaminDProfile:
    label: str
    citation: str
    bands: tuple[VitaminDBand, ...]
    bone_target: BoneTarget | None = None
    retest_order: bool = True          # a re-test order may be suggested on the card


@dataclass(frozen=True)
class BoneTarget:
    """A 25(OH)D below the bone-health target for patients with an established bone indication
    (its own finding; deficiency, when also met, is the finding shown)."""

    finding: str
    status: str
    criterion: Criterion
    conditions: tuple[str, ...]        # osteoporosis, low bone mass, fragility fracture on record
    medications: tuple[str, ...]       # osteoporosis therapy on record
    regimen: str | None = None


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
    regimen_min_age: int
    regimen_age_citation: Criterion
    #: medication categories that put vitamin D2 in the blood: with one on record a D3-only
    #: result is not the total 25(OH)D
    d2_medications: tuple[str, ...] = ()
    fractions_citation: Criterion | None = None
    bone_target: BoneTarget | None = None
    retest_order: bool = True
    ckd_conditions: tuple[str, ...] = ()
    ckd_citation: Criterion | None = None
    #: unit (UCUM) → {canonical cut-off: the cut-off as the guideline states it in that unit}
    stated_equivalents: Mapping[str, Mapping[float, float]] = field(default_factory=dict)

    def relation(self, interval: Interval, m: Reported) -> str:
        """Where result ``m`` lies against ``interval``: compared in the unit it was reported
        in when the guideline states its cut-offs in that unit, else in the canonical unit."""
        table = self.stated_equivalents.get(m.original_unit)
        if table is not None and all(b in table for b in (interval.lower, interval.upper)
                                     if b is not None):
            return interval.mapped(table).relation(m.original_value, m.comparator)
        return interval.relation(m.value, m.comparator)

    def citation_refs(self) -> Iterator[tuple[str, str]]:
        """(field, citation id) for every citation this profile names."""
        where = f"profiles.{self.profile_name}"
        yield f"{where}.citation", self.citation
        for i, band in enumerate(self.bands):
            yield f"{where}.bands[{i}].citation.id", band.criterion.citation
            for j, grade in enumerate(band.grades):
                yield f"{where}.bands[{i}].grades[{j}].citation.id", grade.criterion.citation
        yield "kidney_failure.citation.id", self.kidney_citation.citation
        if self.ckd_citation is not None:
            yield "kidney_failure.ckd_citation.id", self.ckd_citation.citation
        yield "regimen_min_age_citation.citation.id", self.regimen_age_citation.citation
        if self.fractions_citation is not None:
            yield "fractions_citation.citation.id", self.fractions_citation.citation
        if self.bone_target is not None:
            yield f"{where}.bone_target.citation.id", self.bone_target.criterion.citation


# --------------------------------------------------------------------------- schemas
class GradeSchema(BoundsSchema):
    name = fields.String(required=True, validate=validate.Regexp(r"^[a-z][a-z\-]*$"))
    indicator = fields.String(validate=validate.OneOf(INDICATORS))
    citation = fields.Nested(CitationRefSchema, required=True)

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> Grade:
        return Grade(data["name"], Criterion.of(Interval.from_mapping(data), data["citation"]),
                     data.get("indicator"))


class VitaminDBandSchema(BoundsSchema):
    finding = fields.String(required=True, validate=validate.OneOf(VITAMIN_D_FINDINGS))
    status = fields.String(required=True, validate=validate.Length(min=3, max=60))
    citation = fields.Nested(CitationRefSchema, required=True)
    regimen = fields.String(validate=validate.Length(min=10, max=500))
    grades = fields.List(fields.Nested(GradeSchema))

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> VitaminDBand:
        crit = Criterion.of(Interval.from_mapping(data), data["citation"])
        grades = tuple(data.get("grades", ()))
        for j, grade in enumerate(grades):
            if not crit.interval.covers(grade.criterion.interval):
                raise ValidationError({"grades": {j: [
                    f"grade {grade.name!r} is not inside its band ({crit.interval.describe()})"]}})
        return VitaminDBand(data["finding"], data["status"], crit,
                            (data.get("regimen") or "").strip() or None, grades)


class BoneTargetSchema(BoundsSchema):
    finding = fields.String(required=True, validate=validate.Equal(Code.VITAMIN_D_BELOW_BONE_TARGET))
    status = fields.String(required=True, validate=validate.Length(min=3, max=60))
    citation = fields.Nested(CitationRefSchema, required=True)
    conditions = fields.List(fields.String(), required=True, validate=validate.Length(min=1))
    medications = fields.List(fields.String(), required=True)
    regimen = fields.String(validate=validate.Length(min=10, max=500))

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> BoneTarget:
        return BoneTarget(data["finding"], data["status"],
                          Criterion.of(Interval.from_mapping(data), data["citation"]),
                          tuple(data["conditions"]), tuple(data["medications"]),
                          (data.get("regimen") or "").strip() or None)


class VitaminDProfileSchema(Strict):
    label = fields.String(required=True, validate=validate.Length(min=3, max=60))
    citation = fields.String(required=True)
    bands = fields.List(fields.Nested(VitaminDBandSchema), required=True,
                        validate=validate.Length(min=1))
    bone_target = fields.Nested(BoneTargetSchema)
    retest_order = fields.Boolean(load_default=True)

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> VitaminDProfile:
        bands = tuple(data["bands"])
        check_disjoint("bands", [b.criterion.interval for b in bands])
        seen = [b.finding for b in bands]
        if len(seen) != len(set(seen)):
            raise ValidationError("a finding appears in two bands", "bands")
        return VitaminDProfile(data["label"], data["citation"], bands, data.get("bone_target"),
                               data["retest_order"])


class KidneyFailureSchema(Strict):
    conditions = fields.List(fields.String(validate=validate.Length(min=1)), required=True,
                             validate=validate.Length(min=1))
    citation = fields.Nested(CitationRefSchema, required=True)
    # CKD not on dialysis: deficiency corrected as in the general population (a note, dosing kept)
    ckd_conditions = fields.List(fields.String(validate=validate.Length(min=1)), load_default=list)
    ckd_citation = fields.Nested(CitationRefSchema)


class VitaminDFileSchema(Strict):
    version = fields.Integer(required=True, validate=validate.Equal(1))
    kind = fields.String(required=True, validate=validate.OneOf(KINDS))
    unit = fields.String(required=True, validate=validate.Length(min=1))
    max_age_days = fields.Integer(required=True, strict=True, validate=validate.Range(min=1, max=3650))
    max_age_basis = fields.String(required=True)
    kidney_failure = fields.Nested(KidneyFailureSchema, required=True)
    supplement_medications = fields.List(fields.String(), required=True)
    d2_medications = fields.List(fields.String(), required=True)
    fractions_citation = fields.Nested(CitationRefSchema, required=True)
    regimen_min_age = fields.Integer(required=True, strict=True, validate=validate.Range(min=1, max=100))
    regimen_min_age_citation = fields.Nested(CitationRefSchema, required=True)
    stated_equivalents = fields.Dict(
        keys=fields.String(validate=validate.Length(min=1)),
        values=fields.Dict(keys=fields.Float(), values=fields.Float()), load_default=dict)
    profiles = fields.Dict(keys=fields.String(), values=fields.Nested(VitaminDProfileSchema),
                           required=True, validate=validate.Length(min=1))

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> dict[str, VitaminDRules]:
        """Every profile as the complete rules it gives (the configured one is picked later)."""
        kidney = data["kidney_failure"]
        age_ref: CitationRef = data["regimen_min_age_citation"]
        return {name: VitaminDRules(
            profile_name=name, label=prof.label, citation=prof.citation, kind=data["kind"],
            unit=data["unit"], max_age_days=data["max_age_days"], bands=prof.bands,
            kidney_conditions=tuple(kidney["conditions"]),
            kidney_citation=Criterion.of(Interval(), kidney["citation"]),
            ckd_conditions=tuple(kidney["ckd_conditions"]),
            ckd_citation=Criterion.of(Interval(), kidney["ckd_citation"]) if kidney.get("ckd_citation") else None,
            supplement_medications=tuple(data["supplement_medications"]),
            regimen_min_age=data["regimen_min_age"],
            regimen_age_citation=Criterion.of(Interval(), age_ref),
            d2_medications=tuple(data["d2_medications"]),
            fractions_citation=Criterion.of(Interval(), data["fractions_citation"]),
            bone_target=prof.bone_target, retest_order=prof.retest_order,
            stated_equivalents={unit: dict(table) for unit, table in data["stated_equivalents"].items()})
            for name, prof in data["profiles"].items()}


def complete_stated_equivalents(path: Path, vitamin_d: VitaminDRules,
                                terminology: Terminology) -> VitaminDRules:
    """Check each stated equivalent against the exact unit conversion (within 1%: catches a
    typo such as 25 for 250 nmol/L) and add the exact conversion for every cut-off the
    guideline table does not state, so that changing one threshold needs one edit."""
    if not vitamin_d.stated_equivalents:
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
    return replace(vitamin_d, stated_equivalents=completed)
