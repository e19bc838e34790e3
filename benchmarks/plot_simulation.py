"""Plot simulated-user reports (``liverec simulate --out``): NDCG@10 per step around the taste shift.

    .venv/bin/python benchmarks/plot_simulation.py --out docs/sim_recovery.png \\
        "slate, streak on=benchmarks/results/sim_ml1m_slate.json" "slate, streak off=benchmarks/results/sim_ml1m_slate_nostreak.json"

Each argument is ``LABEL=PATH``. Left: mean NDCG@10 (graded by the hidden utility) of the users
whose NDCG fell below 90% of its steady state at the shift; right: all users. One line per
report and cohort (exploration off solid, on dashed); the shift is the vertical line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("reports", nargs="+", help="LABEL=PATH of a simulate report")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for spec in args.reports:
        label, _, path = spec.partition("=")
        if not path:
            raise SystemExit(f"{spec!r}: expected LABEL=PATH")
        rep = json.loads(Path(path).read_text())
        shift = rep["config"]["shift_at"]
        for cohort, style in (("no_explore", "-"), ("explore", "--")):
            c = rep["cohorts"][cohort]
            for ax, key in zip(axes, ("ndcg_per_step_dropped", "ndcg_per_step")):
                ys = c.get(key) or []
                if ys:
                    line = ax.plot(range(len(ys)), ys, style, lw=1.4, label=f"{label}, explore {'on' if cohort == 'explore' else 'off'}")
                    ax.axvline(shift, color="grey", lw=0.8)
                    line[0].set_alpha(0.9)
    axes[0].set_title("users whose NDCG fell at the shift")
    axes[1].set_title("all users")
    for ax in axes:
        ax.set_xlabel("request (step)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("NDCG@10 (hidden utility)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(args.out)


if __name__ == "__main__":
    main()
