"""API keys, scopes per route and per-key rate limits.

Every route of the app is enumerated (``liverec.api.auth.app_routes``), so a route added later is
checked too: without a key 401, with a key that lacks its scope 403, with a key of another app
403, and a route that declares no scope needs admin. Rate limits: the bucket's arithmetic, both
engines against it, 429 + Retry-After, and one bucket shared by two real worker processes.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from liverec.api.app import create_app
from liverec.api.auth import PUBLIC, app_routes
from liverec.api.deps import APP_PATTERN
from liverec.auth import ADMIN, INGEST, READ, AuthConfigError, Keyring, LocalBuckets, SecretSource, describe_auth, take
from liverec.auth.keys import APP_ID
from liverec.auth.ratelimit import RedisBuckets
from liverec.config import Settings
from liverec.store import open_store

from .test_e2e_serve import free_port
from .test_workers import fresh, start_workers, stop_group

REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_reachable() -> str | None:
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure: no Redis to test against
        return f"Redis at {REDIS_URL} is not reachable ({type(exc).__name__})"


@pytest.fixture
def auth_settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", scorer="cooccurrence", snapshot_interval_s=0)


@pytest.fixture
def client(auth_settings: Settings):
    with TestClient(create_app(auth_settings)) as c:
        yield c


def make_key(client: TestClient, app: str, scopes: str, rate: float = 1000.0, burst: float = 1000.0) -> str:
    """A new key, made the way ``liverec keys create`` makes it."""
    settings = client.app.state.service.settings
    keyring: Keyring = client.app.state.auth.keyring
    key, _ = keyring.create(app, scopes, rate, burst, ensure_secret=SecretSource(settings.auth_secret, settings.data_dir).ensure)
    return key


def bearer(key: str, app: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key}"}
    if app is not None:
        headers["X-Liverec-App"] = app
    return headers


# Concrete values for path parameters and bodies, so that any route can be called.
PATH_VALUES = {"item_id": "i0", "user_id": "u0", "name": "common.js", "experiment_id": "exp_x"}
BODIES = {
    ("POST", "/v1/events"): {"user_id": "u9", "item_id": "i0", "type": "view"},
    ("POST", "/v1/items"): {"items": [{"item_id": "i9", "title": "Nine"}]},
    ("PUT", "/v1/items/{item_id}"): {"title": "Zero again"},
    ("POST", "/v1/experiments"): {"name": "t", "variants": [{"name": "A"}, {"name": "B", "ranking": {"diversity": 0.3}}]},
}


def calls(client: TestClient):
    """(method, template, url, json body, scope) for every route of the app."""
    for route in app_routes(client.app):
        url = re.sub(r"\{(\w+)\}", lambda m: PATH_VALUES.get(m.group(1), "x"), route.path)
        for method in sorted(route.methods - {"HEAD"}):
            yield method, route.path, url, BODIES.get((method, route.path)), route.scope


def takes_app(client: TestClient, template: str, method: str) -> bool:
    """Whether the route reads the app from X-Liverec-App (its documented parameters say)."""
    operation = client.app.openapi()["paths"].get(template, {}).get(method.lower(), {})
    return any(p["in"] == "header" and p["name"] == "X-Liverec-App" for p in operation.get("parameters", []))


def seed(client: TestClient, key: str, prefix: str = "") -> None:
    items = [{"item_id": f"i{k}", "title": f"{prefix}Item {k}", "categories": ["A"]} for k in range(4)]
    assert client.post("/v1/items", json={"items": items}, headers=bearer(key)).status_code == 200
    events = [{"user_id": f"u{u}", "item_id": f"i{(u + k) % 4}", "type": "view", "timestamp": 100 + k}
              for u in range(3) for k in range(3)]
    assert client.post("/v1/events", json={"events": events}, headers=bearer(key)).status_code == 200


def assert_error_body(response: httpx.Response) -> None:
    body = response.json()
    assert set(body) == {"detail", "errors"} and isinstance(body["detail"], str) and isinstance(body["errors"], list)


# ---- every route -------------------------------------------------------------------------------


def test_routes_declare_scopes_and_the_pages_and_health_stay_open(client):
    scopes = {(method, template): scope for method, template, _, _, scope in calls(client)}
    assert scopes[("POST", "/v1/events")] == INGEST and scopes[("POST", "/v1/items")] == INGEST
    assert scopes[("PUT", "/v1/items/{item_id}")] == INGEST
    assert scopes[("GET", "/v1/users/{user_id}/recommendations")] == READ
    assert scopes[("GET", "/v1/items/{item_id}/similar")] == READ and scopes[("GET", "/v1/items/{item_id}")] == READ
    assert scopes[("DELETE", "/v1/users/{user_id}")] == ADMIN and scopes[("GET", "/v1/stats")] == ADMIN
    assert scopes[("GET", "/v1/users")] == ADMIN and scopes[("GET", "/v1/apps")] == ADMIN
    assert scopes[("GET", "/metrics")] == ADMIN
    assert scopes[("GET", "/v1/experiments")] == READ and scopes[("GET", "/v1/experiments/{experiment_id}")] == READ
    assert scopes[("POST", "/v1/experiments")] == ADMIN and scopes[("POST", "/v1/experiments/{experiment_id}/stop")] == ADMIN
    assert {t for (_, t), s in scopes.items() if s == PUBLIC} == {"/v1/health", "/", "/dashboard", "/ui/static/{name}"}


def test_every_route_without_a_key_answers_401(client):
    make_key(client, "shop", "admin")  # auth is on once a key exists
    for method, template, url, body, scope in calls(client):
        response = client.request(method, url, json=body)
        if scope == PUBLIC:
            assert response.status_code == 200, (method, template)
            continue
        assert response.status_code == 401, (method, template, response.text)
        assert response.headers["www-authenticate"].startswith("Bearer"), (method, template)
        assert_error_body(response)
        # an unknown key, a malformed one, and another scheme are no key either
        for headers in (bearer("lrk_0123456789ab_" + "A" * 43), bearer("nonsense"), {"Authorization": "Basic eDp5"}):
            assert client.request(method, url, json=body, headers=headers).status_code == 401, (method, template, headers)


def test_every_route_refuses_a_key_without_its_scope(client):
    lacking = {INGEST: make_key(client, "shop", "read"), READ: make_key(client, "shop", "ingest"),
               ADMIN: make_key(client, "shop", "ingest,read")}
    seen = set()
    for method, template, url, body, scope in calls(client):
        if scope == PUBLIC:
            continue
        response = client.request(method, url, json=body, headers=bearer(lacking[scope]))
        assert response.status_code == 403, (method, template, response.text)
        assert response.json()["errors"][0]["field"] == "scope"
        seen.add(scope)
    assert seen == {INGEST, READ, ADMIN}


def test_every_route_refuses_another_apps_header_and_answers_with_its_scope(client):
    keys = {scope: make_key(client, "shop", scope) for scope in (INGEST, READ, ADMIN)}
    seed(client, keys[ADMIN])
    for method, template, url, body, scope in calls(client):
        if scope == PUBLIC:
            continue
        ok = (200, 404)
        own = client.request(method, url, json=body, headers=bearer(keys[scope]))
        assert own.status_code in ok, (method, template, own.text)  # 404: an id this app lacks
        assert client.request(method, url, json=body, headers=bearer(keys[ADMIN])).status_code in ok
        if takes_app(client, template, method):
            other = client.request(method, url, json=body, headers=bearer(keys[scope], app="news"))
            assert other.status_code == 403, (method, template, other.text)
            assert other.json()["errors"][0]["field"] == "X-Liverec-App"
            # naming the key's own app is the same as naming none
            assert client.request(method, url, json=body, headers=bearer(keys[scope], app="shop")).status_code == own.status_code


def test_a_route_that_declares_no_scope_needs_admin(client):
    @client.app.get("/v1/undeclared")
    def undeclared() -> dict:
        return {"ok": True}

    admin, reader = make_key(client, "shop", "admin"), make_key(client, "shop", "ingest,read")
    assert client.get("/v1/undeclared").status_code == 401
    assert client.get("/v1/undeclared", headers=bearer(reader)).status_code == 403
    assert client.get("/v1/undeclared", headers=bearer(admin)).json() == {"ok": True}
    assert ("GET", "/v1/undeclared", "/v1/undeclared", None, ADMIN) in list(calls(client))


def test_the_document_lists_the_auth_answers_and_scope_of_every_route(client):
    doc = client.get("/openapi.json").json()
    assert set(doc["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    for method, template, _, _, scope in calls(client):
        operation = doc["paths"].get(template, {}).get(method.lower())
        if operation is None:
            continue  # not in the document (the pages, /metrics)
        if scope == PUBLIC:
            assert "security" not in operation and "401" not in operation["responses"]
            continue
        assert operation["security"] == [{"bearer": [scope]}, {"apiKey": [scope]}], (method, template)
        assert {"401", "403", "429"} <= set(operation["responses"]), (method, template)
        assert "WWW-Authenticate" in operation["responses"]["401"]["headers"]
        assert "Retry-After" in operation["responses"]["429"]["headers"]


# ---- tenancy -----------------------------------------------------------------------------------


def test_a_key_of_one_app_never_reads_or_writes_another(client):
    shop, news = make_key(client, "shop", "admin"), make_key(client, "news", "admin")
    seed(client, news, prefix="News ")
    client.put("/v1/items/only-news", json={"title": "Only news"}, headers=bearer(news))
    seed(client, shop, prefix="Shop ")
    # writes with the shop key land in shop, whatever they name
    assert client.post("/v1/events", json={"user_id": "u0", "item_id": "i1", "type": "like", "event_id": "x"},
                       headers=bearer(shop)).json()["accepted"] == 1
    assert client.post("/v1/events", json={"user_id": "u0", "item_id": "i1", "type": "like", "app": "news"},
                       headers=bearer(shop)).status_code == 422  # a body's app must be the key's too
    news_history = client.get("/v1/users/u0", headers=bearer(news)).json()["history"]
    assert "x" not in [h["event_id"] for h in news_history]
    # reads with the shop key see shop only
    assert client.get("/v1/items/i0", headers=bearer(shop)).json()["title"] == "Shop Item 0"
    assert client.get("/v1/items/only-news", headers=bearer(shop)).status_code == 404
    recs = client.get("/v1/users/u0/recommendations", headers=bearer(shop)).json()
    assert recs["app"] == "shop" and all(r["title"].startswith("Shop") for r in recs["items"])
    assert client.get("/v1/apps", headers=bearer(shop)).json()["apps"] == [{"app": "shop", "items": 4, "users": 3}]
    assert client.get("/v1/stats", headers=bearer(shop)).json()["app"] == "shop"
    assert client.get("/v1/users", headers=bearer(shop)).json()["app"] == "shop"
    # deleting with the shop key deletes shop's user, not news's
    assert client.delete("/v1/users/u1", headers=bearer(shop)).status_code == 200
    assert client.get("/v1/users/u1", headers=bearer(news)).status_code == 200
    # and nothing reaches news by naming it
    for method, path in (("GET", "/v1/items/only-news"), ("DELETE", "/v1/users/u2"), ("GET", "/v1/stats")):
        assert client.request(method, path, headers=bearer(shop, app="news")).status_code == 403
    assert client.get("/v1/users/u2", headers=bearer(news)).status_code == 200


# ---- keys --------------------------------------------------------------------------------------


def test_a_revoked_key_is_refused(client):
    key = make_key(client, "shop", "read")
    assert client.get("/v1/users/u/recommendations", headers=bearer(key)).status_code == 200
    record = client.app.state.auth.keyring.list("shop")[0]
    assert client.app.state.auth.keyring.revoke(record.key_id)
    refused = client.get("/v1/users/u/recommendations", headers=bearer(key))
    assert refused.status_code == 401 and 'error="invalid_token"' in refused.headers["www-authenticate"]
    assert client.get("/v1/users/u/recommendations").status_code == 401  # revoking every key keeps auth on


def test_the_store_keeps_a_keyed_hash_never_the_key(client, auth_settings):
    key = make_key(client, "shop", "read")
    assert client.get("/v1/items/x", headers={"X-API-Key": key}).status_code == 404  # X-API-Key works too
    record = client.app.state.auth.keyring.list()[0]
    assert key.startswith(f"lrk_{record.key_id}_") and record.digest != key and len(record.digest) == 64
    rows = sqlite3.connect(auth_settings.data_dir / "liverec.db").execute("SELECT * FROM api_keys").fetchall()
    assert rows and not any(key in str(v) or key.split("_", 2)[2] in str(v) for row in rows for v in row)
    for path in auth_settings.data_dir.rglob("*"):  # no file of the data dir holds it (the WAL included)
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path


def test_auth_required_without_any_key(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", scorer="cooccurrence", snapshot_interval_s=0, auth="required")
    with TestClient(create_app(settings)) as c:
        assert c.get("/v1/users/u/recommendations").status_code == 401
        assert c.get("/v1/health").status_code == 200 and c.get("/").status_code == 200
    assert "API keys required (0 active)" in describe_auth(settings)


def test_open_mode_says_so(auth_settings):
    assert describe_auth(auth_settings).startswith("auth: OPEN")


def test_a_server_with_another_secret_refuses_to_start(tmp_path):
    data = tmp_path / "data"
    store = open_store(Settings(data_dir=data).store_url_resolved())
    Keyring(store.keys, store.snapshots, secret=lambda: b"a" * 32).create("shop", "read", 1, 1)
    store.close()
    settings = Settings(data_dir=data, scorer="cooccurrence", snapshot_interval_s=0, auth_secret="b" * 32)
    with pytest.raises(AuthConfigError, match="another auth secret"):
        with TestClient(create_app(settings)):
            pass


def test_key_app_ids_follow_the_header_rule():
    assert f"^{APP_ID.pattern}$" == APP_PATTERN


def test_the_cli_prints_the_key_alone_on_its_last_line_and_lists_no_secret(tmp_path):
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "liverec.cli", "keys", *args, "--data-dir", str(tmp_path)],
                              capture_output=True, text=True, timeout=60)

    made = cli("create", "--app", "shop", "--scopes", "ingest,read", "--rate", "5", "--burst", "10")
    assert made.returncode == 0, made.stderr
    key = made.stdout.splitlines()[-1]
    assert re.fullmatch(r"lrk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", key) and made.stdout.count(key) == 1
    assert key not in made.stderr
    listed = cli("list")
    assert listed.returncode == 0 and key.split("_")[1] in listed.stdout and key not in listed.stdout
    assert "ingest,read" in listed.stdout and "shop" in listed.stdout
    assert cli("create", "--app", "shop", "--scopes", "write").returncode == 2
    assert cli("revoke", "000000000000").returncode == 1
    assert cli("revoke", key.split("_")[1]).returncode == 0
    assert "REVOKED" in cli("list").stdout and cli("list", "--json").stdout.count('"revoked_at": null') == 0


# ---- rate limits -------------------------------------------------------------------------------


def test_429_with_retry_after_once_the_burst_is_spent(client):
    now = [1000.0]
    client.app.state.auth.limiter = LocalBuckets(None, clock=lambda: now[0])
    key = make_key(client, "shop", "read", rate=0.5, burst=3)
    answers = [client.get("/v1/items/x", headers=bearer(key)) for _ in range(4)]
    assert [a.status_code for a in answers] == [404, 404, 404, 429]
    assert answers[-1].headers["retry-after"] == "2"  # one token at 0.5/s
    assert_error_body(answers[-1])
    now[0] += 1.9
    assert client.get("/v1/items/x", headers=bearer(key)).status_code == 429
    now[0] += 0.2
    assert client.get("/v1/items/x", headers=bearer(key)).status_code == 404
    # another key has its own bucket
    assert client.get("/v1/items/x", headers=bearer(make_key(client, "shop", "read", rate=0.5, burst=1))).status_code == 404


def requests_sequence(seed: int, n: int = 400) -> list[tuple[float, float, float]]:
    """(now, rate, burst) of n requests on one bucket, at irregular times (a clock step back too)."""
    rng = random.Random(seed)
    now, out = 1_700_000_000.0, []
    rate, burst = rng.choice([(0.5, 1.0), (3.0, 5.0), (100.0, 10.0)])
    for _ in range(n):
        now += rng.choice([0.0, 0.001, 0.01, 0.1, 0.3, 1.0, 5.0, -0.05])
        out.append((now, rate, burst))
    return out


def reference(sequence: list[tuple[float, float, float]]) -> list:
    tokens, stamp, out = None, None, []
    for now, rate, burst in sequence:
        if tokens is None:
            tokens, stamp = burst, now
        tokens, stamp, decision = take(tokens, stamp, now, rate, burst)
        out.append(decision)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_shared_map_is_the_reference_bucket(seed, tmp_path):
    sequence = requests_sequence(seed)
    clock = iter(now for now, _, _ in sequence)
    buckets = LocalBuckets(tmp_path / "buckets", clock=lambda: next(clock))
    assert [buckets.take_now("k", rate, burst) for _, rate, burst in sequence] == reference(sequence)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_redis_script_is_the_reference_bucket(seed):
    reason = redis_reachable()
    if reason:
        pytest.skip(reason)
    sequence = requests_sequence(seed)
    clock = iter(now for now, _, _ in sequence)
    buckets = RedisBuckets(REDIS_URL, clock=lambda: next(clock))
    bucket = f"test-{os.getpid()}-{random.random()}"

    async def run() -> list:
        try:
            return [await buckets.take(bucket, rate, burst) for _, rate, burst in sequence]
        finally:
            await buckets.aclose()

    assert asyncio.run(run()) == reference(sequence)


def test_a_slot_is_reused_once_its_bucket_is_full_again():
    now = [0.0]
    buckets = LocalBuckets(None, clock=lambda: now[0], slots=4)
    assert all(buckets.take_now(k, rate=1.0, burst=1).allowed for k in "abcd")
    now[0] = 0.5
    assert not any(buckets.take_now(k, rate=1.0, burst=1).allowed for k in "abcd")  # each finds its own
    now[0] = 2.0  # every bucket is full again: a full bucket and none are the same, so the slots are free
    assert all(buckets.take_now(k, rate=1.0, burst=1).allowed for k in "efgh")
    assert not any(buckets.take_now(k, rate=1.0, burst=1).allowed for k in "efgh")
    assert buckets.take_now("a", rate=1.0, burst=1).allowed  # it was full: no count of it was lost


@pytest.mark.parametrize("engine", ["local", "redis"])
def test_one_bucket_per_key_across_two_worker_processes(tmp_path, engine, monkeypatch):
    """Open without keys; a key made by the CLI while serving turns auth on in both workers; its
    burst is spent once across both; a revocation reaches both."""
    if engine == "redis":
        reason = redis_reachable()
        if reason:
            pytest.skip(reason)
        monkeypatch.setenv("LIVEREC_RATE_LIMIT_URL", REDIS_URL)
    data, port = tmp_path / "data", free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_workers(data, port, 2)
    try:
        assert fresh("GET", f"{url}/v1/users/u/recommendations").status_code == 200  # open: no key yet

        def cli(*args: str) -> str:
            done = subprocess.run([sys.executable, "-m", "liverec.cli", "keys", *args, "--data-dir", str(data)],
                                  capture_output=True, text=True, timeout=60, check=True)
            return done.stdout.splitlines()[-1] if done.stdout else ""

        burst = 8
        key = cli("create", "--app", "default", "--scopes", "read", "--rate", "0.001", "--burst", str(burst))
        answers = [fresh("GET", f"{url}/v1/users/u/recommendations") for _ in range(6)]
        assert {a.status_code for a in answers} == {401}
        answers = [fresh("GET", f"{url}/v1/users/u/recommendations", headers=bearer(key)) for _ in range(3 * burst)]
        statuses = [a.status_code for a in answers]
        assert statuses.count(200) == burst and statuses.count(429) == 2 * burst, statuses
        assert len({a.headers["x-liverec-worker"] for a in answers}) == 2  # both workers answered
        assert all(int(a.headers["retry-after"]) >= 1 for a in answers if a.status_code == 429)
        cli("revoke", key.split("_")[1])
        assert {fresh("GET", f"{url}/v1/users/u/recommendations", headers=bearer(key)).status_code
                for _ in range(6)} == {401}
    finally:
        stop_group(proc)


def test_a_caching_keyring_reads_the_store_once_until_a_key_changes():
    from liverec.auth import Keyring
    from liverec.store import open_store

    store = open_store("sqlite:///:memory:")
    reads = {"exists": 0, "get": 0}

    class Counting:
        def __getattr__(self, name):
            if name in reads:
                def read(*args):
                    reads[name] += 1
                    return getattr(store.keys, name)(*args)
                return read
            return getattr(store.keys, name)

    ring = Keyring(Counting(), store.snapshots, secret=lambda: b"s" * 32, cached=True)
    assert not ring.enabled() and not ring.enabled() and reads["exists"] == 1
    other = Keyring(store.keys, store.snapshots, secret=lambda: b"s" * 32)  # another process
    key, record = other.create("shop", ["read"], rate=10, burst=20)
    assert not ring.enabled()  # the change not followed yet
    ring.changed()  # the log's api_key change, followed
    assert ring.enabled() and ring.verify(key).app == "shop" and ring.verify(key).app == "shop"
    assert reads["get"] == 1
    other.revoke(record.key_id)
    ring.changed()
    assert ring.verify(key) is None
