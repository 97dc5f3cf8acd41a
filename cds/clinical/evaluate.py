"""PatientFacts + rules → findings, one module per domain.

Reads typed, unit-converted facts (cds.clinical.facts) and the loaded rules
(cds.knowledge); knows no threshold and no code of its own. Every decision that needs a
value it does not have (sex, age, a value reported only as "<25") is not made: no finding
is built on a guess. Each Finding carries what the card needs: the values it rests on
(evidence), the criteria applied with their citations, flags, typed template variables
and the suggestion ids to offer.
"""
from __future__ import annotations

from cds.clinical.bone import bmd_loss, dxa_screening, evaluate_bone
from cds.clinical.combined import osteosarcopenia
from cds.clinical.facts import PatientFacts
from cds.clinical.fracture import clinical_osteoporosis, lowest_t_score, treatment_gap, with_treatment
from cds.clinical.findings import Finding
from cds.clinical.medication_risk import covered, evaluate_medication_risk
from cds.clinical.sarcopenia import evaluate_sarcopenia
from cds.clinical.vitamin_d import evaluate_vitamin_d
from cds.knowledge.rules import Rules
from cds.knowledge.vocabulary import Code

_SEVERITY = {"critical": 0, "warning": 1, "info": 2}


def evaluate(facts: PatientFacts, rules: Rules) -> list[Finding]:
    if facts.deceased:
        return []   # Patient.deceased[x]: no screening, treatment or problem-list advice for the dead
    findings: list[Finding] = []
    bone = with_treatment(clinical_osteoporosis(evaluate_bone(facts, rules), facts, rules), facts, rules)
    gap = treatment_gap(facts, rules, lowest_t_score(bone))
    if gap is not None:
        findings.append(gap)
        bone = None   # the untreated fracture is the patient's one bone card
    vitamin_d = evaluate_vitamin_d(facts, rules, bone_indication=gap is not None or (
        bone is not None and bone.code in (Code.OSTEOPOROSIS, Code.LOW_BONE_MASS)))
    if vitamin_d:
        findings.append(vitamin_d)
    sarcopenia = evaluate_sarcopenia(facts, rules)
    combined = osteosarcopenia(bone, sarcopenia, rules)
    if combined is not None:
        findings.append(combined)
    else:
        findings.extend(f for f in (bone, sarcopenia) if f is not None)
    loss = bmd_loss(facts, rules)
    if loss is not None:
        findings.append(loss)
    screening = dxa_screening(facts, rules)
    if screening:
        findings.append(screening)
    medicine = None if covered(findings, rules.medication_risk) else evaluate_medication_risk(facts, rules)
    if medicine is not None:   # one DXA suggestion: the medicine replaces screening by age
        findings = [f for f in findings if f.code not in rules.medication_risk.replaces] + [medicine]
    findings.sort(key=lambda f: _SEVERITY.get(f.indicator, 3))
    return findings
