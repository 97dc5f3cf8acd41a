"""rules/fracture.yaml: fracture-first bone logic (fragility fractures, the treatment gap,
first-line treatment advice and when it is not offered), validated into frozen dataclasses."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from marshmallow import fields, post_load, validate

from cds.knowledge.citations import CitationRefSchema
from cds.knowledge.intervals import Criterion, Interval
from cds.knowledge.loader import Strict
from cds.knowledge.vocabulary import KINDS, Code

FILE = "fracture.yaml"


@dataclass(frozen=True)
class FractureRules:
    fracture_conditions: tuple[str, ...]        # any fragility fracture (condition categories)
    sites: Mapping[str, str]                    # site category -> words for the card
    clinical_sites: tuple[str, ...]             # hip / vertebra: osteoporosis whatever the T-score
    clinical_citation: Criterion
    gap_finding: str
    gap_sites: tuple[str, ...]
    gap_within_days: int
    gap_min_age: int
    gap_citation: Criterion
    therapy_medications: tuple[str, ...]
    dxa_kinds: tuple[str, ...]
    first_line: str                             # the words of the first-line advice
    first_line_citation: Criterion
    alendronate_min_egfr: float
    alendronate_citation: Criterion
    egfr_kind: str
    egfr_max_age_days: int
    very_high_risk_fracture_days: int
    very_high_risk_t_score_below: float
    very_high_risk_fracture_count: int
    very_high_risk_citation: Criterion
    kidney_conditions: tuple[str, ...]
    kidney_egfr_below: float
    kidney_citation: Criterion

    def citation_refs(self) -> Iterator[tuple[str, str]]:
        for name in ("clinical", "gap", "first_line", "alendronate", "very_high_risk", "kidney"):
            yield f"{name}.citation.id", getattr(self, f"{name}_citation").citation


def _crit(ref: Any) -> Criterion:
    return Criterion.of(Interval(), ref)


class _Clinical(Strict):
    sites = fields.List(fields.String(), required=True, validate=validate.Length(min=1))
    citation = fields.Nested(CitationRefSchema, required=True)


class _Gap(Strict):
    finding = fields.String(required=True, validate=validate.Equal(Code.FRACTURE_TREATMENT_GAP))
    sites = fields.List(fields.String(), required=True, validate=validate.Length(min=1))
    within_days = fields.Integer(required=True, strict=True, validate=validate.Range(min=30, max=3650))
    min_age = fields.Integer(required=True, strict=True, validate=validate.Range(min=18, max=100))
    therapy_medications = fields.List(fields.String(), required=True, validate=validate.Length(min=1))
    dxa_kinds = fields.List(fields.String(validate=validate.OneOf(KINDS)), required=True)
    citation = fields.Nested(CitationRefSchema, required=True)


class _FirstLine(Strict):
    text = fields.String(required=True, validate=validate.Length(min=10, max=200))
    citation = fields.Nested(CitationRefSchema, required=True)


class _Alendronate(Strict):
    min_egfr = fields.Float(required=True, validate=validate.Range(min=10, max=90))
    egfr_kind = fields.String(required=True, validate=validate.OneOf(KINDS))
    egfr_max_age_days = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))
    citation = fields.Nested(CitationRefSchema, required=True)


class _VeryHighRisk(Strict):
    fracture_within_days = fields.Integer(required=True, strict=True, validate=validate.Range(min=30))
    t_score_below = fields.Float(required=True, validate=validate.Range(min=-7, max=0))
    fracture_count = fields.Integer(required=True, strict=True, validate=validate.Range(min=2))
    citation = fields.Nested(CitationRefSchema, required=True)


class _Kidney(Strict):
    conditions = fields.List(fields.String(), required=True, validate=validate.Length(min=1))
    egfr_below = fields.Float(required=True, validate=validate.Range(min=5, max=60))
    citation = fields.Nested(CitationRefSchema, required=True)


class FractureFileSchema(Strict):
    version = fields.Integer(required=True, validate=validate.Equal(1))
    fracture_conditions = fields.List(fields.String(), required=True, validate=validate.Length(min=1))
    sites = fields.Dict(keys=fields.String(), values=fields.String(validate=validate.Length(min=2)),
                        required=True)
    clinical_osteoporosis = fields.Nested(_Clinical, required=True)
    treatment_gap = fields.Nested(_Gap, required=True)
    first_line = fields.Nested(_FirstLine, required=True)
    alendronate = fields.Nested(_Alendronate, required=True)
    very_high_risk = fields.Nested(_VeryHighRisk, required=True)
    kidney = fields.Nested(_Kidney, required=True)

    @post_load
    def _make(self, d: dict[str, Any], **_: Any) -> FractureRules:
        gap, vhr, ale, kid = d["treatment_gap"], d["very_high_risk"], d["alendronate"], d["kidney"]
        return FractureRules(
            fracture_conditions=tuple(d["fracture_conditions"]), sites=dict(d["sites"]),
            clinical_sites=tuple(d["clinical_osteoporosis"]["sites"]),
            clinical_citation=_crit(d["clinical_osteoporosis"]["citation"]),
            gap_finding=gap["finding"], gap_sites=tuple(gap["sites"]), gap_within_days=gap["within_days"],
            gap_min_age=gap["min_age"], gap_citation=_crit(gap["citation"]),
            therapy_medications=tuple(gap["therapy_medications"]), dxa_kinds=tuple(gap["dxa_kinds"]),
            first_line=d["first_line"]["text"].strip(), first_line_citation=_crit(d["first_line"]["citation"]),
            alendronate_min_egfr=ale["min_egfr"], alendronate_citation=_crit(ale["citation"]),
            egfr_kind=ale["egfr_kind"], egfr_max_age_days=ale["egfr_max_age_days"],
            very_high_risk_fracture_days=vhr["fracture_within_days"],
            very_high_risk_t_score_below=vhr["t_score_below"],
            very_high_risk_fracture_count=vhr["fracture_count"], very_high_risk_citation=_crit(vhr["citation"]),
            kidney_conditions=tuple(kid["conditions"]), kidney_egfr_below=kid["egfr_below"],
            kidney_citation=_crit(kid["citation"]))
