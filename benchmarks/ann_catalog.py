"""Million-item catalogs: exact scoring against approximate retrieval, in process.

A synthetic catalog of ``--items`` items (default 1,000,000) whose 384-d text vectors (the size
of the product's sentence encoder; generated around ``--clusters`` topic directions, never
encoded) feed a Transformer of the serving shape (d=64, 2 blocks, 1 head, 200 events, item text
and request gap on) built with the project's model classes
(``liverec.model.synthetic.clustered_catalog``). Its blocks and text projection are trained
briefly (``--train-epochs``, with ``liverec.model.train.train``) on topic histories over
``--train-items`` of the items, text only, and installed in the full model, whose items are
then known by their text alone: a user vector that points at the user's topics, as a trained
model's does (untrained blocks give user vectors unrelated to the catalog's structure:
``--train-epochs 0`` measures that worst case). Users have histories of 20-200 ratings on 1-3
topics. The request path is the service's: ``Pipeline`` -> ``TransformerScorer`` -> policy ->
ranking stages (pool, neighbours of recent likes, feedback, diversity, exploration,
explanations, impressions), over a ``CatalogIndex`` of every item in 50 categories.

Reported: recall@100 of the approximate top-100 against the exact one (float32) with the served
bf16 item matrix, with a float32 one and from the index's int8 scores alone, and per probe
count; recommendation latency p50 / p99, exact and approximate; index build time; bytes per
item of the item matrix and of the indexes; the process's RSS.

    flock /tmp/liverec-bench.lock .venv/bin/python benchmarks/ann_catalog.py \\
        --out benchmarks/results/ann_catalog-$(date +%F).json
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from typing import Any

import faiss
import numpy as np
import torch

from liverec.catalog import CatalogIndex
from liverec.events import DEFAULT_TYPES, Event
from liverec.evaluation.report import machine, now_iso, write_json
from liverec.model.scorer import TransformerScorer
from liverec.evaluation.protocol import build_log
from liverec.model.synthetic import ClusteredCatalog, clustered_catalog
from liverec.model.text import MINILM_DIM
from liverec.model.train import TrainConfig, train
from liverec.model.transformer import ModelConfig
from liverec.ranking import RankingSettings, build_ranking
from liverec.ranking.stages import top_order
from liverec.recommend.pipeline import Pipeline, Policy, RecommendRequest
from liverec.recommend.retrieval import AnnConfig
from liverec.state import UserState
from liverec.store.base import Item

CATEGORIES = 50


def briefly_trained(cat: ClusteredCatalog, items: int, n_users: int, epochs: int, seed: int, threads: int) -> dict[str, Any]:
    """Train blocks, embeddings and text projection of ``cat.model``'s shape for ``epochs`` on
    topic histories (20-50 events) of ``n_users`` users over ``items`` random items of the
    catalog, with every ID embedding dropped (items known by their text), and install them in
    ``cat.model`` (ID embeddings zero; the Zipf-like output bias kept)."""
    serving_threads = torch.get_num_threads()
    rng = np.random.default_rng(seed)
    n = len(cat.item_ids)
    subset = np.sort(rng.choice(n, min(items, n), replace=False))
    labels = cat.labels[subset]
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(labels.max() + 2))
    members = [subset[order[bounds[c]:bounds[c + 1]]] for c in range(len(bounds) - 1) if bounds[c + 1] > bounds[c]]
    u_col, i_col, t_col, v_col = [], [], [], []
    for u in range(n_users):
        picked = rng.choice(len(members), size=int(rng.integers(1, 4)), replace=False)
        pool = np.concatenate([members[c] for c in picked])
        length = int(rng.integers(20, 51))  # short windows: many steps in the time budget
        u_col += [f"t{u}"] * length
        i_col += [cat.item_ids[k] for k in rng.choice(pool, size=length)]
        t_col += (1e6 + 60.0 * np.arange(length)).tolist()
        v_col += rng.integers(1, 6, length).astype(float).tolist()
    log = build_log("topics", np.array(u_col, dtype=object), np.array(i_col, dtype=object), np.array(t_col), values=np.array(v_col))
    rows = np.array([int(i[1:]) + 1 for i in log.item_ids])  # model rows of the log's items
    text = np.zeros((log.n_items + 1, cat.model.cfg.text_dim), np.float32)
    text[1:] = cat.model.item_text[torch.from_numpy(rows)].numpy()
    full = cat.model.cfg
    cfg = ModelConfig(n_items=log.n_items, d_model=full.d_model, n_blocks=full.n_blocks, n_heads=full.n_heads,
                      max_len=full.max_len, text_dim=full.text_dim, use_request_gap=True, dropout=0.1, id_dropout=1.0)
    result = train(cfg, TrainConfig(epochs=epochs, batch_size=64, lr=2e-3, warmup_steps=20, seed=seed, threads=threads),
                   log.seqs, item_text=text, progress=False)
    torch.set_num_threads(serving_threads)
    trained = result.model.state_dict()
    with torch.no_grad():
        for name, tensor in cat.model.state_dict().items():
            if name == "item_emb.weight":
                tensor.zero_()  # every item known by its text, as in training
            elif name not in ("item_text", "out_bias"):
                tensor.copy_(trained[name])
    cat.model.cfg.request_gap_max = result.model.cfg.request_gap_max
    cat.model.eval()
    return {"items": int(len(subset)), "users": n_users, "events": int(len(i_col)), "seconds": round(result.train_seconds, 1),
            "epochs": result.epochs_run, "loss_first_epoch": round(result.history[0]["loss"], 3),
            "loss_last_epoch": round(result.history[-1]["loss"], 3)}


def users(cat: ClusteredCatalog, n: int, seed: int) -> dict[str, UserState]:
    """``n`` users with 20-200 ratings on 1-3 topics, one a minute, the newest an hour ago."""
    rng = np.random.default_rng(seed)
    out = {}
    now = time.time()
    for u in range(n):
        length = int(rng.integers(20, 201))
        items = cat.history(rng, length, topics=int(rng.integers(1, 4)))
        state = UserState(200)
        t0 = now - 3600 - 60 * length
        for k, item in enumerate(items):
            state.apply(Event("a", f"u{u}-{k}", f"u{u}", "rating", t0 + 60 * k, item_id=item,
                              value=float(rng.integers(1, 6))), DEFAULT_TYPES["rating"])
        out[f"u{u}"] = state
    return out


def pipeline(cat: ClusteredCatalog, catalog: CatalogIndex, scorer: TransformerScorer, states: dict[str, UserState]) -> Pipeline:
    ranking = build_ranking(catalog, lambda: scorer, lambda app, item, n: scorer.similar(app, item, n), DEFAULT_TYPES, None,
                            settings=RankingSettings(), seed=0)
    return Pipeline(lambda app, user: states.get(user), scorer, Policy(catalog.get), ranking=ranking)


def latency(p: Pipeline, user_ids: list[str], requests: int, warmup: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    order = [user_ids[k] for k in rng.integers(0, len(user_ids), requests + warmup)]
    times, filled = [], 0
    for k, user in enumerate(order):
        t0 = time.perf_counter()
        recs, _ = p.recommend(RecommendRequest("a", user, 10))
        dt = time.perf_counter() - t0
        if k >= warmup:
            times.append(dt)
            filled += len(recs) == 10
    ms = np.array(times) * 1e3
    return {"requests": len(times), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "mean_ms": round(float(ms.mean()), 2),
            "max_ms": round(float(ms.max()), 2), "full_slates": filled}


def recall(exact: TransformerScorer, variants: dict[str, Any], states: list[UserState], k: int = 100) -> dict[str, float]:
    """Mean recall@k of each variant's top-k (a function state -> ranked positions) against the
    exact float32 top-k."""
    hits: dict[str, list[float]] = {name: [] for name in variants}
    for a in range(0, len(states), 25):
        batch = states[a:a + 25]
        full = exact.score_many(batch)  # (B, N)
        for r, s in enumerate(batch):
            truth = set(top_order(full[r], k).tolist())
            for name, fn in variants.items():
                hits[name].append(len(truth & set(fn(s)[:k].tolist())) / k)
    return {name: round(float(np.mean(v)), 4) for name, v in hits.items()}


def served_top(scorer: TransformerScorer):
    def fn(state: UserState) -> np.ndarray:
        got = scorer.score("a", state, 10)
        return got.index[top_order(got.scores, 100)]
    return fn


def index_only(scorer: TransformerScorer):
    """The best rows by the index's int8 scores, without the exact second pass."""
    def fn(state: UserState) -> np.ndarray:
        h = scorer._encode([state], None)[0]
        query = torch.cat([h, torch.ones(1, 1)], dim=1).numpy()
        return scorer._retrieval.search(query, 100)[1][0]
    return fn


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--clusters", type=int, default=2_000)
    ap.add_argument("--spread", type=float, default=1.0, help="noise around a topic direction (1.0: as large as the direction)")
    ap.add_argument("--users", type=int, default=1_000)
    ap.add_argument("--train-epochs", type=int, default=8, help="epochs of brief training (0: untrained blocks)")
    ap.add_argument("--train-items", type=int, default=10_000)
    ap.add_argument("--train-users", type=int, default=2_000)
    ap.add_argument("--requests", type=int, default=2_000, help="timed approximate requests")
    ap.add_argument("--exact-requests", type=int, default=300, help="timed exact requests (tens of ms each at 1M)")
    ap.add_argument("--recall-users", type=int, default=500)
    ap.add_argument("--probes", type=int, nargs="*", default=[16, 32, 64, 128], help="probe counts of the recall sweep")
    ap.add_argument("--lists", type=int, default=0, help="inverted lists (0: about sqrt(N))")
    ap.add_argument("--threads", type=int, default=1, help="PyTorch and faiss threads while serving")
    ap.add_argument("--build-threads", type=int, default=os.cpu_count() or 1, help="faiss threads while building")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out: dict[str, Any] = {"benchmark": "ann_catalog", "date": now_iso(), "machine": machine(), "args": vars(args)}

    t0 = time.perf_counter()
    cat = clustered_catalog(args.items, clusters=args.clusters, text_dim=MINILM_DIM, spread=args.spread, seed=args.seed)
    if args.train_epochs > 0:
        out["training"] = briefly_trained(cat, args.train_items, args.train_users, args.train_epochs, args.seed,
                                          args.build_threads)
        print(f"trained briefly: {out['training']}", flush=True)
    catalog = CatalogIndex()
    catalog.load(Item("a", item, f"item {k}", "", (f"c{cat.labels[k] % CATEGORIES}",)) for k, item in enumerate(cat.item_ids))
    states = users(cat, args.users, args.seed + 1)
    out["setup_s"] = round(time.perf_counter() - t0, 1)
    out["model"] = cat.model.cfg.to_dict()
    print(f"catalog of {args.items:,} items and {len(states):,} users in {out['setup_s']} s", flush=True)

    exact = TransformerScorer("a", cat.model, cat.item_ids)
    ann = AnnConfig(threshold=min(args.items, AnnConfig().threshold), lists=args.lists)
    faiss.omp_set_num_threads(args.build_threads)
    approx = TransformerScorer("a", cat.model, cat.item_ids, ann=ann, build_index=False)
    t0 = time.perf_counter()
    approx.build_index()
    out["index_build_s"] = round(time.perf_counter() - t0, 1)
    faiss.omp_set_num_threads(args.threads)
    sizes = approx.index_bytes()
    n = args.items
    out["bytes_per_item"] = {
        "item_matrix_bf16": round(sizes["item_matrix"] / n, 1),
        "item_matrix_fp32_exact": round(exact.index_bytes()["item_matrix"] / n, 1),
        "retrieval_index_int8": round(sizes["retrieval_index"] / n, 1),
        "neighbour_index_int8": round(sizes["neighbour_index"] / n, 1),
        "exact_unit_matrix_fp32": round(exact._unit.element_size() * exact._unit.numel() / n, 1),
        "model_item_parameters_fp32": round(sum(t.numel() * t.element_size() for name, t in cat.model.state_dict().items()
                                                 if name in ("item_emb.weight", "item_text", "out_bias")) / n, 1),
    }
    out["index"] = {"lists": approx._retrieval.lists, "probes": approx._retrieval.probes, "candidates": ann.candidates}
    print(f"indexes built in {out['index_build_s']} s; bytes per item {out['bytes_per_item']}", flush=True)

    # recall@100 against the exact float32 top-100
    fp32 = TransformerScorer("a", cat.model, cat.item_ids, ann=AnnConfig(threshold=ann.threshold, matrix="fp32"), build_index=False)
    fp32._retrieval, fp32._neighbours = approx._retrieval, approx._neighbours  # the same index, a float32 matrix
    rng = np.random.default_rng(args.seed + 2)
    ids = sorted(states)
    sample = [states[ids[k]] for k in rng.choice(len(ids), min(args.recall_users, len(ids)), replace=False)]
    t0 = time.perf_counter()
    out["recall_at_100"] = recall(exact, {"served_bf16_matrix": served_top(approx), "fp32_matrix": served_top(fp32),
                                          "index_int8_scores_only": index_only(approx)}, sample)
    sweep = {}
    for probes in args.probes:
        approx._retrieval.probes = probes
        rec = recall(exact, {"r": served_top(approx)}, sample[:200])["r"]
        lat = []
        for s in sample[:200]:
            t1 = time.perf_counter()
            approx.score("a", s, 10)
            lat.append(time.perf_counter() - t1)
        sweep[str(probes)] = {"recall_at_100": rec, "scorer_p50_ms": round(float(np.percentile(lat, 50)) * 1e3, 2),
                              "scorer_p99_ms": round(float(np.percentile(lat, 99)) * 1e3, 2)}
    approx._retrieval.probes = ann.probes
    out["probe_sweep"] = sweep
    out["recall_s"] = round(time.perf_counter() - t0, 1)
    print(f"recall@100 {out['recall_at_100']}; by probes {sweep}", flush=True)
    del fp32

    # the request path, approximate and exact
    out["latency_ann"] = latency(pipeline(cat, catalog, approx, states), ids, args.requests, 30, args.seed + 3)
    print(f"approximate: {out['latency_ann']}", flush=True)
    out["latency_exact"] = latency(pipeline(cat, catalog, exact, states), ids, args.exact_requests, 10, args.seed + 4)
    print(f"exact: {out['latency_exact']}", flush=True)
    out["max_rss_gb"] = round(rss_gb(), 2)
    out["targets"] = {"ann_p99_ms": 20, "recall_at_100": 0.95}
    if args.out:
        write_json(out, args.out)


if __name__ == "__main__":
    main()
