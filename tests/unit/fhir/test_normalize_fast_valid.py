"""normalize's fast validity checks never call valid what the R4B models reject.

normalize recognises the plain shapes of the elements it reads (CodeableConcept, Reference,
Quantity, Observation.component) without the fhir.resources models, for speed. That is only
sound if every value a fast check accepts is one the model accepts: checked here against the
models themselves, on generated near-valid values (most of them one step from a plain shape)
and on hand-picked ones the models reject. With the fast checks off, normalize gives the same
facts and the same reasons.
"""
from __future__ import annotations

import copy
from datetime import date
from typing import Any

import pytest
from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.observation import ObservationComponent
from fhir.resources.R4B.quantity import Quantity
from fhir.resources.R4B.reference import Reference
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cds.fhir.normalize as norm
from cds.fhir.normalize import normalize
from cds.knowledge.terminology import load_terminology

from rules_support import RULES
from test_normalize import PID, VITD, obs
from test_normalize_fuzz import json_value, mutated, paths

TERM = load_terminology(RULES)
AS_OF = date(2026, 11, 22)


def model_accepts(model: Any, value: Any) -> bool:
    try:
        model.model_validate(value)
    except Exception:
        return False
    return True


# --------------------------------------------------------------------------- near-valid values
# Plain values first (what the fast checks are for), then 0-2 edits each: a value replaced by any
# JSON value or an awkward string, a key deleted, or an unexpected key added.
uri_ok = st.sampled_from(["http://loinc.org", "http://unitsofmeasure.org", "urn:oid:1.2.3",
                          "Patient"])
code_ok = st.sampled_from(["1989-8", "ng/mL", "{T-score}", "a b", "<", "[lbf_av]"])
str_ok = st.sampled_from(["Vitamin D", " x ", "x\ty", "DXA [Z-score]", "\u00b5g x", "Patient/p1",
                          "http://ehr.example/fhir/Patient/p1/_history/2"])
number_ok = st.one_of(st.integers(-10**20, 10**20),
                      st.floats(allow_nan=False, allow_infinity=False))
coding_ok = st.fixed_dictionaries({}, optional={
    "system": uri_ok, "code": code_ok, "display": str_ok, "version": str_ok,
    "userSelected": st.booleans()}).filter(bool)
concept_ok = st.fixed_dictionaries({}, optional={
    "coding": st.lists(coding_ok, min_size=1, max_size=3), "text": str_ok}).filter(bool)
reference_ok = st.fixed_dictionaries({}, optional={
    "reference": str_ok, "type": uri_ok, "display": str_ok}).filter(bool)
quantity_ok = st.fixed_dictionaries({}, optional={
    "value": number_ok, "comparator": code_ok, "unit": str_ok, "system": uri_ok,
    "code": code_ok}).filter(bool)
component_ok = st.fixed_dictionaries({"code": concept_ok}, optional={"valueQuantity": quantity_ok})

awkward = st.one_of(
    json_value, st.text(max_size=6),
    st.sampled_from(["", " ", "\t", "\n", " a", "a ", "a  b", "a\tb", "a\nb", "\u00a0", "\u2003x",
                     "\u00e9", "\x00", "\x1f", "a\u00a0b", "\ufeff", True, False, 0, -0.0, 1e-05,
                     1e16, 10**30, "15", "1e5", [], {}, [None]]))
ODD_KEYS = st.sampled_from(["id", "extension", "_code", "_system", "bogus", "fhir_comments",
                            "resourceType", "identifier", "valueString", "dataAbsentReason",
                            "coding", "text", "code", "value", "display"])


@st.composite
def edited(draw, plain) -> Any:
    value = copy.deepcopy(draw(plain))   # edited in place: never a shared drawn object
    for _ in range(draw(st.integers(0, 2))):
        where = draw(st.sampled_from([()] + paths(value)))
        parent, node = None, value
        for p in where:
            parent, node = node, node[p]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "add" and isinstance(node, dict):
            node[draw(ODD_KEYS)] = copy.deepcopy(draw(awkward))
        elif action == "delete" and isinstance(parent, dict):
            del parent[where[-1]]
        elif parent is not None:
            parent[where[-1]] = copy.deepcopy(draw(awkward))
    return value


CASES = [(CodeableConcept, norm._fast_concept, edited(concept_ok)),
         (Reference, norm._fast_reference, edited(reference_ok)),
         (Quantity, norm._fast_quantity, edited(quantity_ok)),
         (ObservationComponent, norm._fast_component, edited(component_ok))]


@pytest.mark.parametrize("model, fast, values", CASES, ids=[c[0].__name__ for c in CASES])
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fast_valid_implies_model_valid(model, fast, values, data):
    value = data.draw(values)
    if fast(value):
        assert model_accepts(model, value), value


# --------------------------------------------------------------------------- hand-picked
LOINC_CODE = {"coding": [{"system": "http://loinc.org", "code": "1989-8", "display": "25-OH D"}],
              "text": "Vitamin D"}
PLAIN = [
    (CodeableConcept, LOINC_CODE),
    (CodeableConcept, {"coding": [{"system": "http://loinc.org", "code": "1989-8",
                                   "userSelected": True, "version": "2.77"}]}),
    (CodeableConcept, {"text": "cholecalciferol 1000 UNT"}),
    (Reference, {"reference": "Patient/p1"}),
    (Reference, {"reference": "http://ehr.example/fhir/Patient/p1/_history/2", "display": "J. Doe",
                 "type": "Patient"}),
    (Quantity, {"value": 15, "unit": "ng/mL", "system": "http://unitsofmeasure.org",
                "code": "ng/mL"}),
    (Quantity, {"value": -2.4, "comparator": "<", "code": "{T-score}"}),
    (Quantity, {"value": 1e-05, "unit": "g/cm2"}),
    (ObservationComponent, {"code": LOINC_CODE, "valueQuantity": {"value": 1.5, "unit": "kg"}}),
    (ObservationComponent, {"code": LOINC_CODE}),
]

REJECTED = [   # values the R4B models reject: the fast checks must not accept them
    (CodeableConcept, {"coding": [{"system": "http://loinc.org", "code": " 1989-8"}]}),
    (CodeableConcept, {"coding": [{"system": "http://loinc.org", "code": "19  89"}]}),
    (CodeableConcept, {"coding": [{"system": "http://loinc.org", "code": "1989-8", "extra": 1}]}),
    (CodeableConcept, {"coding": [{"code": 1989}]}),
    (CodeableConcept, {"coding": [{"code": "1989-8", "userSelected": "perhaps"}]}),
    (CodeableConcept, {"coding": [{"code": "1989-8", "version": {"v": 1}}]}),
    (CodeableConcept, {"coding": [None]}),
    (CodeableConcept, {"coding": {"code": "1989-8"}}),
    (CodeableConcept, {"text": ""}),
    (CodeableConcept, {"text": 5}),
    (Reference, {"reference": "Patient/p1", "unexpected": 1}),
    (Reference, {"reference": ""}),
    (Reference, {"reference": ["Patient/p1"]}),
    (Quantity, {"value": "fifteen"}),
    (Quantity, {"value": True}),
    (Quantity, {"value": 15, "code": "ng /mL "}),
    (Quantity, {"value": 15, "unit": ""}),
    (ObservationComponent, {"valueQuantity": {"value": 1}}),              # code is required
    (ObservationComponent, {"code": LOINC_CODE, "valueQuantity": {"value": "x"}}),
]


@pytest.mark.parametrize("model, value", PLAIN)
def test_plain_shapes_take_the_fast_path(model, value):
    assert model_accepts(model, value)
    assert norm._FAST_VALID[model](value)


@pytest.mark.parametrize("model, value", REJECTED)
def test_fast_checks_refuse_what_the_model_refuses(model, value):
    assert not model_accepts(model, value)
    assert not norm._FAST_VALID[model](value)


# --------------------------------------------------------------------------- same facts
def facts_of(resources: list[dict[str, Any]]) -> tuple[Any, ...]:
    f = normalize(copy.deepcopy(resources), PID, TERM, AS_OF)
    return (f.measurements, f.conditions, f.medications, f.excluded, f.unusable,
            f.unusable_latest, f.gender, f.birth_date_range, f.deceased)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(resources=st.lists(mutated(), min_size=1, max_size=4))
def test_same_facts_with_and_without_the_fast_checks(resources):
    fast = facts_of(resources)
    saved = dict(norm._FAST_VALID)
    norm._FAST_VALID.clear()
    norm._VALIDATED.clear()
    try:
        slow = facts_of(resources)
    finally:
        norm._FAST_VALID.update(saved)
    assert fast == slow


def test_a_typical_observation_never_reaches_the_models(monkeypatch):
    def refuse(*_args: Any) -> str:
        raise AssertionError("model validation on the fast path")
    monkeypatch.setattr(norm, "_check_model", refuse)
    norm._VALIDATED.clear()
    o = obs(VITD, 15, "ng/mL")
    o["code"]["coding"][0]["display"] = "25-OH vitamin D"
    assert normalize([o], PID, TERM, AS_OF).latest("vitamin-d-25oh").value == 15


# --------------------------------------------------------------------------- dates
def two(lo: int, hi: int) -> Any:
    return st.integers(lo, hi).map(lambda n: f"{n:02d}")


date_times = st.builds(
    lambda y, mo, d, h, mi, s, frac, tz, tail: f"{y}-{mo}-{d}T{h}:{mi}:{s}{frac}{tz}{tail}",
    st.sampled_from(["2026", "1950", "0000", "0001", "9999", "\u0662\u0660\u0662\u0666"]),
    two(0, 13), two(0, 32), two(0, 25), two(0, 61), two(0, 61),
    st.one_of(st.just(""), st.text("0123456789", min_size=1, max_size=9).map(lambda f: "." + f)),
    st.one_of(st.sampled_from(["", "Z"]), st.builds(lambda sign, h, m: f"{sign}{h}:{m}",
                                                    st.sampled_from("+-"), two(0, 25), two(0, 99))),
    st.sampled_from(["", "", "", "\n"]))


@settings(max_examples=600, deadline=None)
@given(value=date_times)
def test_parse_datetime_fast_path_gives_what_the_regex_path_gives(value):
    m = norm._DATETIME.match(value)
    slow = norm._datetime_of(m) if m else None
    fast = norm.parse_datetime(value)
    assert fast == slow and (fast is None or fast.utcoffset() == slow.utcoffset()), value
