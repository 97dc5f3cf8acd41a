"""``/metrics`` through real gunicorn with 2 workers: every count moves exactly as the calls
made (whichever worker answered them), labels carry no patient data, and the endpoint is
off for clients outside MSKCDS_METRICS_ALLOW.
"""
from __future__ import annotations

import copy
import uuid
from collections import Counter
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from auth_support import new_ec_signer, write_clients
from conftest import EXAMPLES, load_json, run_server

SERVICE = "/cds-services/bone-muscle-health"
ROUTE = "/cds-services/<service_id>"
EXAMPLE = load_json(sorted(EXAMPLES.glob("*.request.json"))[0])


def scrape(server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = requests.get(server.url("/metrics"), timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before, after, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def fresh(body: dict[str, Any], **over: Any) -> dict[str, Any]:
    out = copy.deepcopy(body)
    out["hookInstance"] = str(uuid.uuid4())
    out.update(over)
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("metrics")
    env = {"MSKCDS_REQUIRE_AUTH": "false", "MSKCDS_METRICS_DIR": str(tmp / "prom")}
    with run_server(env, tmp, workers=2) as srv:
        srv.metrics_dir = tmp / "prom"
        yield srv


def test_counts_move_exactly_as_the_calls_made(server):
    before = scrape(server)
    cards: Counter[tuple[str, str]] = Counter()
    ok = 12
    for _ in range(ok):  # a new connection each: the workers share the calls
        r = requests.post(server.url(SERVICE), json=fresh(EXAMPLE), timeout=30)
        assert r.status_code == 200, r.text
        for card in r.json()["cards"]:
            cards[(card["source"]["topic"]["code"], card["indicator"])] += 1
    assert cards, "the example gives cards: the card counts would be vacuous"
    no_prefetch = fresh(EXAMPLE)
    del no_prefetch["prefetch"]
    for _ in range(3):  # nothing sent, no fhirServer: 412
        assert requests.post(server.url(SERVICE), json=fresh(no_prefetch),
                             timeout=30).status_code == 412
    for _ in range(2):  # a fhirServer this client may not use, and a fetch needed: 412
        assert requests.post(server.url(SERVICE), timeout=30, json=fresh(
            no_prefetch, fhirServer="https://fhir.example.org/r4")).status_code == 412
    assert requests.post(server.url(SERVICE), json={"hook": "patient-view"},
                         timeout=30).status_code == 400
    answered = requests.post(server.url(SERVICE), json=fresh(EXAMPLE), timeout=30).json()["cards"]
    for card in answered:
        cards[(card["source"]["topic"]["code"], card["indicator"])] += 1
    first = answered[0]
    item = {"card": first["uuid"], "outcome": "overridden",
            "outcomeTimestamp": "2026-01-02T03:04:05Z"}
    for _ in range(2):  # the second is a retry of the first: a duplicate
        assert requests.post(server.url(SERVICE + "/feedback"), json={"feedback": [item]},
                             timeout=30).status_code == 200
    after = scrape(server)

    calls = "mskcds_http_requests_total"
    assert delta(before, after, calls, endpoint=ROUTE, service="bone-muscle-health",
                 status="200") == ok + 1
    assert delta(before, after, calls, endpoint=ROUTE, service="bone-muscle-health",
                 status="412") == 5
    assert delta(before, after, calls, endpoint=ROUTE, service="bone-muscle-health",
                 status="400") == 1
    assert delta(before, after, calls, endpoint=ROUTE + "/feedback",
                 service="bone-muscle-health", status="200") == 2
    assert delta(before, after, "mskcds_http_request_duration_seconds_count",
                 service="bone-muscle-health") == ok + 1 + 5 + 1 + 2
    # Latency buckets resolve 1 ms to 500 ms.
    bounds = {float(dict(labels)["le"]) for name, labels in after
              if name == "mskcds_http_request_duration_seconds_bucket" and
              dict(labels)["le"] != "+Inf"}
    assert {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5} <= bounds
    # Cards by finding and indicator, exactly as answered.
    for (finding, indicator), n in cards.items():
        assert delta(before, after, "mskcds_cards_issued_total", finding=finding,
                     indicator=indicator) == n, (finding, indicator)
    # Prefetch: every key of the 13 good calls was supplied; 5 calls lacked all of them.
    keys = list(EXAMPLE["prefetch"])
    for key in keys:
        sent = EXAMPLE["prefetch"][key]
        source = "null" if sent is None else "prefetch"
        assert delta(before, after, "mskcds_prefetch_keys_total", service="bone-muscle-health",
                     key=key, source=source) == ok + 1, key
        assert delta(before, after, "mskcds_prefetch_keys_total", service="bone-muscle-health",
                     key=key, source="unavailable") == 5, key
    assert delta(before, after, "mskcds_prefetch_unavailable_total", reason="no_fhir_server") == 3
    assert delta(before, after, "mskcds_prefetch_unavailable_total",
                 reason="fhir_server_not_allowed") == 2
    assert delta(before, after, "mskcds_feedback_items_total", outcome="overridden",
                 result="stored") == 1
    assert delta(before, after, "mskcds_feedback_items_total", outcome="overridden",
                 result="duplicate") == 1
    # Both workers counted (one file of counters per process).
    assert len(list(server.metrics_dir.glob("counter_*.db"))) >= 2


def test_exact_card_total(server):
    before = scrape(server)
    answered = [requests.post(server.url(SERVICE), json=fresh(EXAMPLE), timeout=30).json()
                for _ in range(6)]
    after = scrape(server)
    issued = sum(delta(before, after, name, **dict(labels)) for name, labels in after
                 if name == "mskcds_cards_issued_total")
    assert issued == sum(len(a["cards"]) for a in answered)


def test_rules_info_and_no_patient_data_in_labels(server):
    r = requests.get(server.url("/metrics"), timeout=10)
    text = r.text
    rules = [line for line in text.splitlines() if line.startswith("mskcds_rules_info{")]
    assert len(rules) == 1 and rules[0].endswith(" 1.0"), rules
    # the profiles the server loaded: the defaults, as Config states them
    from cds.config import Config
    assert f'vitamin_d_profile="{Config().vitamin_d_profile}"' in rules[0]
    assert f'sarcopenia_profile="{Config().sarcopenia_profile}"' in rules[0]
    patient_id = EXAMPLE["context"]["patientId"]
    assert patient_id not in text
    assert "Practitioner/" not in text and EXAMPLE["hookInstance"] not in text


def test_metrics_is_off_for_proxied_and_unlisted_clients(server, tmp_path):
    r = requests.get(server.url("/metrics"), headers={"X-Forwarded-For": "203.0.113.9"},
                     timeout=10)
    assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome"
    with run_server({"MSKCDS_REQUIRE_AUTH": "false", "MSKCDS_METRICS_ALLOW": "10.0.0.0/8"},
                    tmp_path, workers=1) as narrow:
        assert requests.get(narrow.url("/metrics"), timeout=10).status_code == 404


def test_auth_rejections_by_reason(tmp_path):
    signer = new_ec_signer("https://ehr.example", "k1")
    clients = write_clients(tmp_path / "clients.yaml", [{"iss": signer.iss,
                                                         "jwks": signer.jwks()}])
    env = {"MSKCDS_CLIENTS_FILE": str(clients), "MSKCDS_REPLAY_CACHE_URL": "memory"}
    with run_server(env, tmp_path, workers=1) as srv:
        before = scrape(srv)
        url = srv.url(SERVICE)
        for _ in range(3):
            assert requests.post(url, json=fresh(EXAMPLE), timeout=30).status_code == 401
        assert requests.post(url, json=fresh(EXAMPLE), timeout=30,
                             headers={"Authorization": "Bearer not-a-jwt"}).status_code == 401
        token = signer.token(url)
        assert requests.post(url, json=fresh(EXAMPLE), timeout=30,
                             headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert requests.post(url, json=fresh(EXAMPLE), timeout=30,
                             headers={"Authorization": f"Bearer {token}"}).status_code == 401
        expired = signer.token(url, exp=1, iat=0)
        assert requests.post(url, json=fresh(EXAMPLE), timeout=30,
                             headers={"Authorization": f"Bearer {expired}"}).status_code == 401
        after = scrape(srv)
    rejections = "mskcds_auth_rejections_total"
    assert delta(before, after, rejections, reason="missing_token") == 3
    assert delta(before, after, rejections, reason="malformed") == 1
    assert delta(before, after, rejections, reason="replay") == 1
    assert delta(before, after, rejections, reason="expired") == 1
    assert signer.iss not in str(after)
