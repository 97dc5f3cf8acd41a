"""cds.fhir.gather: prefetch handling, FHIR-server fallback, time limits, paging, token and SSRF rules.

Every fallback test talks real HTTP to tests/fhir_test_server.py and checks what it was asked.
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

import pytest

from cds.config import Config
from cds.errors import PrefetchUnavailable
from cds.fhir.gather import Unavailable, bundle_resources, gather, make_session, render, within_base
from fhir_test_server import outcome, searchset

TOKEN = "tok-" + uuid.uuid4().hex
LOINC = "http://loinc.org"
# LOINC 1989-3: 25-hydroxyvitamin D3+D2 [Mass/volume] in Serum or Plasma; 38265-5: DXA T-score.
TEMPLATES = {
    "patient": "Patient/{{context.patientId}}",
    "observations": ("Observation?patient={{context.patientId}}"
                     "&code=http://loinc.org|1989-3,http://loinc.org|38265-5&_sort=-date&_count=5"),
    "conditions": "Condition?patient={{context.patientId}}",
    "medications": "MedicationRequest?patient={{context.patientId}}",
}


def cfg(**over: Any) -> Config:
    base = dict(fhir_connect_timeout=1.0, fhir_read_timeout=2.0, fhir_total_budget=3.0,
                fhir_max_pages=10, fhir_max_workers=4)
    base.update(over)
    return Config().replace(**base)


def patient(pid: str = "p1") -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": "1950-01-02"}


def obs(oid: str, pid: str = "p1", code: str = "1989-3", day: int = 1, value: float = 20.0) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": oid, "status": "final",
            "code": {"coding": [{"system": LOINC, "code": code}]},
            "subject": {"reference": f"Patient/{pid}"},
            "effectiveDateTime": f"2024-01-{day:02d}", "valueQuantity": {"value": value}}


def request(prefetch: dict[str, Any] | None = None, fhir_server: str | None = None,
            token: str | None = TOKEN, pid: str = "p1", **context: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
                            "context": {"userId": "Practitioner/dr1", "patientId": pid, **context},
                            "prefetch": prefetch or {}}
    if fhir_server:
        body["fhirServer"] = fhir_server
        if token:
            body["fhirAuthorization"] = {"access_token": token, "token_type": "Bearer",
                                         "expires_in": 300, "scope": "patient/*.read",
                                         "subject": "ehr"}
    return body


def full_prefetch(pid: str = "p1") -> dict[str, Any]:
    return {"patient": patient(pid), "observations": searchset([obs("o1", pid)]),
            "conditions": searchset([]), "medications": None}


@pytest.fixture(autouse=True)
def _clean(fhir, foreign):
    fhir.reset()
    foreign.reset()
    yield


@pytest.fixture(scope="module")
def session():
    s = make_session(cfg())
    yield s
    s.close()


def run(templates, req, session, **over):
    return gather(templates, req, config=cfg(**over), session=session)


# --------------------------------------------------------------------------- templates
def test_render_context_and_user_tokens_url_encoded():
    ctx = {"patientId": "a b&c", "userId": "PractitionerRole/r-1", "list": ["x", "y/z"]}
    assert render("Patient/{{context.patientId}}", ctx) == "Patient/a%20b%26c"
    assert render("PractitionerRole?_id={{userPractitionerRoleId}}", ctx) == "PractitionerRole?_id=r-1"
    assert render("X?ids={{ context.list }}", ctx) == "X?ids=x,y%2Fz"


@pytest.mark.parametrize("template", [
    "Practitioner/{{userPractitionerId}}",       # userId is a PractitionerRole
    "Encounter/{{context.encounterId}}",          # not in the context
    "X?d={{context.draft}}",                      # an object, not a string
    "X?u={{unknownToken}}",
])
def test_unresolvable_tokens_raise(template):
    with pytest.raises(Unavailable):
        render(template, {"patientId": "p1", "userId": "PractitionerRole/r-1", "draft": {"a": 1}})


def test_unresolvable_template_makes_its_key_unavailable_not_a_crash(fhir, session):
    templates = {"patient": TEMPLATES["patient"], "enc": "Encounter/{{context.encounterId}}"}
    with pytest.raises(PrefetchUnavailable) as err:
        run(templates, request({"patient": patient()}, fhir.base_url), session)
    assert set(err.value.keys) == {"enc"}
    assert fhir.asked() == []


# --------------------------------------------------------------------------- origin rule
@pytest.mark.parametrize("url,ok", [
    ("http://h:8080/fhir/Observation?x=1", True),
    ("http://h:8080/fhir", True),
    ("http://H:8080/fhir/Patient/1", True),
    ("http://h:8081/fhir/Patient/1", False),      # other port
    ("https://h:8080/fhir/Patient/1", False),     # other scheme
    ("http://evil:8080/fhir/Patient/1", False),   # other host
    ("http://h:8080/fhirx/Patient/1", False),     # not under the base path
    ("http://h:8080/other", False),
    ("http://h:8080/fhir/../admin", False),
    ("http://user@evil:8080/fhir/x", False),
    ("http://evil\\@h:8080/fhir/x", False),     # parsers disagree on backslashes
    ("http://x:y@h:8080/fhir/x", False),          # credentials in the URL
    ("http://h:8080/fhir/x y", False),
    ("http://h:8080/fhir/x\r\nHost: evil", False),
    ("/fhir/Patient/1", False),                   # relative: resolved before the check
])
def test_within_base(url, ok):
    assert within_base(url, "http://h:8080/fhir") is ok


def test_default_port_is_the_same_origin():
    assert within_base("https://h:443/r4/Patient/1", "https://h/r4")


# --------------------------------------------------------------------------- bundle entries
def test_bundle_entries_kept_and_dropped():
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [
        {"resource": obs("o1")},
        {"fullUrl": "urn:uuid:no-resource"},
        {"resource": {"no": "resourceType"}},
        "not an object",
        {"resource": outcome("informational", "x"), "search": {"mode": "outcome"}},
        {"resource": patient(), "search": {"mode": "include"}},
        {"resource": {"resourceType": "Condition", "id": "c1"}, "search": {"mode": "match"}},
    ]}
    kept = bundle_resources(bundle, "Observation")
    assert [(r["resourceType"], r["id"]) for r in kept] == [("Observation", "o1"), ("Patient", "p1")]


# --------------------------------------------------------------------------- prefetch
def test_complete_prefetch_sends_no_http_even_without_fhir_server(session):
    got = run(TEMPLATES, request(full_prefetch()), session)
    assert got.source == {"patient": "prefetch", "observations": "prefetch",
                          "conditions": "prefetch", "medications": "null"}
    assert [r["id"] for r in got.resources()] == ["p1", "o1"]


def test_keys_the_service_did_not_declare_are_ignored(session):
    prefetch = {**full_prefetch(), "Observation": searchset([obs("other")])}
    got = run(TEMPLATES, request(prefetch), session)
    assert "other" not in {r["id"] for r in got.resources()}


def test_absent_keys_fetched_with_bearer_token(fhir, session):
    fhir.token = TOKEN
    fhir.load(patient(), obs("o1", day=3), obs("o2", day=5), obs("x", pid="p2"),
              {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
               "code": {"coding": [{"system": "http://snomed.info/sct", "code": "64859006"}]}})
    got = run(TEMPLATES, request({"medications": None}, fhir.base_url), session)
    assert got.source == {"patient": "fhir", "observations": "fhir", "conditions": "fhir",
                          "medications": "null"}
    assert [r["id"] for r in got.by_key["observations"]] == ["o2", "o1"]  # _sort=-date
    assert [r["id"] for r in got.by_key["conditions"]] == ["c1"]
    asked = fhir.asked()
    assert sorted(r.resource_type for r in asked) == ["Condition", "Observation", "Patient"]
    assert all(r.headers.get("Authorization") == f"Bearer {TOKEN}" for r in asked)
    obs_query = fhir.asked("Observation")[0].query
    assert obs_query["patient"] == ["p1"]
    assert obs_query["code"] == ["http://loinc.org|1989-3,http://loinc.org|38265-5"]


def test_open_server_without_fhir_authorization_gets_no_authorization_header(fhir, session):
    fhir.load(patient())
    got = run({"patient": TEMPLATES["patient"]}, request({}, fhir.base_url, token=None), session)
    assert got.by_key["patient"][0]["id"] == "p1"
    assert "Authorization" not in fhir.asked()[0].headers


def test_null_is_not_fetched(fhir, session):
    fhir.load(patient())
    got = run(TEMPLATES, request({"observations": None, "conditions": None, "medications": None},
                                 fhir.base_url), session)
    assert got.by_key["observations"] == [] and got.source["observations"] == "null"
    assert [r.resource_type for r in fhir.asked()] == ["Patient"]


def test_operation_outcome_is_treated_as_not_supplied(fhir, session):
    fhir.load(patient(), obs("o1"))
    prefetch = {**full_prefetch(), "observations": outcome("too-costly", "search too large")}
    got = run(TEMPLATES, request(prefetch, fhir.base_url), session)
    assert got.source["observations"] == "fhir"
    assert [r.resource_type for r in fhir.asked()] == ["Observation"]


def test_prefetched_patient_of_another_id_or_type_is_refetched(fhir, session):
    fhir.load(patient())
    for wrong in (patient("someone-else"), {"resourceType": "Practitioner", "id": "p1"}):
        fhir.reset(keep_resources=True)
        got = run({"patient": TEMPLATES["patient"]}, request({"patient": wrong}, fhir.base_url), session)
        assert got.by_key["patient"] == [patient()]
        assert [r.path for r in fhir.asked()] == ["/fhir/Patient/p1"]


def test_search_answer_keeps_only_the_searched_type_and_includes(fhir, session):
    def answer(path, query):
        if path.endswith("/Observation"):
            body = {"resourceType": "Bundle", "type": "searchset", "entry": [
                {"resource": obs("o1")}, {"resource": patient("p9")},
                {"resource": patient(), "search": {"mode": "include"}},
                {"resource": outcome("informational", "note"), "search": {"mode": "outcome"}}]}
            return 200, {}, json.dumps(body).encode()
        return None
    fhir.override = answer
    got = run({"observations": TEMPLATES["observations"]}, request({}, fhir.base_url), session)
    assert [(r["resourceType"], r["id"]) for r in got.by_key["observations"]] == [
        ("Observation", "o1"), ("Patient", "p1")]


# --------------------------------------------------------------------------- paging
def test_paging_follows_next_links_on_the_fhir_server(fhir, session):
    fhir.load(patient(), *[obs(f"o{i}", day=i) for i in range(1, 13)])
    got = run({"observations": TEMPLATES["observations"]}, request({}, fhir.base_url), session,
              fhir_page_size=5)
    assert [r["id"] for r in got.by_key["observations"]] == [f"o{i}" for i in range(12, 0, -1)]
    assert len(fhir.asked("Observation")) == 3  # _count=5 → 5 + 5 + 2


def test_fallback_searches_ask_for_large_pages(fhir, session):
    """The service's own searches ask for MSKCDS_FHIR_PAGE_SIZE entries a page (replacing the
    template's _count, or adding one): 1,000 Observations arrive in one round trip, not 200."""
    fhir.load(patient(), *[obs(f"o{i}", day=1 + i % 28) for i in range(1000)])
    got = run({"observations": TEMPLATES["observations"],
               "conditions": TEMPLATES["conditions"]}, request({}, fhir.base_url), session)
    assert len(got.by_key["observations"]) == 1000
    asked = fhir.asked("Observation")
    assert len(asked) == 1 and asked[0].query["_count"] == ["1000"]
    assert fhir.asked("Condition")[0].query["_count"] == ["1000"]
    fhir.reset(keep_resources=True)
    got = run({"observations": TEMPLATES["observations"]}, request({}, fhir.base_url), session,
              fhir_page_size=400)
    assert len(got.by_key["observations"]) == 1000
    assert [r.query["_count"] for r in fhir.asked("Observation")] == [["400"]] * 3


def test_paged_prefetch_bundle_is_completed_from_the_fhir_server(fhir, session):
    fhir.token = TOKEN
    fhir.load(*[obs(f"o{i}", day=i) for i in range(1, 8)])
    first = searchset([obs("o7", day=7), obs("o6", day=6)],
                      next_url=f"{fhir.base_url}/Observation?patient=p1&_sort=-date&_count=2&_offset=2")
    got = run({"observations": TEMPLATES["observations"]},
              request({"observations": first}, fhir.base_url), session)
    assert [r["id"] for r in got.by_key["observations"]] == ["o7", "o6", "o5", "o4", "o3", "o2", "o1"]
    assert all(r.headers["Authorization"] == f"Bearer {TOKEN}" for r in fhir.asked())


def test_relative_next_link_is_resolved_on_the_fhir_server(fhir, session):
    fhir.load(*[obs(f"o{i}", day=i) for i in range(1, 5)])
    first = searchset([obs("o4", day=4)], next_url="Observation?patient=p1&_sort=-date&_count=3&_offset=1")
    got = run({"observations": TEMPLATES["observations"]},
              request({"observations": first}, fhir.base_url), session)
    assert [r["id"] for r in got.by_key["observations"]] == ["o4", "o3", "o2", "o1"]
    assert [a.path for a in fhir.asked()] == ["/fhir/Observation"]


def test_paged_prefetch_without_fhir_server_is_412(session):
    first = searchset([obs("o1")], next_url="http://127.0.0.1:9/fhir/Observation?page=2")
    with pytest.raises(PrefetchUnavailable) as err:
        run({"observations": TEMPLATES["observations"]}, request({"observations": first}), session)
    assert set(err.value.keys) == {"observations"}


def test_next_link_to_another_host_is_not_followed(fhir, foreign, session):
    foreign.load(obs("evil"))
    first = searchset([obs("o1")], next_url=f"{foreign.base_url}/Observation?patient=p1")
    with pytest.raises(PrefetchUnavailable) as err:
        run({"observations": TEMPLATES["observations"]},
            request({"observations": first}, fhir.base_url), session)
    assert "outside fhirServer" in err.value.keys["observations"]
    assert foreign.asked() == []


def test_next_link_from_the_server_to_another_host_is_not_followed(fhir, foreign, session):
    def answer(path, query):
        return 200, {}, json.dumps(
            searchset([obs("o1")], next_url=f"{foreign.base_url}/Observation?p=2")).encode()
    fhir.override = answer
    with pytest.raises(PrefetchUnavailable):
        run({"observations": TEMPLATES["observations"]}, request({}, fhir.base_url), session)
    assert foreign.asked() == []


def test_more_pages_than_allowed_is_412(fhir, session):
    fhir.load(*[obs(f"o{i}", day=i) for i in range(1, 13)])
    with pytest.raises(PrefetchUnavailable) as err:
        run({"observations": TEMPLATES["observations"]}, request({}, fhir.base_url), session,
            fhir_max_pages=2, fhir_page_size=5)
    assert "more than 2 pages" in err.value.keys["observations"]
    assert len(fhir.asked()) == 2


# --------------------------------------------------------------------------- redirects / token
def test_redirect_to_another_origin_is_not_followed_and_the_token_stays(fhir, foreign, session):
    foreign.load(patient())
    fhir.override = lambda path, q: (302, {"Location": f"{foreign.base_url}/Patient/p1"}, b"")
    with pytest.raises(PrefetchUnavailable) as err:
        run({"patient": TEMPLATES["patient"]}, request({}, fhir.base_url), session)
    assert "redirect" in err.value.keys["patient"]
    assert foreign.asked() == []


def test_same_origin_redirect_is_followed_and_its_answer_checked(fhir, session):
    fhir.load(patient())
    fhir.override = lambda path, q: ((301, {"Location": "/fhir/Patient/p1"}, b"")
                                     if path == "/fhir/Patient/old" else None)
    # The redirect is followed (same origin), but it leads to another patient: refused.
    with pytest.raises(PrefetchUnavailable) as err:
        run({"patient": TEMPLATES["patient"]}, request({}, fhir.base_url, pid="old"), session)
    assert "different Patient" in err.value.keys["patient"]
    assert [r.path for r in fhir.asked()] == ["/fhir/Patient/old", "/fhir/Patient/p1"]


def test_same_origin_redirect_to_the_same_patient_is_used(fhir, session):
    fhir.load(patient())
    fhir.override = lambda path, q: ((307, {"Location": "/fhir/Patient/p1?moved=1"}, b"")
                                     if "moved" not in q and path == "/fhir/Patient/p1" else None)
    got = run({"patient": TEMPLATES["patient"]}, request({}, fhir.base_url), session)
    assert got.by_key["patient"] == [patient()]
    assert len(fhir.asked()) == 2


def test_token_never_logged(fhir, session, caplog):
    fhir.fail_status = 500
    caplog.set_level(logging.DEBUG, logger="mskcds")
    with pytest.raises(PrefetchUnavailable) as err:
        run(TEMPLATES, request({}, fhir.base_url), session)
    ours = [r for r in caplog.records if r.name.startswith("mskcds")]
    assert ours, "the fetch outcome is logged"
    logged = " ".join(r.getMessage() + json.dumps(getattr(r, "fields", {})) for r in ours)
    assert TOKEN not in logged + str(err.value) + json.dumps(err.value.body())
    assert "p1" not in logged  # no patient id (URLs) in our logs either


# --------------------------------------------------------------------------- failures → 412
def test_wrong_token_is_412(fhir, session):
    fhir.token = "the-right-one"
    fhir.load(patient())
    with pytest.raises(PrefetchUnavailable) as err:
        run({"patient": TEMPLATES["patient"]}, request({}, fhir.base_url), session)
    assert "401" in err.value.keys["patient"]


def test_error_server_is_412_naming_every_missing_key(fhir, session):
    fhir.fail_status = 500
    with pytest.raises(PrefetchUnavailable) as err:
        run(TEMPLATES, request({"medications": None}, fhir.base_url), session)
    assert set(err.value.keys) == {"patient", "observations", "conditions"}
    assert err.value.status == 412
    assert {i["expression"][0] for i in err.value.body()["issue"]} == {
        "prefetch.patient", "prefetch.observations", "prefetch.conditions"}


def test_unknown_patient_is_412(fhir, session):
    with pytest.raises(PrefetchUnavailable) as err:
        run({"patient": TEMPLATES["patient"]}, request({}, fhir.base_url), session)
    assert "404" in err.value.keys["patient"]


@pytest.mark.parametrize("body,why", [
    (b"<html>not json</html>", "not JSON"),
    (b'{"resourceType": "Practitioner", "id": "p1"}', "other than a Patient"),
    (b'{"resourceType": "Patient", "id": "p2"}', "different Patient"),
    (b'[1, 2]', "other than a Patient"),
])
def test_wrong_answers_are_412(fhir, session, body, why):
    fhir.override = lambda path, q: (200, {}, body)
    with pytest.raises(PrefetchUnavailable) as err:
        run({"patient": TEMPLATES["patient"]}, request({}, fhir.base_url), session)
    assert why in err.value.keys["patient"]


def test_search_answered_with_a_resource_not_a_bundle_is_412(fhir, session):
    fhir.override = lambda path, q: (200, {}, b'{"resourceType": "Observation", "id": "o1"}')
    with pytest.raises(PrefetchUnavailable) as err:
        run({"observations": TEMPLATES["observations"]}, request({}, fhir.base_url), session)
    assert "Bundle" in err.value.keys["observations"]


def test_no_fhir_server_and_missing_keys_is_412(session):
    with pytest.raises(PrefetchUnavailable) as err:
        run(TEMPLATES, request({"patient": patient(), "medications": None}), session)
    assert set(err.value.keys) == {"observations", "conditions"}
    assert all("no fhirServer" in why for why in err.value.keys.values())


def test_unreachable_server_is_412_quickly(session):
    import socket
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(PrefetchUnavailable):
        run({"patient": TEMPLATES["patient"]}, request({}, f"http://127.0.0.1:{port}/fhir"), session)
    assert time.monotonic() - started < 2.0


# --------------------------------------------------------------------------- time
def test_slow_server_is_412_within_the_budget(fhir, session):
    fhir.load(patient())
    fhir.delay = 3.0
    started = time.monotonic()
    with pytest.raises(PrefetchUnavailable) as err:
        run(TEMPLATES, request({}, fhir.base_url), session,
            fhir_read_timeout=5.0, fhir_total_budget=1.0)
    elapsed = time.monotonic() - started
    assert elapsed < 1.0 + 0.5, elapsed
    assert set(err.value.keys) == set(TEMPLATES)


def test_read_timeout_is_412(fhir, session):
    fhir.load(patient())
    fhir.delay = 1.5
    started = time.monotonic()
    with pytest.raises(PrefetchUnavailable) as err:
        run({"patient": TEMPLATES["patient"]}, request({}, fhir.base_url), session,
            fhir_read_timeout=0.5, fhir_total_budget=5.0)
    assert time.monotonic() - started < 1.3
    assert "in time" in err.value.keys["patient"]


def test_independent_fetches_run_concurrently(fhir, session):
    fhir.load(patient(), obs("o1"))
    fhir.delay = 0.6
    started = time.monotonic()
    got = run(TEMPLATES, request({}, fhir.base_url), session, fhir_total_budget=5.0)
    elapsed = time.monotonic() - started
    assert set(got.source) == set(TEMPLATES)
    assert elapsed < 4 * 0.6 * 0.75, elapsed  # four fetches, far less than four delays


def test_default_settings_fetch_every_patient_record_key_in_one_round(fhir):
    """With the shipped defaults, a patient-view call with no prefetch waits for one round
    trip to the FHIR server, not two: every key of the real service is in flight at once."""
    from cds.engine import Engine

    config = Config.from_env({"require_auth": False}, environ={})
    templates = Engine(config).service("bone-muscle-health").prefetch
    assert len(templates) > 4   # more keys than the old default of 4 concurrent fetches
    fhir.load(patient(), obs("o1"))
    fhir.delay = 0.5
    started = time.monotonic()
    got = gather(templates, request({}, fhir.base_url), config=config)
    elapsed = time.monotonic() - started
    assert set(got.source) == set(templates) and set(got.source.values()) == {"fhir"}
    assert len(fhir.asked()) == len(templates)
    assert elapsed < 2 * 0.5, elapsed   # one delay (0.5 s) plus overhead; two rounds take 1 s


# --------------------------------------------------------------------------- fetch threads
def _fetch_threads() -> set[Any]:
    import threading

    return {t for t in threading.enumerate() if t.name.startswith("mskcds-fhir")}


def test_fetch_threads_are_reused_by_later_calls(fhir):
    """A call takes idle fetch threads from the process's pool instead of starting its own:
    after the first call, four more calls start no new thread."""
    fhir.load(patient(), obs("o1"))
    run(TEMPLATES, request({}, fhir.base_url), None)
    first = _fetch_threads()
    assert first
    for _ in range(4):
        got = run(TEMPLATES, request({}, fhir.base_url), None)
        assert set(got.source.values()) == {"fhir"}
    assert _fetch_threads() == first


def test_a_call_runs_at_most_fhir_max_workers_fetches_at_once(fhir):
    """Two at a time: four keys of 0.3 s each take two rounds, and every key is still answered."""
    fhir.load(patient(), obs("o1"))
    fhir.delay = 0.3
    started = time.monotonic()
    got = run(TEMPLATES, request({}, fhir.base_url), None, fhir_max_workers=2, fhir_total_budget=5.0)
    assert time.monotonic() - started >= 2 * 0.3
    assert set(got.source) == set(TEMPLATES) and set(got.source.values()) == {"fhir"}
    assert len(fhir.asked()) == len(TEMPLATES)


def test_keys_never_started_within_the_budget_are_named_unavailable(fhir):
    """One fetch at a time, 0.4 s each, a 0.6 s budget: the first key arrives, the second is cut
    off, the last two never start; the call fails naming all three, and nothing was asked of
    the server for the keys that never started."""
    fhir.load(patient(), obs("o1"))
    fhir.delay = 0.4
    with pytest.raises(PrefetchUnavailable) as err:
        run(TEMPLATES, request({}, fhir.base_url), None, fhir_max_workers=1, fhir_total_budget=0.6)
    assert len(err.value.keys) == len(TEMPLATES) - 1
    assert all("time budget" in why or "in time" in why for why in err.value.keys.values())
    assert len(fhir.asked()) == 2


def test_a_forked_child_gets_its_own_fetch_threads(fhir):
    import multiprocessing

    from cds.fhir.gather import fetch_pool

    parent_pool = fetch_pool(cfg())
    fhir.load(patient(), obs("o1"))

    def child(conn: Any) -> None:
        pool = fetch_pool(cfg())
        got = gather(TEMPLATES, request({}, fhir.base_url), config=cfg())
        conn.send((pool is not parent_pool, sorted(set(got.source.values()))))

    ctx = multiprocessing.get_context("fork")
    here, there = ctx.Pipe()
    proc = ctx.Process(target=child, args=(there,))
    proc.start()
    assert here.poll(20), "the child did not answer"
    assert here.recv() == (True, ["fhir"])
    proc.join(10)
    assert proc.exitcode == 0


# --------------------------------------------------------------------------- kept-alive connections
def test_later_calls_reuse_the_connections_of_earlier_ones(fhir):
    """Calls without a session of their own share the process's kept-alive connections: five
    calls of four keys each open at most four connections, not twenty."""
    fhir.load(patient(), obs("o1"))
    for _ in range(5):
        got = run(TEMPLATES, request({}, fhir.base_url), None)
        assert set(got.source.values()) == {"fhir"}
    assert len(fhir.asked()) == 5 * len(TEMPLATES)
    assert fhir.connections <= len(TEMPLATES), fhir.connections


def test_each_request_carries_only_its_own_calls_token(fhir):
    """Shared connections, separate credentials: each call's requests carry that call's token
    and no other (a session holds none)."""
    fhir.load(patient(), obs("o1"))
    tokens = [f"tok-{uuid.uuid4().hex}" for _ in range(3)]
    for tok in tokens:
        run(TEMPLATES, request({}, fhir.base_url, token=tok), None)
    run(TEMPLATES, request({}, fhir.base_url, token=None), None)
    sent = [r.headers.get("Authorization") for r in fhir.asked()]
    expected = [f"Bearer {t}" for t in tokens for _ in TEMPLATES] + [None] * len(TEMPLATES)
    assert sent == expected


class _ClosesKeptAliveConnections:
    """An HTTP/1.1 server that answers the first request of each connection (keep-alive, no
    "Connection: close") and then closes the connection without a word when the next one comes:
    what a client meets when a server drops an idle connection just as it is reused."""

    def __init__(self, body: bytes) -> None:
        import socket
        import threading

        self.body = body
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.answered = 0
        self.dropped = 0
        self._threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()

    def _serve(self, conn: Any) -> None:
        with conn:
            first = True
            buf = b""
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buf += data
                if b"\r\n\r\n" not in buf:
                    continue
                buf = b""
                if not first:
                    self.dropped += 1
                    return   # closed, nothing answered
                first = False
                self.answered += 1
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\n"
                             b"Content-Length: " + str(len(self.body)).encode() + b"\r\n\r\n"
                             + self.body)

    def close(self) -> None:
        self.sock.close()


def test_a_kept_alive_connection_the_server_dropped_is_replaced_not_a_412():
    body = json.dumps(patient()).encode()
    server = _ClosesKeptAliveConnections(body)
    try:
        base = f"http://127.0.0.1:{server.port}/fhir"
        templates = {"patient": TEMPLATES["patient"]}
        for _ in range(3):
            got = run(templates, request({}, base), None)
            assert got.by_key["patient"][0]["id"] == "p1"
        assert server.answered == 3
        assert server.dropped >= 1   # the second and third calls first met a dropped connection
    finally:
        server.close()
