"""What every clinical domain module reads facts with, and the one way a Finding is made."""
from __future__ import annotations

from datetime import date
from typing import Iterable

from cds.clinical.facts import Measurement, PatientFacts, age_on
from cds.clinical.findings import Applied, Finding, MassValue, Variables
from cds.knowledge.rules import Rules
from cds.knowledge.vocabulary import Flag


def usable(facts: PatientFacts, kind: str) -> list[Measurement]:
    """Measurements of ``kind``, newest first, dated no later than "today" (a future date is
    odd data and never used)."""
    values = [m for m in facts.all(kind) if m.day <= facts.as_of]
    values.sort(key=lambda m: m.when, reverse=True)
    return values


def day_values(facts: PatientFacts, kind: str) -> list[Measurement]:
    """The usable values of ``kind`` from its latest day, newest first."""
    values = usable(facts, kind)
    return [m for m in values if m.day == values[0].day] if values else []


def future(facts: PatientFacts, kind: str, sites: Iterable[str] | None = None) -> bool:
    """A result of ``kind`` dated after "today" is on record (normalize keeps up to a day of
    clock skew). It is not read, but it is the newest result: reading an older one in its
    place would be a guess, so the caller treats the kind as unknown."""
    wanted = None if sites is None else set(sites)
    return any(m.day > facts.as_of and (wanted is None or m.site in wanted) for m in facts.all(kind))


def unread_since(facts: PatientFacts, kind: str, day: date | None) -> bool:
    """A result of ``kind`` dated on or after ``day`` was sent but could not be used (odd unit,
    invalid...): the usable one from ``day`` may not be the latest, or not the whole picture."""
    last = facts.unusable_latest.get(kind)
    return last is not None and (day is None or last >= day)


def any_condition(facts: PatientFacts, categories: Iterable[str]) -> bool:
    return any(facts.has_condition(c) for c in categories)


def any_medication(facts: PatientFacts, categories: Iterable[str]) -> bool:
    return any(facts.has_medication(c) for c in categories)


def taking(facts: PatientFacts, categories: Iterable[str]) -> bool:
    """A medication the patient may be taking now: status current (rules/data_quality.yaml) or
    not stated. A completed or stopped course is history, not a reason to withhold a new one."""
    return any(med.current or med.status is None
               for c in categories for med in facts.medications.get(c, ()))


def known_age_at_least(facts: PatientFacts, years: int) -> bool:
    """The patient is certainly at least ``years`` old today (a full or partial birthDate)."""
    if facts.birth_date is not None:
        return age_on(facts.birth_date, facts.as_of) >= years
    span = facts.age_range
    return span is not None and span[0] >= years


def unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(i for i in items if i))


def make_finding(rules: Rules, code: str, variables: Variables, *, facts: PatientFacts | None,
                 evidence: Iterable[Measurement], flags: set[str], citations: Iterable[str],
                 criteria: Iterable[Applied], derived: Iterable[MassValue] = (),
                 indicator: str | None = None) -> Finding:
    """A Finding with the card's indicator (unless a grade sets one), the problem-list flag
    and the suggestions whose flag conditions hold."""
    card = rules.card(code)
    problem = card.problem_category
    if problem and facts is not None and facts.has_condition(problem):
        flags = flags | {Flag.ON_PROBLEM_LIST}
    frozen = frozenset(flags)
    return Finding(code=code, indicator=indicator or card.indicator, variables=variables,
                   evidence=tuple(dict.fromkeys(evidence)), flags=frozen,
                   citations=unique(citations), criteria=tuple(criteria), derived=tuple(derived),
                   suggestions=rules.suggestions_for(code, frozen))
