"""Rule documentation: what each finding means, built once from ``rules/*.yaml``.

The pages (GET /rules, GET /rules/<finding>) show, per finding, its rule in words
(rules/pages.yaml), every threshold under every selectable profile and in every unit the
service accepts, the codes it reads, the suggestions its card may make and each citation
with its DOI/URL and the place in the guideline. Nothing here knows about HTTP; no patient
data is involved.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from marshmallow import fields, validate

from cds.config import Config
from cds.knowledge.citations import Citation
from cds.knowledge.intervals import Criterion, Interval
from cds.knowledge.intervals import fmt_number
from cds.knowledge.loader import RulesError, Strict, load_yaml
from cds.knowledge.rules import Rules, load_rules
from cds.knowledge.vocabulary import FINDINGS, FLAGS

PAGES_FILE = "pages.yaml"
GROUPS = ("vitamin-d", "vitamin-d-kidney", "vitamin-d-regimen-age", "t-score-osteoporosis",
          "t-score-low-bone-mass", "z-score-below-expected", "t-score-age", "diagnostic-sites",
          "repeat-dxa", "screening-age", "sarcopenia-min-age", "sarcopenia-grip",
          "sarcopenia-mass", "sarcopenia-gait", "order-checks", "vitamin-d-bone-target",
          "fracture-rules", "bmd-lsc", "bone-risk-medication")


class ReadsSchema(Strict):
    observations = fields.List(fields.String(), load_default=list)
    conditions = fields.List(fields.String(), load_default=list)
    medications = fields.List(fields.String(), load_default=list)


class FindingPageSchema(Strict):
    rule = fields.String(required=True, validate=validate.Length(min=1))
    reads = fields.Nested(ReadsSchema, required=True)
    thresholds = fields.List(fields.String(validate=validate.OneOf(GROUPS)), required=True)


class IndexSchema(Strict):
    title = fields.String(required=True)
    intro = fields.String(required=True)


class PagesFileSchema(Strict):
    version = fields.Integer(required=True, validate=validate.Equal(1))
    index = fields.Nested(IndexSchema, required=True)
    flags = fields.Dict(keys=fields.String(validate=validate.OneOf(FLAGS)),
                        values=fields.String(validate=validate.Length(min=3)), required=True)
    groups = fields.Dict(keys=fields.String(validate=validate.OneOf(GROUPS)),
                         values=fields.String(validate=validate.Length(min=3)), required=True)
    findings = fields.Dict(keys=fields.String(), values=fields.Nested(FindingPageSchema),
                           required=True)


# --------------------------------------------------------------------------- the model
@dataclass(frozen=True)
class Row:
    """One threshold: what is measured, the rule per unit, and where the guideline says it."""

    what: str
    rules: tuple[tuple[str, str], ...]   # (unit label, rule text), canonical unit first
    citation: str                        # citation id
    where: str


@dataclass(frozen=True)
class Table:
    title: str                  # e.g. "Endocrine Society 2011 (active)"
    active: bool
    rows: tuple[Row, ...]


@dataclass(frozen=True)
class CodeRow:
    system: str
    code: str
    display: str


@dataclass(frozen=True)
class CodeGroup:
    title: str
    codes: tuple[CodeRow, ...]
    keywords: tuple[str, ...] = ()


@dataclass(frozen=True)
class SuggestionDoc:
    label: str
    action: str
    creates: str      # e.g. "ServiceRequest (draft): DXA Skeletal system Views for bone density"
    when: str         # "always" or the conditions in words


@dataclass(frozen=True)
class CitationDoc:
    id: str
    label: str
    title: str
    authors: str
    journal: str
    year: int
    doi: str | None
    url: str
    where: tuple[str, ...]


@dataclass(frozen=True)
class FindingDoc:
    code: str
    title: str
    indicator: str
    rule: str
    tables: tuple[Table, ...]
    codes: tuple[CodeGroup, ...]
    suggestions: tuple[SuggestionDoc, ...]
    override_reasons: tuple[str, ...]
    citations: tuple[CitationDoc, ...]


@dataclass(frozen=True)
class Profile:
    setting: str        # MSKCDS_VITAMIN_D_PROFILE
    name: str
    label: str
    active: bool


@dataclass(frozen=True)
class RuleDocs:
    title: str
    intro: str
    findings: Mapping[str, FindingDoc]
    profiles: tuple[Profile, ...]
    service_title: str
    extra: Mapping[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- building
def load_pages(rules_dir: Path) -> Mapping[str, Any]:
    path = Path(rules_dir) / PAGES_FILE
    data = load_yaml(path, PagesFileSchema())
    missing = [f for f in FINDINGS if f not in data["findings"]]
    unknown = [f for f in data["findings"] if f not in FINDINGS]
    if missing or unknown:
        raise RulesError(path, (["findings: no page for " + ", ".join(missing)] if missing else []) +
                         (["findings: not a finding: " + ", ".join(unknown)] if unknown else []))
    return data


def build_docs(config: Config, rules: Rules) -> RuleDocs:
    """The documentation of every finding, under every selectable profile (each profile is
    loaded through the same validated loader the service uses)."""
    rules_dir = Path(config.rules_dir)
    pages = load_pages(rules_dir)
    term = rules.terminology
    vd_names = list(load_yaml(rules_dir / "vitamin_d.yaml")["profiles"])
    sa_names = list(load_yaml(rules_dir / "sarcopenia.yaml")["profiles"])
    vd_rules = {n: (rules if n == config.vitamin_d_profile else
                    load_rules(config.replace(vitamin_d_profile=n), terminology=term))
                for n in vd_names}
    sa_rules = {n: (rules if n == config.sarcopenia_profile else
                    load_rules(config.replace(sarcopenia_profile=n), terminology=term))
                for n in sa_names}
    profiles = tuple(
        [Profile("MSKCDS_VITAMIN_D_PROFILE", n, r.vitamin_d.label, n == config.vitamin_d_profile)
         for n, r in vd_rules.items()] +
        [Profile("MSKCDS_SARCOPENIA_PROFILE", n, r.sarcopenia.label, n == config.sarcopenia_profile)
         for n, r in sa_rules.items()])
    raw = {"valuesets": load_yaml(rules_dir / "valuesets.yaml")}
    b = _Builder(rules, vd_rules, sa_rules, raw, pages)
    findings = {code: b.finding(code, pages["findings"][code]) for code in FINDINGS}
    return RuleDocs(title=pages["index"]["title"], intro=pages["index"]["intro"].strip(),
                    findings=findings, profiles=profiles,
                    service_title=rules.service_text().get("title", ""))


class _Builder:
    def __init__(self, rules: Rules, vd_rules: Mapping[str, Rules], sa_rules: Mapping[str, Rules],
                 raw: Mapping[str, Any], words: Mapping[str, Any]):
        self.rules = rules
        self.raw = raw
        self.flag_words: Mapping[str, str] = words["flags"]
        self.group_words: Mapping[str, str] = words["groups"]
        self.vd = vd_rules
        self.sa = sa_rules
        self.cr = rules.cards
        self.term = rules.terminology

    # ------------------------------------------------------------------ units
    def unit_label(self, unit: str) -> str:
        return self.cr.units.get(unit, unit)

    def per_unit(self, interval: Interval, kind: str | None, unit: str,
                 stated: Mapping[str, Mapping[float, float]] | None = None) -> tuple[tuple[str, str], ...]:
        """The rule in the canonical unit and in every other accepted unit of ``kind`` whose
        numbers differ (a cut-off the guideline states in a unit is shown as stated)."""
        out = [(self.unit_label(unit), interval.describe(self.unit_label(unit)))]
        accepted = self.term.units[kind].accepted if (kind is not None and kind in self.term.units) else {}
        shown = {self.unit_label(unit)}
        for code, rule in accepted.items():
            label = self.unit_label(code)
            if label in shown or rule.multiply == 1:
                continue
            shown.add(label)
            table = (stated or {}).get(code)
            if table is not None and all(x in table for x in (interval.lower, interval.upper)
                                         if x is not None):
                other = interval.mapped(table)
            else:
                conv: Callable[[float], float] = rule.from_canonical
                other = Interval(None if interval.lower is None else conv(interval.lower),
                                 interval.lower_inclusive,
                                 None if interval.upper is None else conv(interval.upper),
                                 interval.upper_inclusive)
            out.append((label, other.describe(label)))
        return tuple(out)

    def row(self, what: str, crit: Criterion, kind: str | None = None, unit: str = "",
            stated: Mapping[str, Mapping[float, float]] | None = None,
            text: str | None = None) -> Row:
        rules: tuple[tuple[str, str], ...]
        if text is not None:
            rules = (("", text),)
        elif crit.interval.lower is None and crit.interval.upper is None:
            rules = (("", ""),)
        else:
            rules = self.per_unit(crit.interval, kind, unit, stated)
        return Row(what, rules, crit.citation, crit.where)

    # ------------------------------------------------------------------ groups
    def tables(self, code: str, groups: list[str]) -> list[Table]:
        out: list[Table] = []
        single: list[Row] = []
        for group in groups:
            if group == "vitamin-d":
                for name, r in self.vd.items():
                    rows = self.vitamin_d_rows(code, r)
                    if rows:
                        out.append(Table(r.vitamin_d.label, r is self.rules, tuple(rows)))
            elif group.startswith("sarcopenia-") and group != "sarcopenia-min-age":
                part = group.split("-", 1)[1]
                for name, r in self.sa.items():
                    rows = self.sarcopenia_rows(part, r)
                    existing = next((t for t in out if t.title == r.sarcopenia.label), None)
                    if existing is None:
                        out.append(Table(r.sarcopenia.label, r is self.rules, tuple(rows)))
                    else:
                        out[out.index(existing)] = Table(existing.title, existing.active,
                                                         existing.rows + tuple(rows))
            elif group == "order-checks":
                single.extend(self.order_rows(code))
            else:
                single.extend(self.fixed_rows(group))
        if single:   # rules that are the same under every profile
            out.append(Table("Under every profile" if out else "", False, tuple(single)))
        return out

    def vitamin_d_rows(self, code: str, r: Rules) -> list[Row]:
        vd = r.vitamin_d
        kinds = self.cr.kinds
        rows = []
        for band in vd.bands:
            if band.finding != code:
                continue
            rows.append(self.row(f"{kinds.get(vd.kind, vd.kind)}: {band.status}", band.criterion,
                                 vd.kind, vd.unit, vd.stated_equivalents))
            for g in band.grades:
                rows.append(self.row(f"{kinds.get(vd.kind, vd.kind)}: {g.name}"
                                     + (f" ({g.indicator} card)" if g.indicator else ""),
                                     g.criterion, vd.kind, vd.unit, vd.stated_equivalents))
        return rows

    def sarcopenia_rows(self, part: str, r: Rules) -> list[Row]:
        s = r.sarcopenia
        kinds, measures, sex = self.cr.kinds, self.cr.measures, self.cr.labels.sex
        cuts: list[tuple[str, str | None, Any]] = []
        if part == "grip":
            cuts = [(kinds["grip-strength"], "grip-strength", s.grip)]
        elif part == "gait":
            cuts = [(kinds["gait-speed"], "gait-speed", s.gait)]
        elif part == "mass":
            cuts = [(measures.get(m, m), _MEASURE_KIND.get(m), cut) for m, cut in s.mass]
        rows = []
        for label, kind, cut in cuts:
            unit = self.term.canonical_unit(kind) if (kind and self.term) else ""
            for who in ("male", "female"):
                rows.append(self.row(f"{label}, {sex[who]}", cut.for_sex(who), kind, unit))
        return rows

    def fixed_rows(self, group: str) -> list[Row]:
        """The rules that are the same under every profile; ``what`` is pages.yaml's wording."""
        vd, b, s = self.rules.vitamin_d, self.rules.bone, self.rules.sarcopenia
        what = self.group_words.get(group, group)
        years = lambda n: f"≥ {n} years"  # noqa: E731
        if group == "vitamin-d-kidney":
            names = ", ".join(self.category_title("conditions", c) for c in vd.kidney_conditions)
            return [self.row(what, vd.kidney_citation, text=names)]
        if group == "vitamin-d-regimen-age":
            return [self.row(what, vd.regimen_age_citation, text=years(vd.regimen_min_age))]
        if group == "t-score-osteoporosis":
            return [self.row(what, b.osteoporosis, "t-score", "{T-score}")]
        if group == "t-score-low-bone-mass":
            return [self.row(what, b.low_bone_mass, "t-score", "{T-score}")]
        if group == "z-score-below-expected":
            return [self.row(what, b.below_expected, "z-score", "{Z-score}")]
        if group == "t-score-age":
            return [self.row(what, b.age_citation, text=years(b.t_score_min_age))]
        if group == "diagnostic-sites":
            fa = b.forearm
            return [self.row(what, b.sites_citation,
                             text=", ".join(self.cr.sites.get(x, x) for x in b.diagnostic_sites)),
                    self.row(f"{what}: {self.cr.sites.get(fa.site, fa.site)}", fa.citation,
                             text=f"33% region only ({', '.join(fa.diagnostic_words)}); not "
                                  f"{', '.join(fa.other_words)}; no region named: read as 33%")]
        if group == "repeat-dxa":
            return [self.row(what, b.repeat_dxa_citation, text=f"{b.repeat_dxa_after_days} days")]
        if group == "screening-age":
            return [self.row(f"{what}, {self.cr.labels.sex[who]}", b.screening_age[who],
                             text=b.screening_age[who].interval.describe("years"))
                    for who in ("female", "male")]
        if group == "sarcopenia-min-age":
            return [self.row(what, s.age_citation, text=years(s.min_age))]
        if group == "vitamin-d-bone-target":
            target = vd.bone_target
            return [] if target is None else [self.row(
                what, target.criterion, vd.kind, self.term.canonical_unit(vd.kind) if self.term else "",
                vd.stated_equivalents)]
        if group == "bmd-lsc":
            return [self.row(f"{what}, {self.cr.sites.get(site, site)}", b.lsc_citation,
                             text=f"≥ {pct:g} % of the previous BMD")
                    for site, pct in b.lsc_percent.items()]
        if group == "fracture-rules":
            fr = self.rules.fracture
            return [
                self.row(f"{what}: fracture within", fr.gap_citation, text=f"{fr.gap_within_days} days"),
                self.row(f"{what}: age", fr.gap_citation, text=years(fr.gap_min_age)),
                self.row(f"{what}: osteoporosis whatever the T-score", fr.clinical_citation,
                         text=", ".join(fr.sites.get(x, x) for x in fr.clinical_sites)),
                self.row(f"{what}: first line", fr.first_line_citation, text=fr.first_line),
                self.row(f"{what}: alendronate drafted from eGFR", fr.alendronate_citation,
                         text=f"≥ {fmt_number(fr.alendronate_min_egfr)} mL/min/1.73 m²"),
                self.row(f"{what}: very high risk", fr.very_high_risk_citation,
                         text=f"fracture within {fr.very_high_risk_fracture_days} days, "
                              f"≥ {fr.very_high_risk_fracture_count} fractures, or T-score < "
                              f"{fr.very_high_risk_t_score_below:.1f}"),
                self.row(f"{what}: CKD G4-G5D", fr.kidney_citation,
                         text=f"eGFR < {fmt_number(fr.kidney_egfr_below)} or a condition on record")]
        if group == "bone-risk-medication":
            mr = self.rules.medication_risk
            rows = []
            for t in mr.triggers:
                prot, name = t.protection, self.category_title("medications", t.drug_class)
                rows.append(self.row(f"{what}: {name}", t.citation, text="taking now"))
                if prot.min_per_day is not None and prot.min_days is not None:
                    rows += [self.row(f"{what}: prednisone-equivalent dose", prot.min_per_day,
                                      text=prot.min_per_day.interval.describe("mg/day")),
                             self.row(f"{what}: taken so far", prot.min_days,
                                      text=prot.min_days.interval.describe("days"))]
            rows.append(self.row(f"{what}: no DXA within", mr.dxa_citation, text=f"{mr.dxa_within_days} days"))
            return rows
        return []

    def order_rows(self, code: str) -> list[Row]:
        """The thresholds of an order check (rules/orders.yaml) for finding ``code``."""
        o, vd, kinds = self.rules.orders, self.rules.vitamin_d, self.cr.kinds
        a, v, t, d = o.antiresorptive_vitamin_d, o.vitamin_d_dose, o.vitamin_d_test, o.dxa
        drugs = lambda names: ", ".join(names)  # noqa: E731
        vitd = kinds.get(vd.kind, vd.kind)
        rows: dict[str, list[Row]] = {
            "order-antiresorptive-low-vitamin-d": [
                self.row(vitd, a.deficient, vd.kind, vd.unit, vd.stated_equivalents),
                self.row("Drugs", a.deficient, text=drugs(a.drugs))],
            "order-antiresorptive-no-vitamin-d": [
                self.row(f"No {vitd} within", a.deficient, text=f"{o.max_age_days[vd.kind]} days"),
                self.row("Drugs", a.deficient, text=drugs(a.drugs))],
            "order-vitamin-d-high-dose": [
                self.row("Vitamin D ordered", v.high_dose, text=v.high_dose.interval.describe("IU/day")),
                self.row(f"{vitd}: warning", v.warning_level, vd.kind, vd.unit, vd.stated_equivalents),
                self.row(f"{vitd}: critical", v.critical_level, vd.kind, vd.unit, vd.stated_equivalents),
                self.row("1 µg vitamin D", v.iu_per_mg_citation, text=f"{v.iu_per_mg / 1000:g} IU")],
            "order-vitamin-d-duplicate": [
                self.row("Another vitamin D product active on record", v.duplicate_citation, text="")],
            "order-vitamin-d-retest": [
                self.row(f"Last {vitd} less than", t.repeat_citation, text=f"{t.repeat_within_days} days ago")],
            "order-vitamin-d-test-low-value": [
                self.row("Age", t.low_value_age, text=t.low_value_age.interval.describe("years")),
                self.row("No indication on record", t.indication_citation,
                         text=", ".join(self.category_title("conditions", c) for c in t.indication_conditions))],
            "order-dxa-repeat": [
                self.row("Last DXA less than", d.repeat_citation, text=f"{d.repeat_within_days} days ago")],
            "order-dxa-low-value": [
                self.row(f"Age ({self.cr.labels.sex.get(d.low_value_sex, d.low_value_sex)})", d.low_value_age,
                         text=d.low_value_age.interval.describe("years"))],
        }
        for k in o.kidney:
            if k.finding == code:
                rows.setdefault(code, []).append(
                    self.row(f"{kinds.get(k.kind, k.kind)}, {k.drug} ({k.indicator})", k.cut,
                             text=k.cut.interval.describe(self.unit_label("mL/min/{1.73_m2}"))))
        for b in o.bone_protection:
            if b.finding != code:
                continue
            if b.min_per_day is not None and b.min_days is not None:
                rows[code] = [self.row("Prednisone-equivalent dose", b.min_per_day,
                                       text=b.min_per_day.interval.describe("mg/day")),
                              self.row("For", b.min_days, text=b.min_days.interval.describe("days"))]
            else:
                rows[code] = [self.row("No DXA within", b.citation, text=f"{b.dxa_within_days} days")]
        return rows.get(code, [])

    # ------------------------------------------------------------------ codes
    def category_title(self, section: str, name: str) -> str:
        entry = (self.raw["valuesets"].get(section) or {}).get(name) or {}
        return str(entry.get("title") or name)

    def codes(self, reads: Mapping[str, list[str]]) -> list[CodeGroup]:
        term = self.term
        if term is None:
            return []
        out = []
        systems = {uri: name for name, uri in term.code_systems.items()}
        for kind in reads["observations"]:
            rows = tuple(CodeRow(_system_name(systems, c.key), c.key.split("|", 1)[1], c.display)
                         for c in term.observation_codes.values() if c.kind == kind)
            out.append(CodeGroup(f"{self.cr.kinds.get(kind, kind)} (Observation)", rows))
        for section, table in (("conditions", term.condition_codes),
                               ("medications", term.medication_codes)):
            for cat in reads[section]:
                rows = tuple(CodeRow(_system_name(systems, key), key.split("|", 1)[1], c.display)
                             for key, cats in table.items() for c in cats if c.category == cat)
                keywords = tuple(kw for kw, c in term.medication_keywords if c == cat) \
                    if section == "medications" else ()
                what = "Condition" if section == "conditions" else "MedicationRequest"
                out.append(CodeGroup(f"{self.category_title(section, cat)} ({what})", rows, keywords))
        return out

    # ------------------------------------------------------------------ suggestions
    def suggestions(self, code: str) -> list[SuggestionDoc]:
        card = self.cr.findings[code]
        refs = list(card.suggestions)
        if code == "osteosarcopenia":   # its card offers its parts' suggestions too
            for part in ("osteoporosis", "low-bone-mass", "sarcopenia-confirmed"):
                refs.extend(r for r in self.cr.findings[part].suggestions
                            if r.id not in {x.id for x in refs})
        out = []
        for ref in refs:
            tmpl = self.cr.suggestions.get(ref.id)
            if tmpl is None:
                continue
            try:
                resource = tmpl.build({"patient_id": "{patient}", "reason": card.title,
                                       "regimen": "the profile's regimen"})
            except LookupError:
                continue
            creates = f"{resource.get('resourceType')} ({resource.get('status', 'draft')})"
            concept = resource.get("code") or resource.get("medicationCodeableConcept") or {}
            coding = (concept.get("coding") or [{}])[0]
            name = coding.get("display") or concept.get("text")
            if name:
                creates += f": {name}"
            if coding.get("code"):
                creates += f" ({coding['code']})"
            out.append(SuggestionDoc(tmpl.label, tmpl.action, creates,
                                     _conditions(ref.only, ref.unless, self.flag_words)))
        return out

    # ------------------------------------------------------------------ one finding
    def finding(self, code: str, page: Mapping[str, Any]) -> FindingDoc:
        card = self.cr.findings[code]
        tables = self.tables(code, page["thresholds"])
        where: dict[str, list[str]] = {}
        for t in tables:
            for row in t.rows:
                where.setdefault(row.citation, [])
                if row.where and row.where not in where[row.citation]:
                    where[row.citation].append(row.where)
        for cid in card.links:
            where.setdefault(cid, [])
        cits = tuple(_citation(cid, self.rules.citations[cid], tuple(w))
                     for cid, w in where.items() if cid in self.rules.citations)
        return FindingDoc(
            code=code, title=card.title, indicator=card.indicator,
            rule=" ".join(page["rule"].split()), tables=tuple(tables),
            codes=tuple(self.codes(page["reads"])), suggestions=tuple(self.suggestions(code)),
            override_reasons=tuple(self.cr.override_reasons[r] for r in card.override_reasons),
            citations=cits)


_MEASURE_KIND = {"asm": "appendicular-lean-mass", "asm-index": "appendicular-lean-mass-index",
                 "alm-bmi": None}


def _system_name(systems: Mapping[str, str], key: str) -> str:
    uri = key.split("|", 1)[0]
    return {"loinc": "LOINC", "snomed": "SNOMED CT", "icd10cm": "ICD-10-CM",
            "rxnorm": "RxNorm"}.get(systems.get(uri, ""), uri)


def _conditions(only: tuple[str, ...], unless: tuple[str, ...], words: Mapping[str, str]) -> str:
    parts = []
    if only:
        parts.append("only when " + " or ".join(words.get(f, f) for f in only))
    if unless:
        parts.append("not when " + " or ".join(words.get(f, f) for f in unless))
    return "; ".join(parts) or "always"


def _citation(cid: str, c: Citation, where: tuple[str, ...]) -> CitationDoc:
    return CitationDoc(id=cid, label=c.label, title=" ".join(c.title.split()), authors=c.authors,
                       journal=c.journal, year=c.year, doi=c.doi, url=c.url, where=where)


