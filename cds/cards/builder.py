"""Findings → CDS Hooks cards, all through one code path (``build_card``).

Every word, citation, suggestion template and override reason comes from the
loaded rules (rules/cards.yaml, rules/citations.yaml); this module only fills
templates and lays the card out. With ``MSKCDS_CHECK_CARDS`` on (the test suite) every
card is checked with ``wire.check_card`` before it leaves; card and suggestion uuids are
fresh (UUID v4, ``cds.ids``) per card.

A card's ``{placeholders}`` are its finding's typed variables (cds.clinical.findings)
plus ``{title}``; ``check_templates`` holds rules/cards.yaml to that at start-up.
"""
from __future__ import annotations

import dataclasses
from datetime import date
from collections.abc import Callable, Mapping
from typing import Any

from cds.clinical.facts import Measurement, PatientFacts
from cds.clinical.findings import FINDING_VARIABLES, Applied, Finding, MassValue, variable_names
from cds.hooks import wire
from cds.ids import new_id
from cds.knowledge import card_text
from cds.knowledge.card_text import CardRules, CardText
from cds.knowledge.intervals import Interval, fmt_number, fmt_on_side
from cds.knowledge.loader import PLACEHOLDER
from cds.knowledge.rules import Rules
from cds.knowledge.vocabulary import CARD_VARIABLES


def check_templates(rules: Rules) -> None:
    """Every placeholder in rules/cards.yaml is a variable its finding's dataclass provides
    (or ``{title}``): a placeholder no finding provides stops start-up naming the field."""
    allowed = {code: variable_names(code) | CARD_VARIABLES for code in FINDING_VARIABLES}
    card_text.check_templates(rules.source_dir / card_text.FILE, rules.cards, allowed)


def build_cards(findings: list[Finding], facts: PatientFacts, rules: Rules,
                rule_pages: str | None = None, *, check: bool = True) -> list[dict[str, Any]]:
    return [build_card(f, facts, rules, rule_pages, check=check) for f in findings]


def build_card(finding: Finding, facts: PatientFacts, rules: Rules,
               rule_pages: str | None = None, *, check: bool = True) -> dict[str, Any]:
    """``rule_pages``: the absolute URL of the rule documentation (…/rules); the card then
    links to its finding's page first, where the full rule and its sources are.
    ``check``: validate the card against the CDS Hooks card schema (``wire.check_card``);
    the service turns that off in production (``MSKCDS_CHECK_CARDS``), the tests keep it on."""
    cr = rules.cards
    card_rules = cr.findings[finding.code]
    values = template_values(finding, rules)
    grade = getattr(finding.variables, "grade", None)
    summary_tpl = card_rules.summary_by_grade.get(grade) if grade else None
    summary = render(summary_tpl or card_rules.summary, values)
    if len(summary) > wire.SUMMARY_MAX:
        summary = summary[:wire.SUMMARY_MAX - 1].rstrip() + "…"

    citations = [rules.citations[c] for c in finding.citations if c in rules.citations]
    source_cit = citations[0] if citations else None
    card: dict[str, Any] = {
        "uuid": new_id(),
        "summary": summary,
        "indicator": finding.indicator,
        "detail": _detail(finding, card_rules, values, rules),
        "source": {"label": source_cit.label if source_cit else card_rules.title,
                   "topic": {"system": cr.finding_system, "code": str(finding.code),
                             "display": card_rules.title}},
    }
    if source_cit:
        card["source"]["url"] = source_cit.url
    suggestions = _suggestions(finding, facts, rules, card_rules.title)
    if suggestions:
        card["suggestions"] = suggestions
        card["selectionBehavior"] = card_rules.selection_behavior or "any"
    card["overrideReasons"] = [{"system": cr.override_system, "code": code,
                                "display": cr.override_reasons[code]}
                               for code in card_rules.override_reasons]
    links = [{"label": c.label, "url": c.url, "type": "absolute"} for c in citations]
    if rule_pages:
        links.insert(0, {"label": render(cr.labels.rule_page, values),
                         "url": f"{rule_pages}/{finding.code}", "type": "absolute"})
    if links:
        card["links"] = links
    if check:
        wire.check_card(card)
    return card


# --------------------------------------------------------------------------- templates
def render(template: str, values: Mapping[str, str]) -> str:
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], template).strip()


#: Fixed decimals by kind, as clinicians write them: scores with one (-3.0, not -3), BMD with
#: three (0.812: DXA reports BMD in g/cm² so); any other kind up to two, no trailing zeros.
_FIXED_DECIMALS = {"t-score": 1, "z-score": 1, "t-score-peripheral": 1, "bmd": 3}


def _number(kind: str, value: float) -> str:
    return fmt_on_side(value, None, fixed=_FIXED_DECIMALS.get(kind))


def _value_text(m: Measurement, cut: Interval | None = None) -> str:
    """As clinicians write it (``_number``), with more decimals where rounding would move
    the value across ``cut`` (the rule that classified it); a value sent with a comparator
    is shown as sent."""
    number = fmt_on_side(m.value, None if m.comparator else cut,
                         fixed=_FIXED_DECIMALS.get(m.kind))
    return f"{m.comparator or ''}{number}"


def _cuts(finding: Finding) -> dict[str, Interval]:
    """The interval that classified each kind or measure of the finding (its criteria)."""
    out: dict[str, Interval] = {}
    for c in finding.criteria:
        iv = c.criterion.interval
        if iv.lower is not None or iv.upper is not None:
            out.setdefault(c.what, iv)
    return out


def _mass_number(mv: MassValue) -> str:
    if mv.value is None:
        return ""
    return fmt_on_side(mv.value, None if mv.comparator else mv.criterion.interval)


def _unit(rules: Rules, code: str) -> str:
    return rules.cards.units.get(code, code)


def _with_unit(number: str, unit: str) -> str:
    return f"{number} {unit}" if unit else number


def _measured(rules: Rules, m: Measurement) -> str:
    return _with_unit(_value_text(m), _unit(rules, m.unit))


def _masses(rules: Rules, masses: tuple[MassValue, ...]) -> str:
    return ", ".join(
        _with_unit(f"{rules.cards.measures[mv.measure]} {mv.comparator or ''}"
                   f"{_mass_number(mv) or '0'}", _unit(rules, mv.unit))
        for mv in masses)


def _component(rules: Rules, part: Finding) -> str:
    return render(_short(rules.cards, part.code), template_values(part, rules))


#: How a variable is shown in card text, by name (any other: str(), a date: ISO 8601).
_FORMAT: dict[str, Callable[[Rules, Any], str]] = {
    "value": lambda rules, m: _value_text(m),
    "previous": lambda rules, m: _value_text(m),
    "unit": _unit,
    "site": lambda rules, site: rules.cards.sites.get(site, site),
    "sex": lambda rules, sex: rules.cards.labels.sex.get(sex, sex),
    "grip": _measured,
    "gait": _measured,
    "mass": _masses,
    "bone": _component,
    "sarcopenia": _component,
    "regimen": lambda rules, text: str(text or ""),
    "rows": lambda rules, rows: "; ".join(rows),
}
_OPTIONAL_EMPTY = frozenset({"regimen"})   # shown as "" when the finding has none


def template_values(finding: Finding, rules: Rules) -> dict[str, str]:
    """The finding's variables as card text (a variable that is None or empty is left out,
    except those shown as empty text)."""
    out: dict[str, str] = {"title": rules.cards.findings[finding.code].title}
    for f in dataclasses.fields(finding.variables):
        value = getattr(finding.variables, f.name)
        if (value is None or value == ()) and f.name not in _OPTIONAL_EMPTY:
            continue
        formatter = _FORMAT.get(f.name)
        if formatter is not None:
            out[f.name] = formatter(rules, value)
        elif isinstance(value, date):
            out[f.name] = value.isoformat()
        else:
            out[f.name] = str(value)
    cuts = _cuts(finding)
    for name in ("grip", "gait", "value"):   # a shown value keeps the side of its cut-off
        m = getattr(finding.variables, name, None)
        if isinstance(m, Measurement) and m.kind in cuts and name in out:
            number = _value_text(m, cuts[m.kind])
            out[name] = (_with_unit(number, _unit(rules, m.unit)) if name != "value" else number)
    m = getattr(finding.variables, "value", None)
    if isinstance(m, Measurement) and "unit" in out and m.original_unit and \
            _unit(rules, m.original_unit) != _unit(rules, m.unit):
        # the value as sent ("62 nmol/L"), the converted one only in parentheses
        out["value"] = f"{m.comparator or ''}{fmt_number(m.original_value)}"
        out["unit"] = f"{_unit(rules, m.original_unit)} ({m.value:.1f} {_unit(rules, m.unit)})"
    return out


def _short(cr: CardRules, code: str) -> str:
    card = cr.findings[code]
    return card.short or card.title


# --------------------------------------------------------------------------- detail
#: At most this many "Next" steps on a card (the card is read in seconds; the rule page has the rest).
MAX_NEXT_STEPS = 3


def _detail(finding: Finding, card_rules: CardText, values: Mapping[str, str], rules: Rules) -> str:
    """Values (each with its date), Why (the card's sentence), what else is on record, Next (at
    most three). The criteria applied and the citations are not repeated here: they are the
    card's links (the finding's rule page first, when a public base URL is set)."""
    labels = rules.cards.labels
    flags = finding.flags
    parts = []
    rows = _value_rows(finding, rules)
    if rows:
        parts.append(f"**{labels.values}**\n\n" + "\n".join(rows))
    parts.append(f"**{labels.why}** " + render(card_rules.detail, values))

    notes = [f"- {text.strip()}" for flag, text in card_rules.notes.items() if flag in flags]
    if notes:
        parts.append(f"**{labels.notes}**\n\n" + "\n".join(notes))

    steps = [f"- {render(s.text, values)}" for s in card_rules.next_steps if s.applies(flags)]
    if steps:
        parts.append(f"**{labels.next}**\n\n" + "\n".join(steps[:MAX_NEXT_STEPS]))
    return "\n\n".join(parts)


def _value_rows(finding: Finding, rules: Rules) -> list[str]:
    """"Values used": the evidence, computed values with their inputs, the patient's sex/age."""
    cr = rules.cards
    labels = cr.labels
    cuts = _cuts(finding)
    rows = [_measurement_row(m, rules, cuts.get(m.kind)) for m in finding.evidence]
    rows += [f"- {row}" for row in getattr(finding.variables, "rows", ())]   # rows the finding words itself
    for d in finding.derived:
        value = _mass_number(d)
        # its inputs are rows of their own (the evidence): not repeated here
        rows.append(f"- {cr.measures[d.measure]}: {_with_unit(value, _unit(rules, d.unit))} "
                    f"({labels.computed})")
    age = getattr(finding.variables, "age", None)
    age_now = getattr(finding.variables, "age_now", None)   # set when the age at the scan differs
    sex = getattr(finding.variables, "sex", None)
    if age is not None or sex:
        who = [labels.sex.get(sex, sex)] if sex else []
        if age_now is not None:
            who.append(render(labels.age_then, {"age": str(age_now), "scan_age": str(age)}))
        elif age is not None:
            who.append(render(labels.age, {"age": str(age)}))
        rows.append(f"- {labels.patient}: {', '.join(who)}")
    return rows


def measurement_label(m: Measurement, rules: Rules) -> str:
    """What a result is, as a card (and the preview) names it: 'T-score, total hip (left)'."""
    cr = rules.cards
    label = cr.kinds.get(m.kind, m.kind)
    if m.fraction:
        label += f" ({cr.labels.fractions.get(m.fraction, m.fraction)})"
    if m.site:
        label += f", {cr.sites.get(m.site, m.site)}"
    if m.laterality:
        label += f" ({m.laterality})"
    return label


def _measurement_row(m: Measurement, rules: Rules, cut: Interval | None = None) -> str:
    cr = rules.cards
    label = measurement_label(m, rules)
    text = _with_unit(_value_text(m, cut), _unit(rules, m.unit))
    if m.original_unit:
        original = _with_unit(f"{m.comparator or ''}{_number(m.kind, m.original_value)}",
                              _unit(rules, m.original_unit))
        if original != text:   # converted: show what was sent too
            text += f" ({cr.labels.sent_as} {original})"
    return f"- {label}: {text}, {m.day.isoformat()}"


def _criterion_row(c: Applied, rules: Rules) -> str:
    cr = rules.cards
    labels = cr.labels
    what = c.what
    name = cr.kinds.get(what) or cr.measures.get(what) or labels.criteria.get(what) or what
    crit = c.criterion
    rule = crit.interval.describe(_unit(rules, c.unit)) if (
        crit.interval.lower is not None or crit.interval.upper is not None) else ""
    result = c.result or ""
    result_text = (labels.results.get(result) or
                   (cr.findings[result].title if result in cr.findings else None) or
                   labels.sex.get(result) or result)
    head = f"{name} {rule}".strip()
    if result_text and what not in ("site", "kidney-failure"):
        head += f" → {result_text}"
    citation = rules.citations.get(crit.citation)
    source = f"{citation.label}: {crit.where}" if citation else crit.where
    return f"- {head} ({source})"


# --------------------------------------------------------------------------- suggestions
def _suggestions(finding: Finding, facts: PatientFacts, rules: Rules, title: str) -> list[dict[str, Any]]:
    out = []
    regimen = getattr(finding.variables, "regimen", None)
    for sid in finding.suggestions:
        tmpl = rules.cards.suggestions.get(sid)
        if tmpl is None:
            continue
        variables = {"patient_id": facts.patient_id, "reason": title, "regimen": regimen or ""}
        try:
            resource = tmpl.build(variables)
        except LookupError:
            continue   # the code this suggestion needs is not in the value sets: no suggestion
        if _uses_empty_regimen(resource):
            continue   # a dosing suggestion without a guideline regimen is never offered
        suggestion_id = new_id()
        resource.setdefault("id", suggestion_id)   # a create carries a resource with an id
        item: dict[str, Any] = {"label": tmpl.label, "uuid": suggestion_id,
                                "actions": [{"type": "create", "description": tmpl.action,
                                             "resource": resource}]}
        if tmpl.recommended:
            item["isRecommended"] = True
        out.append(item)
    draft = getattr(finding.variables, "delete", None)
    if draft:   # an order finding whose card offers to remove the draft order it is about
        labels = rules.cards.labels
        out.insert(0, {"label": labels.delete_order, "uuid": new_id(),
                       "actions": [{"type": "delete", "description": labels.delete_action,
                                    "resourceId": draft}]})
    return out


def _uses_empty_regimen(resource: Mapping[str, Any]) -> bool:
    dosage = resource.get("dosageInstruction")
    return isinstance(dosage, list) and any(not d.get("text") for d in dosage if isinstance(d, dict))
