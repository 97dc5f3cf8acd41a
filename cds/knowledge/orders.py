"""rules/orders.yaml → ``OrderRules``: what the order-select / order-sign checks read.

Validated once at start-up (marshmallow schemas into frozen dataclasses); every citation,
observation kind, medication or condition category and orderable the file names
is checked against the other rules files, and a problem stops start-up naming the file and
field. Nothing here knows a drug, a code or a threshold: those are in the YAML.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from marshmallow import ValidationError, fields, post_load, validate, validates_schema

from cds.knowledge.intervals import Criterion, Interval, check_bounds
from cds.knowledge.loader import NAME, RulesError, Strict, load_file
from cds.knowledge.vocabulary import ORDER_FINDINGS

ORDERS_FILE = "orders.yaml"
INDICATORS = ("info", "warning", "critical")

_NAME = NAME
_CODE = validate.Regexp(r"^[a-z0-9]+\|\S+$", error="must be <system>|<code> (system as in valuesets.yaml)")


# =========================================================================== dataclasses
#: The dimensions a dose can be in (base units: mg, IU, mL, one product unit): cds.fhir.dosage.
DIMENSIONS: tuple[str, str, str, str] = ("mass", "iu", "volume", "count")


@dataclass(frozen=True)
class DoseUnit:
    dimension: str        # one of DIMENSIONS
    factor: float         # amount × factor = amount in the dimension's base unit


@dataclass(frozen=True)
class Drug:
    name: str
    drug_class: str                # medication category (rules/valuesets.yaml)
    names: tuple[str, ...]         # lower-case names looked for in the order's text
    codes: frozenset[str]          # "system-uri|code"


@dataclass(frozen=True)
class Strength:
    drug: str
    dimension: str                 # "mass" (mg) or "iu"
    per_unit: float | None = None  # per tablet / capsule
    per_ml: float | None = None


@dataclass(frozen=True)
class AntiresorptiveVitaminD:
    drugs: tuple[str, ...]
    indicator: str
    deficient: Criterion
    citations: tuple[str, ...]
    test_service: str


@dataclass(frozen=True)
class KidneyRule:
    drug: str
    finding: str
    kind: str
    indicator: str
    cut: Criterion
    stand_in: str | None           # what the label states (shown when `kind` stands in for it)
    delete: bool


@dataclass(frozen=True)
class VitaminDDose:
    drugs: tuple[str, ...]
    iu_per_mg: float
    iu_per_mg_citation: Criterion
    high_dose: Criterion
    warning_level: Criterion
    critical_level: Criterion
    duplicate_on_record: tuple[str, ...]
    duplicate_citation: Criterion


@dataclass(frozen=True)
class VitaminDTest:
    service: str
    repeat_within_days: int
    repeat_citation: Criterion
    low_value_age: Criterion
    indication_citation: Criterion
    indication_conditions: tuple[str, ...]
    indication_medications: tuple[str, ...]


@dataclass(frozen=True)
class DxaRules:
    service: str
    kinds: tuple[str, ...]
    repeat_within_days: int
    repeat_citation: Criterion
    therapy: tuple[str, ...]
    bone_conditions: tuple[str, ...]
    repeat_exempt_medications: tuple[str, ...]
    low_value_sex: str
    low_value_age: Criterion
    risk_conditions: tuple[str, ...]
    risk_medications: tuple[str, ...]
    risk_observations: tuple[tuple[str, Interval], ...]


@dataclass(frozen=True)
class BoneProtection:
    finding: str
    drug_class: str                            # medication category that triggers the check
    prednisone_equivalent: Mapping[str, float]  # drug → mg prednisone per mg ({} for non-steroids)
    equivalent_citation: Criterion | None
    min_per_day: Criterion | None
    min_days: Criterion | None
    citation: Criterion
    dxa_within_days: int
    only_without_dxa: bool


@dataclass(frozen=True)
class OrderRules:
    max_age_days: Mapping[str, int]
    status_ignored: frozenset[str]
    dose_units: Mapping[str, DoseUnit]
    time_units: Mapping[str, float]            # days per unit
    drugs: Mapping[str, Drug]
    strengths: Mapping[str, Strength]          # "system-uri|code" → strength
    services: Mapping[str, frozenset[str]]     # test category → "system-uri|code" keys
    antiresorptive_vitamin_d: AntiresorptiveVitaminD
    kidney: tuple[KidneyRule, ...]
    vitamin_d_dose: VitaminDDose
    vitamin_d_test: VitaminDTest
    dxa: DxaRules
    bone_protection: tuple[BoneProtection, ...]

    def citation_ids(self) -> set[str]:
        out: set[str] = set(self.antiresorptive_vitamin_d.citations)
        for value in _criteria(self):
            out.add(value.citation)
        return out


def _criteria(o: OrderRules) -> list[Criterion]:
    a, v, t, d = o.antiresorptive_vitamin_d, o.vitamin_d_dose, o.vitamin_d_test, o.dxa
    out = [a.deficient, v.iu_per_mg_citation, v.high_dose, v.warning_level, v.critical_level,
           v.duplicate_citation, t.repeat_citation, t.low_value_age, t.indication_citation,
           d.repeat_citation, d.low_value_age]
    out += [k.cut for k in o.kidney]
    for b in o.bone_protection:
        out += [c for c in (b.equivalent_citation, b.min_per_day, b.min_days, b.citation) if c]
    return out


# =========================================================================== schemas
_Strict = Strict


class _Ref(_Strict):
    id = fields.String(required=True, validate=_NAME)
    where = fields.String(required=True, validate=validate.Length(min=3))

    @post_load
    def _make(self, data: dict, **kwargs: Any) -> Criterion:
        return Criterion(Interval(), data["id"], data["where"].strip())


class _Cut(_Strict):
    above = fields.Float()
    at_least = fields.Float()
    below = fields.Float()
    at_most = fields.Float()
    citation = fields.Nested(_Ref, required=True)

    @validates_schema
    def _bounds(self, data: dict, **kwargs: Any) -> None:
        check_bounds(data)

    @post_load
    def _make(self, data: dict, **kwargs: Any) -> Criterion:
        ref: Criterion = data["citation"]
        return Criterion(Interval.from_mapping(data), ref.citation, ref.where)


class _Bounds(_Strict):
    above = fields.Float()
    at_least = fields.Float()
    below = fields.Float()
    at_most = fields.Float()

    @validates_schema
    def _bounds(self, data: dict, **kwargs: Any) -> None:
        check_bounds(data)


class _Names(fields.List):
    def __init__(self, **kwargs: Any):
        super().__init__(fields.String(validate=_NAME), **kwargs)


class _DoseUnit(_Strict):
    dimension = fields.String(required=True, validate=validate.OneOf(DIMENSIONS))
    factor = fields.Float(required=True, validate=validate.Range(min=0, min_inclusive=False))


class _Strength(_Strict):
    drug = fields.String(required=True, validate=_NAME)
    mg_per_unit = fields.Float(validate=validate.Range(min=0, min_inclusive=False))
    mg_per_ml = fields.Float(validate=validate.Range(min=0, min_inclusive=False))
    iu_per_unit = fields.Float(validate=validate.Range(min=0, min_inclusive=False))
    iu_per_ml = fields.Float(validate=validate.Range(min=0, min_inclusive=False))

    @validates_schema
    def _one_dimension(self, data: dict, **kwargs: Any) -> None:
        mg = {"mg_per_unit", "mg_per_ml"} & set(data)
        iu = {"iu_per_unit", "iu_per_ml"} & set(data)
        if bool(mg) == bool(iu):
            raise ValidationError("give the strength in mg or in IU (per unit and/or per mL)")


class _Drug(_Strict):
    drug_class = fields.String(required=True, data_key="class", validate=_NAME)
    names = fields.List(fields.String(validate=validate.Regexp(r"^[a-z0-9][a-z0-9 \-]*$")),
                        required=True, validate=validate.Length(min=1))
    codes = fields.List(fields.String(validate=_CODE), load_default=list)


class _Service(_Strict):
    kinds = _Names(load_default=list)
    orderables = _Names(load_default=list)
    codes = fields.List(fields.String(validate=_CODE), load_default=list)


class _Antiresorptive(_Strict):
    drugs = _Names(required=True, validate=validate.Length(min=1))
    indicator = fields.String(required=True, validate=validate.OneOf(INDICATORS))
    deficient = fields.Nested(_Cut, required=True)
    citations = _Names(required=True)
    test_service = fields.String(required=True, validate=_NAME)


class _Kidney(_Strict):
    drug = fields.String(required=True, validate=_NAME)
    finding = fields.String(required=True, validate=validate.OneOf(ORDER_FINDINGS))
    kind = fields.String(required=True, validate=_NAME)
    indicator = fields.String(required=True, validate=validate.OneOf(INDICATORS))
    below = fields.Float(required=True)
    stand_in = fields.String(validate=validate.Length(min=3))
    citation = fields.Nested(_Ref, required=True)
    delete = fields.Boolean(required=True)


class _VitaminDDose(_Strict):
    drugs = _Names(required=True, validate=validate.Length(min=1))
    iu_per_mg = fields.Float(required=True, validate=validate.Range(min=0, min_inclusive=False))
    iu_per_mg_citation = fields.Nested(_Ref, required=True)
    high_dose = fields.Nested(_Cut, required=True)
    warning_level = fields.Nested(_Cut, required=True)
    critical_level = fields.Nested(_Cut, required=True)
    duplicate_on_record = _Names(required=True)
    duplicate_citation = fields.Nested(_Ref, required=True)


class _VitaminDTest(_Strict):
    service = fields.String(required=True, validate=_NAME)
    repeat_within_days = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))
    repeat_citation = fields.Nested(_Ref, required=True)
    low_value_age = fields.Nested(_Cut, required=True)
    indication_citation = fields.Nested(_Ref, required=True)
    indication_conditions = _Names(required=True)
    indication_medications = _Names(required=True)


class _RiskObservation(_Bounds):
    kind = fields.String(required=True, validate=_NAME)


class _LowValueDxa(_Strict):
    sex = fields.String(required=True, validate=validate.OneOf(["female", "male"]))
    age = fields.Nested(_Bounds, required=True)
    citation = fields.Nested(_Ref, required=True)
    risk_conditions = _Names(required=True)
    risk_medications = _Names(required=True)
    risk_observations = fields.List(fields.Nested(_RiskObservation), load_default=list)


class _Dxa(_Strict):
    service = fields.String(required=True, validate=_NAME)
    kinds = _Names(required=True, validate=validate.Length(min=1))
    repeat_within_days = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))
    repeat_citation = fields.Nested(_Ref, required=True)
    therapy = _Names(required=True)
    bone_conditions = _Names(required=True)
    repeat_exempt_medications = _Names(load_default=list)
    low_value = fields.Nested(_LowValueDxa, required=True)


class _BoneProtection(_Strict):
    finding = fields.String(required=True, validate=validate.OneOf(ORDER_FINDINGS))
    drug_class = fields.String(required=True, data_key="class", validate=_NAME)
    prednisone_equivalent = fields.Dict(keys=fields.String(validate=_NAME), values=fields.Float(
        validate=validate.Range(min=0, min_inclusive=False)), load_default=dict)
    equivalent_citation = fields.Nested(_Ref)
    min_per_day = fields.Nested(_Cut)
    min_days = fields.Nested(_Cut)
    citation = fields.Nested(_Ref)
    dxa_within_days = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))
    only_without_dxa = fields.Boolean(required=True)

    @validates_schema
    def _dose_rule(self, data: dict, **kwargs: Any) -> None:
        dosed = [k for k in ("prednisone_equivalent", "min_per_day", "min_days", "equivalent_citation")
                 if data.get(k)]
        if dosed and len(dosed) != 4:
            raise ValidationError("a dose rule needs prednisone_equivalent, equivalent_citation, "
                                  "min_per_day and min_days together")
        if not data.get("citation") and not data.get("min_per_day"):
            raise ValidationError("needs a citation", "citation")


class OrdersFileSchema(_Strict):
    version = fields.Integer(required=True, validate=validate.Equal(1))
    max_age_days = fields.Dict(keys=fields.String(validate=_NAME), values=fields.Integer(
        strict=True, validate=validate.Range(min=1)), required=True)
    max_age_basis = fields.String(required=True, validate=validate.Length(min=3))
    draft_status_ignored = fields.List(fields.String(), required=True)
    dose_units = fields.Dict(keys=fields.String(), values=fields.Nested(_DoseUnit), required=True)
    time_units_seconds = fields.Dict(keys=fields.String(), values=fields.Float(
        validate=validate.Range(min=0, min_inclusive=False)), required=True)
    drugs = fields.Dict(keys=fields.String(validate=_NAME), values=fields.Nested(_Drug), required=True)
    strengths = fields.Dict(keys=fields.String(validate=_CODE), values=fields.Nested(_Strength),
                            required=True)
    services = fields.Dict(keys=fields.String(validate=_NAME), values=fields.Nested(_Service),
                           required=True)
    antiresorptive_vitamin_d = fields.Nested(_Antiresorptive, required=True)
    kidney = fields.List(fields.Nested(_Kidney), required=True)
    vitamin_d_dose = fields.Nested(_VitaminDDose, required=True)
    vitamin_d_test = fields.Nested(_VitaminDTest, required=True)
    dxa = fields.Nested(_Dxa, required=True)
    bone_protection = fields.List(fields.Nested(_BoneProtection), required=True)


# =========================================================================== loading
def load_orders(rules_dir: Path, citations: Mapping[str, Any], terminology: Any) -> OrderRules:
    """rules/orders.yaml, checked against the other rules files."""
    path = rules_dir / ORDERS_FILE
    data = load_file(path, OrdersFileSchema())
    systems = terminology.code_systems

    def key(where: str, short: str) -> str:
        system, _, code = short.partition("|")
        if system not in systems:
            raise RulesError(path, f"{where}: unknown code system {system!r} (not in valuesets.yaml code_systems)")
        return f"{systems[system]}|{code}"

    drugs = {name: Drug(name, d["drug_class"], tuple(d["names"]),
                        frozenset(key(f"drugs.{name}.codes", c) for c in d["codes"]))
             for name, d in data["drugs"].items()}
    strengths = {}
    for short, s in data["strengths"].items():
        iu = "iu_per_unit" in s or "iu_per_ml" in s
        strengths[key(f"strengths.{short}", short)] = Strength(
            drug=s["drug"], dimension="iu" if iu else "mass",
            per_unit=s.get("iu_per_unit" if iu else "mg_per_unit"),
            per_ml=s.get("iu_per_ml" if iu else "mg_per_ml"))
    services: dict[str, frozenset[str]] = {}
    for name, svc in data["services"].items():
        codes = {key(f"services.{name}.codes", c) for c in svc["codes"]}
        for kind in svc["kinds"]:
            if kind not in terminology.kinds:
                raise RulesError(path, f"services.{name}.kinds: unknown observation kind {kind!r}")
            codes |= {k for k, meaning in terminology.observation_codes.items() if meaning.kind == kind}
        for orderable in svc["orderables"]:
            try:
                found = terminology.orderable(orderable)
            except KeyError:
                raise RulesError(path, f"services.{name}.orderables: unknown orderable {orderable!r}") from None
            codes.add(f"{found['system']}|{found['code']}")
        services[name] = frozenset(codes)

    a = data["antiresorptive_vitamin_d"]
    anti = AntiresorptiveVitaminD(tuple(a["drugs"]), a["indicator"], a["deficient"], tuple(a["citations"]),
                                  a["test_service"])
    kidney = tuple(KidneyRule(k["drug"], k["finding"], k["kind"], k["indicator"],
                              Criterion(Interval(upper=float(k["below"])), k["citation"].citation,
                                        k["citation"].where),
                              k.get("stand_in"), k["delete"])
                   for k in data["kidney"])
    v = data["vitamin_d_dose"]
    dose = VitaminDDose(tuple(v["drugs"]), v["iu_per_mg"], v["iu_per_mg_citation"], v["high_dose"],
                        v["warning_level"], v["critical_level"], tuple(v["duplicate_on_record"]),
                        v["duplicate_citation"])
    t = data["vitamin_d_test"]
    test = VitaminDTest(t["service"], t["repeat_within_days"], t["repeat_citation"], t["low_value_age"],
                        t["indication_citation"], tuple(t["indication_conditions"]),
                        tuple(t["indication_medications"]))
    d, low = data["dxa"], data["dxa"]["low_value"]
    dxa = DxaRules(d["service"], tuple(d["kinds"]), d["repeat_within_days"], d["repeat_citation"],
                   tuple(d["therapy"]), tuple(d["bone_conditions"]), tuple(d["repeat_exempt_medications"]),
                   low["sex"], Criterion(Interval.from_mapping(low["age"]), low["citation"].citation,
                                         low["citation"].where),
                   tuple(low["risk_conditions"]), tuple(low["risk_medications"]),
                   tuple((r["kind"], Interval.from_mapping(r)) for r in low["risk_observations"]))
    protection = tuple(
        BoneProtection(b["finding"], b["drug_class"], dict(b["prednisone_equivalent"]),
                       b.get("equivalent_citation"), b.get("min_per_day"), b.get("min_days"),
                       b.get("citation") or b["min_per_day"], b["dxa_within_days"],
                       b["only_without_dxa"])
        for b in data["bone_protection"])
    orders = OrderRules(
        max_age_days=dict(data["max_age_days"]),
        status_ignored=frozenset(data["draft_status_ignored"]),
        dose_units={c: DoseUnit(u["dimension"], u["factor"]) for c, u in data["dose_units"].items()},
        time_units={c: s / 86400.0 for c, s in data["time_units_seconds"].items()},
        drugs=drugs,
        strengths=strengths, services=services, antiresorptive_vitamin_d=anti, kidney=kidney,
        vitamin_d_dose=dose, vitamin_d_test=test, dxa=dxa, bone_protection=protection)
    _cross_check(path, orders, citations, terminology)
    return orders


def _cross_check(path: Path, o: OrderRules, citations: Mapping[str, Any], term: Any) -> None:
    for cid in sorted(o.citation_ids()):
        if cid not in citations:
            raise RulesError(path, f"unknown citation {cid!r} (not in citations.yaml)")
    meds = {c.category for cats in term.medication_codes.values() for c in cats} | \
        {cat for _, cat in term.medication_keywords}
    conds = {c.category for cats in term.condition_codes.values() for c in cats}
    kinds = set(term.kinds)
    need_drugs = {"antiresorptive_vitamin_d.drugs": o.antiresorptive_vitamin_d.drugs,
                  "kidney.drug": tuple(k.drug for k in o.kidney),
                  "strengths.drug": tuple(s.drug for s in o.strengths.values()),
                  "bone_protection.prednisone_equivalent": tuple(
                      d for b in o.bone_protection for d in b.prednisone_equivalent)}
    for where, names in need_drugs.items():
        for name in names:
            if name not in o.drugs:
                raise RulesError(path, f"{where}: unknown drug {name!r} (not in drugs)")
    need_meds = {"drugs.class": tuple(d.drug_class for d in o.drugs.values()),
                 "vitamin_d_dose.drugs": o.vitamin_d_dose.drugs,
                 "vitamin_d_dose.duplicate_on_record": o.vitamin_d_dose.duplicate_on_record,
                 "vitamin_d_test.indication_medications": o.vitamin_d_test.indication_medications,
                 "dxa.therapy": o.dxa.therapy,
                 "dxa.repeat_exempt_medications": o.dxa.repeat_exempt_medications,
                 "dxa.low_value.risk_medications": o.dxa.risk_medications,
                 "bone_protection.class": tuple(b.drug_class for b in o.bone_protection)}
    for where, names in need_meds.items():
        for name in names:
            if name not in meds:
                raise RulesError(path, f"{where}: unknown medication category {name!r} (not in valuesets.yaml)")
    need_conds = {"vitamin_d_test.indication_conditions": o.vitamin_d_test.indication_conditions,
                  "dxa.bone_conditions": o.dxa.bone_conditions,
                  "dxa.low_value.risk_conditions": o.dxa.risk_conditions}
    for where, names in need_conds.items():
        for name in names:
            if name not in conds:
                raise RulesError(path, f"{where}: unknown condition category {name!r} (not in valuesets.yaml)")
    need_kinds = {"max_age_days": tuple(o.max_age_days), "kidney.kind": tuple(k.kind for k in o.kidney),
                  "dxa.kinds": o.dxa.kinds,
                  "dxa.low_value.risk_observations": tuple(k for k, _ in o.dxa.risk_observations)}
    for where, names in need_kinds.items():
        for name in names:
            if name not in kinds:
                raise RulesError(path, f"{where}: unknown observation kind {name!r} (not in valuesets.yaml)")
    for k in o.kidney:
        if k.kind not in o.max_age_days:
            raise RulesError(path, f"kidney.kind: {k.kind!r} has no max_age_days entry")
    for where, svc in (("antiresorptive_vitamin_d.test_service", o.antiresorptive_vitamin_d.test_service),
                       ("vitamin_d_test.service", o.vitamin_d_test.service), ("dxa.service", o.dxa.service)):
        if svc not in o.services:
            raise RulesError(path, f"{where}: unknown service {svc!r} (not in services)")
    if "1" not in o.dose_units:
        raise RulesError(path, "dose_units: needs '1' (a dose sent without a unit: product units)")
