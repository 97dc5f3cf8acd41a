"""rules/sarcopenia.yaml: sex-specific cut-offs for grip strength, muscle mass and gait speed
per guideline profile, validated into frozen dataclasses."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from marshmallow import ValidationError, fields, post_load, validate

from cds.knowledge.citations import CitationRefSchema
from cds.knowledge.intervals import Criterion, Interval, IntervalSchema
from cds.knowledge.loader import Strict
from cds.knowledge.vocabulary import MASS_MEASURES

FILE = "sarcopenia.yaml"


@dataclass(frozen=True)
class SexCutoff:
    male: Interval
    female: Interval
    citation: str
    where: str

    def for_sex(self, sex: str) -> Criterion:
        return Criterion(self.male if sex == "male" else self.female, self.citation, self.where)


@dataclass(frozen=True)
class SarcopeniaProfile:
    label: str
    citation: str
    grip: SexCutoff
    mass: tuple[tuple[str, SexCutoff], ...]    # (measure, cut-off)
    gait: SexCutoff


@dataclass(frozen=True)
class SarcopeniaRules:
    profile_name: str
    label: str
    citation: str
    grip: SexCutoff
    mass: tuple[tuple[str, SexCutoff], ...]    # (measure, cut-off)
    gait: SexCutoff
    min_age: int
    age_citation: Criterion
    #: results of grip, lean mass and gait speed older than this are not read (service policy)
    max_result_age_days: int = 730

    def citation_refs(self) -> Iterator[tuple[str, str]]:
        """(field, citation id) for every citation this profile names."""
        where = f"profiles.{self.profile_name}"
        yield f"{where}.citation", self.citation
        yield f"{where}.grip.citation.id", self.grip.citation
        for i, (_measure, cut) in enumerate(self.mass):
            yield f"{where}.mass[{i}].citation.id", cut.citation
        yield f"{where}.gait.citation.id", self.gait.citation
        yield "min_age_citation.citation.id", self.age_citation.citation


class SexCutoffSchema(Strict):
    male = fields.Nested(IntervalSchema, required=True)
    female = fields.Nested(IntervalSchema, required=True)
    citation = fields.Nested(CitationRefSchema, required=True)

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> SexCutoff:
        return SexCutoff(data["male"], data["female"], data["citation"].id, data["citation"].where)


class MassCutoffSchema(SexCutoffSchema):
    measure = fields.String(required=True, validate=validate.OneOf(MASS_MEASURES))

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> tuple[str, SexCutoff]:
        ref = data["citation"]
        return data["measure"], SexCutoff(data["male"], data["female"], ref.id, ref.where)


class SarcopeniaProfileSchema(Strict):
    label = fields.String(required=True, validate=validate.Length(min=3, max=60))
    citation = fields.String(required=True)
    grip = fields.Nested(SexCutoffSchema, required=True)
    mass = fields.List(fields.Nested(MassCutoffSchema), required=True, validate=validate.Length(min=1))
    gait = fields.Nested(SexCutoffSchema, required=True)

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> SarcopeniaProfile:
        measures = [m for m, _cut in data["mass"]]
        if len(measures) != len(set(measures)):
            raise ValidationError("a measure is listed twice", "mass")
        return SarcopeniaProfile(data["label"], data["citation"], data["grip"],
                                 tuple(data["mass"]), data["gait"])


class SarcopeniaFileSchema(Strict):
    version = fields.Integer(required=True, validate=validate.Equal(1))
    min_age = fields.Integer(required=True, strict=True, validate=validate.Range(min=1, max=100))
    min_age_citation = fields.Nested(CitationRefSchema, required=True)
    max_result_age_days = fields.Integer(required=True, strict=True,
                                         validate=validate.Range(min=30, max=3650))
    max_result_age_basis = fields.String(required=True, validate=validate.Length(min=20))
    profiles = fields.Dict(keys=fields.String(), values=fields.Nested(SarcopeniaProfileSchema),
                           required=True, validate=validate.Length(min=1))

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> dict[str, SarcopeniaRules]:
        """Every profile as the complete rules it gives (the configured one is picked later)."""
        age = Criterion.of(Interval(), data["min_age_citation"])
        return {name: SarcopeniaRules(name, p.label, p.citation, p.grip, p.mass, p.gait,
                                      data["min_age"], age, data["max_result_age_days"])
                for name, p in data["profiles"].items()}
