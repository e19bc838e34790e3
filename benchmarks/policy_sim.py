"""The learned exploration policy against today's Thompson slots, with simulated users.

One ``liverec serve`` (a fresh data dir, the co-occurrence scorer) and one ranking config with an
app per (policy, seed): ``thompson-sK`` explores with the per-item Beta posteriors,
``contextual-sK`` with the linear Thompson policy (``explore_policy: contextual``); both log the
other policy's distribution beside each item slot (``explore_shadow``). For each seed the same
simulated users (``liverec.evaluation.simulate``, exploration cohort) meet each app. Reported:

* CTR (a click per request) and the negative share (skips, dislikes, blocks per item shown), per
  seed, and their means over seeds with a t interval; the paired difference per seed;
* the realised value of the contextual item slots (mean reward 1 / 0 / 0.5 of the items they
  placed) against its off-policy estimate from the Thompson app's log (IPS, SNIPS, DR of the
  logged shadow distribution), pooled over seeds;
* the request-time cost: in-process recommendation latency with each policy (median of a warm
  loop on the same catalog and users, the policies alternating), and with ``--cost-only`` on the
  code before the learned policy (``PYTHONPATH=OLD/src``: its Thompson slots log no features).

Rewards are assigned as the live fold assigns them (the first feedback on the item committed after
the event position the slate was shown at; 0.5 when none): the simulator's event timestamps come
from its own clock, not the server's.

    flock /tmp/liverec-bench.lock .venv/bin/python benchmarks/policy_sim.py --seeds 5 --out benchmarks/results/policy_sim.json
    PYTHONPATH=OLD/src .venv/bin/python benchmarks/policy_sim.py --cost-only --cost-policies thompson
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from liverec.client import Client
from liverec.evaluation.ope import decisions_from_impressions, estimate
from liverec.evaluation.simulate import SimConfig, run, synthetic_world, world_from_movielens
from liverec.ranking.impressions import SQLiteImpressionLog, feedback_reward

POLICIES = {"thompson": {"explore_shadow": True}, "contextual": {"explore_policy": "contextual", "explore_shadow": True},
            # the learned policy learning only from its own slots (contextual_learn)
            "contextual-explored": {"explore_policy": "contextual", "explore_shadow": True, "contextual_learn": "explored"},
            # ... with draws three times as wide (more exploration once the posterior is narrow)
            "contextual-wide": {"explore_policy": "contextual", "explore_shadow": True, "contextual_noise": 0.9}}
PLAIN = {"thompson": {}, "contextual": {"explore_policy": "contextual"}}  # what the request cost is measured with


def t_interval(values: list[float]) -> list[float]:
    """95% t interval of the mean of a few per-seed values."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return [float("nan"), float("nan")]
    t = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78, 6: 2.57, 7: 2.45, 8: 2.36, 9: 2.31, 10: 2.26}.get(len(v), 1.96)
    half = t * v.std(ddof=1) / math.sqrt(len(v))
    return [float(v.mean() - half), float(v.mean() + half)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rewarded_slots(data_dir: Path, app: str) -> list[tuple[object, float]]:
    """The app's explored item-slot impressions with the reward the live fold gives them."""
    from liverec.store import open_store

    log = SQLiteImpressionLog(data_dir / "impressions.db")
    store = open_store(f"sqlite:///{data_dir / 'liverec.db'}")
    try:
        impressions = [i for i in log.scan(app) if i.explored and i.policy in ("thompson", "contextual")]
        feedback: dict[tuple[str, str], list[tuple[int, float]]] = {}
        for seq, e in store.events.scan(app):
            r = feedback_reward(e)
            if r is not None:
                feedback.setdefault((e.user_id, str(e.item_id)), []).append((seq, r))
    finally:
        log.close()
        store.close()
    out = []
    for imp in impressions:
        first = next((r for seq, r in feedback.get((imp.user_id, imp.item_id), []) if seq > (imp.event_seq or 0)), 0.5)
        out.append((imp, first))
    return out


def request_cost(world, seed: int, requests: int, policies: list[str]) -> dict[str, float]:
    """Median in-process recommendation latency (ms) with each policy, on one service."""
    from liverec.config import Settings
    from liverec.runtime.compose import build_service

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ranking.json"
        path.write_text(json.dumps({"apps": {name: PLAIN[name] for name in policies}}))
        service = build_service(Settings(data_dir=Path(tmp) / "data", scorer="cooccurrence", ranking_config=path,
                                         snapshot_interval_s=0))
        service.start()
        try:
            users = [f"u{k}" for k in range(20)]
            for name in policies:
                service.upsert_items(name, [{"item_id": m, "title": t, "categories": c}
                                            for m, t, c in zip(world.item_ids, world.titles, world.categories)])
                service.ingest(name, world.history)
                rng = np.random.default_rng(seed)
                service.ingest(name, [{"user_id": u, "item_id": world.item_ids[int(rng.integers(len(world.item_ids)))],
                                       "type": "click", "event_id": f"{u}-{j}"} for u in users for j in range(5)])
            times: dict[str, list[float]] = {name: [] for name in policies}
            for k in range(requests):  # the policies alternate, so the machine's load falls on both alike
                for name in policies:
                    started = time.perf_counter()
                    service.recommend(name, users[k % len(users)], n=10, explore=True)
                    times[name].append(time.perf_counter() - started)
            out = {name: float(np.median(t[requests // 5:]) * 1000) for name, t in times.items()}
            return out
        finally:
            service.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--users", type=int, default=60)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--shift-at", type=int, default=12)
    ap.add_argument("--mode", default="slate")
    ap.add_argument("--data", type=Path, default=None, help="ML-1M folder (default: the synthetic catalog)")
    ap.add_argument("--history-events", type=int, default=20_000)
    ap.add_argument("--cost-requests", type=int, default=300)
    ap.add_argument("--cost-only", action="store_true", help="only the request cost (runs on the code before, too)")
    ap.add_argument("--cost-policies", default="thompson,contextual")
    ap.add_argument("--policies", default="thompson,contextual", help=f"some of {', '.join(POLICIES)}")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/policy_sim.json"))
    args = ap.parse_args()

    world = world_from_movielens(args.data, args.history_events, 0) if args.data else synthetic_world(seed=0)
    if args.cost_only:
        print(json.dumps({"request_ms_median": request_cost(world, 0, args.cost_requests, args.cost_policies.split(","))}))
        return
    tmp = Path(tempfile.mkdtemp(prefix="policy-sim-"))
    data_dir = tmp / "data"
    config = tmp / "ranking.json"
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    config.write_text(json.dumps({"apps": {f"{name}-s{seed}": POLICIES[name] for name in policies for seed in range(args.seeds)}}))
    port = free_port()
    env = {**os.environ, "LIVEREC_RANKING_CONFIG": str(config), "LIVEREC_SCORER": "cooccurrence"}
    server = subprocess.Popen([sys.executable, "-m", "liverec.cli", "serve", "--data-dir", str(data_dir), "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result: dict = {"world": "ml-1m" if args.data else "synthetic", "seeds": args.seeds, "users": args.users,
                    "steps": args.steps, "mode": args.mode, "scorer": "cooccurrence", "runs": {}}
    started = time.perf_counter()
    try:
        with Client(f"http://127.0.0.1:{port}", timeout=60.0) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    client.health()
                    break
                except Exception:  # noqa: BLE001 - not up yet
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise RuntimeError("liverec serve did not start")
                    time.sleep(0.5)
            for seed in range(args.seeds):
                for name in policies:
                    cfg = SimConfig(users=args.users, steps=args.steps, shift_at=args.shift_at, seed=seed, mode=args.mode,
                                    diversity=0.0, cohorts=("explore",))
                    report = run(client, world, cfg, app=f"{name}-s{seed}")
                    cohort = report["cohorts"]["explore"]
                    result["runs"][f"{name}-s{seed}"] = {"ctr": cohort["ctr"], "negative_share": cohort["negative_share"],
                                                         "averse_share_after_3_negatives": cohort["averse_share_after_3_negatives"],
                                                         "coverage": cohort["coverage"], "seconds": report["seconds"]}
                    print(name, seed, result["runs"][f"{name}-s{seed}"], flush=True)
    finally:
        server.terminate()
        server.wait(timeout=60)
    result["simulation_seconds"] = round(time.perf_counter() - started, 1)

    summary: dict = {}
    for name in policies:
        for metric in ("ctr", "negative_share"):
            values = [result["runs"][f"{name}-s{s}"][metric] for s in range(args.seeds)]
            summary[f"{name}_{metric}"] = {"mean": float(np.mean(values)), "ci": t_interval(values), "per_seed": values}
    for name in policies:
        if name == "thompson" or "thompson" not in policies:
            continue
        for metric in ("ctr", "negative_share"):
            diff = [result["runs"][f"{name}-s{s}"][metric] - result["runs"][f"thompson-s{s}"][metric] for s in range(args.seeds)]
            summary[f"difference_{name}_{metric}"] = {"mean": float(np.mean(diff)), "ci": t_interval(diff), "per_seed": diff}

    # each policy's realised slot value; the learned policy's estimate from the Thompson log
    slot_value: dict = {}
    for name in policies:
        rows = [row for seed in range(args.seeds) for row in rewarded_slots(data_dir, f"{name}-s{seed}")]
        chose = np.array([r for imp, r in rows if imp.policy == ("thompson" if name == "thompson" else "contextual")])
        se = chose.std(ddof=1) / math.sqrt(len(chose))
        slot_value[f"{name}_online"] = {"mean": float(chose.mean()), "ci": [float(chose.mean() - 1.96 * se), float(chose.mean() + 1.96 * se)],
                                        "slots": len(chose)}
        if name == "thompson":
            logged = [d for d in decisions_from_impressions([row for row in rows if row[0].policy == "thompson"]) if d.target is not None]
            slot_value["contextual_from_thompson_log"] = estimate(logged, "shadow", n_boot=1000)
    summary["slot_value"] = slot_value
    if args.cost_requests > 0:
        summary["request_ms_median"] = request_cost(world, 0, args.cost_requests, args.cost_policies.split(","))
    result["summary"] = summary
    result["date"] = time.strftime("%Y-%m-%d")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
