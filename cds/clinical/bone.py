"""Bone density from the most recent DXA (T- or Z-scores by age), significant BMD loss between the
last two scans, and DXA screening by age and sex (rules/bone.yaml)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from cds.clinical.common import any_condition, any_medication, future, make_finding, unread_since, usable
from cds.clinical.facts import Measurement, PatientFacts, age_on
from cds.clinical.findings import Applied, BmdChangeVariables, BoneVariables, Finding, ScreeningVariables
from cds.knowledge.bone import BoneRules
from cds.knowledge.intervals import Criterion, Interval
from cds.knowledge.rules import Rules
from cds.knowledge.vocabulary import Code, Flag, Kind

_SCAN_KINDS = (Kind.T_SCORE, Kind.Z_SCORE, Kind.BMD)


@dataclass(frozen=True)
class Scan:
    """The most recent DXA at the diagnostic sites."""

    day: date
    scores: dict[str, list[Measurement]]   # t-score / z-score at the sites, newest first
    bmd: list[Measurement]                 # BMD at the sites on ``day``
    unread: frozenset[str]                 # kinds with a result on ``day`` that could not be used

    def day_scores(self, kind: str) -> list[Measurement]:
        """``kind`` scores of the scan's day, lowest first."""
        return sorted((m for m in self.scores[kind] if m.day == self.day), key=lambda m: m.value)


def evaluate_bone(facts: PatientFacts, rules: Rules) -> Finding | None:
    b = rules.bone
    scan = latest_scan(facts, b)
    if scan is None or facts.birth_date is None:
        return None
    age = age_on(facts.birth_date, scan.day)   # age at the scan decides T- vs Z-score (ISCD)
    postmenopausal = facts.gender == "female" and _postmenopausal_by(facts, b, scan.day)
    adult = age >= b.t_score_min_age or postmenopausal
    if adult:
        kind = Kind.T_SCORE
        bands = [(Code.OSTEOPOROSIS, b.osteoporosis), (Code.LOW_BONE_MASS, b.low_bone_mass)]
    else:
        # Under the T-score age: T-scores never diagnose; Z-scores are read.
        kind, bands = Kind.Z_SCORE, [(Code.BMD_BELOW_EXPECTED, b.below_expected)]
    day_scores = scan.day_scores(kind)
    if not day_scores:
        return None
    code, crit = classify_lowest(day_scores, bands)
    if code is None or crit is None:
        return None
    if kind in scan.unread and code != bands[0][0]:
        return None   # a site on that day could not be read: it might be lower (no milder label)
    age_rule = Interval(float(b.t_score_min_age), True, None, False) if adult else \
        Interval(None, False, float(b.t_score_min_age), False)
    criteria = (Applied(kind, crit, "", code),
                Applied("age", Criterion(age_rule, b.age_citation.citation, b.age_citation.where),
                        "", Kind.T_SCORE if adult else Kind.Z_SCORE),
                Applied("site", b.sites_citation, "", "sites"))
    key = day_scores[0]
    now = age_on(facts.birth_date, facts.as_of)
    variables = BoneVariables(date=scan.day, profile=b.label, value=key, site=key.site, age=age,
                              age_now=now if now != age else None)
    flags = _flags(facts, b, scan.day)
    if facts.gender == "female" and not postmenopausal and age < b.menopause_note_below_age:
        flags.add(Flag.MENOPAUSE_BY_AGE)       # age stays the proxy for menopause: the card says so
    elif postmenopausal and age < b.t_score_min_age:
        flags.add(Flag.MENOPAUSE_RECORDED)
    citations = [crit.citation, b.age_citation.citation, b.sites_citation.citation]
    if _region(b, key) == "not-stated":
        flags.add(Flag.RADIUS_REGION_NOT_STATED)   # read as the 33 % radius; the card says so
        citations.append(b.forearm.citation.citation)
    return make_finding(rules, code, variables, facts=facts, evidence=day_scores + scan.bmd,
                        flags=flags, criteria=criteria, citations=citations)


def latest_scan(facts: PatientFacts, b: BoneRules) -> Scan | None:
    """The most recent DXA, or None when it cannot be read without a guess (age unknown, a
    scan dated after today or before birth, a later scan that could not be read).
    (Cyclomatic ~16: a flat row of guard clauses, each a documented no-guess rule.)"""
    if facts.birth_date is None:
        return None   # age decides T- vs Z-score: unknown age, no bone finding
    sites = set(b.diagnostic_sites)
    if any(future(facts, kind, sites) for kind in _SCAN_KINDS):
        return None   # a scan dated after today is the most recent DXA: not read, no guess
    at_sites = {kind: [m for m in usable(facts, kind) if m.site in sites] for kind in _SCAN_KINDS}
    if not at_sites[Kind.T_SCORE] and not at_sites[Kind.Z_SCORE]:
        return None
    # The most recent DXA date: a later scan at a central site that sent only BMD (no T- or
    # Z-score) is still the latest scan, so an older scan's scores are not read as current.
    day = max(m.day for values in at_sites.values() for m in values)
    unread = _unread_on_or_after(facts, day)
    if unread is None or day < facts.birth_date:
        return None   # a later scan could not be read, or the scan is dated before birth
    if any(d > day for d in unread_dxa_reports(facts, b)):
        return None   # a later DXA report whose results cannot be read is the latest DXA
    # a forearm result of another region than the 33 % radius is part of the scan (it dates it)
    # but never diagnoses
    return Scan(day, {k: [m for m in at_sites[k] if _region(b, m) != "other"]
                      for k in (Kind.T_SCORE, Kind.Z_SCORE)},
                [m for m in at_sites[Kind.BMD] if m.day == day and _region(b, m) != "other"], unread)


def _postmenopausal_by(facts: PatientFacts, b: BoneRules, day: date) -> bool:
    """A postmenopausal state is on record with an onset on or before ``day`` (or none stated)."""
    return any(c.onset is None or c.onset <= day
               for category in b.postmenopausal_conditions for c in facts.conditions.get(category, ()))


def unread_dxa_reports(facts: PatientFacts, b: BoneRules) -> list[date]:
    """Days of the DXA reports none of whose results could be read: no usable T-score, Z-score or
    BMD among the Observations it lists, nor of its day. Newest first; none dated after today."""
    read = [m for kind in _SCAN_KINDS for m in facts.all(kind)]
    ids = {m.resource_id for m in read if m.resource_id}
    days = {m.day for m in read}

    def lists_a_read_result(refs: tuple[str, ...]) -> bool:
        return any(ref.rsplit("/", 1)[-1] in ids and "Observation/" in ref for ref in refs)
    return sorted({r.day for r in facts.reports if r.category in b.dxa_reports and r.day <= facts.as_of
                   and r.day not in days and not lists_a_read_result(r.results)}, reverse=True)


def _region(b: BoneRules, m: Measurement) -> str | None:
    """The forearm region of a result at the forearm site (None at any other site)."""
    return b.forearm.region(m.region_text) if m.site == b.forearm.site else None


def _unread_on_or_after(facts: PatientFacts, day: date) -> frozenset[str] | None:
    """The scan kinds with a result from ``day`` that could not be used; None when such a
    result is from a later day (the usable scan is then not the most recent)."""
    unread = {k: facts.unusable_latest[k] for k in _SCAN_KINDS if unread_since(facts, k, day)}
    if any(d > day for d in unread.values()):
        return None
    return frozenset(unread)


def _flags(facts: PatientFacts, b: BoneRules, dxa_day: date) -> set[str]:
    flags: set[str] = set()
    if (facts.as_of - dxa_day).days > b.repeat_dxa_after_days:
        flags.add(Flag.DXA_OLD)
    if any_medication(facts, b.suppress_medications):
        flags.add(Flag.ON_THERAPY)
    if any_condition(facts, b.fracture_conditions):
        flags.add(Flag.FRAGILITY_FRACTURE)
    return flags


def classify_lowest(scores: list[Measurement],
                    bands: list[tuple[Code, Criterion]]) -> tuple[str | None, Criterion | None]:
    """The most severe band any site falls in; a site that *might* be in a more severe band
    (comparator) stops the classification, so a milder label is never given by guess."""
    for code, criterion in bands:
        relations = [criterion.interval.relation(m.value, m.comparator) for m in scores]
        if "inside" in relations:
            return code, criterion
        if "unknown" in relations:
            return None, None
    return None, None


def dxa_screening(facts: PatientFacts, rules: Rules) -> Finding | None:
    b = rules.bone
    span = facts.age_range   # (youngest, oldest) possible age: one value for a full birthDate
    if facts.gender not in ("male", "female") or span is None:
        return None
    rule = b.screening_age[facts.gender]
    # A partial birthDate ("1950", "1950-06") applies the age rule only when every age it can
    # mean lies on the same side of the cut-off.
    if not (rule.interval.contains_point(span[0]) and rule.interval.contains_point(span[1])):
        return None
    age = span[0] if span[0] == span[1] else f"{span[0]}-{span[1]}"
    # A DXA on record that could not be used (odd unit, no date...) is still a DXA on record:
    # "no DXA result" would be a guess.
    if any(facts.all(kind) or facts.unusable.get(kind) for kind in b.screening_kinds):
        return None
    if any(r.category in b.dxa_reports for r in facts.reports):
        return None   # a DXA report on record is a DXA done, read or not
    if any_condition(facts, b.suppress_conditions) or any_medication(facts, b.suppress_medications):
        return None
    variables = ScreeningVariables(date=facts.as_of, profile=b.screening_label, age=age,
                                   sex=facts.gender)
    return make_finding(rules, Code.DXA_SCREENING_DUE, variables, facts=None, evidence=[],
                        flags=set(), citations=[rule.citation, b.screening_age["female"].citation],
                        criteria=(Applied("age", rule, "", facts.gender),))


def bmd_loss(facts: PatientFacts, rules: Rules) -> Finding | None:
    """bmd-significant-loss: at a site with a least significant change (LSC) in the rules, the
    latest DXA BMD is lower than the previous scan's by the LSC or more (% of the previous value).
    Same-day results are one scan (never "the previous" one); a scan day whose results disagree,
    a value sent as a range, or an unreadable BMD dated on or after the previous scan (it may be
    the real latest or previous scan) leaves the site uncompared."""
    b = rules.bone
    if future(facts, Kind.BMD):
        return None   # a scan dated after today is the latest one: not read, no guess
    series: dict[tuple[str, str | None], list[Measurement]] = {}
    for m in usable(facts, Kind.BMD):
        if m.site is not None and m.site in b.lsc_percent:
            series.setdefault((m.site, m.laterality), []).append(m)
    losses = []
    for (site, _side), values in series.items():
        pair = _latest_two_scans(values)
        if pair is None or unread_since(facts, Kind.BMD, pair[1].day) or \
                any(d >= pair[1].day for d in unread_dxa_reports(facts, b)):
            continue   # an unreadable BMD or DXA report since the previous scan: no comparison
        latest, previous = pair
        change = round((previous.value - latest.value) / previous.value * 100, 9)
        if change >= b.lsc_percent[site]:   # ISCD: significant when it equals or exceeds the LSC
            losses.append((change / b.lsc_percent[site], change, latest, previous))
    if not losses:
        return None
    losses.sort(key=lambda x: x[0], reverse=True)   # the loss furthest beyond its site's LSC first
    _, change, latest, previous = losses[0]
    assert latest.site is not None
    lsc = b.lsc_percent[latest.site]
    variables = BmdChangeVariables(
        date=latest.day, profile=b.label, site=latest.site, value=latest, unit=latest.unit,
        previous=previous, previous_date=previous.day, change=_shown_at_least(change, lsc),
        lsc=f"{lsc:.1f}" if float(f"{lsc:.1f}") == lsc else f"{lsc:g}")
    evidence = [m for _, _, new, old in losses for m in (new, old)]
    flags: set[str] = {Flag.ON_THERAPY} if any_medication(facts, b.suppress_medications) else set()
    return make_finding(rules, Code.BMD_SIGNIFICANT_LOSS, variables, facts=facts, evidence=evidence,
                        flags=flags, citations=[b.lsc_citation.citation],
                        criteria=(Applied(Kind.BMD, b.lsc_citation, "%", Code.BMD_SIGNIFICANT_LOSS),))


def _latest_two_scans(values: list[Measurement]) -> tuple[Measurement, Measurement] | None:
    """The latest and the previous scan day's BMD (``values`` newest first, one site and side);
    None when there is no earlier day, either day's results disagree or were sent as a range, or
    the two scans name different devices (Observation.device)."""
    days: dict[date, list[Measurement]] = {}
    for m in values:
        days.setdefault(m.day, []).append(m)
    if len(days) < 2:
        return None
    picked = []
    for day in sorted(days, reverse=True)[:2]:
        same_day = days[day]
        if any(m.comparator for m in same_day) or len({m.value for m in same_day}) > 1:
            return None
        picked.append(same_day[0])
    devices = {m.device for m in picked}
    if None not in devices and len(devices) > 1:
        return None   # two devices named: no comparison without cross-calibration (ISCD)
    return picked[0], picked[1]


def _shown_at_least(value: float, limit: float) -> str:
    """``value`` with one decimal, or more when one decimal would show it below ``limit``."""
    for decimals in range(1, 6):
        text = f"{value:.{decimals}f}"
        if float(text) >= limit:
            return text
    return f"{value:g}"
