"""The impression log's contract on every backend (SQLite, PostgreSQL when the server is up, memory)."""

from __future__ import annotations

import dataclasses
import json
import uuid

import pytest

from liverec.ranking.impressions import (
    Impression, MemoryImpressionLog, PostgresImpressionLog, SQLiteImpressionLog, open_impressions,
)
from .test_store_contract import PG_URL, _postgres_available


def imp(k: int, app: str = "a", **kw) -> Impression:
    return Impression(f"r{k}:0", f"r{k}", app, kw.pop("user_id", "u"), f"i{k}", 0, float(k), 0.25, True, "thompson",
                      ["i0", f"i{k}"], [0.75, 0.25], [0.9, 0.1], **kw)


@pytest.fixture(params=["sqlite", "postgresql", "memory"])
def url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/store.db"
    elif request.param == "memory":
        yield "sqlite:///:memory:"
    else:
        reason = _postgres_available()
        if reason:
            pytest.skip(reason)
        schema = f"t_{uuid.uuid4().hex[:12]}"
        yield f"{PG_URL}?schema={schema}"
        import psycopg

        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_impressions_round_trip_in_order(url, tmp_path):
    log = open_impressions(url, tmp_path)
    expected = {"sqlite": SQLiteImpressionLog, "postgresql": PostgresImpressionLog}.get(url.split(":")[0], MemoryImpressionLog)
    assert isinstance(log, MemoryImpressionLog if url.endswith(":memory:") else expected)
    shown = [imp(k) for k in range(5)] + [imp(9, app="b")]
    log.append(shown[:2])
    log.append(shown[2:])
    log.append([])
    assert list(log.scan("a")) == shown[:5]  # every field, in the order shown
    assert list(log.scan()) == shown
    assert log.count("a") == 5 and log.count("b") == 1 and log.count() == 6
    log.close()
    if not url.endswith(":memory:"):
        with pytest.raises(RuntimeError, match="closed"):
            log.append([imp(10)])
        again = open_impressions(url, tmp_path)  # durable: a restarted worker reads what was written
        assert list(again.scan()) == shown
        again.close()


def test_numpy_numbers_in_an_impression_are_logged_as_numbers(url, tmp_path):
    """The ranking computes propensities and scores with NumPy: a record holding its scalars is
    written (as plain numbers) and reads back equal, in every log."""
    import numpy as np

    log = open_impressions(url, tmp_path)
    shown = dataclasses.replace(imp(1), propensity=np.float64(0.25), pool_propensities=[np.float32(0.75), np.float64(0.25)],
                                pool_scores=[np.float64(0.9), 0.1])
    assert json.loads(shown.to_json())["pool_propensities"] == [0.75, 0.25]
    log.append([shown])
    [read] = list(log.scan())
    assert read == shown
    log.close()
    if not url.endswith(":memory:"):  # what the writer thread stored: plain numbers
        again = open_impressions(url, tmp_path)
        [read] = list(again.scan())
        assert read == shown and type(read.propensity) is float and type(read.pool_propensities[0]) is float
        again.close()


def test_a_users_impressions_are_removed_and_the_others_keep_their_positions(url, tmp_path):
    log = open_impressions(url, tmp_path)
    shown = [imp(1), imp(2, user_id="v"), imp(3, event_seq=5), imp(4, event_seq=9), imp(5, app="b")]
    log.append(shown)
    log.flush()
    positions = {i.impression_id: s for s, i in log.scan_after(0)}
    assert log.user_impressions("a", "u") == [shown[0], shown[2], shown[3]]
    assert log.remove_user("a", "u", upto=5) == 2  # the one shown after position 5 is not before the deletion
    assert log.user_impressions("a", "u") == [shown[3]]
    log.append([imp(6), imp(7, event_seq=12)])  # still queued on a database backend: removed before written
    assert log.remove_user("a", "u") == 3
    assert log.user_impressions("a", "u") == [] and log.count("a") == 1 and log.count("b") == 1
    rest = log.scan_after(0)
    assert [(s, i.impression_id) for s, i in rest] == [(positions[i.impression_id], i.impression_id) for i in (shown[1], shown[4])]
    assert log.head() >= max(positions.values()) and log.compact()
    log.close()


def test_workers_on_one_postgresql_schema_share_one_log():
    """Several API workers log into one table: OPE reads everyone's traffic."""
    reason = _postgres_available()
    if reason:
        pytest.skip(reason)
    url = f"{PG_URL}?schema=t_{uuid.uuid4().hex[:12]}"
    a, b = PostgresImpressionLog(url), PostgresImpressionLog(url)
    try:
        a.append([imp(1), imp(3)])
        b.append([imp(2)])
        a.flush()
        b.flush()
        assert sorted(i.impression_id for i in a.scan("a")) == ["r1:0", "r2:0", "r3:0"]
        assert b.count("a") == 3
    finally:
        a._link.execute(f'DROP SCHEMA IF EXISTS "{a.schema}" CASCADE')
        a.close()
        b.close()


def test_service_on_postgresql_logs_impressions_there(tmp_path):
    """`liverec serve` on a PostgreSQL store writes its impressions to the shared schema."""
    reason = _postgres_available()
    if reason:
        pytest.skip(reason)
    from fastapi.testclient import TestClient

    from liverec.api.app import create_app
    from liverec.config import Settings

    from .test_ranking_policy import seed

    url = f"{PG_URL}?schema=t_{uuid.uuid4().hex[:12]}"
    with TestClient(create_app(Settings(data_dir=tmp_path / "data", store_url=url))) as client:
        seed(client)
        body = client.get("/v1/users/bg0/recommendations", params={"n": 5, "explore": "true"}).json()
    log = PostgresImpressionLog(url)
    try:
        logged = list(log.scan("default"))
        assert [i.item_id for i in logged] == [r["item_id"] for r in body["items"]]
        assert any(i.explored for i in logged) and not (tmp_path / "data" / "impressions.db").exists()
        # off-policy evaluation reads the shared log (window 0: every shown item's reward is known)
        from typer.testing import CliRunner

        from liverec.cli import app

        result = CliRunner().invoke(app, ["ope", "--data-dir", str(tmp_path / "data"), "--store", url, "--window", "0",
                                          "--bootstrap", "20", "--policies", "logging,uniform"])
        assert result.exit_code == 0, result.output
        out = json.loads(result.stdout)
        assert out["decisions"] == sum(i.explored for i in logged)
        assert {"ips", "snips", "dr", "dr_ci", "dr_normal_ci"} <= set(out["policies"]["uniform"])
    finally:
        log._link.execute(f'DROP SCHEMA IF EXISTS "{log.schema}" CASCADE')
        log.close()


def test_workers_starting_at_once_create_the_schema_once():
    """Several workers open a fresh schema at the same moment (store and impression log): the
    creation is serialised, none of them fails."""
    reason = _postgres_available()
    if reason:
        pytest.skip(reason)
    import threading

    from liverec.store import open_store

    schema = f"t_{uuid.uuid4().hex[:12]}"
    url = f"{PG_URL}?schema={schema}"
    opened, errors = [], []

    def start(kind: str) -> None:
        try:
            opened.append(open_store(url) if kind == "store" else PostgresImpressionLog(url))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(k,)) for k in ["store", "impressions"] * 4]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [] and len(opened) == 8
    finally:
        for o in opened:
            o.close()
        import psycopg

        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
