"""Staleness of the online learner under a steady event stream (in-process, embedded SQLite).

    .venv/bin/python benchmarks/learner_staleness.py --data ../shared/data/ml-1m --model runs/ml1m_v2/model \
        --rate 100 --seconds 180 --out benchmarks/results/learner_staleness.json

A service on a fresh data dir gets the ML-1M catalog and the first ``--history`` ratings (in time
order) as history; the trained model (an artifact written by ``liverec evaluate --model-out`` or
``liverec train``) is registered and promoted, and the online learner is attached. Then the
following ratings are posted at ``--rate`` events/s (batches of 10) for ``--seconds``, while another
thread asks for recommendations of the users who just acted.

The learner runs its normal loop (an update every ``--interval`` seconds once ``min_events``
arrived); the benchmark records when each update started and when its version was served. The
**staleness of an event** is the time from its acknowledgement to the moment the first version
trained after it (an accepted update that started after the ack) serves requests: the time until
the event's effect on the weights is served. Target: within 60 s under a steady stream.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from liverec.config import Settings
from liverec.evaluation.report import machine
from liverec.events import Event
from liverec.learning import LearnerConfig, Learners
from liverec.model.artifacts import load_artifact
from liverec.model.registry import ModelRegistry
from liverec.runtime.compose import build_service
from liverec.runtime.models import ModelServer
from liverec.service import Service
from liverec.store.base import Item


def attach(service: Service, app: str, cfg: LearnerConfig, start: bool = False):
    """Serve ``app``'s promoted model now and add an online learner over it."""
    service.component(ModelServer).load(app)
    return service.component(Learners).add(app, cfg, start=start)


def initial_model(path: Path) -> tuple[Any, list[str], dict]:
    """An artifact directory (``liverec evaluate --model-out``, ``liverec train``) or a
    ``.safetensors`` file written by ``liverec replay --save-model`` (item ids in its metadata)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        from liverec.evaluation.replay import load_model

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("meta", "{}"))
        return load_model(path), [str(i) for i in meta["item_ids"]], {}
    art = load_artifact(path)
    return art.model, art.item_ids, art.manifest.get("metrics", {})


def load(data: Path) -> tuple[pd.DataFrame, list[Item]]:
    df = pd.read_csv(data / "ratings.dat", sep="::", engine="python", names=["u", "i", "r", "t"])
    df = df.reset_index().sort_values(["t", "index"], kind="stable").reset_index(drop=True)
    items = []
    with open(data / "movies.dat", encoding="latin-1") as f:
        for line in f:
            mid, title, genres = line.rstrip("\n").split("::")
            items.append(Item("default", mid, title, "", tuple(genres.split("|"))))
    return df, items


def events_of(df: pd.DataFrame, start: int, stop: int, ts: float | None = None) -> list[Event]:
    rows = df.iloc[start:stop]
    return [Event("default", f"r{k}", f"u{u}", "rating", float(ts if ts is not None else t), str(i), float(r))
            for k, u, i, r, t in zip(rows.index, rows.u, rows.i, rows.r, rows.t)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--history", type=int, default=200_000)
    ap.add_argument("--rate", type=float, default=100.0, help="events per second")
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--interval", type=float, default=10.0, help="learner interval (s)")
    ap.add_argument("--bias-lr", type=float, default=LearnerConfig.bias_lr, help="per-event output-bias rate (0: off)")
    ap.add_argument("--out", type=Path, default=Path("learner_staleness.json"))
    args = ap.parse_args()

    df, items = load(args.data)
    tmp = Path(tempfile.mkdtemp(prefix="staleness-"))
    svc = build_service(Settings(data_dir=tmp / "data"))
    svc.start()
    svc.store.catalog.upsert(items)
    for it in items:
        svc.catalog.put(it)
    t0 = time.perf_counter()
    for s in range(0, args.history, 5000):
        svc.ingest_events(events_of(df, s, min(s + 5000, args.history)))
    print(f"history: {args.history} ratings in {time.perf_counter() - t0:.1f}s", flush=True)
    model, item_ids, metrics = initial_model(args.model)
    reg = ModelRegistry.for_data_dir(svc.settings.data_dir, "default")
    reg.promote(reg.register(model, item_ids, {"note": "initial", **metrics}))
    learner = attach(svc, "default", LearnerConfig(interval_s=args.interval, bias_lr=args.bias_lr), start=False)

    acks: list[tuple[float, str]] = []  # (ack wall time, user)
    updates: list[dict] = []
    latencies: list[float] = []
    errors: list[str] = []
    stop = threading.Event()
    recent_users: list[str] = []

    def learn_loop() -> None:
        while not stop.wait(args.interval):
            started = time.time()
            out = learner.step()
            if out is not None:
                updates.append({**out, "started": started, "served": time.time()})

    def request_loop() -> None:
        rng = np.random.default_rng(1)
        while not stop.is_set():
            if recent_users:
                user = recent_users[int(rng.integers(0, len(recent_users)))]
                a = time.perf_counter()
                try:
                    svc.recommend("default", user, 10)
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    errors.append(repr(exc))
                latencies.append(time.perf_counter() - a)
            time.sleep(0.05)

    threads = [threading.Thread(target=learn_loop, daemon=True), threading.Thread(target=request_loop, daemon=True)]
    for th in threads:
        th.start()
    batch = 10
    pos = args.history
    begin = time.time()
    n_batches = int(args.seconds * args.rate / batch)
    for b in range(n_batches):
        due = begin + b * batch / args.rate
        wait = due - time.time()
        if wait > 0:
            time.sleep(wait)
        evs = events_of(df, pos, pos + batch)  # the ratings keep their own timestamps
        pos += batch
        svc.ingest_events(evs)
        acked = time.time()
        acks.extend((acked, e.user_id) for e in evs)
        recent_users[:] = list({e.user_id for e in evs}) + recent_users[:200]
    time.sleep(args.interval * 2 + 30)  # let the last events be learned
    stop.set()
    for th in threads:
        th.join(timeout=120)

    accepted = [u for u in updates if u.get("accepted")]
    starts = np.array([u["started"] for u in accepted])
    served = np.array([u["served"] for u in accepted])
    stale = []
    for ack, _user in acks:
        k = int(np.searchsorted(starts, ack, side="right"))  # first accepted update started after the ack
        stale.append(served[k] - ack if k < len(accepted) else float("inf"))
    stale_arr = np.array(stale)
    finite = stale_arr[np.isfinite(stale_arr)]
    lat = np.array(latencies) * 1000
    result = {
        "events": len(acks), "rate_per_s": args.rate, "seconds": args.seconds, "interval_s": args.interval,
        "updates": len(updates), "accepted": len(accepted), "rejected": len(updates) - len(accepted),
        "update_seconds_median": float(np.median([u["served"] - u["started"] for u in updates])) if updates else None,
        "staleness_s": {
            "median": float(np.median(finite)) if len(finite) else None,
            "p99": float(np.percentile(finite, 99)) if len(finite) else None,
            "max": float(finite.max()) if len(finite) else None,
            "within_60s": float(np.mean(stale_arr <= 60.0)) if len(stale_arr) else None,
            "never_learned": int((~np.isfinite(stale_arr)).sum()),
        },
        "learner_reported_staleness_s": [round(u["staleness_s"], 2) for u in accepted if "staleness_s" in u],
        "recommend_during_updates": {"requests": len(lat), "errors": len(errors),
                                     "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
                                     "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None},
        "versions": [u.get("version") for u in accepted],
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k not in ("versions", "learner_reported_staleness_s")}, indent=1))
    svc.close()


if __name__ == "__main__":
    main()
