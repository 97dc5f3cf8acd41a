"""Card preview: a service answer rendered as an EHR would show it, beside the values read.

``render_preview(assessment, rules)`` returns one self-contained HTML page (inline CSS and
SVG charts, no script, no external resource). Everything that came from a request is
escaped by the template engine (autoescape); card detail markdown is rendered with raw HTML
disabled, so a ``<script>`` in any field is shown as text and never runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from markupsafe import Markup

from cds.cards.builder import measurement_label
from cds.clinical.facts import Measurement, PatientFacts
from cds.knowledge.intervals import fmt_number
from cds.knowledge.rules import Rules
from cds.pages import charts as charts_mod
from cds.pages.render import markdown_html, render_page
from cds.pages.trends import KINDS, chart_specs


@dataclass(frozen=True)
class ChartView:
    spec: charts_mod.ChartSpec
    svg: Markup
    first: str
    last: str


def _sent(m: Measurement, rules: Rules) -> tuple[str, str]:
    units = rules.cards.units
    sent_unit = units.get(m.original_unit, m.original_unit)
    sent = f"{m.comparator or ''}{fmt_number(m.original_value)}" + (f" {sent_unit}" if sent_unit else "")
    unit = units.get(m.unit, m.unit)
    converted = f"{m.comparator or ''}{fmt_number(m.value)}" + (f" {unit}" if unit else "")
    return sent, (converted if converted != sent else "")


def _what(action: Mapping[str, Any]) -> str:
    resource = action.get("resource")
    if action.get("type") == "delete":
        return str(action.get("resourceId") or "")
    if not isinstance(resource, Mapping):
        return ""
    concept = resource.get("code") or resource.get("medicationCodeableConcept") or {}
    codings = concept.get("coding") if isinstance(concept, Mapping) else None
    coding = codings[0] if isinstance(codings, list) and codings else {}
    name = coding.get("display") or (concept.get("text") if isinstance(concept, Mapping) else None)
    out = f"{resource.get('resourceType', 'resource')}, {resource.get('status', '')}".rstrip(", ")
    if name:
        out += f": {name}"
    dosage = resource.get("dosageInstruction")
    if isinstance(dosage, list) and dosage and isinstance(dosage[0], Mapping) and dosage[0].get("text"):
        out += f"; sig: {dosage[0]['text']}"
    return out


def http_url(url: Any) -> str | None:
    """An http(s) URL to link to; anything else (javascript:, data:...) is shown as text only."""
    if isinstance(url, str) and url.lower().startswith(("https://", "http://")):
        return url
    return None


def card_views(cards: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for c in cards:
        source = c.get("source") or {}
        topic = source.get("topic") or {}
        out.append({
            "title": topic.get("display", ""),
            "indicator": c.get("indicator", "info"),
            "summary": c.get("summary", ""),
            "detail_html": markdown_html(c.get("detail") or ""),
            "source_label": source.get("label", ""),
            "source_url": http_url(source.get("url")),
            "selection_behavior": c.get("selectionBehavior"),
            "suggestions": [{"label": s.get("label", ""), "recommended": bool(s.get("isRecommended")),
                             "actions": [{"type": a.get("type", ""),
                                          "description": a.get("description", ""),
                                          "what": _what(a)} for a in s.get("actions", ())]}
                            for s in c.get("suggestions", ())],
            "override_reasons": [r.get("display", r.get("code", "")) for r in c.get("overrideReasons", ())],
            "links": [{"label": link.get("label", ""), "url": http_url(link.get("url"))}
                      for link in c.get("links", ())],
        })
    return out


def preview_model(facts: PatientFacts, cards: list[Mapping[str, Any]], rules: Rules) -> dict[str, Any]:
    cr = rules.cards
    who = []
    if facts.gender:
        who.append(cr.labels.sex.get(facts.gender, facts.gender))
    if facts.age is not None:
        who.append(f"{facts.age} years")
    if facts.birth_date is not None:
        who.append(f"born {facts.birth_date.isoformat()}")
    label = f"Patient {facts.patient_id}" + (f" ({', '.join(who)})" if who else "")
    order = {k: i for i, k in enumerate(KINDS)}
    measurements = sorted((m for ms in facts.measurements.values() for m in ms),
                          key=lambda m: (order.get(m.kind, len(order)), m.kind, m.site or "",
                                         -m.when.timestamp()))
    values = []
    for m in measurements:
        sent, converted = _sent(m, rules)
        values.append({"label": measurement_label(m, rules), "sent": sent, "converted": converted,
                       "day": m.day.isoformat()})
    records = [f"Condition: {c.display}" + (f" (onset {c.onset.isoformat()})" if c.onset else "")
               for cs in facts.conditions.values() for c in cs]
    records += [f"Medication: {m.display}" + (f" ({m.status})" if m.status else "")
                for ms in facts.medications.values() for m in ms]
    charts = []
    for spec in chart_specs(facts, rules):
        days = [d for s in spec.series for d, _ in s.points]
        charts.append(ChartView(spec, Markup(charts_mod.render_svg(spec)),
                                min(days).isoformat(), max(days).isoformat()))
    profiles = [rules.vitamin_d.label, rules.sarcopenia.label, rules.bone.label]
    return {"patient_label": label, "as_of": facts.as_of.isoformat(), "profiles": profiles,
            "cards": card_views(cards), "results": values, "records": sorted(set(records)),
            "excluded": sorted(set(facts.excluded)), "charts": charts}


def render_preview(facts: PatientFacts, cards: list[Mapping[str, Any]], rules: Rules, *,
                   docs_base: str | None = None, csp_meta: bool = False) -> str:
    return render_page("preview.html", p=preview_model(facts, cards, rules), docs_base=docs_base,
                       csp_meta=csp_meta)
