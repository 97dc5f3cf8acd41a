"""Fracture-first bone logic (rules/fracture.yaml): a fragility fracture decides before the
T-score, and an untreated recent one is the patient's one bone card.

- ``fractures(facts, fr)``: the fragility fractures on record with their site and onset.
- ``treatment_gap(...)``: fracture-treatment-gap — a fragility fracture at a major site within the
  recent window, in a patient known to be 50 or older, with no osteoporosis therapy on record
  since the fracture. A fracture with no onset date is a history of fracture, never "recent".
- ``clinical_osteoporosis(...)``: a low-bone-mass DXA finding with a hip or vertebral fragility
  fracture on record is osteoporosis (clinical, by fracture).
- ``treatment_flags(...)``: what the treatment advice may offer (very high risk, CKD G4-G5D, an
  alendronate draft only with an eGFR that allows it).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import date

from cds.clinical.bone import unread_dxa_reports
from cds.clinical.common import any_condition, known_age_at_least, make_finding, usable
from cds.clinical.facts import Measurement, PatientFacts, age_on
from cds.clinical.findings import Applied, BoneVariables, Finding, FractureGapVariables
from cds.knowledge.fracture import FractureRules
from cds.knowledge.rules import Rules
from cds.knowledge.vocabulary import Code, Flag, Kind


@dataclass(frozen=True)
class Fracture:
    site: str | None          # site category (fracture-hip ...) or None (another site)
    onset: date | None
    code: str


def fractures(facts: PatientFacts, fr: FractureRules) -> list[Fracture]:
    """Fragility fractures on record, newest first (undated ones last)."""
    out: dict[tuple[str | None, str], Fracture] = {}
    for category in fr.fracture_conditions:
        for c in facts.conditions.get(category, ()):
            site = next((s for s in fr.sites if any(x.code == c.code for x in facts.conditions.get(s, ()))),
                        None)
            key = (c.resource_id, c.code)
            out.setdefault(key, Fracture(site, c.onset if c.onset and c.onset <= facts.as_of else None, c.code))
    return sorted(out.values(), key=lambda f: (f.onset is not None, f.onset or date.min), reverse=True)


def _therapy_since(facts: PatientFacts, fr: FractureRules, day: date) -> bool:
    """Osteoporosis therapy on record since ``day``: any that may be current, or any dated on or
    after it; one with no date at all counts (no guess that it came before the fracture)."""
    for category in fr.therapy_medications:
        for med in facts.medications.get(category, ()):
            if med.current or med.status is None or med.authored is None or med.authored >= day:
                return True
    return False


def _dxa_since(facts: PatientFacts, fr: FractureRules, day: date) -> bool:
    return any(m.day >= day for kind in fr.dxa_kinds for m in facts.all(kind)) or \
        any(d >= day for k, d in facts.unusable_latest.items() if k in fr.dxa_kinds)


def _latest_egfr(facts: PatientFacts, fr: FractureRules) -> Measurement | None:
    values = [m for m in usable(facts, fr.egfr_kind) if (facts.as_of - m.day).days <= fr.egfr_max_age_days]
    return values[0] if values else None


def treatment_flags(facts: PatientFacts, fr: FractureRules, fracture_days: list[date],
                    lowest_t: float | None) -> set[str]:
    """Flags for the treatment advice on osteoporosis / fracture-treatment-gap cards."""
    flags: set[str] = set()
    recent = [d for d in fracture_days if (facts.as_of - d).days <= fr.very_high_risk_fracture_days]
    if recent or len(fracture_days) >= fr.very_high_risk_fracture_count or \
            (lowest_t is not None and lowest_t < fr.very_high_risk_t_score_below):
        flags.add(Flag.VERY_HIGH_RISK)
    egfr = _latest_egfr(facts, fr)
    if any_condition(facts, fr.kidney_conditions) or (
            egfr is not None and egfr.comparator not in (">", ">=") and egfr.value < fr.kidney_egfr_below):
        flags.add(Flag.KIDNEY_CKD_MBD)
    allows = egfr is not None and egfr.comparator not in ("<", "<=") and egfr.value >= fr.alendronate_min_egfr
    if allows and not flags & {Flag.VERY_HIGH_RISK, Flag.KIDNEY_CKD_MBD} and not facts.deceased:
        flags.add(Flag.BISPHOSPHONATE_DRAFT)
    return flags


def _site_words(fr: FractureRules, f: Fracture) -> str:
    return fr.sites.get(f.site, "") if f.site else ""


def treatment_gap(facts: PatientFacts, rules: Rules, lowest_t: float | None) -> Finding | None:
    fr = rules.fracture
    if not known_age_at_least(facts, fr.gap_min_age):
        return None
    all_fx = fractures(facts, fr)
    window = [f for f in all_fx if f.onset is not None and f.site in fr.gap_sites
              and (facts.as_of - f.onset).days <= fr.gap_within_days]
    if not window:
        return None
    latest = window[0]
    assert latest.onset is not None
    if any(_therapy_since(facts, fr, f.onset) for f in window if f.onset):
        return None
    if facts.birth_date is None or latest.onset < facts.birth_date:
        return None
    flags = treatment_flags(facts, fr, [f.onset for f in all_fx if f.onset], lowest_t)
    clinical = any(f.site in fr.clinical_sites for f in all_fx)
    if clinical:
        flags.add(Flag.CLINICAL_OSTEOPOROSIS)
    if _dxa_since(facts, fr, latest.onset):
        flags.add(Flag.DXA_SINCE_FRACTURE)
    elif any(d >= latest.onset for d in unread_dxa_reports(facts, rules.bone)):
        # a DXA was done since the fracture, but its report has no result that can be read
        flags |= {Flag.DXA_SINCE_FRACTURE, Flag.DXA_REPORT_UNREAD}
    cards = rules.cards.labels.results
    variables = FractureGapVariables(
        date=latest.onset, profile=rules.citations[fr.gap_citation.citation].label,
        fracture=_site_words(fr, latest), age=age_on(facts.birth_date, facts.as_of),
        diagnosis=cards.get("clinical-fracture" if clinical else "fragility-fracture", ""))
    citations = [fr.clinical_citation.citation if clinical else fr.gap_citation.citation,
                 fr.gap_citation.citation, fr.first_line_citation.citation]
    if Flag.VERY_HIGH_RISK in flags:
        citations.append(fr.very_high_risk_citation.citation)
    if Flag.KIDNEY_CKD_MBD in flags:
        citations.append(fr.kidney_citation.citation)
    if Flag.BISPHOSPHONATE_DRAFT in flags:
        citations.append(fr.alendronate_citation.citation)
    egfr = _latest_egfr(facts, fr)
    return make_finding(rules, Code.FRACTURE_TREATMENT_GAP, variables, facts=facts,
                        evidence=[egfr] if egfr is not None else [],
                        flags=flags, citations=citations,
                        criteria=[Applied("fracture", fr.gap_citation, "", Code.FRACTURE_TREATMENT_GAP)])


def clinical_osteoporosis(bone: Finding | None, facts: PatientFacts, rules: Rules) -> Finding | None:
    """A hip or vertebral fragility fracture with a low-bone-mass DXA: osteoporosis by fracture."""
    fr = rules.fracture
    if bone is None or bone.code != Code.LOW_BONE_MASS or not isinstance(bone.variables, BoneVariables):
        return bone
    clinical = [f for f in fractures(facts, fr) if f.site in fr.clinical_sites]
    if not clinical:
        return bone
    f = clinical[0]
    v = dataclasses.replace(bone.variables, grade="clinical-fracture", fracture=_site_words(fr, f),
                            fracture_date=f.onset.isoformat() if f.onset else
                            rules.cards.labels.results.get("date-not-recorded", "date not recorded"))
    lowest = bone.variables.value.value if bone.variables.value.kind == Kind.T_SCORE else None
    flags = set(bone.flags - {Flag.ON_PROBLEM_LIST}) | {Flag.CLINICAL_OSTEOPOROSIS} | treatment_flags(
        facts, fr, [x.onset for x in fractures(facts, fr) if x.onset], lowest)
    return make_finding(rules, Code.OSTEOPOROSIS, v, facts=facts, evidence=bone.evidence, flags=flags,
                        citations=[fr.clinical_citation.citation, *bone.citations, fr.first_line_citation.citation],
                        criteria=[*bone.criteria, Applied("fracture", fr.clinical_citation, "", Code.OSTEOPOROSIS)])


def with_treatment(bone: Finding | None, facts: PatientFacts, rules: Rules) -> Finding | None:
    """An osteoporosis-by-DXA finding gets the treatment-advice flags (very high risk, CKD G4-G5D,
    alendronate draft)."""
    if bone is None or bone.code != Code.OSTEOPOROSIS or Flag.CLINICAL_OSTEOPOROSIS in bone.flags:
        return bone
    fr = rules.fracture
    v = bone.variables
    lowest = v.value.value if isinstance(v, BoneVariables) and v.value.kind == Kind.T_SCORE else None
    extra = treatment_flags(facts, fr, [x.onset for x in fractures(facts, fr) if x.onset], lowest)
    cites = [fr.first_line_citation.citation]
    if Flag.VERY_HIGH_RISK in extra:
        cites.append(fr.very_high_risk_citation.citation)
    if Flag.KIDNEY_CKD_MBD in extra:
        cites.append(fr.kidney_citation.citation)
    return make_finding(rules, bone.code, bone.variables, facts=facts, evidence=bone.evidence,
                        flags=set(bone.flags - {Flag.ON_PROBLEM_LIST}) | extra,
                        citations=[*bone.citations, *cites], criteria=bone.criteria)


def lowest_t_score(bone: Finding | None) -> float | None:
    if bone is None or not isinstance(bone.variables, BoneVariables):
        return None
    value = bone.variables.value
    return value.value if value.kind == Kind.T_SCORE and not value.comparator else None
