"""HTTP-level checks of the demo page, the dashboard, their assets and the stats endpoints."""

from __future__ import annotations

import fnmatch
import re
import time
import tomllib
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from liverec.api.app import create_app
from liverec.api.stats import jsonable, learner_info, model_info
from liverec.learning import Learners
from liverec.api.telemetry import RECOMMEND_ROUTE, Telemetry, percentile
from liverec.config import Settings

ROOT = Path(__file__).resolve().parents[1]
ITEMS = [
    {"item_id": f"i{k}", "title": f"Item {k}", "categories": ["Jazz" if k % 2 else "Hiking"]} for k in range(8)
]


@pytest.fixture
def seeded(client: TestClient) -> TestClient:
    """A client whose default app has a small catalog and two users with history."""
    assert client.post("/v1/items", json={"items": ITEMS}).status_code == 200
    events = [
        {"user_id": "alice", "item_id": "i1", "type": "like", "timestamp": 1000.0},
        {"user_id": "alice", "item_id": "i3", "type": "view", "timestamp": 1001.0},
        {"user_id": "bob", "item_id": "i1", "type": "view", "timestamp": 2000.0},
        {"user_id": "bob", "item_id": "i2", "type": "click", "timestamp": 2001.0},
    ]
    assert client.post("/v1/events", json={"events": events}).json()["accepted"] == 4
    return client


# ---- pages and assets ----------------------------------------------------------------------------

@pytest.mark.parametrize("path, marker", [("/", "demo.js"), ("/dashboard", "dashboard.js")])
def test_pages_are_served_with_their_assets(client: TestClient, path: str, marker: str):
    page = client.get(path)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert marker in page.text
    assets = re.findall(r'(?:src|href)="(/ui/static/[^"]+)"', page.text)
    assert len(assets) >= 3
    for asset in assets:
        response = client.get(asset)
        assert response.status_code == 200, asset
        assert response.content
    # Offline: nothing is fetched from another host.
    assert not re.search(r'(?:src|href)="(?:https?:)?//', page.text)


def test_asset_types_and_missing_assets(client: TestClient):
    assert client.get("/ui/static/style.css").headers["content-type"].startswith("text/css")
    assert client.get("/ui/static/demo.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/ui/static/nope.js").status_code == 404
    assert client.get("/ui/static/..%2Frouter.py").status_code == 404
    assert client.get("/ui/static/.hidden.js").status_code == 404
    assert client.get("/ui/static/router.py").status_code == 404


def test_static_files_are_package_data():
    """Every asset (nested ones too) matches a package-data pattern, so wheels carry it."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["liverec"]
    static = resources.files("liverec.ui") / "static"
    base = Path(str(static))
    files = [p.relative_to(base.parent.parent) for p in base.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert {"index.html", "dashboard.html", "style.css"} <= {p.name for p in files}
    for path in files:
        assert any(fnmatch.fnmatch(path.as_posix(), pattern) for pattern in patterns), path


def test_pages_are_not_in_the_api_schema(client: TestClient):
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and "/dashboard" not in paths
    assert "/v1/stats" in paths and "/v1/users" in paths


# ---- stats -----------------------------------------------------------------------------------------

def test_stats_reflect_events_and_requests(seeded: TestClient):
    client = seeded
    shown = [{"user_id": "carol", "item_id": f"i{k}", "type": "impression"} for k in range(4)]
    reactions = [
        {"user_id": "carol", "item_id": "i0", "type": "click"},
        {"user_id": "carol", "item_id": "i1", "type": "like"},
        {"user_id": "carol", "item_id": "i2", "type": "dislike"},
        {"user_id": "carol", "item_id": "i3", "type": "skip"},
    ]
    assert client.post("/v1/events", json={"events": shown + reactions}).json()["accepted"] == 8
    assert client.get("/v1/users/carol/recommendations?n=3").status_code == 200
    stats = client.get("/v1/stats").json()

    assert stats["app"] == "default" and stats["ready"] is True
    totals = stats["totals"]
    assert totals["events_accepted"] == 12
    assert totals["recommendations"] == 1
    assert totals["by_type"]["impression"] == 4
    feedback = stats["feedback"]
    # Everything falls in the ratio window: 2 clicks and 2 likes (seed and carol) on 4 impression
    # events plus 3 items served; 6 positive and 2 negative feedback events.
    assert feedback["ctr"] == pytest.approx(2 / 7, abs=1e-4)
    assert feedback["like_rate"] == pytest.approx(2 / 7, abs=1e-4)
    assert feedback["negative_share"] == pytest.approx(2 / 8)
    assert stats["latency_ms"]["recommendations"]["count"] == 1
    # Items returned by the recommendation request are impressions too (the service logs them).
    served = totals["impressions"]
    assert served == 3
    assert stats["feedback"]["impressions"] == 4 + served
    assert stats["latency_ms"]["recommendations"]["p50"] > 0
    assert stats["latency_ms"]["events"]["count"] == 2

    catalog = stats["catalog"]
    assert catalog["items"] == len(ITEMS) and catalog["users"] == 3
    assert catalog["popular"][0]["item_id"] == "i1"  # two likes and a view
    assert catalog["popular"][0]["popularity"] == 1.0
    assert catalog["popular"][0]["title"] == "Item 1"
    assert {i["item_id"] for i in catalog["newest"]} <= {i["item_id"] for i in ITEMS}
    assert stats["model"]["scorer"] == client.get("/v1/health").json()["scorer"]
    assert isinstance(stats["model"]["metrics"], dict)


def test_stats_are_scoped_by_app(seeded: TestClient):
    other = seeded.get("/v1/stats", headers={"X-Liverec-App": "elsewhere"}).json()
    assert other["app"] == "elsewhere"
    assert other["catalog"] == {"items": 0, "users": 0, "popular": [], "newest": []}


def test_watching_does_not_move_latency_figures(seeded: TestClient):
    for _ in range(3):
        seeded.get("/")
        seeded.get("/dashboard")
        seeded.get("/v1/stats")
    latency = seeded.get("/v1/stats").json()["latency_ms"]
    assert latency["recommendations"]["count"] == 0
    assert latency["all"]["count"] == 2  # the seeding POSTs only


def test_series_is_sampled(seeded: TestClient):
    telemetry: Telemetry = seeded.app.state.telemetry
    seeded.get("/v1/users/alice/recommendations")
    sample = telemetry.tick(force=True)
    assert sample is not None and sample.p50_ms is not None
    series = seeded.get("/v1/stats").json()["series"]
    assert series and set(series[-1]) == {
        "t", "events_per_s", "recommendations_per_s", "p50_ms", "p99_ms", "ctr", "like_rate", "negative_share"
    }


# ---- users and apps ----------------------------------------------------------------------------

def test_users_listing(seeded: TestClient):
    listing = seeded.get("/v1/users").json()
    assert listing["total"] == 2
    assert [u["user_id"] for u in listing["users"]] == ["bob", "alice"]  # most recent first
    assert listing["users"][0]["n_events"] == 2
    assert [u["user_id"] for u in seeded.get("/v1/users?limit=1").json()["users"]] == ["bob"]
    assert [u["user_id"] for u in seeded.get("/v1/users?prefix=al").json()["users"]] == ["alice"]
    assert seeded.get("/v1/users", headers={"X-Liverec-App": "shop"}).json()["users"] == []
    assert seeded.get("/v1/users?limit=0").status_code == 422
    # The listing does not shadow one user's record.
    assert seeded.get("/v1/users/alice").json()["user_id"] == "alice"


def test_apps_listing(seeded: TestClient):
    seeded.post("/v1/events", json={"user_id": "u", "item_id": "x", "type": "view"}, headers={"X-Liverec-App": "shop"})
    apps = {a["app"]: a for a in seeded.get("/v1/apps").json()["apps"]}
    assert apps["default"] == {"app": "default", "items": len(ITEMS), "users": 2}
    assert apps["shop"] == {"app": "shop", "items": 0, "users": 1}


# ---- telemetry ---------------------------------------------------------------------------------------

class FakeClock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_percentile_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([], 0.5) is None


def test_telemetry_rates_latency_and_ratios():
    clock = FakeClock()
    counters = SimpleNamespace(events_accepted=0, recommendations=0, by_type={})
    telemetry = Telemetry(counters, interval=2.0, clock=clock)
    for k in range(10):
        telemetry.record(RECOMMEND_ROUTE, (k + 1) / 1000.0)
    telemetry.record("/dashboard", 5.0)  # not the service's work
    telemetry.record("/ui/static/demo.js", 5.0)
    clock.t += 2.0
    counters.events_accepted, counters.recommendations = 40, 10
    counters.by_type = {"impression": 20, "click": 5, "like": 2, "skip": 3}
    sample = telemetry.tick()
    assert sample.events_per_s == 20.0 and sample.recommendations_per_s == 5.0
    assert sample.p50_ms == 5.0 and sample.p99_ms == 10.0
    assert sample.ctr == 0.25 and sample.like_rate == 0.1
    assert sample.negative_share == pytest.approx(3 / 10)
    assert telemetry.tick() is None  # not due yet
    assert telemetry.latency_ms()["count"] == 10

    # Later: timings age out of the window and ratios only count the recent window.
    clock.t += 100.0
    assert telemetry.tick() is not None
    assert telemetry.latency_ms() == {"p50": None, "p99": None, "count": 0}
    counters.by_type = {"impression": 30, "click": 5, "like": 2, "skip": 3}
    clock.t += 2.0
    feedback = telemetry.feedback()
    assert feedback["by_type"] == {"impression": 10}
    assert feedback["ctr"] == 0.0 and feedback["negative_share"] is None


def test_telemetry_series_is_bounded():
    clock = FakeClock()
    counters = SimpleNamespace(events_accepted=0, recommendations=0, by_type={})
    telemetry = Telemetry(counters, interval=2.0, history=20.0, clock=clock)
    for _ in range(50):
        clock.t += 2.0
        telemetry.tick()
    assert len(telemetry.series()) == 11


def test_telemetry_thread_samples_and_stops():
    counters = SimpleNamespace(events_accepted=0, recommendations=0, by_type={})
    telemetry = Telemetry(counters, interval=0.05)
    telemetry.start()
    deadline = time.time() + 10.0
    while len(telemetry.series()) < 2 and time.time() < deadline:
        time.sleep(0.02)
    telemetry.stop()
    assert len(telemetry.series()) >= 2


# ---- defensive read-outs of the model and learner -------------------------------------------------

def test_model_info_reads_optional_attributes(settings: Settings):
    class VersionedScorer:
        name = "transformer"
        version = "v7"
        metrics = {"ndcg@10": 0.31, "curve": [0.1, float("nan")]}

    class BrokenScorer:
        name = "broken"

        @property
        def metrics(self):
            raise RuntimeError("not loaded")

    app = create_app(settings)
    service = app.state.service
    service.pipeline.scorer = VersionedScorer()
    info = model_info(service)
    assert info == {"scorer": "transformer", "version": "v7", "metrics": {"ndcg@10": 0.31, "curve": [0.1, None]},
                    "fallback": "cooccurrence"}
    service.pipeline.scorer = BrokenScorer()
    assert model_info(service)["metrics"] == {}
    service.close()


def test_learner_info(settings: Settings):
    app = create_app(settings)
    service = app.state.service
    assert learner_info(service) is None

    class Learner:
        name = "online"
        app = "default"

        def status(self):
            return {"lag_events": 3, "last_update_at": time.time() - 5.0}

        def observe(self, events):
            pass

        def stop(self):
            pass

    service.component(Learners).register(Learner())
    info = learner_info(service)
    assert info["name"] == "online" and info["lag_events"] == 3
    assert 4.0 <= info["staleness_s"] <= 60.0
    service.close()


def test_stats_show_the_service_learners(client: TestClient, tmp_path: Path):
    """The learners the service runs (its Learners component) are what the learner panel shows:
    the requested app's with its status, served version and staleness; all of them listed."""
    from liverec.learning import LearnerStats, OnlineLearner
    from liverec.model.registry import ModelRegistry

    service = client.app.state.service
    served = SimpleNamespace(version="v000003")
    learner = OnlineLearner("default", service.state, lambda: served, lambda scorer: None,
                            ModelRegistry(tmp_path / "models" / "default"), service.catalog.get)
    learner.stats = LearnerStats(updates=2, accepted=1, rejected=1, last_version="v000003", last_staleness_s=4.25)
    service.component(Learners).register(learner)

    stats = client.get("/v1/stats").json()
    info = stats["learner"]
    assert info is not None, "a running learner must not read as 'no online learner'"
    assert info["app"] == "default" and info["version"] == "v000003"
    assert info["staleness_s"] == 4.25
    assert info["status"] == "1 of 2 updates served"
    assert info["interval_s"] == learner.cfg.interval_s and info["min_events"] == learner.cfg.min_events
    assert [entry["app"] for entry in stats["learners"]] == ["default"]

    # Another app has no learner of its own; the list still names the running one.
    other = client.get("/v1/stats", headers={"X-Liverec-App": "shop"}).json()
    assert other["learner"] is None and [entry["app"] for entry in other["learners"]] == ["default"]

    learner.stats = LearnerStats()
    assert client.get("/v1/stats").json()["learner"]["status"].startswith("waiting for new events")


def test_dashboard_renders_the_learner_list(client: TestClient):
    script = client.get("/ui/static/dashboard.js").text
    assert "renderLearner(stats.learner, stats.learners)" in script


def test_jsonable():
    assert jsonable({"a": (1, 2), "b": {"c": float("inf")}}) == {"a": [1, 2], "b": {"c": None}}
    assert jsonable(object()) is None
