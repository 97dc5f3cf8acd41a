"""Malformed, oversized and hostile requests, each through a real gunicorn server over HTTP.

Every case here once produced a 500, a misleading status or a stored value the
database could not hold; each answer must now be a 4xx OperationOutcome naming
the problem, and the server must keep serving good requests afterwards.
"""
from __future__ import annotations

import json
import socket
import uuid
from typing import Any

import pytest
import requests

from conftest import EXAMPLES, run_server

SERVICE = "/cds-services/bone-muscle-health"
FEEDBACK = SERVICE + "/feedback"
SUMMARY = "/admin/feedback-summary"


@pytest.fixture(scope="module")
def server(tmp_path_factory, fhir):
    env = {"MSKCDS_REQUIRE_AUTH": "false", "MSKCDS_ADMIN_SUMMARY_ENABLED": "true",
           "MSKCDS_MAX_BODY_BYTES": str(64 * 1024), "MSKCDS_ALLOWED_FHIR_SERVERS": fhir.base_url}
    with run_server(env, tmp_path_factory.mktemp("edges"), workers=2) as srv:
        yield srv


def example_request() -> dict[str, Any]:
    body = json.loads((EXAMPLES / "low-bone-mass.request.json").read_text(encoding="utf-8"))
    body["hookInstance"] = str(uuid.uuid4())
    return body


def assert_outcome(resp: requests.Response, status: int, expression: str | None = None) -> dict:
    assert resp.status_code == status, resp.text[:500]
    assert resp.headers["Content-Type"].startswith("application/json")
    body = resp.json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"], body
    if expression is not None:
        assert [expression] in [i.get("expression") for i in body["issue"]], body
    return body


def assert_still_serving(server) -> dict:
    r = requests.post(server.url(SERVICE), json=example_request(), timeout=30)
    assert r.status_code == 200, r.text[:500]
    assert r.json()["cards"], "the example request should produce a card"
    return r.json()


# --------------------------------------------------------------------------- CORS
def test_preflight_has_no_content_and_no_content_type(server):
    r = requests.options(server.url(SERVICE), timeout=10, headers={
        "Origin": "https://ehr.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert r.status_code == 204 and r.content == b""
    assert "Content-Type" not in r.headers, r.headers  # was text/html
    assert r.headers["Access-Control-Allow-Origin"] == "*"


def test_error_bodies_are_readable_by_a_browser(server):
    """A 4xx body is only readable cross-origin with Access-Control-Allow-Origin on it."""
    for resp in (requests.post(server.url(SERVICE), data=b"{", timeout=10,
                               headers={"Content-Type": "application/json",
                                        "Origin": "https://ehr.example"}),
                 requests.get(server.url("/cds-services/nope"), timeout=10,
                              headers={"Origin": "https://ehr.example"})):
        assert resp.status_code in (400, 404, 405)
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert resp.headers["Content-Type"] == "application/json"


# --------------------------------------------------------------------------- report dates
@pytest.mark.parametrize("params, expression", [
    ({"to": "9999-12-31"}, "to"),                       # the whole day ends past year 9999
    ({"from": "0001-01-01T00:00:00+01:00"}, "from"),    # before year 1 in UTC
    ({"to": "9999-12-31T23:00:00-05:00"}, "to"),        # after year 9999 in UTC
])
def test_report_dates_out_of_range_are_400_not_500(server, params, expression):
    r = requests.get(server.url(SUMMARY), params=params, timeout=10)
    assert_outcome(r, 400, expression)
    assert requests.get(server.url(SUMMARY), timeout=10).status_code == 200


# --------------------------------------------------------------------------- feedback
def issued_card(server) -> dict[str, Any]:
    cards = [c for c in assert_still_serving(server)["cards"] if c.get("suggestions")]
    assert cards, "the example request should produce a card with suggestions"
    return cards[0]


@pytest.mark.parametrize("stamp", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_feedback_timestamp_without_a_utc_equivalent_is_400_not_500(server, stamp):
    card = issued_card(server)
    item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": stamp}
    r = requests.post(server.url(FEEDBACK), json={"feedback": [item]}, timeout=10)
    assert_outcome(r, 400, "feedback[0].outcomeTimestamp")
    item["outcomeTimestamp"] = "2026-01-02T03:04:05Z"
    r = requests.post(server.url(FEEDBACK), json={"feedback": [item]}, timeout=10)
    assert r.status_code == 200 and r.json() == {"stored": 1, "duplicates": 0}, r.text


# --------------------------------------------------------------------------- request bodies
def chunks(data: bytes, size: int = 8192):
    for i in range(0, len(data), size):
        yield data[i:i + size]


def test_chunked_body_over_the_limit_is_413(server):
    """No Content-Length (Transfer-Encoding: chunked): the limit must still say 413, not
    400 on a body cut off at the limit (valid JSON, 100 KiB over a 64 KiB limit)."""
    body = example_request()
    body["extension"] = {"pad": "x" * 100_000}
    r = requests.post(server.url(SERVICE), data=chunks(json.dumps(body).encode()),
                      headers={"Content-Type": "application/json"}, timeout=30)
    assert r.request.headers.get("Transfer-Encoding") == "chunked"
    assert_outcome(r, 413)
    small = example_request()  # a chunked body under the limit is read whole
    r = requests.post(server.url(SERVICE), data=chunks(json.dumps(small).encode(), 1000),
                      headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 200 and r.json()["cards"], r.text[:300]
    assert_still_serving(server)


def test_body_of_exactly_the_limit_is_read(server):
    body = example_request()
    raw = json.dumps(body).encode()
    body["extension"] = {"pad": "x" * (64 * 1024 - len(raw) - len(',"extension":{"pad":""}'))}
    raw = json.dumps(body, separators=(",", ":")).encode()
    raw = raw + b" " * (64 * 1024 - len(raw))
    assert len(raw) == 64 * 1024
    for data in (raw, chunks(raw)):
        r = requests.post(server.url(SERVICE), data=data,
                          headers={"Content-Type": "application/json"}, timeout=30)
        assert r.status_code == 200, r.text[:300]
    r = requests.post(server.url(SERVICE), data=raw + b" ",
                      headers={"Content-Type": "application/json"}, timeout=30)
    assert_outcome(r, 413)


@pytest.mark.parametrize("path", [SERVICE, FEEDBACK])
def test_compressed_body_is_415_naming_content_encoding(server, path):
    import gzip

    raw = gzip.compress(json.dumps(example_request()).encode())
    r = requests.post(server.url(path), data=raw, timeout=10,
                      headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    body = assert_outcome(r, 415)
    assert "Content-Encoding" in body["issue"][0]["diagnostics"]
    assert r.headers.get("Accept-Encoding") == "identity"
    r = requests.post(server.url(SERVICE), data=json.dumps(example_request()), timeout=30,
                      headers={"Content-Type": "application/json", "Content-Encoding": "identity"})
    assert r.status_code == 200, r.text[:300]


def test_charset_parameter_and_query_string_are_accepted(server):
    r = requests.post(server.url(SERVICE + "?via=test"), data=json.dumps(example_request()),
                      headers={"Content-Type": "application/json; charset=utf-8"}, timeout=30)
    assert r.status_code == 200 and r.json()["cards"], r.text[:300]


# --------------------------------------------------------------------------- unpaired surrogates
def with_surrogate(template: dict[str, Any], path: tuple, value: str = "\ud800") -> bytes:
    """JSON text (json.dumps escapes a lone surrogate as \\ud800, which is valid JSON syntax)."""
    doc = json.loads(json.dumps(template))
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return json.dumps(doc).encode("ascii")


@pytest.mark.parametrize("path", [("hook",), ("context", "userId"), ("prefetch", "patient", "id"),
                                  ("extension",)])
def test_unpaired_surrogate_in_a_service_call_is_400(server, path):
    raw = with_surrogate(example_request(), path, "x\udfff")
    r = requests.post(server.url(SERVICE), data=raw, timeout=10,
                      headers={"Content-Type": "application/json"})
    body = assert_outcome(r, 400)
    assert "surrogate" in body["issue"][0]["diagnostics"]
    assert_still_serving(server)


def test_unpaired_surrogate_in_feedback_is_400_not_500(server):
    card = issued_card(server)
    item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-01-02T03:04:05Z",
            "overrideReason": {"userComment": "ok"}}
    raw = with_surrogate({"feedback": [item]}, ("feedback", 0, "overrideReason", "userComment"))
    r = requests.post(server.url(FEEDBACK), data=raw, timeout=10,
                      headers={"Content-Type": "application/json"})
    body = assert_outcome(r, 400)
    assert "surrogate" in body["issue"][0]["diagnostics"]
    # A correctly paired escape (an emoji, \ud83d\ude00) is a character and is fine.
    item["overrideReason"]["userComment"] = "ok \U0001F600"
    r = requests.post(server.url(FEEDBACK), data=json.dumps({"feedback": [item]}).encode("ascii"),
                      headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 200 and r.json() == {"stored": 1, "duplicates": 0}, r.text


# --------------------------------------------------------------------------- FHIR server paths
@pytest.mark.parametrize("escape", ["%2e%2e", "%2E%2E", ".%2e", "..%2f", "..%5c", "..;", "..;x=1"])
def test_next_link_with_encoded_dot_segments_is_not_followed(server, fhir, escape):
    """A next link on the fhirServer origin whose path climbs out of the base with
    percent-encoded dot segments (RFC 3986: %2e%2e is '..') is not followed, and the
    access token goes nowhere; the key is 412."""
    body = example_request()
    first = body["prefetch"]["observations"]
    first["link"] = [{"relation": "next",
                      "url": f"{fhir.base_url}/{escape}/private/Observation?page=2"}]
    body["fhirServer"] = fhir.base_url
    body["fhirAuthorization"] = {"access_token": "edge-token-1", "token_type": "Bearer",
                                 "expires_in": 300, "scope": "patient/*.read",
                                 "subject": "cds-service"}
    fhir.reset()
    r = requests.post(server.url(SERVICE), json=body, timeout=30)
    assert_outcome(r, 412, "prefetch.observations")
    assert fhir.asked() == [], [x.path for x in fhir.asked()]
    first["link"][0]["url"] = f"{fhir.base_url}/Observation?page=2"  # on the base: followed
    fhir.reset()
    fhir.override = lambda path, query: (200, {}, json.dumps(
        {"resourceType": "Bundle", "type": "searchset"}).encode())
    try:
        r = requests.post(server.url(SERVICE), json=body, timeout=30)
    finally:
        fhir.override = None
    assert r.status_code == 200, r.text[:300]
    assert [x.path for x in fhir.asked()] == ["/fhir/Observation"]
    assert fhir.asked()[0].headers.get("Authorization") == "Bearer edge-token-1"


def test_fhir_server_answer_nested_too_deeply_is_412_without_an_error_in_the_log(server, fhir):
    body = example_request()
    del body["prefetch"]["observations"]
    body["fhirServer"] = fhir.base_url
    fhir.reset()
    fhir.override = lambda path, query: (200, {}, b"[" * 100_000 + b"]" * 100_000)
    before = len(server.log_text())
    try:
        r = requests.post(server.url(SERVICE), json=body, timeout=30)
    finally:
        fhir.override = None
    assert_outcome(r, 412, "prefetch.observations")
    assert "nested too deeply" in r.text
    new_log = server.log_text()[before:]
    assert '"level":"error"' not in new_log, new_log


@pytest.mark.parametrize("where", ["next", "redirect"])
def test_unparseable_next_link_or_redirect_is_412_without_an_error_in_the_log(server, fhir, where):
    body = example_request()
    body["fhirServer"] = fhir.base_url
    fhir.reset()
    if where == "next":
        body["prefetch"]["observations"]["link"] = [{"relation": "next", "url": "http://[bad/x"}]
    else:
        del body["prefetch"]["observations"]
        fhir.override = lambda path, query: (302, {"Location": "http://[::1/fhir/x"}, b"")
    before = len(server.log_text())
    try:
        r = requests.post(server.url(SERVICE), json=body, timeout=30)
    finally:
        fhir.override = None
    assert_outcome(r, 412, "prefetch.observations")
    new_log = server.log_text()[before:]
    assert '"level":"error"' not in new_log, new_log


@pytest.mark.parametrize("token", ["abc\r\nX-Injected: 1", "tok\U0001F600", "a\x00b", "a b"])
def test_access_token_that_cannot_travel_in_a_header_is_400(server, fhir, token):
    body = example_request()
    del body["prefetch"]["observations"]
    body["fhirServer"] = fhir.base_url
    body["fhirAuthorization"] = {"access_token": token, "token_type": "Bearer", "expires_in": 300,
                                 "scope": "patient/*.read", "subject": "cds-service"}
    fhir.reset()
    r = requests.post(server.url(SERVICE), json=body, timeout=30)
    assert_outcome(r, 400, "fhirAuthorization.access_token")
    assert token not in r.text
    assert fhir.asked() == []


# --------------------------------------------------------------------------- concurrency
def test_concurrent_mixed_good_and_bad_requests(server):
    """Bad requests of every kind above, interleaved with good ones on 8 connections:
    each gets its own answer and no good request is disturbed."""
    import concurrent.futures as cf
    import gzip

    good = json.dumps(example_request()).encode()
    bad = [
        (b"{", "application/json", {}, 400),
        (gzip.compress(good), "application/json", {"Content-Encoding": "gzip"}, 415),
        (with_surrogate(example_request(), ("hook",)), "application/json", {}, 400),
        (good, "text/plain", {}, 415),
        (b"[" * 50_000, "application/json", {}, 400),
        (json.dumps({**example_request(), "context": []}).encode(), "application/json", {}, 400),
        (json.dumps({**example_request(), "extension": {"pad": "x" * 70_000}}).encode(),
         "application/json", {}, 413),
    ]

    def one(i: int) -> tuple[int, int]:
        if i % 2 == 0:
            r = requests.post(server.url(SERVICE), data=good, timeout=60,
                              headers={"Content-Type": "application/json"})
            return (200, r.status_code) if r.status_code != 200 or r.json()["cards"] else (200, -1)
        data, ctype, extra, want = bad[i % len(bad)]
        r = requests.post(server.url(SERVICE), data=data, timeout=60,
                          headers={"Content-Type": ctype, **extra})
        assert r.headers["Content-Type"] == "application/json"
        return want, r.status_code

    with cf.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(56)))
    assert all(want == got for want, got in results), results


# --------------------------------------------------------------------------- afterwards
def test_after_all_of_the_above_the_log_is_clean(server):
    """Runs last in this module: no internal error, no stack trace, and neither the
    access token nor the patient id of any request above in the server's log."""
    assert_still_serving(server)
    log = server.log_text()
    assert log.count('"logger":"mskcds.access"') >= 20, log[-2000:]
    for needle in ("edge-token-1", example_request()["context"]["patientId"], "Traceback",
                   "internal error", '"level":"error"'):
        assert needle not in log, needle
