"""What one impression waiting for feedback holds in the reward tracker (bytes, tracemalloc).

    .venv/bin/python benchmarks/reward_tracker_memory.py [--n 200000] [--out result.json]

Every API worker keeps every impression of every worker until its feedback or its reward window
(30 min) decides it, up to ``RewardTracker.max_pending`` (200,000): at a few hundred
recommendations a second that cap is reached within minutes, and what each entry holds is a
worker's resident size. The impressions are made as the impression log's follower reads them
(strings of their own per row; slates of 10 from 600 users over 9,000 items), shown to a fresh
tracker, freed; the memory still traced then is the tracker's. To compare two versions of the
code, run the command with each on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
import tracemalloc
from pathlib import Path

from liverec.ranking.bandit import RewardTracker, ThompsonBandit
from liverec.ranking.impressions import Shown


def own(text: str) -> str:
    """A new string object equal to ``text`` (as each row read from the database is)."""
    return (text + ".")[:-1]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200_000, help="impressions shown (in slates of 10)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    tracker = RewardTracker(ThompsonBandit(), window_s=1800, max_pending=args.n)
    rng = random.Random(0)
    now = time.time()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    shown = []
    for k in range(args.n // 10):
        user = f"u{rng.randrange(600)}"
        request = f"{k:08d}-5f0c-4a7e-9d3b-{rng.getrandbits(48):012x}"
        shown += [Shown(f"{request}:{pos}", own(request), own("default"), own(user), own(f"item{rng.randrange(9000)}"), pos,
                        now + k * 0.01, k, own("worker-1")) for pos in range(10)]
    tracker.shown(shown)
    del shown
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    import liverec
    report = {"benchmark": "reward_tracker_memory", "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
              "liverec": str(Path(liverec.__file__).parent), "waiting": tracker.pending(),
              "bytes_per_waiting": held / max(tracker.pending(), 1), "mb_total": held / 2**20}
    print(f"{report['waiting']} impressions waiting: {report['bytes_per_waiting']:.0f} B each, {report['mb_total']:.0f} MB")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
