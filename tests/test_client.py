"""liverec.client: every call against the app, retries and their waits, idempotent event posts
when an answer is lost, the batchers' three triggers, and typed errors with the field errors."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time

import httpx
import pytest

from liverec.api.app import create_app
from liverec.client import (
    AsyncClient,
    BadRequest,
    Client,
    Event,
    FieldError,
    InvalidRequest,
    Item,
    NetworkError,
    NotFound,
    RateLimited,
    Retry,
    ServerError,
)

from .conftest import InProcess

FAST = Retry(attempts=4, backoff=0.01, max_backoff=0.05)
CATALOG = [Item(f"m{k}", title=f"Movie {k}", categories=["A" if k < 3 else "B"]) for k in range(6)]
HISTORY = [{"user_id": f"u{u}", "item_id": f"m{k}", "type": "view", "timestamp": 100 * u + k} for u in range(4) for k in range(6)]


def test_the_client_imports_without_the_server():
    code = ("import sys, liverec.client; "
            "print(sorted(m for m in ('torch', 'numpy', 'fastapi', 'pydantic', 'liverec.service', 'liverec.api') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---- every call, against the app ---------------------------------------------------------------


def test_round_trip_of_every_call(api):
    assert api.health().ok
    assert api.upsert_items(CATALOG) == 6
    assert api.upsert_item({"item_id": "a/b c", "title": "Slashed", "categories": ["B"]}) == 1
    assert api.item("a/b c") == Item("a/b c", title="Slashed", categories=["B"])
    sent = api.send_events(HISTORY)
    assert (sent.accepted, sent.duplicates, len(set(sent.event_ids))) == (24, 0, 24)
    # the caller's events are not changed by the ids the client gives them
    assert all("event_id" not in e for e in HISTORY)
    assert api.send_event(Event("me", "view", "m0", event_id="first")).event_ids == ["first"]
    assert api.send_event(Event("me", "view", "m0", event_id="first")).duplicates == 1

    recs = api.recommend("me", n=3, explore=False)
    assert recs.item_ids[0] == "m1" and recs.user_id == "me" and recs.app == "default"
    assert recs.items[0].because and recs.items[0].score > 0
    narrowed = api.recommend("me", n=5, exclude=["m1"], categories=["A"], include_consumed=False, diversity=0.5, explore=False)
    assert narrowed.item_ids == ["m2"]
    assert api.recommend("me", n=5, exclude="m1", categories="A", explore=False).item_ids == ["m2"]  # one value each
    assert api.similar("m0", n=2).item_ids == ["m1", "m2"]

    liked = api.like("me", "m3")
    api.dislike("me", "m4")
    api.block("me", scope="category", target="A")
    user = api.user("me")
    assert user.n_events == 4 and user.blocked == {"category": ["A"]}
    assert [h.type for h in user.history[:3]] == ["block", "dislike", "like"]
    assert "m3" in [h.item_id for h in user.history]
    api.undo("me", liked.event_ids[0])
    assert not set(api.recommend("me", n=6, explore=False).item_ids) & {"m0", "m1", "m2"}  # category A blocked

    listed = api.users(limit=2)
    assert listed.total == 5 and [u.user_id for u in listed.users] == ["me", "u3"]
    assert api.users(prefix="u").total == 4
    assert {a.app: (a.items, a.users) for a in api.apps()} == {"default": (7, 5)}
    stats = api.stats()
    assert stats.app == "default" and stats.totals.events_accepted >= 29 and stats.totals.by_type["view"] == 25

    receipt = api.delete_user("me")
    assert receipt.user_id == "me" and receipt.events_deleted == 5
    assert receipt.deletion_id and receipt.requested_by and receipt.removed["events"] == 5  # the audit receipt
    with pytest.raises(NotFound):
        api.user("me")


def test_apps_and_the_app_header(api):
    shop = api.with_app("shop")
    shop.upsert_items(CATALOG[:2])
    shop.track("u1", "view", "m0")
    assert {a.app: a.items for a in api.apps()}["shop"] == 2
    assert shop.user("u1").app == "shop"
    with pytest.raises(NotFound):
        api.user("u1")  # the default app has no such user
    with pytest.raises(BadRequest) as err:
        api.with_app("not an app!").user("u1")
    assert err.value.errors[0].field.lower() == "x-liverec-app"


def test_export_of_a_user(api, client):
    if not any(p.endswith("/export") for p in client.app.openapi()["paths"]):
        pytest.skip("this server has no user export")
    api.upsert_items(CATALOG)
    api.send_events(HISTORY)
    api.send_events([Event("me", "view", "m0", timestamp=500), Event("me", "rating", "m3", timestamp=501, value=4.5)])
    shown = api.recommend("me", n=2).item_ids
    exported = api.export_user("me")
    assert (exported.app, exported.user_id) == ("default", "me")
    assert [(e.item_id, e.type, e.timestamp, e.value) for e in exported.events] == [("m0", "view", 500, None), ("m3", "rating", 501, 4.5)]
    assert exported.state is not None and exported.state["n_events"] == 2
    assert [i["item_id"] for i in exported.impressions] == shown
    # an exported event sent again is the same event: a duplicate
    assert api.send_events(exported.events).duplicates == 2
    api.delete_user("me")
    with pytest.raises(NotFound):
        api.export_user("me")


def test_auth_and_app_headers_are_sent():
    seen: list[httpx.Headers] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers)
        return httpx.Response(200, json={"accepted": 1, "duplicates": 0})

    with Client("http://x", api_key="k-123", app="shop", transport=httpx.MockTransport(handler)) as client:
        client.track("u", "view", "i")
    with Client("http://x", transport=httpx.MockTransport(handler)) as client:
        client.track("u", "view", "i")
    assert seen[0]["authorization"] == "Bearer k-123" and seen[0]["x-liverec-app"] == "shop"
    assert "authorization" not in seen[1] and "x-liverec-app" not in seen[1]


# ---- typed errors ------------------------------------------------------------------------------


def test_errors_carry_the_field_errors(api):
    bad = [{"user_id": "u", "item_id": "m0", "type": "view"},
           {"user_id": "u", "item_id": "m0", "type": "rating", "value": 11},
           {"user_id": "u", "type": "teleport", "item_id": "m1"}]
    with pytest.raises(InvalidRequest) as err:
        api.send_events(bad)
    e = err.value
    assert e.status == 422 and e.method == "POST" and e.path == "/v1/events"
    assert [f.field for f in e.errors] == ["events[1].value", "events[2].type"]
    assert e.field("events[1].value") == FieldError("events[1].value", 11.0, e.errors[0].expected)
    assert "rating" in e.errors[0].expected and "events[1].value" in str(e)
    with pytest.raises(InvalidRequest) as err:
        api.recommend("u", n=0)
    assert err.value.errors[0].field.endswith("n")
    with pytest.raises(NotFound) as err:
        api.item("nope")
    assert err.value.errors == [FieldError("item_id", "nope", "an item of app 'default'")]


def test_an_answer_that_is_not_json_still_raises_a_typed_error():
    transport = httpx.MockTransport(lambda r: httpx.Response(502, text="<html>bad gateway</html>"))
    with Client("http://x", retry=Retry(attempts=1), transport=transport) as client:
        with pytest.raises(ServerError) as err:
            client.health()
    assert err.value.status == 502 and "bad gateway" in err.value.detail and err.value.errors == []


# ---- retries -----------------------------------------------------------------------------------


class Script:
    """A MockTransport handler that answers from a script (statuses, headers or exceptions) and
    then with success, noting when each request came."""

    def __init__(self, *steps):
        self.steps = list(steps)
        self.times: list[float] = []
        self.bodies: list[bytes] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.times.append(time.monotonic())
        self.bodies.append(request.read())
        step = self.steps.pop(0) if self.steps else 200
        if isinstance(step, Exception):
            raise step
        status, headers = (step, {}) if isinstance(step, int) else step
        body = ({"accepted": 1, "duplicates": 0} if status == 200
                else {"detail": f"status {status}", "errors": []})
        return httpx.Response(status, json=body, headers=headers)

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.times, self.times[1:])]


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_honoured(status):
    script = Script((status, {"Retry-After": "1"}))
    with Client("http://x", retry=FAST, transport=httpx.MockTransport(script)) as client:
        assert client.track("u", "view", "i").accepted == 1
    assert len(script.times) == 2
    assert 1.0 <= script.gaps()[0] < 1.5  # the server's wait, not the 10 ms backoff
    assert script.bodies[0] == script.bodies[1]  # the same event id both times


def test_backoff_grows_with_jitter_and_gives_up():
    script = Script(500, 502, 503, 504, 500)
    retry = Retry(attempts=4, backoff=0.1, max_backoff=0.3)
    with Client("http://x", retry=retry, transport=httpx.MockTransport(script)) as client:
        with pytest.raises(ServerError) as err:
            client.recommend("u")
    assert err.value.status == 504 and len(script.times) == 4
    gaps = script.gaps()
    # 0.1, 0.2, then capped at 0.3; each drawn from the upper half of its step
    for gap, step in zip(gaps, (0.1, 0.2, 0.3)):
        assert 0.5 * step - 0.01 <= gap <= step + 0.1, gaps


def test_connection_errors_are_retried_then_raised():
    script = Script(httpx.ConnectError("refused"), httpx.ReadError("reset"))
    with Client("http://x", retry=FAST, transport=httpx.MockTransport(script)) as client:
        assert client.track("u", "view", "i").accepted == 1
    assert len(script.times) == 3
    down = Script(*[httpx.ConnectError("refused")] * 4)
    with Client("http://x", retry=FAST, transport=httpx.MockTransport(down)) as client:
        with pytest.raises(NetworkError, match="ConnectError"):
            client.track("u", "view", "i")
    assert len(down.times) == 4


def test_client_errors_are_not_retried_and_long_waits_not_waited():
    script = Script(422)
    with Client("http://x", retry=FAST, transport=httpx.MockTransport(script)) as client:
        with pytest.raises(InvalidRequest):
            client.track("u", "view", "i")
    assert len(script.times) == 1
    limited = Script((429, {"Retry-After": "3600"}))
    with Client("http://x", retry=FAST, transport=httpx.MockTransport(limited)) as client:
        started = time.monotonic()
        with pytest.raises(RateLimited) as err:
            client.track("u", "view", "i")
    assert err.value.retry_after == 3600 and time.monotonic() - started < 0.5 and len(limited.times) == 1


def test_async_client_retries_the_same_way():
    script = Script((503, {"Retry-After": "1"}), httpx.ConnectError("refused"))

    async def main():
        async with AsyncClient("http://x", retry=FAST, transport=httpx.MockTransport(script)) as client:
            return await client.track("u", "view", "i")

    assert asyncio.run(main()).accepted == 1
    assert len(script.times) == 3 and script.gaps()[0] >= 1.0
    assert len({b for b in script.bodies}) == 1


# ---- idempotency: an answer lost after the commit ----------------------------------------------


class LoseFirstAnswer(httpx.BaseTransport):
    """Forwards every request; the first event post's answer is dropped after the server has
    committed it (as a connection reset after the server wrote its answer)."""

    def __init__(self, inner: httpx.BaseTransport):
        self.inner = inner
        self.lost = 0
        self.posts = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.method == "POST" and request.url.path == "/v1/events":
            self.posts += 1
            if not self.lost:
                self.lost += 1
                raise httpx.ReadError("connection reset after the answer was sent")
        return response


def test_a_batch_retried_after_a_lost_answer_is_stored_once(client):
    lossy = LoseFirstAnswer(InProcess(client))
    with Client("http://testserver", retry=FAST, transport=lossy) as api:
        api.upsert_items(CATALOG)
        result = api.send_events(HISTORY)
        # the retry's answer: the server had every event already
        assert (result.accepted, result.duplicates) == (0, len(HISTORY))
        assert lossy.posts == 2
        assert sum(api.user(f"u{u}").n_events for u in range(4)) == len(HISTORY)
        assert api.stats().totals.events_accepted == len(HISTORY)


class AsyncLoseFirstAnswer(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport):
        self.inner = inner
        self.posts = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method == "POST" and request.url.path == "/v1/events":
            self.posts += 1
            if self.posts == 1:
                raise httpx.ReadError("connection reset after the answer was sent")
        return response


def test_async_round_trip_and_lost_answer(settings):
    async def main():
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            lossy = AsyncLoseFirstAnswer(httpx.ASGITransport(app))
            async with AsyncClient("http://testserver", retry=FAST, transport=lossy, app="shop") as api:
                assert (await api.health()).ok
                assert await api.upsert_items(CATALOG) == 6
                assert await api.upsert_item(Item("m9", title="Nine")) == 1
                assert (await api.item("m9")).title == "Nine"
                result = await api.send_events(HISTORY)
                assert (result.accepted, result.duplicates, lossy.posts) == (0, len(HISTORY), 2)
                assert (await api.user("u1")).n_events == 6
                await api.like("me", "m0")
                await api.dislike("me", "m5")
                blocked = await api.block("me", "m1")
                await api.undo("me", blocked.event_ids[0])
                recs = await api.recommend("me", n=3, explore=False, exclude=["m2"])
                assert recs.app == "shop" and "m2" not in recs.item_ids and "m1" in recs.item_ids
                assert (await api.similar("m0", n=1)).item_ids == ["m1"]
                assert (await api.users()).total == 5
                assert {a.app: a.users for a in await api.apps()}["shop"] == 5
                assert (await api.stats()).totals.events_accepted == 28
                assert (await api.delete_user("me")).events_deleted == 4
                with pytest.raises(NotFound):
                    await api.user("me")
                with pytest.raises(InvalidRequest) as err:
                    await api.track("me", "rating", "m0", value=99)
                assert err.value.errors[0].field == "events[0].value"

    asyncio.run(main())


# ---- batching ----------------------------------------------------------------------------------


class Recorder:
    """A MockTransport handler that records each acknowledged batch of events."""

    def __init__(self):
        self.batches: list[list[dict]] = []
        self.failing = 0  # answer this many posts with 503 first
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            if self.failing:
                self.failing -= 1
                return httpx.Response(503, json={"detail": "unavailable", "errors": []})
            events = json.loads(request.read())["events"]
            self.batches.append(events)
        return httpx.Response(200, json={"accepted": len(events), "duplicates": 0})

    def ids(self) -> list[str]:
        return [e["event_id"] for b in self.batches for e in b]


def test_batcher_flushes_on_size():
    rec = Recorder()
    with Client("http://x", transport=httpx.MockTransport(rec)) as client:
        with client.batcher(max_events=3, max_interval=60) as batcher:
            ids = [batcher.track("u", "view", f"i{k}") for k in range(7)]
            # the third and the sixth track sent their batch before returning
            assert [len(b) for b in rec.batches] == [3, 3] and len(batcher.pending) == 1
        assert [len(b) for b in rec.batches] == [3, 3, 1]
    assert rec.ids() == ids and batcher.acknowledged == 7


def test_batcher_flushes_on_time():
    rec = Recorder()
    with Client("http://x", transport=httpx.MockTransport(rec)) as client:
        batcher = client.batcher(max_events=100, max_interval=0.2)
        started = time.monotonic()
        batcher.track("u", "view", "i1")
        batcher.track("u", "view", "i2")
        while not rec.batches and time.monotonic() - started < 5:
            time.sleep(0.01)
        waited = time.monotonic() - started
        assert [len(b) for b in rec.batches] == [2] and 0.15 <= waited < 1.0
        batcher.close()
    assert [len(b) for b in rec.batches] == [2]


def test_batcher_flushes_on_close_and_keeps_what_failed():
    rec = Recorder()
    with Client("http://x", retry=Retry(attempts=1), transport=httpx.MockTransport(rec)) as client:
        batcher = client.batcher(max_events=100, max_interval=60)
        first = batcher.track("u", "view", "i1")
        rec.failing = 1
        with pytest.raises(ServerError):
            batcher.flush()
        assert [e["event_id"] for e in batcher.pending] == [first]  # not lost, same id
        second = batcher.add(Event("u", "like", "i2"))
        result = batcher.close()
        assert result.accepted == 2 and result.event_ids == [first, second]
        assert rec.ids() == [first, second] and batcher.pending == []
        with pytest.raises(RuntimeError, match="closed"):
            batcher.track("u", "view", "i3")


def test_batcher_against_the_app_stores_everything_once(client):
    lossy = LoseFirstAnswer(InProcess(client))
    with Client("http://testserver", retry=FAST, transport=lossy) as api:
        with api.batcher(max_events=10, max_interval=0.05) as batcher:
            for k in range(25):
                batcher.track(f"u{k % 5}", "view", f"m{k % 6}", timestamp=1_000 + k)
        assert batcher.acknowledged == 25
        assert sum(api.user(f"u{u}").n_events for u in range(5)) == 25


def test_async_batcher_flushes_on_size_time_and_close():
    rec = Recorder()

    async def main():
        async with AsyncClient("http://x", transport=httpx.MockTransport(rec)) as client:
            async with client.batcher(max_events=3, max_interval=0.2) as batcher:
                for k in range(4):
                    await batcher.track("u", "view", f"i{k}")
                assert [len(b) for b in rec.batches] == [3]  # size
                started = time.monotonic()
                while len(rec.batches) < 2 and time.monotonic() - started < 5:
                    await asyncio.sleep(0.01)
                assert [len(b) for b in rec.batches] == [3, 1] and time.monotonic() - started < 1.0  # time
                await batcher.track("u", "view", "i9")
            assert [len(b) for b in rec.batches] == [3, 1, 1]  # close
            assert batcher.acknowledged == 5

    asyncio.run(main())


# ---- API keys: the real answers of a server that requires them ---------------------------------


class Recording(httpx.BaseTransport):
    """Notes each answer's status, its Retry-After and when the request was sent."""

    def __init__(self, inner: httpx.BaseTransport):
        self.inner = inner
        self.log: list[tuple[float, int, str | None]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        sent = time.monotonic()
        response = self.inner.handle_request(request)
        self.log.append((sent, response.status_code, response.headers.get("retry-after")))
        return response


def test_api_key_scopes_and_rate_limit(settings):
    pytest.importorskip("liverec.cli_keys")
    from fastapi.testclient import TestClient

    from liverec.client import Forbidden, Unauthorized

    created = subprocess.run(
        [sys.executable, "-m", "liverec.cli", "keys", "create", "--data-dir", str(settings.data_dir), "--app", "shop",
         "--scopes", "ingest,read", "--rate", "1", "--burst", "2"], capture_output=True, text=True, check=True)
    key = created.stdout.strip().splitlines()[-1]
    with TestClient(create_app(settings)) as test_client:
        recording = Recording(InProcess(test_client))
        with Client("http://testserver", retry=Retry(attempts=1), transport=recording) as anonymous:
            with pytest.raises(Unauthorized) as err:
                anonymous.recommend("u1")
        assert err.value.errors[0].field == "Authorization"
        with Client("http://testserver", api_key=key, app="other", retry=Retry(attempts=1), transport=recording) as other:
            with pytest.raises(Forbidden):
                other.recommend("u1")
        time.sleep(2.0)  # the bucket full again
        recording.log.clear()
        with Client("http://testserver", api_key=key, retry=FAST, transport=recording) as client:
            assert client.track("u1", "view", "m0").accepted == 1
            for _ in range(3):
                assert client.recommend("u1").app == "shop"  # the key's app
            with pytest.raises(Forbidden):
                client.delete_user("u1")  # admin scope
    statuses = [status for _, status, _ in recording.log]
    assert statuses.count(429) >= 1 and statuses[-1] == 403
    for (sent, status, after), (again, _, _) in zip(recording.log, recording.log[1:]):
        if status == 429:
            assert after is not None and again - sent >= float(after) - 0.05  # the server's wait was kept
