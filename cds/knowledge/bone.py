"""rules/bone.yaml: DXA T-/Z-score bands, the T-score age, diagnostic sites, repeat interval
and screening ages, validated into one frozen BoneRules."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from marshmallow import ValidationError, fields, post_load, validate, validates_schema

from cds.knowledge.citations import CitationRef, CitationRefSchema
from cds.knowledge.intervals import BoundsSchema, Criterion, CriterionSchema, Interval, check_disjoint
from cds.knowledge.loader import Strict
from cds.knowledge.vocabulary import FINDINGS, KINDS, SITES, Code

FILE = "bone.yaml"


@dataclass(frozen=True)
class Band:
    finding: str
    criterion: Criterion


@dataclass(frozen=True)
class Forearm:
    """Which words name the diagnostic forearm region (33 % radius) and which name another."""

    site: str
    diagnostic_words: tuple[str, ...]
    other_words: tuple[str, ...]
    citation: Criterion

    def region(self, text: str | None) -> str:
        """"diagnostic", "other" (another region, or both named: not read) or "not-stated"."""
        if not text:
            return "not-stated"
        diagnostic, other = _names(text, self.diagnostic_words), _names(text, self.other_words)
        if diagnostic and not other:
            return "diagnostic"
        return "other" if other else "not-stated"


def _names(text: str, words: tuple[str, ...]) -> bool:
    return any(re.search(rf"(?<![a-z0-9]){re.escape(w.lower())}(?![a-z0-9])", text) for w in words)


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
    repeat_dxa_citation: Criterion
    fracture_conditions: tuple[str, ...]
    screening_kinds: tuple[str, ...]
    suppress_conditions: tuple[str, ...]
    suppress_medications: tuple[str, ...]
    screening_age: Mapping[str, Criterion]   # "female"/"male" → age rule
    # least significant BMD change, % of the previous value, per site (bmd-significant-loss;
    # also the trend chart's band); a site not listed is never compared
    lsc_percent: Mapping[str, float]
    lsc_citation: Criterion
    forearm: Forearm
    postmenopausal_conditions: tuple[str, ...]   # recorded: a woman under the T-score age reads T-scores
    menopause_note_below_age: int                # below it, a woman's card says age was the proxy
    dxa_reports: tuple[str, ...]                 # DiagnosticReport categories that are a DXA done

    def citation_refs(self) -> Iterator[tuple[str, str]]:
        """(field, citation id) for every citation bone.yaml names."""
        yield "diagnostic_sites_citation.citation.id", self.sites_citation.citation
        yield "t_score_age_citation.citation.id", self.age_citation.citation
        yield "t_score.osteoporosis.citation.id", self.osteoporosis.citation
        yield "t_score.low-bone-mass.citation.id", self.low_bone_mass.citation
        yield "z_score.below-expected.citation.id", self.below_expected.citation
        yield "repeat_dxa_citation.citation.id", self.repeat_dxa_citation.citation
        for sex, rule in self.screening_age.items():
            yield f"screening.{sex}.citation.id", rule.citation
        yield "lsc_citation.id", self.lsc_citation.citation
        yield "forearm.citation.id", self.forearm.citation.citation


class BandSchema(BoundsSchema):
    finding = fields.String(required=True, validate=validate.OneOf(FINDINGS))
    citation = fields.Nested(CitationRefSchema, required=True)

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> Band:
        return Band(data["finding"], Criterion.of(Interval.from_mapping(data), data["citation"]))


class ScreeningSchema(Strict):
    finding = fields.String(required=True, validate=validate.Equal(Code.DXA_SCREENING_DUE.value))
    label = fields.String(required=True, validate=validate.Length(min=3, max=60))
    dxa_kinds = fields.List(fields.String(validate=validate.OneOf(KINDS)), required=True,
                            validate=validate.Length(min=1))
    suppress_conditions = fields.List(fields.String(), required=True)
    suppress_medications = fields.List(fields.String(), required=True)
    female = fields.Nested(CriterionSchema, required=True)
    male = fields.Nested(CriterionSchema, required=True)


class ForearmSchema(Strict):
    site = fields.String(required=True, validate=validate.OneOf(SITES))
    diagnostic_words = fields.List(fields.String(validate=validate.Length(min=1)), required=True,
                                   validate=validate.Length(min=1))
    other_words = fields.List(fields.String(validate=validate.Length(min=1)), required=True)
    citation = fields.Nested(CitationRefSchema, required=True)


class TScoreSchema(Strict):
    osteoporosis = fields.Nested(BandSchema, required=True)
    low_bone_mass = fields.Nested(BandSchema, required=True, data_key="low-bone-mass")

    @validates_schema
    def _disjoint(self, data: dict[str, Any], **_: Any) -> None:
        if "osteoporosis" in data and "low_bone_mass" in data:
            check_disjoint("t_score", [data["osteoporosis"].criterion.interval,
                                       data["low_bone_mass"].criterion.interval])


class ZScoreSchema(Strict):
    below_expected = fields.Nested(BandSchema, required=True, data_key="below-expected")


class BoneFileSchema(Strict):
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
    lsc_percent = fields.Dict(keys=fields.String(validate=validate.OneOf(SITES)),
                              values=fields.Float(validate=validate.Range(min=0.1, max=50)),
                              required=True)
    lsc_citation = fields.Nested(CitationRefSchema, required=True)
    forearm = fields.Nested(ForearmSchema, required=True)
    postmenopausal_conditions = fields.List(fields.String(), required=True)
    dxa_reports = fields.List(fields.String(), required=True)
    menopause_note_below_age = fields.Integer(required=True, strict=True,
                                              validate=validate.Range(min=18, max=100))
    screening = fields.Nested(ScreeningSchema, required=True)

    @validates_schema
    def _checks(self, data: dict[str, Any], **_: Any) -> None:
        if "calcaneus" in data.get("diagnostic_sites", ()):
            raise ValidationError("calcaneus is a peripheral site and never diagnoses", "diagnostic_sites")
        if "t_score" in data and "z_score" in data and (
                data["t_score"]["osteoporosis"].finding != Code.OSTEOPOROSIS or
                data["t_score"]["low_bone_mass"].finding != Code.LOW_BONE_MASS or
                data["z_score"]["below_expected"].finding != Code.BMD_BELOW_EXPECTED):
            raise ValidationError("finding names must be osteoporosis, low-bone-mass, "
                                  "bmd-below-expected-for-age", "t_score")

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> BoneRules:
        scr, fa = data["screening"], data["forearm"]

        def cited(ref: CitationRef) -> Criterion:
            return Criterion.of(Interval(), ref)
        return BoneRules(
            label=data["label"], screening_label=scr["label"],
            diagnostic_sites=tuple(data["diagnostic_sites"]),
            sites_citation=cited(data["diagnostic_sites_citation"]),
            t_score_min_age=data["t_score_min_age"],
            age_citation=cited(data["t_score_age_citation"]),
            osteoporosis=data["t_score"]["osteoporosis"].criterion,
            low_bone_mass=data["t_score"]["low_bone_mass"].criterion,
            below_expected=data["z_score"]["below_expected"].criterion,
            repeat_dxa_after_days=data["repeat_dxa_after_days"],
            repeat_dxa_citation=cited(data["repeat_dxa_citation"]),
            fracture_conditions=tuple(data["fracture_conditions"]),
            screening_kinds=tuple(scr["dxa_kinds"]),
            suppress_conditions=tuple(scr["suppress_conditions"]),
            suppress_medications=tuple(scr["suppress_medications"]),
            screening_age={"female": scr["female"], "male": scr["male"]},
            lsc_percent=dict(data["lsc_percent"]), lsc_citation=cited(data["lsc_citation"]),
            forearm=Forearm(site=fa["site"], diagnostic_words=tuple(fa["diagnostic_words"]),
                            other_words=tuple(fa["other_words"]), citation=cited(fa["citation"])),
            postmenopausal_conditions=tuple(data["postmenopausal_conditions"]),
            menopause_note_below_age=data["menopause_note_below_age"],
            dxa_reports=tuple(data["dxa_reports"]))
