"""Client authentication through a real gunicorn server (2 workers) over HTTP.

Real key pairs (fresh ES384 and RS384 keys, the CDS Hooks sandbox's published demo
key, the spec's example key); real trusted-clients file; a real local HTTP server
standing in for a client's jwks_url; real FHIR test servers for the fhirServer allowlist.
Every rejection is checked for its status, its body (which must not say why) and, in the
server log, the reason, so a case cannot pass by failing for some other reason.
"""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest
import requests

from auth_support import (SANDBOX_ISS, SANDBOX_JKU, SANDBOX_KID, SPEC_ISS, hs256_token,
                          new_ec_signer, new_rsa_signer, signer_from_jwk, unsigned_token,
                          write_clients)
import hardening_support
from conftest import SHARED, ServerProcess, run_server
from fhir_test_server import FhirTestServer

SERVICE = "/cds-services/bone-muscle-health"
EHR_A = "https://ehr-a.example.org"
EHR_B = "https://ehr-b.example.org"
SPEC_TENANT = "2ddd6c3a-8e9a-44c6-a305-52111ad302a2"
AUTH_FAILED = {"resourceType": "OperationOutcome",
               "issue": [{"severity": "error", "code": "login",
                          "diagnostics": "Authentication failed."}]}


class Env:
    """Everything the module's server was configured with."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.es = new_ec_signer(EHR_A, "ehr-a-es384")
        self.rs = new_rsa_signer(EHR_A, "ehr-a-rs384")
        self.b = new_ec_signer(EHR_B, "ehr-b-es384")
        self.rotating = new_ec_signer("https://rotating-ehr.example.org", "rot-1")
        self.rotated = new_ec_signer("https://rotating-ehr.example.org", "rot-2")
        self.redirecting = new_ec_signer("https://redirecting-ehr.example.org", "redir-1")
        self.big = new_ec_signer("https://big-jwks-ehr.example.org", "big-1")
        self.deep = new_ec_signer("https://deep-jwks-ehr.example.org", "deep-1")
        self.jwks_server = FhirTestServer().start()
        self.fhir_a = FhirTestServer().start()
        self.fhir_b = FhirTestServer().start()
        self.served: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.jwks_server.override = lambda path, query: self.served.get(path)
        self.sandbox = self.spec = None
        self.server: ServerProcess | None = None

    def serve_json(self, path: str, doc: Any) -> str:
        self.served[path] = (200, {"Content-Type": "application/json"}, json.dumps(doc).encode())
        return self.jwks_server.origin + path

    def fetches(self, path: str) -> int:
        return sum(1 for r in self.jwks_server.asked() if r.path == path)

    def clients(self) -> list[dict[str, Any]]:
        rot_url = self.serve_json("/rotating/jwks.json", self.rotating.jwks())
        self.redirect_target = self.serve_json("/redirect-target/jwks.json",
                                               self.redirecting.jwks())
        self.served["/redirect/jwks.json"] = (302, {"Location": self.redirect_target}, b"")
        big = self.big.jwks()
        big["padding"] = "x" * 100_000  # a valid JWKS, but over the 64 KiB cap
        big_url = self.serve_json("/big/jwks.json", big)
        # Under the size cap, but nested deeper than the JSON parser goes.
        self.served["/deep/jwks.json"] = (200, {"Content-Type": "application/json"},
                                          b"[" * 30_000 + b"]" * 30_000)
        clients = [
            {"iss": EHR_A, "jwks": {"keys": [self.es.jwk(), self.rs.jwk()]},
             "fhir_servers": [self.fhir_a.base_url]},
            {"iss": EHR_B, "jwks": self.b.jwks(), "fhir_servers": [self.fhir_b.base_url]},
            {"iss": self.rotating.iss, "jwks_url": rot_url},
            {"iss": self.redirecting.iss,
             "jwks_url": self.jwks_server.origin + "/redirect/jwks.json"},
            {"iss": self.big.iss, "jwks_url": big_url},
            {"iss": self.deep.iss, "jwks_url": self.jwks_server.origin + "/deep/jwks.json"},
        ]
        if SHARED.is_dir():
            sandbox_jwks = json.loads((SHARED / "cds-hooks-sandbox" / "jwks.json").read_text())
            local_jku = self.serve_json("/sandbox/.well-known/jwks.json", sandbox_jwks)
            self.sandbox = signer_from_jwk(SHARED / "cds-hooks-sandbox" / "jwk-keypair.json",
                                           SANDBOX_ISS, jku=local_jku)
            clients.append({"iss": SANDBOX_ISS, "jwks_url": local_jku,
                            "fhir_servers": [self.fhir_a.base_url]})
            self.spec = signer_from_jwk(SHARED / "cds-hooks-spec" / "jwk-private.json", SPEC_ISS,
                                        tenant=SPEC_TENANT)
            clients.append({"iss": SPEC_ISS, "tenant": SPEC_TENANT,
                            "jwks_file": str(SHARED / "cds-hooks-spec" / "jwks-public.json")})
        return clients

    def stop(self) -> None:
        for s in (self.jwks_server, self.fhir_a, self.fhir_b):
            s.stop()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("auth")
    e = Env(tmp)
    clients = write_clients(tmp / "clients.yaml", e.clients())
    try:
        with run_server({"MSKCDS_REQUIRE_AUTH": "true", "MSKCDS_CLIENTS_FILE": str(clients),
                         "MSKCDS_REPLAY_CACHE_URL": f"sqlite:///{tmp / 'replay.sqlite3'}"},
                        tmp, workers=2) as server:
            e.server = server
            yield e
    finally:
        e.stop()


def service_url(env: Env) -> str:
    return env.server.url(SERVICE)


def pv_body(env: Env, patient_id: str = "auth-p1", **over: Any) -> dict[str, Any]:
    """A patient-view request that answers every prefetch template of the discovery document."""
    templates = discovery(env)["services"][0].get("prefetch", {})
    return hardening_support.pv_body(templates, patient_id, patient_fields={}, **over)


_DISCOVERY: dict[int, Any] = {}


def discovery(env: Env) -> dict[str, Any]:
    if env.server.port not in _DISCOVERY:
        url = env.server.url("/cds-services")
        r = requests.get(url, headers=env.es.bearer(url), timeout=10)
        assert r.status_code == 200, r.text
        _DISCOVERY[env.server.port] = r.json()
    return _DISCOVERY[env.server.port]


def post(env: Env, headers: dict[str, str] | None, body: dict[str, Any] | None = None,
         url: str | None = None) -> requests.Response:
    return requests.post(url or service_url(env), json=body if body is not None else pv_body(env),
                         headers=headers or {}, timeout=15)


def call_logged(env: Env, fn: Callable[[], requests.Response]) -> tuple[requests.Response, str]:
    """Run ``fn`` and return its response with the server log lines it produced."""
    before = len(env.server.log_text())
    resp = fn()
    time.sleep(0.05)
    return resp, env.server.log_text()[before:]


def assert_rejected(resp: requests.Response, new_log: str, reason: str) -> None:
    assert resp.status_code == 401, resp.text
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert resp.json() == AUTH_FAILED  # says only that authentication failed
    assert reason not in resp.text
    warnings = [json.loads(line) for line in new_log.splitlines()
                if line.startswith("{") and '"authentication failed' in line]
    assert any(reason in w["msg"] for w in warnings), (reason, new_log)


def assert_still_serving(env: Env) -> None:
    r = post(env, env.es.bearer(service_url(env)))
    assert r.status_code == 200, r.text
    assert "cards" in r.json()


# ------------------------------------------------------------------------------ acceptance
def test_valid_es384_and_rs384_tokens_are_accepted(env):
    url = service_url(env)
    for signer in (env.es, env.rs, env.b):
        r = post(env, signer.bearer(url))
        assert r.status_code == 200, (signer.kid, r.text)
        assert isinstance(r.json()["cards"], list)


def test_aud_may_be_an_array_holding_the_endpoint(env):
    url = service_url(env)
    r = post(env, env.es.bearer(["https://other.example/cds-services", url]))
    assert r.status_code == 200, r.text


def test_discovery_and_feedback_require_a_token_for_their_own_url(env):
    disc = env.server.url("/cds-services")
    assert requests.get(disc, timeout=5).status_code == 401
    assert requests.get(disc, headers=env.es.bearer(disc), timeout=5).status_code == 200
    # A token minted for the service endpoint does not open discovery (aud is per endpoint).
    resp, log = call_logged(env, lambda: requests.get(disc, headers=env.es.bearer(service_url(env)),
                                                      timeout=5))
    assert_rejected(resp, log, "is not this endpoint")
    fb = env.server.url(SERVICE + "/feedback")
    feedback = {"feedback": [{"card": str(uuid.uuid4()), "outcome": "accepted",
                              "outcomeTimestamp": "2026-01-01T00:00:00Z"}]}
    assert requests.post(fb, json=feedback, timeout=5).status_code == 401
    r = requests.post(fb, json=feedback, headers=env.es.bearer(fb), timeout=5)
    assert r.status_code != 401, r.text  # past authentication (the card id is unknown)


def test_healthz_stays_open(env):
    assert requests.get(env.server.url("/healthz"), timeout=5).status_code == 200


# ------------------------------------------------------------------------------ rejections
def _other_key_same_kid(env: Env) -> str:
    forger = new_ec_signer(EHR_A, env.es.kid)  # right iss and kid, wrong private key
    return forger.token(service_url(env))


def _hs256_with_public_key(env: Env) -> str:
    claims = env.es.claims(service_url(env))
    return hs256_token({"alg": "HS256", "typ": "JWT", "kid": env.es.kid}, claims,
                       env.es.public_pem())


def _alg_none(env: Env) -> str:
    return unsigned_token({"alg": "none", "typ": "JWT", "kid": env.es.kid},
                          env.es.claims(service_url(env)))


REJECTIONS: dict[str, tuple[Callable[[Env], dict[str, str]], str]] = {
    "no header": (lambda e: {}, "no Authorization header"),
    "basic scheme": (lambda e: {"Authorization": "Basic dXNlcjpwYXNz"}, "not 'Bearer <JWT>'"),
    "not a jws": (lambda e: {"Authorization": "Bearer not-a-token"}, "not a compact JWS"),
    "malformed segments": (lambda e: {"Authorization": "Bearer abc.def.ghi"}, "malformed JWT"),
    "alg none": (lambda e: {"Authorization": f"Bearer {_alg_none(e)}"}, "alg 'none' is not allowed"),
    "hs256 with public key": (lambda e: {"Authorization": f"Bearer {_hs256_with_public_key(e)}"},
                              "alg 'HS256' is not allowed"),
    "unknown kid": (lambda e: e.es.bearer(service_url(e), headers={"kid": "no-such-kid"}),
                    "unknown kid"),
    "no kid": (lambda e: e.es.bearer(service_url(e), headers={"kid": None}), "no kid"),
    "wrong signature": (lambda e: {"Authorization": f"Bearer {_other_key_same_kid(e)}"},
                        "signature does not verify"),
    "unknown iss": (lambda e: new_ec_signer("https://evil.example", e.es.kid).bearer(
        service_url(e)), "is not a trusted client"),
    "wrong aud (other service)": (lambda e: e.es.bearer(
        e.server.url("/cds-services/some-other-service")), "is not this endpoint"),
    "wrong aud (other host)": (lambda e: e.es.bearer(
        "https://cds.other-vendor.example" + SERVICE), "is not this endpoint"),
    "expired": (lambda e: e.es.bearer(service_url(e), exp=int(time.time()) - 120,
                                      iat=int(time.time()) - 420), "token expired"),
    "iat in the future": (lambda e: e.es.bearer(service_url(e), iat=int(time.time()) + 600,
                                                exp=int(time.time()) + 900), "not valid yet"),
    "no jti": (lambda e: e.es.bearer(service_url(e), jti=None), "required claim missing: jti"),
    "no aud": (lambda e: e.es.bearer(None), "required claim missing: aud"),
    "alg does not fit key": (lambda e: e.rs.bearer(service_url(e), alg="RS256"),
                             "does not fit key"),
    "key of another client": (lambda e: e.b.bearer(service_url(e), iss=EHR_A),
                              "unknown kid"),
    # Signed by a trusted client, valid JSON, but no time: float() overflowed into a 500.
    "exp out of range": (lambda e: e.es.bearer(service_url(e), exp=10 ** 400), "out of range"),
    "iat out of range": (lambda e: e.es.bearer(service_url(e), iat=-(10 ** 400)), "out of range"),
    "jwks nested too deeply": (lambda e: e.deep.bearer(service_url(e)), "nested too deeply"),
    # Signed, but not short-lived: exp - iat and exp - now are bounded (5 minutes).
    "exp 10 years ahead, iat 1": (lambda e: e.es.bearer(service_url(e), iat=1,
                                                        exp=int(time.time()) + 10 * 365 * 86400),
                                  "token lifetime is longer than 300 s"),
    "exp 10^30": (lambda e: e.es.bearer(service_url(e), exp=10 ** 30),
                  "token lifetime is longer than 300 s"),
    "exp one hour ahead": (lambda e: e.es.bearer(service_url(e), exp=int(time.time()) + 3600),
                           "token lifetime is longer than 300 s"),
    "iat old, exp soon": (lambda e: e.es.bearer(service_url(e), iat=int(time.time()) - 86400,
                                                exp=int(time.time()) + 60),
                          "token lifetime is longer than 300 s"),
}


@pytest.mark.parametrize("case", list(REJECTIONS))
def test_each_rejection_is_401_and_service_keeps_serving(env, case):
    make_headers, reason = REJECTIONS[case]
    resp, log = call_logged(env, lambda: post(env, make_headers(env)))
    assert_rejected(resp, log, reason)
    assert_still_serving(env)


def test_replayed_jti_is_refused_by_every_worker(env):
    url = service_url(env)
    headers = env.es.bearer(url)
    assert post(env, headers).status_code == 200
    # New connections each time: with 2 workers, some replays land on the other worker.
    for _ in range(6):
        resp, log = call_logged(env, lambda: post(env, headers))
        assert_rejected(resp, log, "jti already used")
    assert_still_serving(env)


def test_same_jti_from_two_clients_is_not_a_replay(env):
    url = service_url(env)
    jti = str(uuid.uuid4())
    assert post(env, env.es.bearer(url, jti=jti)).status_code == 200
    assert post(env, env.b.bearer(url, jti=jti)).status_code == 200


# ------------------------------------------------------------------------------ fhirServer
def test_fhir_server_must_be_one_configured_for_that_client(env):
    url = service_url(env)
    env.fhir_b.reset(keep_resources=True)
    access_token = "at-" + uuid.uuid4().hex
    body = pv_body(env, fhirServer=env.fhir_b.base_url,
                   fhirAuthorization={"access_token": access_token, "token_type": "Bearer",
                                      "expires_in": 300, "scope": "patient/*.read",
                                      "subject": "ehr-a"})
    body.pop("prefetch")  # the service would have to fetch: it must not, from fhir_b
    r = post(env, env.es.bearer(url), body)  # client A names client B's server
    assert r.status_code == 412, r.text  # it would have to fetch: the keys, and why not
    assert {e for i in r.json()["issue"] for e in i["expression"]} == {
        f"prefetch.{key}" for key in discovery(env)["services"][0]["prefetch"]}
    assert all("not a FHIR server this client may use" in i["diagnostics"]
               and "MSKCDS_CLIENTS_FILE" in i["diagnostics"] for i in r.json()["issue"])
    r = post(env, env.es.bearer(url), {**body, "fhirServer": "http://169.254.169.254/latest"})
    assert r.status_code == 412
    assert env.fhir_b.asked() == []  # no request, so no token, went to a server A is not configured for
    # With every key in the prefetch, a fhirServer A may not use is ignored: cards, no fetch.
    r = post(env, env.es.bearer(url), pv_body(env, fhirServer=env.fhir_b.base_url,
                                              fhirAuthorization=body["fhirAuthorization"]))
    assert r.status_code == 200, r.text
    assert env.fhir_b.asked() == []
    # Client B may name its own server (the service then reads from it, with B's token).
    env.fhir_b.load({"resourceType": "Patient", "id": "auth-p1"})
    r = post(env, env.b.bearer(url), body)
    assert r.status_code != 400 or r.json()["issue"][0].get("expression") != ["fhirServer"], r.text
    assert r.status_code not in (401, 500)
    assert_still_serving(env)


# ------------------------------------------------------------------------------ jwks_url
def test_jwks_url_is_cached_and_refetched_once_for_a_rotated_key(env):
    path = "/rotating/jwks.json"
    url = service_url(env)
    for _ in range(6):
        assert post(env, env.rotating.bearer(url)).status_code == 200
    assert 1 <= env.fetches(path) <= 2  # once per worker at most, not once per request
    # The client rotates: its JWKS now holds the new key too.
    env.serve_json(path, {"keys": [env.rotating.jwk(), env.rotated.jwk()]})
    for _ in range(4):
        r = post(env, env.rotated.bearer(url))
        assert r.status_code == 200, r.text
    after_rotation = env.fetches(path)
    assert after_rotation <= 4
    # A made-up kid triggers at most one refetch per worker (cool-down), not one per request.
    for _ in range(5):
        resp, log = call_logged(env, lambda: post(env, env.rotated.bearer(
            url, headers={"kid": "made-up-" + uuid.uuid4().hex[:6]})))
        assert_rejected(resp, log, "unknown kid")
    assert env.fetches(path) - after_rotation <= 2


def test_jwks_url_redirect_is_not_followed(env):
    resp, log = call_logged(env, lambda: post(env, env.redirecting.bearer(service_url(env))))
    assert_rejected(resp, log, "answered HTTP 302")
    assert env.fetches("/redirect-target/jwks.json") == 0
    assert_still_serving(env)


def test_jwks_over_size_cap_is_refused(env):
    resp, log = call_logged(env, lambda: post(env, env.big.bearer(service_url(env))))
    assert_rejected(resp, log, "larger than")
    assert_still_serving(env)


# ------------------------------------------------------------------------------ shared data
def test_sandbox_key_via_configured_jwks_url(env, shared_dir):
    s = env.sandbox
    assert s.kid == SANDBOX_KID and s.alg == "ES384"
    url = service_url(env)
    disc = env.server.url("/cds-services")
    assert requests.get(disc, headers=s.bearer(disc), timeout=5).status_code == 200
    assert post(env, s.bearer(url)).status_code == 200
    assert env.fetches("/sandbox/.well-known/jwks.json") >= 1


def test_sandbox_token_with_a_jku_other_than_the_configured_one_is_refused(env, shared_dir):
    before = env.jwks_server.asked()
    # Exactly what the public sandbox sends: its own (remote) jku.
    resp, log = call_logged(env, lambda: post(env, env.sandbox.bearer(
        service_url(env), headers={"jku": SANDBOX_JKU})))
    assert_rejected(resp, log, "is not the JWKS URL configured")
    resp, log = call_logged(env, lambda: post(env, env.sandbox.bearer(
        service_url(env), headers={"jku": env.jwks_server.origin + "/rotating/jwks.json"})))
    assert_rejected(resp, log, "is not the JWKS URL configured")
    assert env.jwks_server.asked() == before  # nothing fetched for either jku
    assert_still_serving(env)


def test_spec_example_key_with_tenant(env, shared_dir):
    url = service_url(env)
    assert post(env, env.spec.bearer(url)).status_code == 200
    resp, log = call_logged(env, lambda: post(env, env.spec.bearer(url, tenant="another-tenant")))
    assert_rejected(resp, log, "tenant does not match")
    resp, log = call_logged(env, lambda: post(env, env.spec.bearer(url, tenant=None)))
    assert_rejected(resp, log, "tenant does not match")


def test_spec_example_token_is_rejected_as_expired(env, shared_dir):
    token = (shared_dir / "cds-hooks-spec" / "jwt-example-token.txt").read_text().strip()
    # Its signature verifies against the spec's JWKS (configured for its iss here); it
    # is refused because it expired in 2015.
    resp, log = call_logged(env, lambda: post(env, {"Authorization": f"Bearer {token}"}))
    assert_rejected(resp, log, "token expired")


# ------------------------------------------------------------------------------ public base URL
def test_public_base_url_is_the_aud_and_spec_token_fails_only_for_expiry(tmp_path, shared_dir):
    """With MSKCDS_PUBLIC_BASE_URL=https://cds.example.org the spec's example token has the
    right aud and a valid signature, so the only thing wrong with it is that it expired."""
    spec = signer_from_jwk(shared_dir / "cds-hooks-spec" / "jwk-private.json", SPEC_ISS,
                           tenant=SPEC_TENANT)
    sandbox = signer_from_jwk(shared_dir / "cds-hooks-sandbox" / "jwk-keypair.json", SANDBOX_ISS,
                              jku=SANDBOX_JKU)
    sandbox_jwks = json.loads((shared_dir / "cds-hooks-sandbox" / "jwks.json").read_text())
    clients = write_clients(tmp_path / "clients.yaml", [
        {"iss": SPEC_ISS, "tenant": SPEC_TENANT,
         "jwks_file": str(shared_dir / "cds-hooks-spec" / "jwks-public.json")},
        # The sandbox's key configured inline: its jku header is then never fetched.
        {"iss": SANDBOX_ISS, "jwks": sandbox_jwks},
    ])
    with run_server({"MSKCDS_REQUIRE_AUTH": "true", "MSKCDS_CLIENTS_FILE": str(clients),
                     "MSKCDS_PUBLIC_BASE_URL": "https://cds.example.org",
                     "MSKCDS_REPLAY_CACHE_URL": "memory"}, tmp_path, workers=1) as server:
        token = (shared_dir / "cds-hooks-spec" / "jwt-example-token.txt").read_text().strip()
        local = server.url("/cds-services/some-service")
        before = len(server.log_text())
        r = requests.post(local, json={}, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        time.sleep(0.05)
        assert r.status_code == 401 and r.json() == AUTH_FAILED
        assert "token expired" in server.log_text()[before:]
        # A fresh token from the same key, for the public URL, gets past authentication (404:
        # there is no service "some-service" here), and the same token's replay does not.
        public = "https://cds.example.org/cds-services/some-service"
        headers = spec.bearer(public)
        assert requests.post(local, json={}, headers=headers, timeout=10).status_code == 404
        assert requests.post(local, json={}, headers=headers, timeout=10).status_code == 401
        # The local URL is not the aud any more, whatever Host the caller sends.
        r = requests.post(server.url(SERVICE), json={}, headers=spec.bearer(server.url(SERVICE)),
                          timeout=10)
        assert r.status_code == 401
        r = requests.post(server.url(SERVICE), json={}, timeout=10, headers={
            **sandbox.bearer("https://cds.example.org" + SERVICE), "Host": "evil.example"})
        assert r.status_code != 401, r.text  # past auth (aud from the setting, not from Host)
        # Sandbox key inline: the public sandbox jku is in the header and is not fetched.
        disc = "https://cds.example.org/cds-services"
        r = requests.get(server.url("/cds-services"), headers=sandbox.bearer(disc), timeout=10)
        assert r.status_code == 200, r.text


# ------------------------------------------------------------------------------ auth off
def test_auth_off_uses_the_configured_fhir_server_allowlist(tmp_path):
    with FhirTestServer() as allowed, FhirTestServer() as other:
        allowed.load({"resourceType": "Patient", "id": "off-p1"})
        env = {"MSKCDS_REQUIRE_AUTH": "false", "MSKCDS_ALLOWED_FHIR_SERVERS": allowed.base_url}
        with run_server(env, tmp_path, workers=1) as server:
            assert "AUTHENTICATION IS OFF" in server.log_text()  # said loudly at start-up
            url = server.url(SERVICE)
            body = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
                    "context": {"userId": "Practitioner/x", "patientId": "off-p1"},
                    "fhirAuthorization": {"access_token": "secret-" + uuid.uuid4().hex,
                                          "token_type": "Bearer", "expires_in": 300,
                                          "scope": "patient/*.read", "subject": "x"}}
            r = requests.post(url, json={**body, "fhirServer": other.base_url}, timeout=15)
            assert r.status_code == 412, r.text  # not allowed, and the data had to be fetched
            assert all(e.startswith("prefetch.") for i in r.json()["issue"]
                       for e in i["expression"])
            assert all("MSKCDS_ALLOWED_FHIR_SERVERS" in i["diagnostics"] for i in r.json()["issue"])
            assert other.asked() == []
            r = requests.post(url, json={**body, "fhirServer": allowed.base_url + "/"}, timeout=15)
            assert r.status_code == 200, r.text  # allowed: the service reads from it
            assert allowed.asked(), "the allowed server was not read"
