"""Authentication pieces in-process: the trusted-clients file, the replay caches, start-up
failures, the CLI key/token helpers, and the spec's example token."""
from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import jwt
import pytest

from auth_support import (SPEC_ISS, new_ec_signer, new_rsa_signer, public_jwk, signer_from_jwk,
                          write_clients)
from cds import logs
from cds.security.auth import Authenticator
from cds.security.clients import load_clients
from cds.config import Config, ConfigError
from cds.errors import ServiceUnavailable, Unauthorized
from cds.security.replay import (MemoryReplayCache, ReplayCacheError, SqlReplayCache, open_replay_cache,
                        replay_key)
from conftest import REPO, ServerProcess

AUD = "https://cds.example.org/cds-services/bone-muscle-health"


def auth_config(tmp_path: Path, clients_file: Path | None, **over) -> Config:
    values = {"require_auth": True, "clients_file": str(clients_file) if clients_file else None,
              "replay_cache_url": f"sqlite:///{tmp_path / 'replay.sqlite3'}",
              "public_base_url": "https://cds.example.org"}
    values.update(over)
    return Config.from_env({k: v for k, v in values.items() if v is not None}, environ={})


# ------------------------------------------------------------------------------ clients file
def test_valid_clients_file_yaml_and_json(tmp_path):
    es, rs = new_ec_signer("https://a.example", "k1"), new_rsa_signer("https://b.example", "k2")
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "b.json").write_text(json.dumps(rs.jwks()))
    doc = {"clients": [
        {"iss": "https://a.example", "jwks": es.jwks(), "tenant": "t1",
         "fhir_servers": ["https://fhir.a.example/r4/", "http://127.0.0.1:8081/fhir"]},
        {"iss": "https://b.example", "jwks_file": "keys/b.json"},  # relative to the file
        {"iss": "https://c.example", "jwks_url": "https://c.example/.well-known/jwks.json"},
    ]}
    write_clients(tmp_path / "clients.yaml", doc["clients"])
    (tmp_path / "clients.json").write_text(json.dumps(doc))
    for name in ("clients.yaml", "clients.json"):
        clients = load_clients(tmp_path / name)
        assert set(clients) == {"https://a.example", "https://b.example", "https://c.example"}
        a = clients["https://a.example"]
        assert a.fhir_servers == ("https://fhir.a.example/r4", "http://127.0.0.1:8081/fhir")
        assert a.tenant == "t1" and set(a.keys) == {"k1"}
        assert set(clients["https://b.example"].keys) == {"k2"}
        assert clients["https://c.example"].jwks_url == "https://c.example/.well-known/jwks.json"


def _es_jwk(**extra):
    jwk = new_ec_signer("https://x.example", "kx").jwk()
    jwk.update(extra)
    return jwk


BAD_FILES = {
    "not a mapping": ("- just a list", "must be a mapping with a 'clients' list"),
    "empty clients": ("clients: []", "'clients' is empty"),
    "unknown top-level": ({"clients": [{"iss": "a", "jwks_url": "https://a.example/j"}],
                           "extra": 1}, "unknown top-level field(s): extra"),
    "unknown client field": ({"clients": [{"iss": "a", "jwks_url": "https://a.example/j",
                                           "fhir_server": ["https://f.example"]}]},
                             "clients[0]: unknown field(s) fhir_server"),
    "no iss": ({"clients": [{"jwks_url": "https://a.example/j"}]}, "clients[0].iss: required"),
    "no key source": ({"clients": [{"iss": "a"}]}, "exactly one of jwks, jwks_file, jwks_url"),
    "two key sources": ({"clients": [{"iss": "a", "jwks_url": "https://a.example/j",
                                      "jwks": {"keys": []}}]}, "exactly one of"),
    "private key in jwks": ({"clients": [{"iss": "a", "jwks": {"keys": [_es_jwk(d="AAAA")]}}]},
                            "clients[0].jwks: keys[0]: key 'kx' holds private key material"),
    "hmac key": ({"clients": [{"iss": "a", "jwks": {"keys": [
        {"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]}}]}, "kty 'oct' is not allowed"),
    "alg HS256 on a key": ({"clients": [{"iss": "a", "jwks": {"keys": [_es_jwk(alg="HS256")]}}]},
                           "alg 'HS256' is not one of"),
    "alg does not fit curve": ({"clients": [{"iss": "a", "jwks": {"keys": [_es_jwk(alg="ES256")]}}]},
                               "alg ES256 does not match curve P-384"),
    "no kid": ({"clients": [{"iss": "a", "jwks": {"keys": [
        {k: v for k, v in _es_jwk().items() if k != "kid"}]}}]}, "has no 'kid'"),
    "duplicate kid": ({"clients": [{"iss": "a", "jwks": {"keys": [_es_jwk(), _es_jwk()]}}]},
                      "appears twice"),
    "encryption key": ({"clients": [{"iss": "a", "jwks": {"keys": [_es_jwk(use="enc")]}}]},
                       "use 'enc' is not 'sig'"),
    "duplicate iss": ({"clients": [{"iss": "a", "jwks_url": "https://a.example/j"},
                                   {"iss": "a", "jwks_url": "https://a.example/k"}]},
                      "clients[1].iss: 'a' is configured twice"),
    "plain http fhir server": ({"clients": [{"iss": "a", "jwks_url": "https://a.example/j",
                                             "fhir_servers": ["http://fhir.example.org/r4"]}]},
                               "clients[0].fhir_servers[0]: 'http://fhir.example.org/r4' must use https"),
    "fhir server with credentials": ({"clients": [{"iss": "a", "jwks_url": "https://a.example/j",
                                                   "fhir_servers": ["https://u:p@f.example"]}]},
                                     "must not carry credentials"),
    "fhir server not a URL": ({"clients": [{"iss": "a", "jwks_url": "https://a.example/j",
                                            "fhir_servers": ["fhir.example.org"]}]},
                              "is not an absolute http(s) URL"),
    "fhir_servers not a list": ({"clients": [{"iss": "a", "jwks_url": "https://a.example/j",
                                              "fhir_servers": "https://f.example"}]},
                                "fhir_servers: must be a list"),
    "http jwks_url": ({"clients": [{"iss": "a", "jwks_url": "http://a.example/jwks"}]},
                      "clients[0].jwks_url: 'http://a.example/jwks' must use https"),
    "missing jwks_file": ({"clients": [{"iss": "a", "jwks_file": "nope.json"}]}, "cannot read"),
    "empty tenant": ({"clients": [{"iss": "a", "jwks_url": "https://a.example/j", "tenant": ""}]},
                     "clients[0].tenant"),
    "bad yaml": ("clients: [ {iss: a", "not valid YAML"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_clients_file_stops_with_the_field_named(tmp_path, case):
    doc, message = BAD_FILES[case]
    path = tmp_path / "clients.yaml"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    with pytest.raises(ConfigError) as info:
        load_clients(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_small_rsa_key_is_refused(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    path = write_clients(tmp_path / "c.yaml", [{"iss": "a", "jwks": {"keys": [
        public_jwk(key, "small", "RS384")]}}])
    with pytest.raises(ConfigError, match="RSA key of 1024 bits"):
        load_clients(path)


def test_auth_on_without_clients_file_is_a_clear_startup_error(tmp_path):
    with pytest.raises(ConfigError, match="MSKCDS_CLIENTS_FILE is not set"):
        Authenticator(auth_config(tmp_path, None))


def test_auth_off_needs_no_clients_file_and_opens_no_cache(tmp_path):
    cfg = Config.from_env({"require_auth": False,
                           "replay_cache_url": f"sqlite:///{tmp_path / 'replay.sqlite3'}"},
                          environ={})
    auth = Authenticator(cfg)
    assert auth.authenticate(AUD, None) is None
    assert auth.authenticate(AUD, "Bearer garbage") is None
    assert not (tmp_path / "replay.sqlite3").exists()


@pytest.mark.slow  # starts processes
def test_gunicorn_start_fails_with_one_clear_line(tmp_path):
    server = ServerProcess({"MSKCDS_REQUIRE_AUTH": "true", "MSKCDS_CLIENTS_FILE": ""},
                           workers=1, log_path=tmp_path / "server.log")
    with pytest.raises(RuntimeError, match="server exited"):
        server.start(timeout=20)
    server.stop()
    log = server.log_text()
    assert "mskcds: configuration error: authentication is on" in log
    assert "MSKCDS_CLIENTS_FILE is not set" in log
    assert "Traceback" not in log


@pytest.mark.slow  # starts processes
def test_mskcds_serve_checks_the_clients_file_before_starting(tmp_path):
    bad = tmp_path / "clients.yaml"
    bad.write_text(json.dumps({"clients": [{"iss": "a", "jwks": {"keys": [_es_jwk(d="AAAA")]}}]}))
    env = {"PATH": "/usr/bin:/bin", "MSKCDS_REQUIRE_AUTH": "true", "MSKCDS_CLIENTS_FILE": str(bad),
           "MSKCDS_REPLAY_CACHE_URL": "memory"}
    run = subprocess.run([sys.executable, "-m", "cds.cli.main", "serve", "--port", "1"], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert "clients[0].jwks: keys[0]: key 'kx' holds private key material" in run.stderr
    assert "Traceback" not in run.stderr


# ------------------------------------------------------------------------------ verification
@pytest.fixture()
def signer_and_auth(tmp_path):
    es = new_ec_signer("https://ehr.example", "k1", tenant="tenant-1")
    path = write_clients(tmp_path / "clients.yaml", [
        {"iss": es.iss, "jwks": es.jwks(), "tenant": "tenant-1",
         "fhir_servers": ["https://fhir.ehr.example/r4"]}])
    return es, Authenticator(auth_config(tmp_path, path))


def test_authenticate_returns_the_client_with_its_fhir_servers(signer_and_auth):
    es, auth = signer_and_auth
    client = auth.authenticate(AUD, f"Bearer {es.token(AUD)}")
    assert client.iss == "https://ehr.example"
    assert client.fhir_servers == ("https://fhir.ehr.example/r4",)
    assert client.tenant == "tenant-1"


def test_leeway_applies_to_exp_and_iat(signer_and_auth):
    es, auth = signer_and_auth  # leeway 30 s by default
    now = int(time.time())
    assert auth.authenticate(AUD, f"Bearer {es.token(AUD, exp=now - 10, iat=now - 300)}")
    assert auth.authenticate(AUD, f"Bearer {es.token(AUD, iat=now + 10)}")
    for claims, reason in (({"exp": now - 60, "iat": now - 300}, "token expired"),
                           ({"iat": now + 120}, "not valid yet")):
        with pytest.raises(Unauthorized) as info:
            auth.authenticate(AUD, f"Bearer {es.token(AUD, **claims)}")
        assert reason in info.value.reason


def test_reasons_never_carry_the_token_or_jti(signer_and_auth):
    es, auth = signer_and_auth
    token = es.token(AUD)
    auth.authenticate(AUD, f"Bearer {token}")
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    for bad in (token, es.token(AUD + "x"), es.token(AUD, tenant="other")):
        with pytest.raises(Unauthorized) as info:
            auth.authenticate(AUD, f"Bearer {bad}")
        assert bad not in info.value.reason and jti not in info.value.reason
        assert info.value.body()["issue"][0]["diagnostics"] == "Authentication failed."


def test_unreachable_replay_cache_fails_closed(tmp_path):
    class Broken:
        def claim(self, key, expires_at):
            raise ReplayCacheError("replay cache unavailable: OperationalError")

    es = new_ec_signer("https://ehr.example", "k1")
    path = write_clients(tmp_path / "clients.yaml", [{"iss": es.iss, "jwks": es.jwks()}])
    auth = Authenticator(auth_config(tmp_path, path), replay_cache=Broken())
    # Still refused (a jti that cannot be recorded is never accepted), but as what it is:
    # the service is temporarily unavailable (503, Retry-After), not bad credentials (401).
    with pytest.raises(ServiceUnavailable) as info:
        auth.authenticate(AUD, f"Bearer {es.token(AUD)}")
    assert info.value.status == 503 and info.value.headers["Retry-After"].isdigit()
    assert info.value.body()["issue"][0]["code"] == "transient"
    assert not isinstance(info.value, Unauthorized)


def test_spec_example_token_has_a_valid_signature_but_is_expired(tmp_path, shared_dir):
    spec = shared_dir / "cds-hooks-spec"
    token = (spec / "jwt-example-token.txt").read_text().strip()
    jwks = json.loads((spec / "jwks-public.json").read_text())
    key = jwt.PyJWK(jwks["keys"][0]).key
    # The signature itself is good (checked with PyJWT directly, expiry ignored)...
    claims = jwt.decode(token, key, algorithms=["ES384"], options={"verify_exp": False},
                        audience="https://cds.example.org/cds-services/some-service")
    assert claims["iss"] == SPEC_ISS
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"), key,
                   algorithms=["ES384"], options={"verify_exp": False}, audience=claims["aud"])
    # ...and the service refuses it for being expired, not for anything else.
    path = write_clients(tmp_path / "clients.yaml", [
        {"iss": SPEC_ISS, "jwks_file": str(spec / "jwks-public.json"), "tenant": claims["tenant"]}])
    auth = Authenticator(auth_config(tmp_path, path))
    with pytest.raises(Unauthorized) as info:
        auth.authenticate(claims["aud"], f"Bearer {token}")
    assert info.value.reason.endswith("token expired")
    # The same key, with a fresh token, is accepted.
    signer = signer_from_jwk(spec / "jwk-private.json", SPEC_ISS, tenant=claims["tenant"])
    assert auth.authenticate(claims["aud"], f"Bearer {signer.token(claims['aud'])}").iss == SPEC_ISS


# ------------------------------------------------------------------------------ replay caches
def test_memory_cache_refuses_a_replay_and_forgets_after_expiry():
    now = [1000.0]
    cache = MemoryReplayCache(clock=lambda: now[0])
    key = replay_key("iss", "jti-1")
    assert cache.claim(key, 1100.0) is True
    assert cache.claim(key, 1100.0) is False
    assert cache.claim(replay_key("other-iss", "jti-1"), 1100.0) is True  # per issuer
    now[0] = 1200.0
    assert cache.claim(key, 1300.0) is True  # the first token is long expired
    now[0] = 1300.0 + 61  # purge runs
    cache.claim(replay_key("iss", "x"), 2000.0)
    assert len(cache) == 1


def _claim_in_child(url: str, key: str, queue) -> None:
    queue.put(SqlReplayCache(url).claim(key, time.time() + 60))


@pytest.mark.slow  # starts processes
def test_sql_cache_is_shared_between_processes(tmp_path):
    url = f"sqlite:///{tmp_path / 'sub' / 'replay.sqlite3'}"
    cache = open_replay_cache(url)
    assert isinstance(cache, SqlReplayCache)
    key = replay_key("iss", str(uuid.uuid4()))
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_claim_in_child, args=(url, key, queue))
    child.start()
    child.join(30)
    assert queue.get(timeout=5) is True           # another process (a worker) accepted it
    assert cache.claim(key, time.time() + 60) is False   # this one sees the replay
    assert cache.claim(replay_key("iss", "fresh"), time.time() + 60) is True
    # Expired entries are reused and purged; keys are digests, never the raw jti.
    assert cache.claim(replay_key("iss", "old"), time.time() - 1) is True
    assert cache.claim(replay_key("iss", "old"), time.time() + 60) is True
    import sqlite3
    rows = sqlite3.connect(tmp_path / "sub" / "replay.sqlite3").execute(
        "select key from mskcds_jti").fetchall()
    assert all(len(k) == 64 and "fresh" not in k for (k,) in rows)


@pytest.mark.postgres
def test_postgres_cache_is_shared_between_instances():
    from feedback_support import postgres_base_url

    url = postgres_base_url()  # skips without a PostgreSQL server (CI starts one)
    one, two = SqlReplayCache(url), SqlReplayCache(url)  # e.g. two machines
    key = replay_key("https://ehr.example", str(uuid.uuid4()))
    assert one.claim(key, time.time() + 60) is True
    assert two.claim(key, time.time() + 60) is False
    assert one.claim(key, time.time() + 60) is False
    old = replay_key("https://ehr.example", str(uuid.uuid4()))
    assert one.claim(old, time.time() - 1) is True   # already expired when recorded
    assert two.claim(old, time.time() + 60) is True  # so its key may be taken over


def test_memory_setting_gives_the_per_process_cache():
    assert isinstance(open_replay_cache("memory"), MemoryReplayCache)


def test_bad_replay_cache_url_is_a_startup_error(tmp_path):
    es = new_ec_signer("https://ehr.example", "k1")
    path = write_clients(tmp_path / "clients.yaml", [{"iss": es.iss, "jwks": es.jwks()}])
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="MSKCDS_REPLAY_CACHE_URL"):
        Authenticator(auth_config(tmp_path, path,
                                  replay_cache_url=f"sqlite:///{blocker}/sub/replay.sqlite3"))


# ------------------------------------------------------------------------------ CLI helpers
@pytest.mark.slow  # starts processes
def test_keygen_and_token_commands_produce_a_token_the_service_accepts(tmp_path):
    from cds.cli.main import main

    for alg in ("ES384", "RS384"):
        priv, jwks = tmp_path / f"{alg}.pem", tmp_path / f"{alg}.json"
        assert main(["keygen", "--alg", alg, "--kid", f"kid-{alg}", "--private", str(priv),
                     "--jwks", str(jwks)]) == 0
        assert priv.stat().st_mode & 0o077 == 0  # private key readable by its owner only
        public = json.loads(jwks.read_text())
        assert "d" not in public["keys"][0] and public["keys"][0]["alg"] == alg
        path = write_clients(tmp_path / f"clients-{alg}.yaml",
                             [{"iss": "https://ehr.example", "jwks": public}])
        auth = Authenticator(auth_config(tmp_path, path, replay_cache_url="memory"))
        run = subprocess.run([sys.executable, "-m", "cds.cli.main", "token", "--key", str(priv),
                              "--kid", f"kid-{alg}", "--iss", "https://ehr.example", "--aud", AUD],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        token = run.stdout.strip()
        assert jwt.get_unverified_header(token)["alg"] == alg
        assert auth.authenticate(AUD, f"Bearer {token}").iss == "https://ehr.example"


# ------------------------------------------------------------------------------ log safety net
def test_jwt_shaped_strings_are_redacted_from_log_lines():
    es = new_ec_signer("https://ehr.example", "k1")
    token = es.token(AUD)
    line = logs.JsonFormatter().format(
        __import__("logging").LogRecord("mskcds.x", 30, __file__, 1, "got %s", (token,), None))
    assert token not in line and token.split(".")[1] not in line
    assert logs.REDACTED in line


def _claim_many(url: str, keys: list[str], queue) -> None:
    cache = SqlReplayCache(url)
    won: list[str] = []
    lock = threading.Lock()

    def claim_all() -> None:
        for key in keys:
            if cache.claim(key, time.time() + 60):
                with lock:
                    won.append(key)
    threads = [threading.Thread(target=claim_all) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    queue.put(won)


@pytest.mark.slow  # starts processes
def test_sqlite_claims_are_exactly_once_across_processes_and_threads(tmp_path):
    """3 processes x 4 threads race for the same 150 tokens: each is accepted exactly once."""
    url = f"sqlite:///{tmp_path / 'replay.sqlite3'}"
    SqlReplayCache(url)   # the table, as start-up makes it
    keys = [replay_key("iss", str(uuid.uuid4())) for _ in range(150)]
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_claim_many, args=(url, keys, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    won = [key for _ in procs for key in queue.get(timeout=90)]
    for p in procs:
        p.join(30)
    assert sorted(won) == sorted(keys)   # every token once, none twice


def test_sqlite_cache_failing_under_the_service_is_a_replay_cache_error(tmp_path):
    """A database error during a claim (here: the table is gone) is ReplayCacheError, which
    the service answers with 503 + Retry-After, never a driver exception (a 500)."""
    import sqlite3

    path = tmp_path / "replay.sqlite3"
    cache = SqlReplayCache(f"sqlite:///{path}")
    assert cache.claim(replay_key("iss", "a"), time.time() + 60) is True
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE mskcds_jti")
    with pytest.raises(ReplayCacheError, match="replay cache unavailable"):
        cache.claim(replay_key("iss", "b"), time.time() + 60)
    with sqlite3.connect(path) as conn:   # back: the next claim works on a fresh connection
        conn.execute("CREATE TABLE mskcds_jti (key VARCHAR(64) PRIMARY KEY, "
                     "expires_at FLOAT NOT NULL)")
    assert cache.claim(replay_key("iss", "b"), time.time() + 60) is True
