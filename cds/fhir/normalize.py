"""FHIR R4 resources → ``PatientFacts`` (typed, unit-converted, trusted).

What becomes a fact (every rule here is data in rules/ where it is knowledge):

- Only Patient, Observation, Condition, MedicationRequest,
  MedicationStatement and DiagnosticReport (the value sets' report codes: its
  date and result references, "a DXA was done") are read; other resource
  types are ignored.
- Never a fact from another patient: a resource whose subject is not
  ``Patient/<id>`` (or an absolute URL ending in ``/Patient/<id>``, optionally
  ``/_history/<v>``) is dropped, as is a Patient whose id is not the patient
  in context. Unresolvable references (``urn:uuid:``, contained, missing) are
  dropped too, and so is an Observation whose ``focus`` is anyone or anything
  else (a fetus, a donor).
- Observations: code looked up in valuesets.yaml (the code and each component
  code; several codings that mean the same kind are one measurement, codings
  that mean different kinds or sites are a contradiction and the value is
  dropped); status in data_quality.yaml ``accepted_status``; date from
  ``effectiveDateTime`` (or ``effectiveInstant``), else ``effectivePeriod.end``,
  else ``issued`` (partial dates → the first instant they can mean, so a
  "2025-11" result is never treated as more recent than it may be; naive
  times → UTC; later than today + tolerance → dropped); ``valueQuantity`` unit
  matched on its UCUM ``code`` (or on ``unit`` when no code is sent and it is
  exactly an accepted UCUM code) and converted with units.yaml; value inside
  data_quality.yaml plausibility bounds; comparator kept.
- Conditions: clinicalStatus accepted (or absent), no abatement[x] (FHIR con-4),
  verificationStatus not excluded; each category the codes map to is one
  ConditionFact. Conditions outside the value sets are skipped without a note
  (the Condition search is unfiltered).
- MedicationRequest/MedicationStatement: status not excluded; the medication
  concept (inline, contained or a Medication resource in the input) matched on
  code, else on the value set's text keywords; status and "current" recorded.
- Each resource that would become a fact is validated with
  ``fhir.resources.R4B`` before it is used: only the elements normalize reads
  are validated (a bad ``performer`` does not hide a good result, and it keeps
  validation to ~100-250 µs per resource). Invalid → excluded, never an error.
- ``excluded`` gets one short reason per dropped resource, with no ids and no
  values.

Birth dates: a full date sets ``birth_date``; a partial one (``YYYY`` or
``YYYY-MM``) leaves ``birth_date`` None (age unknown, so age rules do not fire
on a guess) and sets ``birth_date_range`` to the first and last day it can
mean, from which ``PatientFacts.age_range`` gives the possible ages.
"""
from __future__ import annotations

import calendar
import hashlib
import logging
import math
import re
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta, timezone
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeGuard

from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.condition import Condition as FhirCondition
from fhir.resources.R4B.medicationrequest import MedicationRequest as FhirMedicationRequest
from fhir.resources.R4B.medicationstatement import MedicationStatement as FhirMedicationStatement
from fhir.resources.R4B.diagnosticreport import DiagnosticReport as FhirDiagnosticReport
from fhir.resources.R4B.observation import Observation as FhirObservation
from fhir.resources.R4B.observation import ObservationComponent
from fhir.resources.R4B.patient import Patient as FhirPatient
from fhir.resources.R4B.quantity import Quantity
from fhir.resources.R4B.reference import Reference

from cds.clinical.drafts import DosagePlan
from cds.clinical.facts import (ConditionFact, Measurement, MedicationFact, PatientFacts, ReportFact,
                                age_on, new_measurement)
from cds.fhir.dosage import read_plan
from cds.hooks.wire import FHIR_ID
from cds.knowledge.rules import Rules
from cds.knowledge.terminology import ObservationCode, Terminology, UnitRule
from cds.knowledge.vocabulary import OBSERVATION_STATUSES

log = logging.getLogger("mskcds.normalize")
COMPARATORS = frozenset({"<", "<=", ">=", ">"})
MEDICATION_TYPES = ("MedicationRequest", "MedicationStatement")
_MODELS = {"Observation": FhirObservation, "Patient": FhirPatient, "Condition": FhirCondition,
           "MedicationRequest": FhirMedicationRequest,
           "MedicationStatement": FhirMedicationStatement,
           "DiagnosticReport": FhirDiagnosticReport}
# The elements normalize reads, per type (validated; other elements are not used).
# Observations are validated element by element (_validate_observation).
_USED = {
    "DiagnosticReport": ("resourceType", "id", "status", "subject", "code", "effectiveDateTime",
                         "effectivePeriod", "issued", "result"),
    "Patient": ("resourceType", "id", "gender", "birthDate", "deceasedBoolean", "deceasedDateTime"),
    "Condition": ("resourceType", "id", "subject", "code", "clinicalStatus",
                  "verificationStatus", "onsetDateTime", "onsetPeriod"),
    "MedicationRequest": ("resourceType", "id", "status", "intent", "subject",
                          "medicationCodeableConcept",
                          "medicationReference", "authoredOn"),
    "MedicationStatement": ("resourceType", "id", "status", "subject",
                            "medicationCodeableConcept", "medicationReference",
                            "effectiveDateTime", "effectivePeriod", "dateAsserted"),
}

_DATETIME = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?"
    r"(Z|[+-]\d{2}:\d{2})?)?)?)?$")


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_UNIT_SHOWN = re.compile(r"^[A-Za-z0-9_\[\]{}/.\-*^%']{1,24}$")  # UCUM-like: safe to name in a reason


class _Drop(Exception):
    """A resource (or one value in it) is not used; the message is the reason (no patient data).
    ``kinds``: for this patient's own results, the observation kinds that were lost (so
    evaluate never reads "not measured" into "measured but unusable"); ``when``: the result's
    date, when it had one."""

    def __init__(self, reason: str, kinds: Sequence[str] = (), when: datetime | None = None):
        super().__init__(reason)
        self.kinds: tuple[str, ...] = tuple(kinds)
        self.when = when

    def about(self, kinds: Sequence[str], when: datetime | None = None) -> "_Drop":
        """The same reason, for this patient's results of ``kinds`` (dated ``when``)."""
        return _Drop(str(self), kinds, when if when is not None else self.when)


# --------------------------------------------------------------------------- entry point
def normalize(resources: Iterable[Mapping[str, Any]], patient_id: str, rules: Rules | Terminology,
              as_of: date) -> PatientFacts:
    term = terminology_of(rules)
    items = [r for r in resources if isinstance(r, Mapping)]
    reader = _Reader(term, PatientFacts(patient_id=patient_id, as_of=as_of), patient_id,
                     latest_day=as_of + timedelta(days=term.future_tolerance_days),
                     medications={f"Medication/{r.get('id')}": r for r in items
                                  if r.get("resourceType") == "Medication" and r.get("id")},
                     orders=getattr(rules, "orders", None))
    seen: set[tuple[str, str]] = set()
    for res in items:
        rtype = _text(res.get("resourceType"))
        if rtype not in _MODELS:
            continue
        rid = res.get("id") if isinstance(res.get("id"), str) else None
        if rid is not None:
            if (rtype, rid) in seen:
                continue  # the same resource twice (e.g. in two prefetch keys)
            seen.add((rtype, rid))
        reader.read(res, rtype, rid)
    return reader.done()


@dataclass
class _Reader:
    """One normalize call: reads resources one at a time into ``facts``."""

    term: Terminology
    facts: PatientFacts
    patient_id: str
    latest_day: date
    medications: Mapping[str, Mapping[str, Any]]
    orders: Any = None    # rules/orders.yaml (dose units, drugs): medication doses are read with it
    measurements: dict[str, list[Measurement]] = field(default_factory=dict)
    patient_seen: bool = False

    def read(self, res: Mapping[str, Any], rtype: str, rid: str | None) -> None:
        facts = self.facts
        try:
            if rtype == "Observation":
                found, partly = _observation(res, self.patient_id, self.term, self.latest_day)
                if partly is not None:   # some values kept, others dropped
                    self._exclude(rtype, partly)
                for m in found:
                    self.measurements.setdefault(m.kind, []).append(m)
            elif rtype == "Patient":
                if self.patient_seen and rid == self.patient_id:
                    return
                _patient(res, self.patient_id, facts, self.term)
                self.patient_seen = True
            elif rtype == "Condition":
                for c in _condition(res, self.patient_id, self.term):
                    facts.conditions.setdefault(c.category, []).append(c)
            elif rtype == "DiagnosticReport":
                facts.reports.extend(_report(res, self.patient_id, self.term, self.latest_day))
            else:
                for med in _medication(res, rtype, self.patient_id, self.term, self.medications,
                                       self.orders):
                    facts.medications.setdefault(med.category, []).append(med)
        except _Drop as why:
            self._exclude(rtype, why)
        except Exception:  # malformed beyond what the checks foresee: excluded, never a 5xx
            log.warning("normalize: %s could not be read", rtype, exc_info=False)
            facts.excluded.append(f"{rtype}: could not be read")

    def _exclude(self, rtype: str, why: _Drop) -> None:
        reason = str(why)
        if self.patient_id and self.patient_id in reason:
            # a value quoted as sent (a unit) that holds the patient's id is not repeated
            reason = _QUOTED.sub(lambda q: "'?'" if self.patient_id in q.group(0) else q.group(0),
                                 reason).replace(self.patient_id, "?")
        self.facts.excluded.append(f"{rtype}: {reason}")
        _count_unusable(self.facts, why.kinds, why.when)

    def done(self) -> PatientFacts:
        for values in self.measurements.values():
            values.sort(key=_when, reverse=True)   # newest first; stable for equal dates
        self.facts.measurements = self.measurements
        return self.facts


def _count_unusable(facts: PatientFacts, kinds: Sequence[str], when: datetime | None = None) -> None:
    for kind in kinds:
        facts.unusable[kind] = facts.unusable.get(kind, 0) + 1
        if when is not None:
            day = when.date()
            if day > facts.unusable_latest.get(kind, day - timedelta(days=1)):
                facts.unusable_latest[kind] = day


def _text(value: Any) -> str | None:
    """A JSON string, else None (keeps lists/dicts out of set look-ups)."""
    return value if isinstance(value, str) else None


def _when(m: Measurement) -> datetime:
    return m.when


def terminology_of(rules: Rules | Terminology) -> Terminology:
    """The loaded Terminology: ``rules`` itself or the one the loaded Rules carry."""
    if isinstance(rules, Terminology):
        return rules
    term = getattr(rules, "terminology", None)
    if not isinstance(term, Terminology):
        raise TypeError("normalize needs a Terminology or the loaded Rules")
    return term


# --------------------------------------------------------------------------- helpers
def _is_map(value: Any) -> TypeGuard[Mapping[str, Any]]:
    """A JSON object: a dict (what the parser gives; checked first, it is ~10x cheaper than the
    ABC check) or another Mapping."""
    return type(value) is dict or isinstance(value, Mapping)


def _is_patient(ref: Any, patient_id: str) -> bool:
    if not _is_map(ref):
        return False
    value = ref.get("reference")
    if not isinstance(value, str):
        return False
    cut = value.find("/_history/")
    if cut >= 0:
        value = value[:cut]
    local = "Patient/" + patient_id
    return value == local or value.endswith("/" + local)


def _check_subject(res: Mapping[str, Any], patient_id: str) -> None:
    if not _is_patient(res.get("subject"), patient_id):
        raise _Drop("subject is not the patient in context")


def _validate(res: Mapping[str, Any], rtype: str, checked: tuple[str, ...] = ()) -> None:
    """R4B-validate the elements normalize reads, except ``checked`` ones it parsed itself."""
    _validated(_MODELS[rtype], {k: res[k] for k in _USED[rtype] if k in res and k not in checked})


def _validate_observation(res: Mapping[str, Any]) -> None:
    """R4B-validate what normalize reads from an Observation, element by element.

    The same as validating the trimmed resource with the Observation model, at a
    fraction of the cost: the code, subject and component elements repeat across
    resources and requests (same LOINC codings, same patient reference), so their
    cached outcomes are reused even for a patient seen for the first time.
    Resource-level rules the element models cannot see are checked here: at most
    one value[x] and one effective[x], a valid id; status and dates are checked
    by normalize itself (status against data_quality.yaml, a subset of the R4 codes).
    """
    rid = res.get("id")
    if rid is not None and not (isinstance(rid, str) and FHIR_ID.match(rid)):
        raise _Drop("not valid FHIR R4 (id)")
    values = effectives = 0
    for k in res:
        first = k[:1]   # most keys start with neither letter: one cheap test each
        if first == "v" and k.startswith("value"):
            values += 1
        elif first == "e" and k.startswith("effective"):
            effectives += 1
    if values > 1:
        raise _Drop("not valid FHIR R4 (value[x]: more than one)")
    if effectives > 1:
        raise _Drop("not valid FHIR R4 (effective[x]: more than one)")
    # the fast check first, here (the usual outcome), then the model when it says "ask"
    code, subject = res.get("code"), res.get("subject")
    if not _fast_concept(code):
        _validated(CodeableConcept, code, "code")
    if not _fast_reference(subject):
        _validated(Reference, subject, "subject")
    if "valueQuantity" in res and not _fast_quantity(res["valueQuantity"]):
        _validated(Quantity, res["valueQuantity"], "valueQuantity")
    components = res.get("component")
    if components is not None:
        if not isinstance(components, list):
            raise _Drop("not valid FHIR R4 (component)")
        for comp in components:
            _validated(ObservationComponent, comp, "component")


# The plain shapes almost every EHR sends for the elements normalize reads, recognised without
# the R4B models: a value these checks accept is one the model accepts (each check is a subset
# of the model's rule for that element, see below; tests/unit/fhir/test_normalize_fast_valid.py
# holds them to the models), so the outcome is the same, ~20x cheaper than the model and ~1.5x
# cheaper than the digest the cache below needs (and no model run for a first-seen value). Anything else (an extension, an id, an
# identifier, a non-ASCII code, an empty list, a Mapping that is not a dict...) goes to the model.
# Subsets, as fhir_core states the R4 primitive rules: string: a str that contains a character of
# [ \r\n\t\S] (here: one printable ASCII non-space); code: ^[^\s]+(\s[^\s]+)*$ (here: printable
# ASCII words joined by single spaces); uri: \S* (here: printable ASCII, no space); decimal: str()
# matches fhir_core's Decimal pattern (here: an int or a finite float, whose str() -- no leading
# zeros, digits[.digits][e±digits] -- always does); boolean: True/False. Unknown keys are
# an error for the models (extra="forbid"): the field tables below list only the model's own fields.
_ASCII_WORD = re.compile(r"[!-~]")
_FAST_CODE = re.compile(r"[!-~]+(?: [!-~]+)*")
_FAST_URI = re.compile(r"[!-~]+")
_BIG_INT = 10 ** 4000   # str() of a longer int raises (sys.get_int_max_str_digits)


def _fast_string(v: Any) -> bool:
    return type(v) is str and _ASCII_WORD.search(v) is not None


def _fast_decimal(v: Any) -> bool:
    # str() of an int or a finite float always matches the decimal pattern
    return (type(v) is int and -_BIG_INT < v < _BIG_INT) or (type(v) is float and math.isfinite(v))


# Per element: each of the model's own fields and how its value is checked (a key not listed is
# an unknown field, an error for the model: extra="forbid"). A string field's check is the
# pattern's own match method (C, no Python call per field); boolean and decimal are marked.
_BOOLEAN, _DECIMAL = object(), object()
_STRING, _CODE, _URI = _ASCII_WORD.search, _FAST_CODE.fullmatch, _FAST_URI.fullmatch
_CODING_FIELDS = {"system": _URI, "version": _STRING, "code": _CODE, "display": _STRING,
                  "userSelected": _BOOLEAN}
_REFERENCE_FIELDS = {"reference": _STRING, "type": _URI, "display": _STRING}
_QUANTITY_FIELDS = {"value": _DECIMAL, "comparator": _CODE, "unit": _STRING, "system": _URI,
                    "code": _CODE}


def _fast_fields(v: Any, fields_: Mapping[str, Any]) -> bool:
    if type(v) is not dict or not v:
        return False
    for key, item in v.items():
        check = fields_.get(key)
        if check is None:
            return False
        if type(item) is str:
            if check is _BOOLEAN or check is _DECIMAL or check(item) is None:
                return False
        elif check is _BOOLEAN:
            if item is not True and item is not False:
                return False
        elif check is not _DECIMAL or not _fast_decimal(item):
            return False
    return True


def _fast_coding(c: Any) -> bool:
    return _fast_fields(c, _CODING_FIELDS)


def _fast_concept(v: Any) -> bool:
    if type(v) is not dict or not v:
        return False
    for key, item in v.items():
        if key == "coding":
            if type(item) is not list or not item:
                return False
            for c in item:
                if not _fast_fields(c, _CODING_FIELDS):
                    return False
        elif key != "text" or not _fast_string(item):
            return False
    return True


def _fast_reference(v: Any) -> bool:
    return _fast_fields(v, _REFERENCE_FIELDS)


def _fast_quantity(v: Any) -> bool:
    return _fast_fields(v, _QUANTITY_FIELDS)


def _fast_component(v: Any) -> bool:
    if type(v) is not dict or "code" not in v:
        return False
    for key, item in v.items():
        if key == "code":
            if not _fast_concept(item):
                return False
        elif key != "valueQuantity" or not _fast_quantity(item):
            return False
    return True


#: model → a check whose True means "valid for the model" (False: ask the model).
_FAST_VALID: dict[Any, Any] = {CodeableConcept: _fast_concept, Reference: _fast_reference,
                               Quantity: _fast_quantity, ObservationComponent: _fast_component}

# Validation outcomes by a digest of what was validated, for what the fast checks leave to the
# models: patient-view fires each time a chart is opened, mostly with the same resources, and
# R4B model validation costs ~100-300 µs per resource. Only 16-byte digests and reason strings
# (no patient data) are kept; bounded.
_VALIDATED: dict[bytes, str] = {}
_VALIDATED_MAX = 50_000


def _validated(model: Any, value: Any, prefix: str = "") -> None:
    fast = _FAST_VALID.get(model)
    if fast is not None and fast(value):
        return
    try:
        key: bytes | None = hashlib.blake2b(
            f"{model.__name__}|{value!r}".encode("utf-8", "surrogatepass"),
            digest_size=16).digest()
    except Exception:  # pragma: no cover - repr of parsed JSON does not fail
        key = None
    if key is not None:
        known = _VALIDATED.get(key)
        if known is not None:
            if known:
                raise _Drop(known)
            return
    outcome = _check_model(model, value, prefix)
    if key is not None:
        if len(_VALIDATED) >= _VALIDATED_MAX:
            _VALIDATED.clear()
        _VALIDATED[key] = outcome
    if outcome:
        raise _Drop(outcome)


def r4_problem(model: Any, resource: Mapping[str, Any], elements: tuple[str, ...]) -> str:
    """'' when the ``elements`` of ``resource`` are valid for the R4B ``model``, else a reason
    naming the fields (never values). Outcomes are cached like every other validation here."""
    try:
        _validated(model, {k: resource[k] for k in elements if k in resource})
    except _Drop as why:
        return str(why)
    return ""


def _check_model(model: Any, value: Any, prefix: str) -> str:
    """'' when ``value`` is a valid ``model``, else a reason naming the fields (never values)."""
    try:
        model.model_validate(value)
        return ""
    except Exception as exc:  # pydantic ValidationError (or a fhir_core error): never a 5xx
        fields_: list[str] = []
        errors = getattr(exc, "errors", None)
        if callable(errors):
            try:
                for e in errors()[:3]:
                    parts = [prefix] if prefix else []
                    parts += [str(p) for p in e.get("loc", ()) if not isinstance(p, int)]
                    loc = ".".join(parts)
                    if loc and loc not in fields_:
                        fields_.append(loc)
            except Exception:  # pragma: no cover - defensive
                pass
        if not fields_ and prefix:
            fields_ = [prefix]
        where = f" ({', '.join(fields_)})" if fields_ else ""
        return f"not valid FHIR R4{where}"


def _codings(concept: Any) -> list[Mapping[str, Any]]:
    if not _is_map(concept):
        return []
    codings = concept.get("coding")
    if not isinstance(codings, list):
        return []
    return [c for c in codings if _is_map(c)]


def parse_datetime(value: Any) -> datetime | None:
    """FHIR date/dateTime/instant → aware UTC datetime (partial → first instant; naive → UTC)."""
    if not isinstance(value, str):
        return None
    m = _DATETIME.match(value)
    if not m:
        return None
    if m.group(6) is not None:   # a full date and time to the second: the C parser, same result
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            return _datetime_of(m)
        if dt.tzinfo is timezone.utc:   # "…Z": already what is returned
            return dt
        return _in_utc(dt if dt.tzinfo is not None else dt.replace(tzinfo=timezone.utc))
    return _datetime_of(m)


def _in_utc(dt: datetime) -> datetime | None:
    """``dt`` in UTC; None when that falls outside the years 1-9999 (0001-01-01T00:00+01:00 is
    still year 0 in UTC): no date to use, never an OverflowError."""
    try:
        return dt.astimezone(timezone.utc)
    except OverflowError:
        return None


def _datetime_of(m: re.Match[str]) -> datetime | None:
    """parse_datetime from the regex groups (partial dates, and what fromisoformat refuses)."""
    year, month, day, hh, mm, ss, frac, tz = m.groups()
    try:
        dt = datetime(int(year), int(month or 1), int(day or 1), int(hh or 0), int(mm or 0),
                      int(ss or 0), int((frac or "0")[:6].ljust(6, "0")))
    except ValueError:
        return None
    if tz and tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        offset = timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))
        if offset >= timedelta(hours=24):
            return None
        dt = dt.replace(tzinfo=timezone(sign * offset))
    else:
        dt = dt.replace(tzinfo=timezone.utc)
    return _in_utc(dt)


def parse_date_range(value: Any) -> tuple[date, date] | None:
    """A FHIR date (YYYY, YYYY-MM, YYYY-MM-DD) → (first day, last day) it can mean."""
    if not isinstance(value, str):
        return None
    m = re.match(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$", value)
    if not m:
        return None
    y, mo, d = m.groups()
    try:
        if d:
            one = date(int(y), int(mo), int(d))
            return one, one
        if mo:
            last = calendar.monthrange(int(y), int(mo))[1]
            return date(int(y), int(mo), 1), date(int(y), int(mo), last)
        return date(int(y), 1, 1), date(int(y), 12, 31)
    except ValueError:
        return None


def _date_of(value: Any) -> date | None:
    dt = parse_datetime(value)
    return dt.date() if dt else None


# --------------------------------------------------------------------------- Patient

def _patient(res: Mapping[str, Any], patient_id: str, facts: PatientFacts,
             term: Terminology) -> None:
    if res.get("id") != patient_id:
        raise _Drop("not the patient in context")
    # Patient.deceased[x]: true, or a date of death. Read before validation: a Patient resource that
    # says the patient died is never treated as a living patient, even if another element is malformed.
    died = res.get("deceasedDateTime")
    if res.get("deceasedBoolean") is True or (isinstance(died, str) and died.strip()):
        facts.deceased = True
    _validate(res, "Patient")
    gender = res.get("gender")
    facts.gender = gender if gender in ("male", "female") else None
    span = parse_date_range(res.get("birthDate"))
    if span is not None and span[1] > facts.as_of:
        facts.excluded.append("Patient: birthDate after today (not used)")
        span = None
    elif span is not None and term.max_age_years is not None and \
            age_on(span[0], facts.as_of) > term.max_age_years:
        facts.excluded.append("Patient: birthDate gives an implausible age (not used)")
        span = None
    facts.birth_date_range = span
    facts.birth_date = span[0] if span and span[0] == span[1] else None


# --------------------------------------------------------------------------- Observation
def _match_concept(term: Terminology, concept: Any) -> ObservationCode | None:
    """The one meaning of an Observation.code (None: not in the value sets).

    Several codings that agree (same kind; site/laterality equal or one of them
    unspecified) are one measurement, described by the most specific coding.
    Disagreeing codings raise _Drop: the value cannot be placed without a guess.
    """
    found: list[ObservationCode] = []
    lookup = term.observation_codes
    for c in _codings(concept):
        hit = lookup.get(f"{c.get('system')}|{c.get('code')}")
        if hit is not None and hit not in found:
            found.append(hit)
    if not found:
        return None
    if len(found) == 1:
        return found[0]
    kinds = {f.kind for f in found}
    if len(kinds) > 1:
        raise _Drop(f"codes for different kinds ({', '.join(sorted(kinds))}) in one code")
    best = found[0]
    for other in found[1:]:
        for attr in ("site", "laterality", "property", "fraction"):
            a, b = getattr(best, attr), getattr(other, attr)
            if a is not None and b is not None and a != b:
                raise _Drop(f"codes with conflicting {attr} for {best.kind}")
        if (other.site, other.laterality).count(None) < (best.site, best.laterality).count(None):
            best = other
    return best


def _observation(res: Mapping[str, Any], patient_id: str, term: Terminology,
                 latest_day: date) -> tuple[list[Measurement], _Drop | None]:
    """This patient's usable values of one Observation (its code and each component code), and
    why the others were dropped (None: all used). Nothing usable raises _Drop."""
    # cheapest checks first: is it ours at all (code), is it this patient's, is it usable
    meanings = _meanings(res, term)
    _check_about_patient(res, patient_id)
    _check_status(res, term)
    # from here on it is this patient's result: if it cannot be used, say for which kinds
    # (facts.unusable), so evaluate never reads "not measured" into "measured but unusable"
    when = _observation_date(res, latest_day, meanings)
    out: list[Measurement] = []
    reasons: list[str] = []
    failed: list[str] = []
    rid = res.get("id") if isinstance(res.get("id"), str) else None
    for meaning, holder, label in meanings:
        try:
            m = _measurement(term, meaning, holder, when, rid)
            if m.site == "radius":
                m = replace(m, region_text=_region_text(res))
            if res.get("device") is not None:
                m = replace(m, device=_device(res["device"]))
            out.append(m)
        except _Drop as why:
            reasons.append(f"{label}{why}")
            failed.append(meaning.kind)
    if not out:
        raise _Drop("; ".join(reasons), failed, when)
    # dates were parsed above (more leniently than R4B: a naive time counts as UTC)
    try:
        _validate_observation(res)
    except _Drop as why:
        raise why.about([m.kind for m in out] + failed, when) from None
    return out, (_Drop("; ".join(reasons), failed, when) if reasons else None)


def _meanings(res: Mapping[str, Any], term: Terminology
              ) -> list[tuple[ObservationCode, Mapping[str, Any], str]]:
    """(meaning, the element holding its value, reason prefix) for the Observation's code and
    each component code in the value sets; _Drop when none is."""
    main = _match_concept(term, res.get("code"))
    found = [(main, res, "")] if main is not None else []
    components = res.get("component")
    if isinstance(components, list):
        for comp in components:
            if _is_map(comp):
                hit = _match_concept(term, comp.get("code"))
                if hit is not None:
                    found.append((hit, comp, "component: "))
    if not found:
        raise _Drop("no code in the value sets")
    return found


def _check_about_patient(res: Mapping[str, Any], patient_id: str) -> None:
    _check_subject(res, patient_id)
    focus = res.get("focus")
    if focus is not None and not (isinstance(focus, list) and focus
                                  and all(_is_patient(f, patient_id) for f in focus)):
        # Observation.focus: "what the observation is about, when it is not about the
        # subject of record" (e.g. a fetus, a donor): not a fact about this patient
        raise _Drop("about a focus other than the patient")


def _check_status(res: Mapping[str, Any], term: Terminology) -> None:
    status = _text(res.get("status"))
    if status not in term.observation_status:
        raise _Drop(f"status {status!r} is not a usable result" if status in OBSERVATION_STATUSES
                    else "status missing or not an ObservationStatus code")


def _observation_date(res: Mapping[str, Any], latest_day: date,
                      meanings: Sequence[tuple[ObservationCode, Any, str]]) -> datetime:
    try:
        when = _effective(res)
    except _Drop as why:
        raise why.about([meaning.kind for meaning, _, _ in meanings]) from None
    if when.date() > latest_day:
        raise _Drop("dated in the future", [meaning.kind for meaning, _, _ in meanings], when)
    return when


def _effective(res: Mapping[str, Any]) -> datetime:
    for key in ("effectiveDateTime", "effectiveInstant"):
        if key in res:
            dt = parse_datetime(res[key])
            if dt is None:
                raise _Drop(f"{key} is not a valid FHIR dateTime")
            return dt
    period = res.get("effectivePeriod")
    if isinstance(period, Mapping) and period.get("end") is not None:
        dt = parse_datetime(period.get("end"))
        if dt is None:
            raise _Drop("effectivePeriod.end is not a valid FHIR dateTime")
        return dt
    if res.get("issued") is not None:
        dt = parse_datetime(res.get("issued"))
        if dt is None:
            raise _Drop("issued is not a valid FHIR instant")
        return dt
    raise _Drop("no date (effective[x] or issued)")


def _measurement(term: Terminology, meaning: ObservationCode, holder: Mapping[str, Any],
                 when: datetime, rid: str | None) -> Measurement:
    kind = meaning.kind
    qty, value, comparator = _quantity(holder, kind)
    rule, original_unit = _unit_rule(term, kind, qty)
    if meaning.property and rule.property and meaning.property != rule.property:
        raise _Drop(f"unit {original_unit!r} contradicts the code's property "
                    f"({meaning.property}) for {kind}")
    converted = float(value) if rule.multiply == 1 else round(rule.to_canonical(float(value)), 6)
    if not term.bounds[kind].contains_point(converted):
        raise _Drop(f"value outside the plausible range for {kind}")
    return new_measurement(kind=kind, value=converted, unit=term.units[kind].canonical, when=when,
                       code=meaning.key, display=meaning.display, original_value=value,
                       original_unit=original_unit, site=meaning.site,
                       laterality=meaning.laterality, comparator=comparator, resource_id=rid,
                       fraction=meaning.fraction)


def _region_text(res: Mapping[str, Any]) -> str | None:
    """The words a forearm DXA result names its region with (code.text, bodySite text and
    displays), lower case; None when there are none. LOINC's radius codes name no region."""
    words: list[str] = []
    code = res.get("code")
    if isinstance(code, Mapping) and _text(code.get("text")):
        words.append(code["text"])
    site = res.get("bodySite")
    if site is not None:
        _validated(CodeableConcept, site, "bodySite")   # read here: validated here
    if isinstance(site, Mapping):
        words.extend(t for t in [_text(site.get("text"))] + [_text(c.get("display")) for c in _codings(site)] if t)
    return " | ".join(words).lower()[:200] or None


def _device(ref: Any) -> str | None:
    """Which device made the measurement (Observation.device: its reference, else its display)."""
    _validated(Reference, ref, "device")
    return _text(ref.get("reference")) or _text(ref.get("display")) if isinstance(ref, Mapping) else None


def _quantity(holder: Mapping[str, Any], kind: str) -> tuple[Mapping[str, Any], float, str | None]:
    """(valueQuantity, its finite number, its comparator) or _Drop saying what is missing."""
    qty = holder.get("valueQuantity")
    if not _is_map(qty):
        if holder.get("dataAbsentReason") is not None:
            raise _Drop(f"no value (dataAbsentReason) for {kind}")
        if any(k.startswith("value") for k in holder):
            raise _Drop(f"value is not a Quantity for {kind}")
        raise _Drop(f"no value for {kind}")
    value = qty.get("value")
    if value is None:
        raise _Drop(f"no value (valueQuantity without value) for {kind}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _Drop(f"value is not a number for {kind}")
    comparator = qty.get("comparator")
    if comparator is not None and _text(comparator) not in COMPARATORS:
        raise _Drop(f"comparator not usable for {kind}")
    return qty, value, comparator


def _unit_rule(term: Terminology, kind: str, qty: Mapping[str, Any]) -> tuple[UnitRule, str]:
    """The accepted unit the quantity was sent in (matched on its UCUM ``code``, or on ``unit``
    when no code is sent and it is exactly an accepted UCUM code) and the unit as sent."""
    units = term.units[kind]
    code, system, unit = qty.get("code"), qty.get("system"), qty.get("unit")
    if code is not None and system is not None and system != term.ucum_system:
        raise _Drop(f"unit is not a UCUM code for {kind}")
    sent = code if code is not None else unit
    if sent is None:
        if not units.unitless:
            raise _Drop(f"no unit for {kind}")
        return units.accepted[units.canonical], ""
    rule = units.accepted.get(sent) if isinstance(sent, str) else None
    if rule is None:
        shown = sent if isinstance(sent, str) and _UNIT_SHOWN.match(sent) else "?"
        raise _Drop(f"unit {shown!r} not accepted for {kind}")
    return rule, sent


# --------------------------------------------------------------------------- DiagnosticReport
#: FHIR R4 DiagnosticReportStatus codes that mean the study was done (cancelled, entered-in-error,
#: registered and unknown do not).
_REPORT_DONE = frozenset({"partial", "preliminary", "final", "amended", "corrected", "appended"})


def _report(res: Mapping[str, Any], patient_id: str, term: Terminology,
            latest_day: date) -> list[ReportFact]:
    """A DiagnosticReport in the value sets (a DXA report): its day and the Observations it lists.
    Only the elements read here are validated."""
    categories = {cat.category for c in _codings(res.get("code"))
                  for cat in term.report_categories(c.get("system"), c.get("code"))}
    if not categories:
        return []   # not a report the rules read (the search is filtered by code; skip quietly)
    _check_subject(res, patient_id)
    if _text(res.get("status")) not in _REPORT_DONE:
        raise _Drop("status is not a done report")
    when = _effective(res)
    if when.date() > latest_day:
        raise _Drop("dated in the future")
    _validate(res, "DiagnosticReport", checked=("effectiveDateTime", "issued"))
    results = tuple(ref["reference"] for ref in res.get("result") or ()
                    if isinstance(ref, Mapping) and isinstance(ref.get("reference"), str))
    rid = res.get("id") if isinstance(res.get("id"), str) else None
    return [ReportFact(category=cat, day=when.date(), results=results, resource_id=rid)
            for cat in sorted(categories)]


# --------------------------------------------------------------------------- Condition
def _status_codes(concept: Any) -> set[str]:
    return {code for c in _codings(concept) if isinstance(code := c.get("code"), str)}


def _condition(res: Mapping[str, Any], patient_id: str, term: Terminology) -> list[ConditionFact]:
    hits: dict[str, tuple[str, str]] = {}
    for c in _codings(res.get("code")):
        for cat in term.condition_categories(c.get("system"), c.get("code")):
            hits.setdefault(cat.category, (cat.key, cat.display))
    if not hits:
        return []   # not a condition the rules read (Condition search is unfiltered)
    _check_subject(res, patient_id)
    clinical = _status_codes(res.get("clinicalStatus"))
    if res.get("clinicalStatus") is not None and not clinical & term.condition_clinical_status:
        raise _Drop("clinicalStatus is not active")
    if any(k.startswith("abatement") for k in res):
        # FHIR R4 con-4: an abated condition is inactive/resolved/remission; abatement with
        # an active (or no) status is abated or contradictory, either way not a current problem
        raise _Drop("abated")
    if _status_codes(res.get("verificationStatus")) & term.condition_verification_excluded:
        raise _Drop("verificationStatus excludes it")
    _validate(res, "Condition")
    onset = _date_of(res.get("onsetDateTime"))
    if onset is None and isinstance(res.get("onsetPeriod"), Mapping):
        onset = _date_of(res["onsetPeriod"].get("start"))
    rid = res.get("id") if isinstance(res.get("id"), str) else None
    return [ConditionFact(category=cat, code=key, display=display, onset=onset, resource_id=rid)
            for cat, (key, display) in hits.items()]


# --------------------------------------------------------------------------- medications
def _medication_concept(res: Mapping[str, Any],
                        medications: Mapping[str, Mapping[str, Any]]) -> Any:
    concept = res.get("medicationCodeableConcept")
    if concept is not None:
        return concept
    ref = res.get("medicationReference")
    target = ref.get("reference") if isinstance(ref, Mapping) else None
    if not isinstance(target, str):
        return None
    if target.startswith("#"):
        for c in res.get("contained") or ():
            if isinstance(c, Mapping) and c.get("resourceType") == "Medication" \
                    and c.get("id") == target[1:]:
                return c.get("code")
        return None
    med = medications.get(target) or medications.get("/".join(target.rsplit("/", 2)[-2:]))
    return med.get("code") if med else None


def concept_texts(concept: Any) -> list[str]:
    """A CodeableConcept's coding displays and text, lower-cased (what text matching reads)."""
    candidates = [c.get("display") for c in _codings(concept)]
    if isinstance(concept, Mapping):
        candidates.append(concept.get("text"))
    return [t.lower() for t in candidates if isinstance(t, str)]


def medication_hits(concept: Any, term: Terminology) -> dict[str, tuple[str, str]]:
    """Medication category → (matched "system|code" or "text|<keyword>", display): the codes of
    the concept, else (no code known) the value sets' text keywords in its text and displays."""
    hits: dict[str, tuple[str, str]] = {}
    for c in _codings(concept):
        for cat in term.medication_categories(c.get("system"), c.get("code")):
            hits.setdefault(cat.category, (cat.key, cat.display))
    if not hits and term.medication_keywords:
        texts = concept_texts(concept)
        for keyword, category in term.medication_keywords:
            if category not in hits and any(keyword in t for t in texts):
                hits[category] = (f"text|{keyword}", keyword)
    return hits


def concept_keys(concept: Any) -> tuple[str, ...]:
    return tuple(f"{c.get('system')}|{c.get('code')}" for c in _codings(concept)
                 if isinstance(c.get("system"), str) and isinstance(c.get("code"), str))


def which_drug(concept: Any, keys: Iterable[str], orders: Any) -> str | None:
    """The one drug of rules/orders.yaml ``drugs`` the concept names (None: none, or several)."""
    keys = set(keys)
    by_code = {d.name for d in orders.drugs.values() if d.codes & keys}
    by_code |= {orders.strengths[k].drug for k in keys if k in orders.strengths}
    if by_code:
        return by_code.pop() if len(by_code) == 1 else None
    texts = concept_texts(concept)
    found = {(name, d.name) for d in orders.drugs.values() for name in d.names
             if any(name in t for t in texts)}
    # the longest name wins over a name inside it ("methylprednisolone" over "prednisolone")
    kept = {drug for name, drug in found
            if not any(name != other and name in other for other, _ in found)}
    return kept.pop() if len(kept) == 1 else None


def medication_concept(res: Mapping[str, Any], medications: Mapping[str, Mapping[str, Any]]) -> Any:
    """The medication a MedicationRequest/-Statement names (inline, contained or a Medication
    resource in ``medications`` keyed "Medication/<id>")."""
    return _medication_concept(res, medications)


def _medication(res: Mapping[str, Any], rtype: str, patient_id: str, term: Terminology,
                medications: Mapping[str, Mapping[str, Any]], orders: Any = None) -> list[MedicationFact]:
    concept = _medication_concept(res, medications)
    hits = medication_hits(concept, term)
    if not hits:
        return []
    _check_subject(res, patient_id)
    status = _text(res.get("status"))
    if status in term.medication_status_excluded:
        raise _Drop(f"status {status!r} is no record of therapy")
    _validate(res, rtype)
    if rtype == "MedicationRequest":
        authored = _date_of(res.get("authoredOn"))
    else:
        authored = _date_of(res.get("effectiveDateTime"))
        if authored is None and isinstance(res.get("effectivePeriod"), Mapping):
            authored = _date_of(res["effectivePeriod"].get("start"))
        if authored is None:
            authored = _date_of(res.get("dateAsserted"))
    rid = res.get("id") if isinstance(res.get("id"), str) else None
    current = status in term.medication_status_current
    # the dose is read (and its elements validated) only for the classes a dose rule reads
    dosed = _dosing(res, rtype, concept, orders) if orders is not None and \
        any(b.drug_class in hits and b.min_per_day is not None for b in orders.bone_protection) else {}
    return [MedicationFact(category=cat, code=key, display=display, authored=authored,
                           resource_id=rid, status=status, current=current, **dosed)
            for cat, (key, display) in hits.items()]


#: The elements the dose is read from, per type (validated apart: a bad dosage makes the dose
#: unreadable, it does not hide the medication itself).
_DOSAGE = {"MedicationRequest": ("dosageInstruction", "dispenseRequest"),
           "MedicationStatement": ("dosage",)}


def _full_date(value: Any) -> date | None:
    """A start date to count days from: only a full date (a partial one would be a guess)."""
    return _date_of(value) if isinstance(value, str) and len(value) >= 10 else None


def _dosing(res: Mapping[str, Any], rtype: str, concept: Any, orders: Any) -> dict[str, Any]:
    """What the dose rules read from one MedicationRequest/-Statement: its dosage plan (the same
    reader as for draft orders, cds.fhir.dosage), the drug it names, its codes, start and end."""
    keys = concept_keys(concept)
    problem = r4_problem(_MODELS[rtype], res, _USED[rtype] + _DOSAGE[rtype])
    if problem:
        plan = DosagePlan(problem="dosage is not valid FHIR R4")
    elif rtype == "MedicationRequest":
        plan = read_plan(res, orders.dose_units, orders.time_units)
    else:   # a Statement's Dosage lines are read as a Request's (no dispenseRequest)
        plan = read_plan({"dosageInstruction": res.get("dosage")}, orders.dose_units, orders.time_units)
    period = res.get("effectivePeriod") if rtype == "MedicationStatement" else None
    period = period if isinstance(period, Mapping) else {}
    started = _full_date(res.get("authoredOn")) if rtype == "MedicationRequest" else \
        _full_date(period.get("start"))
    return {"plan": plan, "drug": which_drug(concept, keys, orders), "codes": keys,
            "started": started, "ended": _date_of(period.get("end"))}
