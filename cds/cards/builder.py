"""Findings → CDS Hooks cards, all through one code path (``build_card``).

Every word, citation, suggestion template and override reason comes from the
loaded rules (rules/cards.yaml, rules/citations.yaml); this module only fills
templates and lays the card out. Every card is checked with ``wire.check_card``
before it leaves; card and suggestion uuids are fresh (uuid4) per card.
"""
from __future__ import annotations

import re
import uuid
from typing import Any, Mapping

from cds.hooks import wire
from cds.clinical.facts import Finding, Measurement, PatientFacts
from cds.knowledge.rules import Rules, applies, fmt_number

_VD = {"title", "value", "unit", "date", "status", "profile", "regimen"}
_DXA = {"title", "value", "site", "date", "profile", "age"}
#: The template variables each card may use (checked against rules/cards.yaml at start-up).
CARD_VARIABLES: dict[str, set[str]] = {
    "vitamin-d-deficiency": _VD, "vitamin-d-insufficiency": _VD, "vitamin-d-excess": _VD,
    "osteoporosis": _DXA, "low-bone-mass": _DXA, "bmd-below-expected-for-age": _DXA,
    "dxa-screening-due": {"title", "age", "sex", "profile"},
    "low-muscle-mass": {"title", "mass", "date", "profile"},
    "sarcopenia-probable": {"title", "grip", "date", "profile"},
    "sarcopenia-confirmed": {"title", "grip", "mass", "date", "profile"},
    "sarcopenia-severe": {"title", "grip", "mass", "gait", "date", "profile"},
    "osteosarcopenia": {"title", "bone", "sarcopenia", "date", "profile"},
}
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def build_cards(findings: list[Finding], facts: PatientFacts, rules: Rules) -> list[dict[str, Any]]:
    return [build_card(f, facts, rules) for f in findings]


def build_card(finding: Finding, facts: PatientFacts, rules: Rules) -> dict[str, Any]:
    cr = rules.cards
    card_rules = cr.findings[finding.code]
    flags = finding.variables.get("flags", frozenset())
    values = template_values(finding, rules)
    grade = finding.variables.get("grade")
    summary_tpl = card_rules["summary_by_grade"].get(grade) if grade else None
    summary = render(summary_tpl or card_rules["summary"], values)
    if len(summary) > wire.SUMMARY_MAX:
        summary = summary[:wire.SUMMARY_MAX - 1].rstrip() + "…"

    citations = [rules.citations[c] for c in finding.variables.get("citations", ())
                 if c in rules.citations]
    source_cit = citations[0] if citations else None
    card: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        "summary": summary,
        "indicator": finding.indicator,
        "detail": _detail(finding, card_rules, values, flags, rules),
        "source": {"label": source_cit.label if source_cit else card_rules["title"],
                   "topic": {"system": cr.finding_system, "code": finding.code,
                             "display": card_rules["title"]}},
    }
    if source_cit:
        card["source"]["url"] = source_cit.url
    suggestions = _suggestions(finding, facts, rules, card_rules["title"])
    if suggestions:
        card["suggestions"] = suggestions
        card["selectionBehavior"] = card_rules.get("selection_behavior", "any")
    card["overrideReasons"] = [{"system": cr.override_system, "code": code,
                                "display": cr.override_reasons[code]}
                               for code in card_rules["override_reasons"]]
    if citations:
        card["links"] = [{"label": c.label, "url": c.url, "type": "absolute"} for c in citations]
    wire.check_card(card)
    return card


# --------------------------------------------------------------------------- templates
def render(template: str, values: Mapping[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template).strip()


def _value_text(m: Measurement) -> str:
    return f"{m.comparator or ''}{fmt_number(m.value)}"


def _unit(rules: Rules, code: str) -> str:
    return rules.cards.units.get(code, code)


def _with_unit(number: str, unit: str) -> str:
    return f"{number} {unit}" if unit else number


def template_values(finding: Finding, rules: Rules) -> dict[str, str]:
    cr = rules.cards
    v = finding.variables
    out: dict[str, str] = {"title": cr.findings[finding.code]["title"],
                           "profile": str(v.get("profile", ""))}
    if v.get("date") is not None:
        out["date"] = v["date"].isoformat()
    key: Measurement | None = v.get("key")
    if key is not None:
        out["value"] = _value_text(key)
        out["unit"] = _unit(rules, key.unit)
        if key.site:
            out["site"] = cr.sites.get(key.site, key.site)
    if "status" in v:
        out["status"] = str(v["status"])
    if "regimen" in v:
        out["regimen"] = str(v["regimen"] or "")
    if v.get("age") is not None:
        out["age"] = str(v["age"])
    if v.get("sex"):
        out["sex"] = cr.labels["sex"].get(v["sex"], v["sex"])
    if v.get("grip") is not None:
        out["grip"] = _with_unit(_value_text(v["grip"]), _unit(rules, v["grip"].unit))
    if v.get("gait") is not None:
        out["gait"] = _with_unit(_value_text(v["gait"]), _unit(rules, v["gait"].unit))
    if v.get("mass_low"):
        out["mass"] = ", ".join(
            _with_unit(f"{cr.measures[mv.measure]} {mv.comparator or ''}{fmt_number(mv.value)}",
                       _unit(rules, mv.unit))
            for mv in v["mass_low"])
    if finding.code == "osteosarcopenia":
        bone, sarcopenia = v["components"]
        out["bone"] = render(_short(cr, bone.code), template_values(bone, rules))
        out["sarcopenia"] = render(_short(cr, sarcopenia.code), template_values(sarcopenia, rules))
    return out


def _short(cr: Any, code: str) -> str:
    card = cr.findings[code]
    return card.get("short") or card["title"]


# --------------------------------------------------------------------------- detail
def _detail(finding: Finding, card_rules: Mapping[str, Any], values: Mapping[str, str],
            flags: frozenset[str], rules: Rules) -> str:
    cr = rules.cards
    labels = cr.labels
    v = finding.variables
    parts = [render(card_rules["detail"], values)]

    rows = [_measurement_row(m, rules) for m in finding.evidence]
    for d in v.get("derived", ()):
        inputs = ", ".join(_with_unit(f"{cr.kinds.get(m.kind, m.kind)} {_value_text(m)}",
                                      _unit(rules, m.unit)) for m in d["sources"])
        rows.append(f"- {cr.measures[d['measure']]}: "
                    f"{_with_unit(fmt_number(d['value']), _unit(rules, d['unit']))} "
                    f"({labels['computed']} {inputs})")
    if v.get("age") is not None or v.get("sex"):
        who = [cr.labels["sex"].get(v["sex"], v["sex"])] if v.get("sex") else []
        if v.get("age") is not None:
            who.append(render(labels["age"], {"age": str(v["age"])}))
        rows.append(f"- {labels['patient']}: {', '.join(who)}")
    if rows:
        parts.append(f"**{labels['values']}**\n\n" + "\n".join(rows))

    criteria = [_criterion_row(c, rules, v) for c in v.get("criteria", ())]
    if criteria:
        parts.append(f"**{labels['classified']}**\n\n" + "\n".join(criteria))

    notes = [f"- {text.strip()}" for flag, text in card_rules["notes"].items() if flag in flags]
    if notes:
        parts.append(f"**{labels['notes']}**\n\n" + "\n".join(notes))

    steps = [f"- {render(s['text'], values)}" for s in card_rules["next_steps"] if applies(s, flags)]
    if steps:
        parts.append(f"**{labels['next']}**\n\n" + "\n".join(steps))

    cits = v.get("citations", ())
    evidence = card_rules.get("evidence") or (rules.citations[cits[0]].evidence if cits else None)
    if evidence:
        parts.append(f"**{labels['evidence']}:** {evidence.strip()}")
    return "\n\n".join(parts)


def _measurement_row(m: Measurement, rules: Rules) -> str:
    cr = rules.cards
    label = cr.kinds.get(m.kind, m.kind)
    if m.site:
        label += f", {cr.sites.get(m.site, m.site)}"
    if m.laterality:
        label += f" ({m.laterality})"
    text = _with_unit(_value_text(m), _unit(rules, m.unit))
    if m.original_unit:
        original = _with_unit(f"{m.comparator or ''}{fmt_number(m.original_value)}",
                              _unit(rules, m.original_unit))
        if original != text:   # converted: show what was sent too
            text += f" ({cr.labels['sent_as']} {original})"
    return f"- {label}: {text}, {m.day.isoformat()}"


def _criterion_row(c: Mapping[str, Any], rules: Rules, v: Mapping[str, Any]) -> str:
    cr = rules.cards
    labels = cr.labels
    what = c["what"]
    name = (cr.kinds.get(what) or cr.measures.get(what) or labels.get("criteria", {}).get(what)
            or what)
    crit = c["criterion"]
    rule = crit.interval.describe(_unit(rules, c["unit"])) if (
        crit.interval.lower is not None or crit.interval.upper is not None) else ""
    result = c.get("result") or ""
    result_text = (labels.get("results", {}).get(result) or
                   (cr.findings[result]["title"] if result in cr.findings else None) or
                   labels["sex"].get(result) or result)
    head = f"{name} {rule}".strip()
    if result_text and what not in ("site", "kidney-failure"):
        head += f" → {result_text}"
    citation = rules.citations.get(crit.citation)
    source = f"{citation.label}: {crit.where}" if citation else crit.where
    return f"- {head} ({source})"


# --------------------------------------------------------------------------- suggestions
def _suggestions(finding: Finding, facts: PatientFacts, rules: Rules, title: str) -> list[dict[str, Any]]:
    out = []
    regimen = finding.variables.get("regimen")
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
        item: dict[str, Any] = {"label": tmpl.label, "uuid": str(uuid.uuid4()),
                                "actions": [{"type": "create", "description": tmpl.action,
                                             "resource": resource}]}
        if tmpl.recommended:
            item["isRecommended"] = True
        out.append(item)
    return out


def _uses_empty_regimen(resource: Mapping[str, Any]) -> bool:
    dosage = resource.get("dosageInstruction")
    return isinstance(dosage, list) and any(not d.get("text") for d in dosage if isinstance(d, dict))
