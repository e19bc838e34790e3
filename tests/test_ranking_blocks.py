"""Randomized block trials and ack -> changed-recommendation latency (a small run of the benchmark)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "feedback_latency.py"


def _bench():
    spec = importlib.util.spec_from_file_location("feedback_latency", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def test_no_block_violations_in_randomized_trials(tmp_path):
    bench = _bench()
    items, events = bench.synthetic(n_items=200, n_users=60, per_user=15, seed=1)
    service = bench.prepared_service(tmp_path / "data", items, events)
    try:
        lat = bench.latency_trials(service, trials=30, seed=3)
        assert lat["not_reflected"] == 0 and lat["trials"] == 30
        result = bench.block_trials(service, trials=150, seed=5)
        assert result["blocks"] > 100 and result["unblocks"] > 5 and result["likes_of_neighbours"] > 50
        assert result["violations"] == 0
        assert result["late_filtered"] == 0  # nothing blocked even reached the final check
    finally:
        service.close()
