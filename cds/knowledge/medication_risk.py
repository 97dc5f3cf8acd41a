"""rules/medication_risk.yaml: bone-harming medicines on record (the patient-view finding
bone-risk-medication), validated into frozen dataclasses and checked against rules/orders.yaml,
whose bone_protection entries give each trigger its medication class and (glucocorticoids) the
dose and duration cut-offs and prednisone equivalents."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from marshmallow import fields, validate

from cds.knowledge.citations import CitationRefSchema
from cds.knowledge.intervals import Criterion, Interval
from cds.knowledge.loader import NAME, RulesError, Strict, load_file, placeholders
from cds.knowledge.orders import BoneProtection, OrderRules
from cds.knowledge.vocabulary import KINDS, PATIENT_VIEW_FINDINGS, Code

FILE = "medication_risk.yaml"
#: the placeholders each "Values used" row template may use
VALUE_FIELDS: Mapping[str, frozenset[str]] = {
    "glucocorticoid": frozenset({"medicine", "dose", "since", "days"}),
    "medicine": frozenset({"medicine", "since"}),
    "dxa": frozenset({"last_dxa"}),
    "no_dxa": frozenset(),
    "no_date": frozenset(),
    "equivalent": frozenset({"dose", "prednisone"}),
}


@dataclass(frozen=True)
class Trigger:
    name: str                      # the card's grade (cards.yaml summary_by_grade)
    protection: BoneProtection     # rules/orders.yaml entry: class, dose rule (glucocorticoids)
    citation: Criterion

    @property
    def drug_class(self) -> str:
        return self.protection.drug_class

    @property
    def dosed(self) -> bool:
        return self.protection.min_per_day is not None


@dataclass(frozen=True)
class MedicationRiskRules:
    triggers: tuple[Trigger, ...]
    dxa_kinds: tuple[str, ...]
    dxa_within_days: int
    dxa_citation: Criterion
    refill_gap_days: int
    not_with: tuple[str, ...]
    replaces: tuple[str, ...]
    values: Mapping[str, str]

    def citation_refs(self) -> Iterator[tuple[str, str]]:
        for t in self.triggers:
            yield f"triggers.{t.name}.citation.id", t.citation.citation
        yield "no_dxa.citation.id", self.dxa_citation.citation


class _Trigger(Strict):
    name = fields.String(required=True, validate=NAME)
    protection = fields.String(required=True, validate=NAME)
    citation = fields.Nested(CitationRefSchema, required=True)


class _NoDxa(Strict):
    kinds = fields.List(fields.String(validate=validate.OneOf(KINDS)), required=True,
                        validate=validate.Length(min=1))
    within_days = fields.Integer(required=True, strict=True, validate=validate.Range(min=30, max=3650))
    citation = fields.Nested(CitationRefSchema, required=True)


class MedicationRiskFileSchema(Strict):
    version = fields.Integer(required=True, validate=validate.Equal(1))
    finding = fields.String(required=True, validate=validate.Equal(Code.BONE_RISK_MEDICATION))
    triggers = fields.List(fields.Nested(_Trigger), required=True, validate=validate.Length(min=1))
    no_dxa = fields.Nested(_NoDxa, required=True)
    refill_gap_days = fields.Integer(required=True, strict=True, validate=validate.Range(min=0, max=30))
    not_with = fields.List(fields.String(validate=validate.OneOf(PATIENT_VIEW_FINDINGS)), required=True)
    replaces = fields.List(fields.String(validate=validate.OneOf(PATIENT_VIEW_FINDINGS)), required=True)
    values = fields.Dict(keys=fields.String(validate=validate.OneOf(list(VALUE_FIELDS))),
                         values=fields.String(validate=validate.Length(min=3, max=120)), required=True)


def load_medication_risk(rules_dir: Path, orders: OrderRules) -> MedicationRiskRules:
    """rules/medication_risk.yaml, with each trigger's rules/orders.yaml bone_protection entry."""
    path = rules_dir / FILE
    d = load_file(path, MedicationRiskFileSchema())
    protection = {b.finding: b for b in orders.bone_protection}
    triggers = []
    for i, t in enumerate(d["triggers"]):
        if t["protection"] not in protection:
            raise RulesError(path, f"triggers[{i}].protection: {t['protection']!r} is not a "
                                   f"bone_protection finding in orders.yaml")
        triggers.append(Trigger(t["name"], protection[t["protection"]], Criterion.of(Interval(), t["citation"])))
    names = [t.name for t in triggers]
    if len(set(names)) != len(names):
        raise RulesError(path, "triggers: a name is used twice")
    missing = sorted(set(VALUE_FIELDS) - set(d["values"]))
    if missing:
        raise RulesError(path, f"values: missing {', '.join(missing)}")
    for key, text in d["values"].items():
        unknown = placeholders(text) - VALUE_FIELDS[key]
        if unknown:
            raise RulesError(path, f"values.{key}: unknown template variable(s) {', '.join(sorted(unknown))}")
    no_dxa = d["no_dxa"]
    return MedicationRiskRules(
        triggers=tuple(triggers), dxa_kinds=tuple(no_dxa["kinds"]), dxa_within_days=no_dxa["within_days"],
        dxa_citation=Criterion.of(Interval(), no_dxa["citation"]),
        refill_gap_days=d["refill_gap_days"], not_with=tuple(d["not_with"]),
        replaces=tuple(d["replaces"]), values=dict(d["values"]))
