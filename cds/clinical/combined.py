"""Findings that combine two domains: osteosarcopenia (osteoporosis or low bone mass together
with confirmed or severe sarcopenia) replaces its two parts with one card."""
from __future__ import annotations

from cds.clinical.common import unique
from cds.clinical.findings import Finding, OsteosarcopeniaVariables, SarcopeniaVariables
from cds.knowledge.rules import Rules
from cds.knowledge.vocabulary import Code, Flag

_BONE = (Code.OSTEOPOROSIS, Code.LOW_BONE_MASS)
_SARCOPENIA = (Code.SARCOPENIA_CONFIRMED, Code.SARCOPENIA_SEVERE)


def osteosarcopenia(bone: Finding | None, sarcopenia: Finding | None, rules: Rules) -> Finding | None:
    if bone is None or sarcopenia is None:
        return None
    if bone.code not in _BONE or sarcopenia.code not in _SARCOPENIA:
        return None
    card = rules.card(Code.OSTEOSARCOPENIA)
    flags = frozenset((bone.flags | sarcopenia.flags) - {Flag.ON_PROBLEM_LIST})
    suggestions = tuple(dict.fromkeys(bone.suggestions + sarcopenia.suggestions +
                                      rules.suggestions_for(Code.OSTEOSARCOPENIA, flags)))
    muscle = sarcopenia.variables
    assert isinstance(muscle, SarcopeniaVariables)   # the sarcopenia codes carry these (Finding checks)
    variables = OsteosarcopeniaVariables(
        date=max(bone.variables.date, muscle.date),
        profile=muscle.profile, bone=bone, sarcopenia=sarcopenia)
    return Finding(code=Code.OSTEOSARCOPENIA, indicator=card.indicator, variables=variables,
                   evidence=tuple(dict.fromkeys(bone.evidence + sarcopenia.evidence)),
                   flags=flags,
                   citations=unique(list(card.links) + list(bone.citations) + list(sarcopenia.citations)),
                   criteria=bone.criteria + sarcopenia.criteria, derived=sarcopenia.derived,
                   suggestions=suggestions)
