"""Event -> changed recommendation: latency after the ack, and randomized block trials.

In-process (a :class:`liverec.service.Service` on the embedded SQLite store, no HTTP):

* **latency**: a user gets a slate, sends ``dislike`` or ``block`` on one of its items; the clock
  starts when ``ingest`` returns (the acknowledgement) and stops when a ``recommend`` call has
  returned a slate that reflects the event (a blocked item gone; a disliked one gone or ranked
  lower). Every slate after the ack is checked; p50/p99 reported.
* **block trials**: random users block a random item (from their slate or anywhere), a category
  of it, or lift an earlier block (``unblock``); some also like neighbours of what they blocked;
  then a slate is requested with exploration on and a random diversity and size. A violation is
  any item in the slate that an acknowledged, not lifted block covers. Expected: 0.

    python benchmarks/feedback_latency.py --data /work/shared/data/ml-1m --events 200000 --trials 10000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from liverec.config import Settings
from liverec.evaluation.report import machine
from liverec.events import Event
from liverec.runtime.compose import build_service
from liverec.service import Service
from liverec.store import open_store
from liverec.store.base import Item


def load_ml(path: Path, n_events: int) -> tuple[list[Item], list[Event]]:
    """ML-1M movies as items (genres as categories) and the first ``n_events`` ratings by time."""
    items = []
    with open(path / "movies.dat", encoding="latin-1") as f:
        for line in f:
            mid, title, genres = line.rstrip("\n").split("::")
            items.append(Item("default", mid, title, "", tuple(genres.split("|"))))
    data = []
    with open(path / "ratings.dat") as f:
        for line in f:
            u, i, r, t = line.split("::")
            data.append((int(t), int(u), i, float(r)))
    data.sort(key=lambda x: x[0])
    events = [Event("default", f"r{k}", str(u), "rating", float(t), i, r) for k, (t, u, i, r) in enumerate(data[:n_events])]
    return items, events


def synthetic(n_items: int = 400, n_users: int = 200, per_user: int = 20, seed: int = 0) -> tuple[list[Item], list[Event]]:
    """A small catalog with 8 categories and users who favour two of them (tests)."""
    rng = np.random.default_rng(seed)
    cats = [f"cat{k}" for k in range(8)]
    items = [Item("default", f"i{k}", f"item {k}", "", (cats[k % 8],) + ((cats[(k * 7) % 8],) if k % 3 == 0 else ())) for k in range(n_items)]
    events = []
    t = 1000.0
    for u in range(n_users):
        fav = rng.choice(8, size=2, replace=False)
        pool = [k for k in range(n_items) if k % 8 in fav]
        for j in rng.choice(pool, size=per_user, replace=False):
            t += 1.0
            events.append(Event("default", f"s{u}-{j}", f"u{u}", "view", t, f"i{j}"))
    return items, events


def prepared_service(data_dir: Path, items: list[Item], events: list[Event]) -> Service:
    store = open_store(Settings(data_dir=data_dir).store_url_resolved())
    store.catalog.upsert(items)
    for s in range(0, len(events), 50_000):
        store.events.append(events[s:s + 50_000])
    store.close()
    service = build_service(Settings(data_dir=data_dir))
    service.start()
    return service


def _covered(service: Service, user: str, item_id: str) -> bool:
    state = service.state.get("default", user)
    item = service.catalog.get("default", item_id)
    return state is not None and state.is_blocked(item_id, item.attribute_values() if item else None)


def latency_trials(service: Service, trials: int, seed: int, n: int = 10) -> dict[str, Any]:
    """Ack -> reflecting slate latency for dislike/block events (seconds -> ms in the result)."""
    rng = np.random.default_rng(seed)
    users = sorted(service.state.users("default"))
    lat: list[float] = []
    not_reflected = 0
    t_ev = 2e9
    for k in range(trials):
        user = users[int(rng.integers(len(users)))]
        slate = [i["item_id"] for i in service.recommend("default", user, n, explore=False)["items"]]
        if not slate:
            continue
        target = slate[int(rng.integers(len(slate)))]
        kind = "block" if rng.random() < 0.5 else "dislike"
        t_ev += 1.0
        service.ingest_events([Event("default", f"lat{seed}-{k}", user, kind, t_ev, target)])
        t0 = time.perf_counter()
        after = [i["item_id"] for i in service.recommend("default", user, n, explore=False)["items"]]
        dt = time.perf_counter() - t0
        # reflected: a blocked item is gone; a disliked one is gone or ranked lower than before
        if target in after and (kind == "block" or after.index(target) <= slate.index(target)):
            not_reflected += 1
        lat.append(dt)
    a = np.asarray(lat) * 1000.0
    return {"trials": len(a), "p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "max_ms": float(a.max()), "not_reflected": not_reflected}


def streak_trials(service: Service, trials: int, seed: int, n: int = 10, run: int = 3) -> dict[str, Any]:
    """Ack -> slate latency when the event completes a run of ``run`` skips (the wider-pool path).

    A user skips the top item of ``run - 1`` slates, then the ack of the ``run``-th skip starts the
    clock; the item just skipped must no longer lead the slate (``widened``: slates in which the
    streak's diversity placed an item, as its ``because`` says)."""
    rng = np.random.default_rng(seed)
    users = sorted(service.state.users("default"))
    lat: list[float] = []
    not_reflected = widened = 0
    t_ev = 4e9
    for k in range(trials):
        user = users[int(rng.integers(len(users)))]
        for j in range(run):
            slate = [i["item_id"] for i in service.recommend("default", user, n, explore=False)["items"]]
            if not slate:
                break
            t_ev += 1.0
            service.ingest_events([Event("default", f"st{seed}-{k}-{j}", user, "skip", t_ev, slate[0])])
        else:
            t0 = time.perf_counter()
            body = service.recommend("default", user, n, explore=False)
            lat.append(time.perf_counter() - t0)
            if slate[0] in [i["item_id"] for i in body["items"][:1]]:
                not_reflected += 1  # the item just skipped still leads the slate
            widened += any(b.get("reason") == "negative streak" for i in body["items"] for b in i["because"])
        # end the streak so the next trial of this user starts fresh
        t_ev += 1.0
        service.ingest_events([Event("default", f"st{seed}-{k}-end", user, "click", t_ev, slate[-1])])
    a = np.asarray(lat) * 1000.0
    return {"trials": len(a), "run": run, "p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "max_ms": float(a.max()), "not_reflected": not_reflected, "widened": int(widened)}


def block_trials(service: Service, trials: int, seed: int) -> dict[str, Any]:
    """Randomized block/unblock trials; counts slates that show a blocked item."""
    rng = np.random.default_rng(seed)
    users = sorted(service.state.users("default"))
    all_items = [it.item_id for it in service.catalog.items("default")]
    violations = 0
    blocks = unblocks = likes = checked = 0
    active: dict[str, list[tuple[str, str]]] = {}  # user -> [(scope, target)]
    t_ev = 3e9
    for k in range(trials):
        user = users[int(rng.integers(len(users)))]
        r = rng.random()
        batch: list[Event] = []
        t_ev += 1.0
        if r < 0.15 and active.get(user):
            scope, target = active[user].pop(int(rng.integers(len(active[user]))))
            batch.append(Event("default", f"bt{seed}-{k}", user, "unblock", t_ev, target if scope == "item" else None, scope=scope, target=None if scope == "item" else target))
            unblocks += 1
        else:
            if rng.random() < 0.6:
                slate = [i["item_id"] for i in service.recommend("default", user, 10, explore=True)["items"]]
                item = slate[int(rng.integers(len(slate)))] if slate else all_items[int(rng.integers(len(all_items)))]
            else:
                item = all_items[int(rng.integers(len(all_items)))]
            rec = service.catalog.get("default", item)
            if rng.random() < 0.2 and rec is not None and rec.categories:
                cat = rec.categories[int(rng.integers(len(rec.categories)))]
                batch.append(Event("default", f"bt{seed}-{k}", user, "block", t_ev, None, scope="category", target=cat))
                active.setdefault(user, []).append(("category", cat))
            else:
                batch.append(Event("default", f"bt{seed}-{k}", user, "block", t_ev, item))
                active.setdefault(user, []).append(("item", item))
            blocks += 1
            if rng.random() < 0.5:  # tempt the boosts: like neighbours of the blocked item
                for j, (other, _) in enumerate(service.ranking.space.neighbours("default", item, 3)):
                    batch.append(Event("default", f"bt{seed}-{k}-l{j}", user, "like", t_ev + 0.1 * (j + 1), other))
                    likes += 1
        service.ingest_events(batch)
        n = int(rng.choice([5, 10, 20, 50]))
        body = service.recommend("default", user, n, explore=bool(rng.random() < 0.8), diversity=float(rng.choice([0.0, 0.3, 0.8])))
        checked += 1
        for it in body["items"]:
            if _covered(service, user, it["item_id"]):
                violations += 1
    return {"trials": checked, "blocks": blocks, "unblocks": unblocks, "likes_of_neighbours": likes,
            "violations": violations, "late_filtered": service.ranking.stats.late_filtered}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=None, help="ML-1M folder (default: a synthetic catalog)")
    ap.add_argument("--events", type=int, default=200_000, help="ML-1M ratings (first by time) loaded as history")
    ap.add_argument("--latency-trials", type=int, default=2000)
    ap.add_argument("--trials", type=int, default=10_000, help="randomized block trials")
    ap.add_argument("--streak-trials", type=int, default=500, help="ack -> slate latency after a run of skips")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    items, events = load_ml(args.data, args.events) if args.data else synthetic()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        service = prepared_service(Path(tmp) / "data", items, events)
        setup = time.perf_counter() - t0
        lat = latency_trials(service, args.latency_trials, args.seed)
        streak = streak_trials(service, args.streak_trials, args.seed + 2)
        t1 = time.perf_counter()
        blocks = block_trials(service, args.trials, args.seed + 1)
        result = {
            "machine": machine(),
            "date": time.strftime("%Y-%m-%d"),
            "catalog": len(items), "history_events": len(events), "setup_s": round(setup, 1),
            "latency": lat, "latency_on_a_negative_streak": streak, "blocks": blocks, "block_trials_s": round(time.perf_counter() - t1, 1),
        }
        service.close()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
