"""Reports of an offline evaluation: the JSON document and a markdown summary of it."""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

#: Published results under the same protocol (generative-recommenders README, ML-1M, full ranking).
PUBLISHED_REFERENCES = {
    "SASRec (sampled softmax), generative-recommenders": {"HR@10": 0.2853, "NDCG@10": 0.1603},
    "HSTU-large, generative-recommenders": {"HR@10": 0.3294, "NDCG@10": 0.1893},
}
HEADLINE = ("HR@1", "HR@10", "HR@50", "HR@200", "NDCG@10", "NDCG@50", "NDCG@200", "MRR", "coverage@10")


def machine() -> dict[str, Any]:
    """A short description of the machine the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_json(report: dict[str, Any], path: str | Path) -> None:
    """Write the report atomically (temp file + rename)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, sort_keys=False, default=float))
    os.replace(tmp, p)


def _row(name: str, metrics: dict[str, float], keys: tuple[str, ...]) -> str:
    return "| " + name + " | " + " | ".join(f"{metrics.get(k, float('nan')):.4f}" for k in keys) + " |"


def to_markdown(report: dict[str, Any]) -> str:
    """A markdown summary: model variants, baselines and references in one table per variant."""
    lines = [f"# Offline evaluation: {report.get('dataset', {}).get('name', '?')}", ""]
    lines.append(f"Protocol: {report.get('protocol', '')}")
    lines.append("")
    ds = report.get("dataset", {})
    lines.append(f"Users {ds.get('users')}, items {ds.get('items')}, events {ds.get('events')}, "
                 f"evaluated users {ds.get('evaluated_users')}. Train time {report.get('train_seconds', 0):.0f} s "
                 f"({report.get('epochs_run')} epochs, best validation epoch {report.get('best_epoch')}). "
                 f"Measured {report.get('date')} on {report.get('machine', {}).get('cpu')} "
                 f"({report.get('machine', {}).get('cores')} cores).")
    lines.append("")
    for variant in ("all_items", "seen_filtered"):
        lines.append(f"## {variant.replace('_', ' ')}")
        lines.append("")
        lines.append("| model | " + " | ".join(HEADLINE) + " |")
        lines.append("|---" * (len(HEADLINE) + 1) + "|")
        lines.append(_row("**transformer**", report["variants"][variant], HEADLINE))
        for name, res in report.get("baselines", {}).items():
            lines.append(_row(name, res[variant], HEADLINE))
        lines.append("")
    sets = report.get("set_metrics")
    if sets:
        lines += [f"## Set metrics (each user's last {sets['n_future']} events; {sets['users']} users)", "",
                  "| model | P@10 | R@10 | F1@10 | P@10 seen filtered | R@10 seen filtered | F1@10 seen filtered |",
                  "|---|---|---|---|---|---|---|"]
        keys = ("P@10", "R@10", "F1@10")
        rows = [("**transformer**", sets, sets.get("seen_filtered", {}))]
        rows += [(n, r["all_items"], r["seen_filtered"]) for n, r in sets.get("baselines", {}).items()]
        for name, a, f in rows:
            lines.append(f"| {name} | " + " | ".join(f"{a.get(k, float('nan')):.4f}" for k in keys) + " | "
                         + " | ".join(f"{f.get(k, float('nan')):.4f}" for k in keys) + " |")
        lines.append("")
    rating = report.get("rating")
    if rating:
        lines += [f"## Rating view ({rating['ratings']} held-out test ratings)", "", "| model | RMSE | MAE |", "|---|---|---|",
                  f"| **transformer rating head** | {rating['RMSE']:.4f} | {rating['MAE']:.4f} |"]
        lines += [f"| {n} | {r['RMSE']:.4f} | {r['MAE']:.4f} |" for n, r in rating.get("baselines", {}).items()]
        lines.append("")
    sel = report.get("selection")
    if sel:
        lines.append("Recipe selection (validation NDCG@10 of short trials): " + "; ".join(
            f"{c['overrides'] or 'recipe'} {c['val_NDCG@10']:.4f}" for c in sel["candidates"])
            + f"; chosen {sel['chosen_overrides'] or 'recipe'}.")
        lines.append("")
    lines.append("Validation (model selection, all items): " + ", ".join(
        f"{k} {v:.4f}" for k, v in report.get("validation", {}).items() if k in ("HR@10", "NDCG@10")))
    lines.append("")
    lines.append("Published references (same protocol, seen items included): " + "; ".join(
        f"{k}: HR@10 {v['HR@10']}, NDCG@10 {v['NDCG@10']}" for k, v in PUBLISHED_REFERENCES.items()))
    feats = report.get("model_features")
    if feats:
        lines += ["", "## Model features", ""] + [f"- {f}" for f in feats]
    return "\n".join(lines) + "\n"


def write_markdown(report: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(to_markdown(report))
