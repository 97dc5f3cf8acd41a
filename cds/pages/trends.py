"""Which trend charts a patient's results make, with the active profile's cut-offs as bands.

Clinical meaning only (no drawing, no HTTP): facts + rules → ChartSpec. One chart per
measure with results (DXA measures per site); the bands are the active profile's cut-offs
for that measure, sex-specific ones only when the patient's sex is known.
"""
from __future__ import annotations

from typing import Any

from cds.clinical.facts import Measurement, PatientFacts
from cds.knowledge.intervals import Interval
from cds.knowledge.rules import Rules
from cds.knowledge.sarcopenia import SexCutoff
from cds.pages.charts import Band, ChartSpec, Series

#: chart order and the kinds drawn (DXA kinds per site)
KINDS = ("vitamin-d-25oh", "t-score", "z-score", "bmd", "t-score-peripheral",
         "appendicular-lean-mass", "appendicular-lean-mass-index", "grip-strength", "gait-speed")
_PER_SITE = {"t-score", "z-score", "bmd", "t-score-peripheral"}
_MASS_MEASURE = {"appendicular-lean-mass": "asm", "appendicular-lean-mass-index": "asm-index"}


def _tone(iv: Interval) -> str:
    if iv.lower is None:
        return "low"
    if iv.upper is None:
        return "high"
    return "mid"


def chart_specs(facts: PatientFacts, rules: Rules) -> list[ChartSpec]:
    cr = rules.cards
    out: list[ChartSpec] = []
    for kind in KINDS:
        values = facts.all(kind)
        if not values:
            continue
        groups: dict[str | None, list[Measurement]] = {}
        for m in values:
            groups.setdefault(m.site if kind in _PER_SITE else None, []).append(m)
        for site, ms in groups.items():
            ms = sorted(ms, key=lambda m: m.when)
            unit = cr.units.get(ms[0].unit, ms[0].unit)
            name = cr.kinds.get(kind, kind)
            title = f"{name}, {cr.sites.get(site, site)}" if site else name
            bands, notes = _bands(kind, site, ms, facts, rules)
            # one line per side (grip of each hand, a left and a right hip), else one line
            sides: dict[str | None, list[Measurement]] = {}
            for m in ms:
                sides.setdefault(m.laterality, []).append(m)
            series = tuple(Series(f"{title} ({side})" if side else title,
                                  tuple((m.day, m.value) for m in side_ms))
                           for side, side_ms in sorted(sides.items(), key=lambda kv: kv[0] or ""))
            out.append(ChartSpec(
                id=f"chart-{kind}" + (f"-{site}" if site else ""),
                title=title, axis=f"{name} ({unit})" if unit else name,
                series=series, bands=tuple(bands), notes=tuple(notes)))
    return out


def _bands(kind: str, site: str | None, ms: list[Measurement], facts: PatientFacts,
           rules: Rules) -> tuple[list[Band], list[str]]:
    cr = rules.cards
    unit = cr.units.get(ms[0].unit, ms[0].unit)
    bands: list[Band] = []
    notes: list[str] = []
    if kind == rules.vitamin_d.kind:
        vd = rules.vitamin_d
        for band in vd.bands:
            iv = band.criterion.interval
            bands.append(Band(f"{band.status} {iv.describe(unit)}", iv.lower, iv.upper, _tone(iv)))
        notes.append(f"Bands: {vd.label}.")
    elif kind == "t-score":
        b = rules.bone
        for label, crit in (("osteoporosis", b.osteoporosis), ("low bone mass", b.low_bone_mass)):
            iv = crit.interval
            bands.append(Band(f"{label} {iv.describe()}", iv.lower, iv.upper, _tone(iv)))
        notes.append(f"Bands: {b.label}; T-scores are read from age {b.t_score_min_age}.")
    elif kind == "z-score":
        iv = rules.bone.below_expected.interval
        bands.append(Band(f"below expected for age {iv.describe()}", iv.lower, iv.upper, "low"))
        notes.append(f"Bands: {rules.bone.label}.")
    elif kind == "t-score-peripheral":
        notes.append("A peripheral site: never used for diagnosis.")
    elif kind == "bmd":
        lsc = _lsc_percent(rules, site)
        if lsc is not None and len(ms) >= 2:
            prev = ms[-2]
            lo, hi = prev.value * (1 - lsc / 100), prev.value * (1 + lsc / 100)
            bands.append(Band(f"least significant change ±{lsc:g}% around {prev.day.isoformat()}",
                              lo, hi, "change", start=prev.day))
        elif lsc is None:
            notes.append("No least-significant-change figure for this site in the rules.")
    elif kind in ("grip-strength", "gait-speed") or kind in _MASS_MEASURE:
        s = rules.sarcopenia
        if facts.gender not in ("male", "female"):
            notes.append("Cut-offs are sex-specific; the patient's sex is not on record.")
        else:
            cut: SexCutoff | None
            if kind == "grip-strength":
                cut = s.grip
            elif kind == "gait-speed":
                cut = s.gait
            else:
                cut = dict(s.mass).get(_MASS_MEASURE[kind])
            if cut is not None:
                iv = cut.for_sex(facts.gender).interval
                who = cr.labels.sex[facts.gender]
                bands.append(Band(f"low ({who}) {iv.describe(unit)}", iv.lower, iv.upper, _tone(iv)))
                notes.append(f"Bands: {s.label}.")
            else:
                notes.append(f"{s.label} has no cut-off for this measure.")
    return bands, notes


def _lsc_percent(rules: Rules, site: str | None) -> float | None:
    table: Any = getattr(rules.bone, "lsc_percent", None)
    if not table or site is None:
        return None
    value = table.get(site)
    return float(value) if value is not None else None
