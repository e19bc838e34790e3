"""Deleting a user: time from the answer to full effect, in every store and in a second worker.

    .venv/bin/python benchmarks/deletion.py [--data-dir DIR] [--users 2000] [--events 40]
        [--served 1000] [--trials 10] [--out benchmarks/results/deletion-DATE.json]
    # on ML-1M: .venv/bin/liverec import movielens ../shared/data/ml-1m --data-dir /tmp/ml1m-del
    #           .venv/bin/python benchmarks/deletion.py --data-dir /tmp/ml1m-del --trials 5

Two workers over one SQLite store, each in a process of its own: A (this process) deletes, B (a
subprocess) follows the log as a serving worker does (a catch-up every millisecond, as requests
would make it). Without ``--data-dir`` a synthetic app is written first (``--users`` users with
``--events`` views each, and one search each, over 500 items); with it, the data dir's log is
used as it is (e.g. after ``liverec import movielens``). Then ``--served`` users get two slates
each with exploration on and react to the first (decided rewards, items read past, impressions
waiting for feedback), and both snapshots are written, so each deletion has something in every
store.

Each trial deletes one served user and measures, from the moment ``Service.delete_user`` returns
(what ``DELETE /v1/users/{id}`` answers with, less the HTTP layer):

- in A: the answer itself; the ranking's refold swapped in (posteriors without the user); the
  snapshot of the folds written again without them; both SQLite files compacted (``VACUUM``, the
  write-ahead logs truncated);
- in B: the deletion applied (state dropped, pending impressions and slates gone); the counters'
  and the ranking's background refolds swapped in;
- in the files: no byte of the user's id in ``liverec.db``, ``impressions.db`` and their
  write-ahead logs (checked once everything above is done; ids shorter than 16 characters, like
  MovieLens's, are not checked: their bytes are also the start of other ids).

Prints a JSON summary (medians and maxima per stage, in ms) and writes it with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

APP = "default"


def settings_for(data_dir: str):
    from liverec.config import Settings

    ranking = Path(data_dir) / "ranking.json"  # exploration on, slates read as a feed
    ranking.write_text(json.dumps({"default": {"passed_item": 0.3, "passed_mass": 0.5, "explore_slots": [2, 5]}}))
    return Settings(data_dir=data_dir, scorer="cooccurrence", ranking_config=ranking, snapshot_interval_s=0)


def synthetic(data_dir: str, users: int, events: int, seed: int = 0) -> None:
    from liverec.store import open_store
    from liverec.store.base import Item
    from liverec.events import Event

    rng = random.Random(seed)
    # ids no other byte sequence in the files contains (a short id like "u13" is also the start
    # of "u136", so its bytes would be found in the files for that user)
    ids = [f"user-{rng.getrandbits(64):016x}" for _ in range(users)]
    store = open_store(settings_for(data_dir).store_url_resolved())
    store.catalog.upsert([Item(APP, f"i{k}", f"Item {k}", "", (f"g{k % 12}",)) for k in range(500)])
    batch: list[Event] = []
    for u in range(users):
        taste = rng.randrange(12)
        for k in range(events):
            item = taste + 12 * rng.randrange(41) if rng.random() < 0.7 else rng.randrange(500)
            batch.append(Event(APP, f"e{u}-{k}", ids[u], "view", 1_700_000_000 + u * 100 + k, f"i{min(item, 499)}"))
        batch.append(Event(APP, f"s{u}", ids[u], "search", 1_700_000_000 + u * 100 + events, text=f"query {u % 50} of {ids[u]}"))
        if len(batch) >= 20_000:
            store.events.append(batch)
            batch = []
    store.events.append(batch)
    store.close()


def serve_and_react(service, users: list[str]) -> None:
    """Two slates per user with exploration on; a like low in the first, a skip at its top."""
    for round_ in range(2):
        events = []
        for user in users:
            items = [i["item_id"] for i in service.recommend(APP, user, n=8, explore=True)["items"]]
            if round_ == 0 and len(items) >= 5:
                events += [{"user_id": user, "item_id": items[0], "type": "skip"},
                           {"user_id": user, "item_id": items[4], "type": "like"}]
        if events:
            service.ingest(APP, events)
    service.ranking.impressions.flush()


def worker_b(data_dir: str, conn) -> None:
    """The second worker: follows the log every millisecond and reports when each deletion took
    effect here (applied, counters refolded, ranking refolded)."""
    import threading

    from liverec.ranking.replicas import ImpressionFollower
    from liverec.runtime.compose import build_service

    service = build_service(settings_for(data_dir))
    service.start()
    follower = service.component(ImpressionFollower)
    seen: dict[str, dict[str, float]] = {}
    apply = service._apply_deletion

    def timed(change) -> None:
        apply(change)
        at = time.time()
        seen[change.key] = {"applied": at}

        def settle() -> None:
            while service.refolding:
                time.sleep(0.001)
            seen[change.key]["counters"] = time.time()
            follower.wait_refolded()
            seen[change.key]["ranking"] = time.time()

        threading.Thread(target=settle, daemon=True).start()

    service._apply_deletion = timed
    conn.send("ready")
    while True:
        if conn.poll(0.001):
            message = conn.recv()
            if message == "stop":
                break
            digest = message
            while "ranking" not in seen.get(digest, {}):
                service.follower.catch_up()
                time.sleep(0.001)
            conn.send(seen[digest])
        service.follower.catch_up()  # what each request does first
    service.close()


def files_holding(data_dir: str, user: str) -> list[str] | None:
    """The SQLite files whose bytes hold the user's id (``None``: an id too short to tell)."""
    if len(user) < 16:
        return None
    names = ("liverec.db", "liverec.db-wal", "impressions.db", "impressions.db-wal")
    return [n for n in names if (Path(data_dir) / n).exists() and user.encode() in (Path(data_dir) / n).read_bytes()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=None, help="A data dir with a log (default: a synthetic one in a temp dir)")
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--events", type=int, default=40)
    ap.add_argument("--served", type=int, default=1000)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from liverec.ranking.replicas import ImpressionFollower
    from liverec.runtime.compose import build_service
    from liverec.runtime.snapshots import SNAPSHOT_APP, SNAPSHOT_NAME, write_snapshot
    from liverec.store.base import user_digest

    data_dir = args.data_dir or tempfile.mkdtemp(prefix="liverec-deletion-")
    if args.data_dir is None:
        synthetic(data_dir, args.users, args.events, args.seed)
    a = build_service(settings_for(data_dir))
    a.start()
    rng = random.Random(args.seed)
    users = a.state.users(APP)
    served = rng.sample(users, min(args.served, len(users)))
    started = time.perf_counter()
    serve_and_react(a, served)
    setup_s = time.perf_counter() - started
    follower = a.component(ImpressionFollower)
    write_snapshot(a)
    follower.write_snapshot()

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    b = ctx.Process(target=worker_b, args=(data_dir, child), daemon=True)
    b.start()
    assert parent.recv() == "ready"

    trials = []
    for user in rng.sample(served, min(args.trials, len(served))):
        a.follower.catch_up(force=True)
        follower.poll()
        before = time.perf_counter()
        receipt = a.delete_user(APP, user, requested_by="benchmark")
        answered = time.time()
        answer_ms = (time.perf_counter() - before) * 1e3
        a_ranking = a_snapshot = a_files = None
        while a_ranking is None or a_snapshot is None or a_files is None:
            if a_ranking is None and not follower.refolding:
                a_ranking = time.time()
            if a_snapshot is None and a.store.snapshots.get(SNAPSHOT_APP, SNAPSHOT_NAME) is not None:
                a_snapshot = time.time()  # written again, without them
            if a_files is None and not a.compacting:
                a_files = time.time()  # VACUUM and the write-ahead logs truncated
            time.sleep(0.001)
        parent.send(user_digest(APP, user))
        in_b = parent.recv()
        holding = files_holding(data_dir, user)
        trials.append({
            "user": user, "removed": receipt["removed"], "answer_ms": answer_ms,
            "a_ranking_refolded_ms": max(0.0, a_ranking - answered) * 1e3,
            "a_snapshot_rewritten_ms": max(0.0, a_snapshot - answered) * 1e3,
            "a_files_compacted_ms": max(0.0, a_files - answered) * 1e3,
            # B often applies the change before A has answered (0: already applied then)
            "b_applied_ms": max(0.0, in_b["applied"] - answered) * 1e3,
            "b_counters_refolded_ms": max(0.0, in_b["counters"] - answered) * 1e3,
            "b_ranking_refolded_ms": max(0.0, in_b["ranking"] - answered) * 1e3,
            "full_effect_ms": max(0.0, max(a_ranking, a_snapshot, a_files, in_b["ranking"], in_b["counters"]) - answered) * 1e3,
            "files_holding_the_id": holding,
        })
        print(json.dumps(trials[-1]), flush=True)
        write_snapshot(a)  # the next trial's deletion finds both snapshots stored
        follower.write_snapshot()
    parent.send("stop")
    b.join(timeout=60)
    n_events = a.store.events.count()
    a.close()

    stages = [k for k in trials[0] if k.endswith("_ms")]
    summary = {
        "data_dir": data_dir, "events": n_events,
        "users": len(users), "served": len(served), "setup_s": round(setup_s, 1), "trials": len(trials),
        "median_ms": {k: round(statistics.median(t[k] for t in trials), 1) for k in stages},
        "max_ms": {k: round(max(t[k] for t in trials), 1) for k in stages},
        # None: ids too short to look for in the files
        "trials_with_the_id_in_the_files": (None if all(t["files_holding_the_id"] is None for t in trials)
                                            else sum(1 for t in trials if t["files_holding_the_id"])),
        "runs": trials,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
