"""The preview HTML escapes every string it shows from a request or a response: a script or an
event handler in any field comes out as text, and only http(s) links are links. (The browser
test in tests/http/test_pages_browser.py checks that nothing runs in a real Chromium.)"""
from __future__ import annotations

from datetime import date
from html.parser import HTMLParser

import pytest

from cds.clinical.facts import ConditionFact, MedicationFact, PatientFacts
from cds.config import Config
from cds.knowledge.rules import load_rules
from cds.pages.preview import render_preview

PAYLOAD = '"><script>alert(1)</script><img src=x onerror=alert(2)>'


@pytest.fixture(scope="module")
def rules():
    return load_rules(Config.from_env({}, environ={}))


class Markup(HTMLParser):
    """Every tag and attribute of a page, as a browser's parser sees them."""

    def __init__(self, html: str):
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend(attrs)


def hostile_card() -> dict:
    return {
        "uuid": PAYLOAD, "summary": PAYLOAD, "indicator": "warning",
        "detail": f"{PAYLOAD}\n\n**{PAYLOAD}**\n\n[click](javascript:alert(3))\n\n<b onclick=alert(4)>x</b>",
        "source": {"label": PAYLOAD, "url": "javascript:alert(5)",
                   "topic": {"code": PAYLOAD, "display": PAYLOAD}},
        "suggestions": [{"label": PAYLOAD, "uuid": PAYLOAD, "isRecommended": True,
                         "actions": [{"type": "create", "description": PAYLOAD,
                                      "resource": {"resourceType": PAYLOAD, "status": PAYLOAD,
                                                   "code": {"text": PAYLOAD},
                                                   "dosageInstruction": [{"text": PAYLOAD}]}},
                                     {"type": "delete", "description": PAYLOAD,
                                      "resourceId": [PAYLOAD]}]}],
        "selectionBehavior": PAYLOAD,
        "overrideReasons": [{"code": PAYLOAD, "display": PAYLOAD}],
        "links": [{"label": PAYLOAD, "url": "javascript:alert(6)", "type": "absolute"},
                  {"label": "ok", "url": f"https://example.org/{PAYLOAD}", "type": "absolute"}],
    }


def test_nothing_from_the_request_or_response_becomes_markup(rules):
    facts = PatientFacts(patient_id=PAYLOAD, as_of=date(2026, 11, 22), gender=PAYLOAD,
                         excluded=[f"Observation: unit {PAYLOAD!r} not accepted"])
    facts.conditions["osteoporosis"] = [ConditionFact("osteoporosis", PAYLOAD, PAYLOAD)]
    facts.medications["vitamin-d"] = [MedicationFact("vitamin-d", PAYLOAD, PAYLOAD, status=PAYLOAD)]
    html = render_preview(facts, [hostile_card()], rules, csp_meta=True)
    page = Markup(html)
    assert "script" not in page.tags and "img" not in page.tags and "b" not in page.tags
    assert not [name for name, _ in page.attrs if name.startswith("on")], "an event handler"
    assert not [v for name, v in page.attrs if name in ("href", "src") and v
                and not v.startswith(("https://", "http://", "/"))], "a non-http link"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html   # shown, as text
    assert 'href="https://example.org/' in html              # an https link stays a link
    assert "Content-Security-Policy" in html                 # and the file forbids scripts


def test_markdown_detail_keeps_its_formatting(rules):
    card = {"summary": "s", "indicator": "info", "detail": "**Values used**\n\n- 25(OH)D: 9 ng/mL",
            "source": {"label": "x"}}
    html = render_preview(PatientFacts(patient_id="p1", as_of=date(2026, 11, 22)), [card], rules)
    assert "<strong>Values used</strong>" in html and "<li>25(OH)D: 9 ng/mL</li>" in html
