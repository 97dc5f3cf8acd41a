"""The pages in a real browser: headless Chromium (Debian's, driven by Playwright) opens the rule
pages and the card preview of every example in fhir_examples/, served by a real gunicorn with
authentication on, and by `mskcds preview` as a file.

Per page: the visible text (finding names, values as sent, thresholds, dates), every chart's point
count against the example's own Observations, no console error, a screenshot in the test's tmp
dir, and axe-core (from the axe-playwright-python package) with no serious or critical violation.
Every card link to a rule page resolves to that finding's page; `<script>` sent in every string
field of a request never runs.

Without /usr/bin/chromium (or MSKCDS_CHROMIUM) these tests skip, unless MSKCDS_REQUIRE_BROWSER=1
(.ci/run sets it, after installing the browser)."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests

from auth_support import new_ec_signer, write_clients
from conftest import EXAMPLES, REPO, ServerProcess

CHROMIUM = os.environ.get("MSKCDS_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
MANIFEST = json.loads((EXAMPLES / "examples.json").read_text(encoding="utf-8"))
NAMES = sorted(MANIFEST["examples"])
ISS = "https://ehr.pages-test.example.org"
XSS = '"><script>window.__xss=(window.__xss||0)+1</script><img src=x onerror="window.__xss=1">'

sys.path.insert(0, str(EXAMPLES))
import make_examples  # noqa: E402


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def example_dir(tmp_path_factory) -> Path:
    """The committed examples, or (once their anchor day is too old) fresh ones for today."""
    anchor = date.fromisoformat(MANIFEST["as_of"])
    if 0 <= (datetime.now(timezone.utc).date() - anchor).days <= 300:
        return EXAMPLES
    out = tmp_path_factory.mktemp("examples")
    make_examples.write_all(out, datetime.now(timezone.utc).date())
    return out


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).is_file():
        if os.environ.get("MSKCDS_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{CHROMIUM} is required (MSKCDS_REQUIRE_BROWSER=1) but missing")
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def signer():
    return new_ec_signer(ISS, "pages-es384")


def _pages_server(tmp_path_factory, signer, profile: str | None = None) -> ServerProcess:
    """Authentication on, the preview switched on, the public base URL = this server."""
    tmp = tmp_path_factory.mktemp("pages-server")
    clients = write_clients(tmp / "clients.yaml", [{"iss": ISS, "jwks": signer.jwks()}])
    env = {"MSKCDS_REQUIRE_AUTH": "true", "MSKCDS_CLIENTS_FILE": str(clients),
           "MSKCDS_PREVIEW_ENABLED": "true",
           "MSKCDS_REPLAY_CACHE_URL": "memory",
           "MSKCDS_DATABASE_URL": f"sqlite:///{tmp / 'db.sqlite3'}"}
    if profile:
        env["MSKCDS_VITAMIN_D_PROFILE"] = profile
    srv = ServerProcess(env, workers=2, log_path=tmp / "server.log")
    srv.env["MSKCDS_PUBLIC_BASE_URL"] = srv.base_url
    srv.start(timeout=90)   # with the preview on, start-up loads matplotlib
    return srv


@pytest.fixture(scope="module")
def server(tmp_path_factory, signer) -> Iterator[ServerProcess]:
    srv = _pages_server(tmp_path_factory, signer)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def server_for(tmp_path_factory, signer, server) -> Iterator[Callable[[str], ServerProcess]]:
    """The server an example needs: the default one, or one on the vitamin D profile the
    example names in examples.json (started on first use)."""
    others: dict[str, ServerProcess] = {}

    def pick(name: str) -> ServerProcess:
        profile = MANIFEST["examples"][name].get("profile")
        if not profile:
            return server
        if profile not in others:
            others[profile] = _pages_server(tmp_path_factory, signer, profile)
        return others[profile]

    try:
        yield pick
    finally:
        for srv in others.values():
            srv.stop()


@pytest.fixture(scope="module")
def axe():
    from axe_playwright_python.sync_playwright import Axe

    return Axe()   # axe.min.js from the installed package, injected per page


class Opened:
    """A page opened in a fresh context, with what its console said."""

    def __init__(self, browser: Any):
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))

    def close(self) -> None:
        self.context.close()


def check_page(opened: Opened, axe: Any, shot: Path) -> str:
    """Screenshot, no console error, axe without serious/critical violations; the visible text."""
    page = opened.page
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 5000
    assert opened.errors == [], opened.errors
    results = axe.run(page)
    bad = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3])
           for v in results.response["violations"] if v["impact"] in ("serious", "critical")]
    assert bad == [], bad
    return page.inner_text("body")


def preview_in_browser(browser: Any, server: ServerProcess, signer: Any, body: Any) -> Opened:
    """Navigate to POST /preview: the browser's request is turned into the POST an EHR
    would send (JSON body, bearer token), so the page arrives with the real response headers."""
    url = server.url("/preview")
    opened = Opened(browser)
    headers = {"Content-Type": "application/json", **signer.bearer(url)}
    data = json.dumps(body)
    opened.page.route(url, lambda route: route.continue_(method="POST", post_data=data,
                                                         headers={**route.request.headers,
                                                                  **headers}))
    resp = opened.page.goto(url)
    assert resp is not None and resp.status == 200, resp and resp.text()
    assert resp.headers["content-type"].startswith("text/html")
    assert "script-src" not in resp.headers["content-security-policy"]   # default-src 'none'
    return opened


def service_cards(server: ServerProcess, signer: Any, request: dict) -> list[dict]:
    url = server.url("/cds-services/bone-muscle-health")
    r = requests.post(url, json=request, headers=signer.bearer(url), timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["cards"]


# --------------------------------------------------------------------------- what an example holds
def terminology():
    from cds.knowledge.terminology import load_terminology

    return load_terminology(REPO / "rules")


def example_observations(request: dict) -> list[dict]:
    entries = (request["prefetch"].get("observations") or {}).get("entry", [])
    return [e["resource"] for e in entries if e["resource"].get("resourceType") == "Observation"]


def expected_points(request: dict, term: Any) -> dict[str, int]:
    """chart id → number of results, grouped as the page promises: one chart per measure, DXA
    measures per site (by the code's meaning in rules/valuesets.yaml)."""
    from cds.pages.trends import KINDS

    per_site = {"t-score", "z-score", "bmd", "t-score-peripheral"}
    out: dict[str, int] = {}
    for obs in example_observations(request):
        if "valueQuantity" not in obs:
            continue
        meaning = next((term.observation(c.get("system"), c.get("code"))
                        for c in obs["code"]["coding"]
                        if term.observation(c.get("system"), c.get("code"))), None)
        if meaning is None or meaning.kind not in KINDS:
            continue
        chart = f"chart-{meaning.kind}" + (f"-{meaning.site}" if meaning.kind in per_site else "")
        out[chart] = out.get(chart, 0) + 1
    return out


def shown_number(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


# --------------------------------------------------------------------------- rule pages
def test_rule_index_lists_every_finding_and_the_active_profiles(browser, server, axe, tmp_path):
    from cds.knowledge.vocabulary import FINDINGS

    opened = Opened(browser)
    resp = opened.page.goto(server.url("/rules"))     # public: no token
    assert resp.status == 200
    text = check_page(opened, axe, tmp_path / "rules.png")
    titles = json.loads(json.dumps(_card_titles()))
    for code in FINDINGS:
        assert titles[code] in text
    assert "Endocrine Society 2011" in text and "EWGSOP2 2019" in text and "active" in text
    # each finding's link leads to its page
    hrefs = opened.page.eval_on_selector_all("main a", "els => els.map(e => e.href)")
    assert {server.url(f"/rules/{c}") for c in FINDINGS} <= set(hrefs)
    opened.close()


def _card_titles() -> dict[str, str]:
    import yaml

    cards = yaml.safe_load((REPO / "rules" / "cards.yaml").read_text())
    return {code: card["title"] for code, card in cards["findings"].items()}


# finding → numbers its page must state (from the guideline; see tests/unit/pages for sources)
PAGE_FACTS = {
    "vitamin-d-deficiency": ["< 20 ng/mL", "< 50 nmol/L", "IOM 2011", "10.1210/jc.2011-0385"],
    "vitamin-d-insufficiency": ["≥ 20 and < 30 ng/mL", "≥ 50 and < 75 nmol/L"],
    "vitamin-d-excess": ["> 100 ng/mL", "> 250 nmol/L", "≥ 150 ng/mL"],
    "osteoporosis": ["≤ -2.5", "≥ 50 years", "10665/39142"],
    "low-bone-mass": ["> -2.5 and < -1"],
    "bmd-below-expected-for-age": ["≤ -2"],
    "dxa-screening-due": ["≥ 65 years", "≥ 70 years", "10.1001/jama.2024.27154"],
    "low-muscle-mass": ["< 20 kg", "< 15 kg", "< 7 kg/m²", "< 5.5 kg/m²"],
    "sarcopenia-probable": ["< 27 kg", "< 16 kg", "< 28 kg", "< 18 kg"],
    "sarcopenia-confirmed": ["< 27 kg", "< 20 kg", "≤ 0.8 m/s"],
    "sarcopenia-severe": ["≤ 0.8 m/s", "< 1 m/s", "10.1093/ageing/afy169"],
    "osteosarcopenia": ["≤ -2.5", "< 27 kg", "10.1007/s00198-017-4151-8"],
}


@pytest.mark.parametrize("finding", sorted(PAGE_FACTS))
def test_rule_page_states_its_thresholds_codes_and_sources(browser, server, axe, tmp_path,
                                                           finding):
    opened = Opened(browser)
    resp = opened.page.goto(server.url(f"/rules/{finding}"))
    assert resp.status == 200
    text = check_page(opened, axe, tmp_path / f"rule-{finding}.png")
    assert opened.page.inner_text("h1") == _card_titles()[finding]
    for fact in PAGE_FACTS[finding]:
        assert fact in text, f"{finding}: {fact!r} not on the page"
    assert "Codes read" in text and ("LOINC" in text)
    opened.close()


# --------------------------------------------------------------------------- the preview
@pytest.mark.parametrize("name", NAMES)
def test_preview_of_every_example(browser, server_for, signer, axe, example_dir, tmp_path, name):
    server = server_for(name)
    request = json.loads((example_dir / f"{name}.request.json").read_text())
    cards = service_cards(server, signer, request)
    finding = MANIFEST["examples"][name]["finding"]
    assert [c["source"]["topic"]["code"] for c in cards] == ([finding] if finding else [])

    opened = preview_in_browser(browser, server, signer, request)
    text = check_page(opened, axe, tmp_path / f"preview-{name}.png")
    page = opened.page
    # the cards as the service sent them
    for card in cards:
        assert card["summary"] in text
        assert card["source"]["topic"]["display"] in text
        for s in card.get("suggestions", ()):
            assert s["label"] in text
    if not cards:
        assert "No card" in text
    # every result the example holds, with its value as sent and its date
    rows = page.locator("table.values tbody tr").all_inner_texts()
    term = terminology()
    for obs in example_observations(request):
        qty = obs.get("valueQuantity")
        if not qty or not any(term.observation(c.get("system"), c.get("code"))
                              for c in obs["code"]["coding"]):
            continue
        day = obs["effectiveDateTime"][:10]
        assert any(shown_number(qty["value"]) in row and day in row for row in rows), \
            (name, qty["value"], day, rows)
    # one chart per measure (per DXA site), each with one point per result
    expected = expected_points(request, term)
    charts = page.eval_on_selector_all(
        "figure.chart-box", "els => els.map(f => [f.dataset.chart, "
        "f.querySelectorAll('svg g[id^=points-] use').length, f.dataset.points])")
    assert {c: n for c, n, _ in charts} == expected
    assert all(str(n) == declared for _, n, declared in charts)
    for chart_id in expected:   # axis with units and dates, a caption naming the bands
        caption = page.inner_text(f"#{chart_id}-caption")
        assert "result" in caption and " to " in caption
    opened.close()


def test_a_bundle_previews_like_its_request(browser, server, signer, axe, example_dir, tmp_path):
    name = "osteosarcopenia"
    bundle = json.loads((example_dir / f"{name}.bundle.json").read_text())
    opened = preview_in_browser(browser, server, signer, bundle)
    text = check_page(opened, axe, tmp_path / f"preview-bundle-{name}.png")
    assert _card_titles()[name] in text
    assert opened.page.locator("figure.chart-box").count() >= 4
    opened.close()


def test_cli_preview_file_opens_offline(browser, axe, example_dir, tmp_path):
    """`mskcds preview` writes one self-contained file: no request leaves the page."""
    name = "osteosarcopenia"
    out = tmp_path / f"{name}.html"
    proc = subprocess.run([sys.executable, "-m", "cds.cli", "preview",
                           str(example_dir / f"{name}.bundle.json"), "-o", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MSKCDS_REQUIRE_AUTH": "false"})
    assert proc.returncode == 0, proc.stderr
    opened = Opened(browser)
    requested: list[str] = []
    opened.page.on("request", lambda r: requested.append(r.url))
    opened.page.goto(out.as_uri())
    text = check_page(opened, axe, tmp_path / f"cli-preview-{name}.png")
    assert requested == [out.as_uri()]
    assert _card_titles()[name] in text
    request = json.loads((example_dir / f"{name}.request.json").read_text())
    charts = opened.page.eval_on_selector_all(
        "figure.chart-box", "els => els.map(f => [f.dataset.chart, "
        "f.querySelectorAll('svg g[id^=points-] use').length])")
    assert dict(charts) == expected_points(request, terminology())
    opened.close()


def test_every_card_link_to_a_rule_page_resolves(server_for, signer, example_dir):
    seen = set()
    for name in NAMES:
        server = server_for(name)
        request = json.loads((example_dir / f"{name}.request.json").read_text())
        for card in service_cards(server, signer, request):
            code = card["source"]["topic"]["code"]
            links = [link["url"] for link in card.get("links", ())
                     if link["url"].startswith(server.url("/rules/"))]
            assert links == [server.url(f"/rules/{code}")], card.get("links")
            r = requests.get(links[0], timeout=10)
            assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
            assert f"<h1>{card['source']['topic']['display']}</h1>" in r.text
            seen.add(code)
    assert seen == {v["finding"] for v in MANIFEST["examples"].values() if v["finding"]}


# --------------------------------------------------------------------------- hostile input
_KEEP = {"resourceType", "id", "reference", "system", "code", "status", "gender", "birthDate",
         "effectiveDateTime", "issued", "authoredOn", "onsetDateTime", "recordedDate", "fullUrl",
         "mode", "type", "intent", "hook", "hookInstance", "userId", "patientId", "url"}


def poisoned(doc: Any, everything: bool, key: str | None = None) -> Any:
    """Every string with the payload appended. ``everything=False`` keeps the fields that make a
    resource readable (codes, ids, dates), so the request is still answered with its card;
    ``everything=True`` keeps only what makes it a request at all (resource and Bundle types)."""
    if isinstance(doc, dict):
        return {k: poisoned(v, everything, k) for k, v in doc.items()}
    if isinstance(doc, list):
        return [poisoned(v, everything, key) for v in doc]
    if isinstance(doc, str) and key not in ({"resourceType", "type"} if everything else _KEEP):
        return doc + XSS
    return doc


@pytest.mark.parametrize("everything", [False, True], ids=["readable", "every-string"])
def test_script_in_every_string_field_never_runs(browser, server, signer, example_dir, tmp_path,
                                                  everything):
    request = json.loads((example_dir / "osteosarcopenia.request.json").read_text())
    body = copy.deepcopy(request)
    body["prefetch"] = poisoned(body["prefetch"], everything)
    body["context"]["encounterId"] = "e1"
    if everything:   # the envelope's ids are checked by pattern (a 400 names them): keep them
        body["prefetch"]["patient"]["id"] = request["context"]["patientId"]
    url = server.url("/preview")
    r = requests.post(url, json=body, headers=signer.bearer(url), timeout=60)
    assert r.status_code == 200, r.text
    assert "<script" not in r.text.lower()
    bad = copy.deepcopy(request)
    bad["context"]["patientId"] = XSS
    r = requests.post(url, json=bad, headers=signer.bearer(url), timeout=60)
    assert r.status_code == 400 and r.headers["Content-Type"].startswith("application/json")

    opened = preview_in_browser(browser, server, signer, body)
    page = opened.page
    page.wait_for_load_state("load")
    time.sleep(0.2)
    assert page.evaluate("window.__xss") is None
    assert opened.dialogs == []
    assert page.locator("script").count() == 0
    handlers = page.evaluate("""[...document.querySelectorAll('*')].flatMap(
        e => [...e.attributes].filter(a => a.name.startsWith('on')).map(a => a.name))""")
    assert handlers == []
    text = page.inner_text("body")
    if everything:   # nothing readable is left, and the page says what was not used
        assert page.locator("article.card").count() == 0 and "Not used" in text
    else:            # still answered, on the readable data
        assert page.locator("article.card").count() == 1
    page.screenshot(path=str(tmp_path / f"xss-{'all' if everything else 'readable'}.png"))
    opened.close()


def test_preview_needs_a_token_and_is_off_by_default(server, open_server, example_dir):
    request = json.loads((example_dir / "vitamin-d-deficiency.request.json").read_text())
    r = requests.post(server.url("/preview"), json=request, timeout=30)
    assert r.status_code == 401 and r.headers["Content-Type"].startswith("application/json")
    assert requests.get(server.url("/rules"), timeout=10).status_code == 200   # public
    off = requests.post(open_server.url("/preview"), json=request, timeout=30)
    assert off.status_code == 404 and "MSKCDS_PREVIEW_ENABLED" in off.text
    missing = requests.get(server.url("/rules/no-such-finding"), timeout=10)
    assert missing.status_code == 404
    assert missing.json()["resourceType"] == "OperationOutcome"
