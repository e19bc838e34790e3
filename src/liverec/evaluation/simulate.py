"""Simulated users against a running service, over HTTP (``liverec.client``).

Each simulated user has a hidden taste: an affinity per category, fitted on real data (ML-1M:
``a[g] = log P(g | user) - log P(g)`` from the genres of the user's ratings, smoothed), or drawn
from a Dirichlet on a synthetic catalog, plus one or two random category **aversions** (chosen
among the categories of the user's first slate, so that the effect can be measured). The utility
of an item is the mean affinity of its categories plus a popularity term and fixed per-(user, item)
noise. At each step the user asks for 10 recommendations and reads them top-down:

* an item of an averse category: ``dislike`` (60%), ``skip`` (30%) or ``block`` (10%; after the
  second block the user blocks the whole category instead);
* otherwise a click with probability ``sigmoid(2 (u - threshold))``; a click on an item with high
  utility is also a ``like``; reading stops at the first click;
* an item read and not clicked whose utility is below zero gets a ``skip``.

In **feed** mode (``SimConfig.mode="feed"``) the app asks for the next slate after every
reaction, as a vertical feed or a player does: the user reads the slate top-down as above but
stops at the first item that draws any event (a skip, a negative or a click), so the service gets
to answer every event. ``slate`` mode (the default) has the user react to the whole slate first.

Half-way the user's taste shifts (the affinities of the favourite and the least liked non-averse
categories swap places).

Reported: the share of recommended items in averse categories in the first slate vs the slates
after the user's 3rd negative event; how often a blocked item (or an item of a blocked category)
came back; how many feedback events after the taste shift until NDCG@10 (graded by the new
hidden utility over the allowed, unconsumed catalog) is back at 90% of its steady state before
the shift, also counted in requests, beside the number of feedback events the user gave on the
slate at the shift (a user reads a whole slate before asking again, so those events are the floor
of the event count for a service that recovers on the very next request); CTR per step and negative reactions (skip, dislike, block) per item shown, with exploration on and off (two cohorts with the same tastes, ``SimConfig.cohorts``); catalog coverage and
intra-list diversity (1 - genre cosine) of the slates.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..client import Client, Item
from ..events import NEGATIVE
from ..ranking.diversity import intra_list_diversity


@dataclass
class World:
    """The catalog and the taste model the simulated users are drawn from."""

    item_ids: list[str]
    titles: list[str]
    categories: list[list[str]]
    names: list[str]  # category names
    item_cats: np.ndarray  # (N, G) float32 0/1
    popularity: np.ndarray  # (N,) standardised log popularity
    tastes: np.ndarray  # (U, G) fitted affinities of real users (or drawn)
    history: list[dict] = field(default_factory=list)  # background events posted before users start


def world_from_movielens(path: str | Path, history_events: int = 100_000, seed: int = 0) -> World:
    """ML-1M: movies as items, genre affinities fitted per real user, the first ratings as history."""
    root = Path(path)
    item_ids, titles, cats = [], [], []
    with open(root / "movies.dat", encoding="latin-1") as f:
        for line in f:
            mid, title, genres = line.rstrip("\n").split("::")
            item_ids.append(mid)
            titles.append(title)
            cats.append(genres.split("|"))
    names = sorted({g for c in cats for g in c})
    gi = {g: k for k, g in enumerate(names)}
    item_cats = np.zeros((len(item_ids), len(names)), dtype=np.float32)
    for r, c in enumerate(cats):
        for g in c:
            item_cats[r, gi[g]] = 1.0
    index = {m: r for r, m in enumerate(item_ids)}
    users, items, ts = [], [], []
    with open(root / "ratings.dat") as f:
        for line in f:
            u, i, _, t = line.split("::")
            users.append(int(u))
            items.append(index[i])
            ts.append(int(t))
    users_a, items_a, ts_a = np.array(users), np.array(items), np.array(ts)
    counts = np.bincount(items_a, minlength=len(item_ids)).astype(np.float64)
    pop = np.log1p(counts)
    popularity = ((pop - pop.mean()) / max(pop.std(), 1e-9)).astype(np.float32)
    # Fit: per-user genre distribution vs the global one (smoothed log ratio).
    uniq, u_codes = np.unique(users_a, return_inverse=True)
    per_user = np.zeros((len(uniq), len(names)))  # (U, G)
    np.add.at(per_user, u_codes, item_cats[items_a])
    glob = per_user.sum(0) / per_user.sum()
    p_user = (per_user + 5.0 * glob) / (per_user.sum(1, keepdims=True) + 5.0)
    tastes = np.log(p_user) - np.log(glob)[None, :]
    order = np.argsort(ts_a, kind="stable")[:history_events]
    history = [{"user_id": f"bg{users_a[k]}", "item_id": item_ids[items_a[k]], "type": "view",
                "timestamp": float(ts_a[k]), "event_id": f"bg-{k}"} for k in order]
    return World(item_ids, titles, cats, names, item_cats, popularity, tastes.astype(np.float32), history)


def synthetic_world(n_categories: int = 8, per_category: int = 25, n_background: int = 120, seed: int = 0) -> World:
    """A small catalog (one or two categories per item), Dirichlet tastes, background viewers."""
    rng = np.random.default_rng(seed)
    names = [f"cat{g}" for g in range(n_categories)]
    item_ids, titles, cats = [], [], []
    for g in range(n_categories):
        for k in range(per_category):
            c = [names[g]] + ([names[(g + 1 + k) % n_categories]] if k % 5 == 0 else [])
            item_ids.append(f"{names[g]}-{k}")
            titles.append(f"{names[g]} item {k}")
            cats.append(c)
    item_cats = np.zeros((len(item_ids), n_categories), dtype=np.float32)
    for r, c in enumerate(cats):
        for g in c:
            item_cats[r, names.index(g)] = 1.0
    popularity = rng.standard_normal(len(item_ids)).astype(np.float32)
    tastes = np.log(rng.dirichlet(np.full(n_categories, 0.5), size=200) + 1e-3) + math.log(n_categories)
    history = []
    t = 1_000_000.0
    for u in range(n_background):
        favs = rng.choice(n_categories, size=2, replace=False)
        pool = np.flatnonzero(item_cats[:, favs].sum(1) > 0)
        for r in rng.choice(pool, size=12, replace=False):
            t += 1.0
            history.append({"user_id": f"bg{u}", "item_id": item_ids[r], "type": "view", "timestamp": t, "event_id": f"bg-{u}-{r}"})
    return World(item_ids, titles, cats, names, item_cats, popularity, tastes.astype(np.float32), history)


@dataclass
class SimConfig:
    users: int = 60  # per cohort (exploration on / off)
    steps: int = 24
    shift_at: int = 12  # the step at which tastes shift
    n: int = 10
    click_threshold: float = 1.5
    like_threshold: float = 1.8
    noise: float = 0.3
    pop_weight: float = 0.2
    diversity: float | None = None  # the recommendations' `diversity` knob (None: the app's default)
    mode: str = "slate"  # "slate": react to the whole slate, then ask again; "feed": ask again after every event
    # "swap": the favourite and the least liked category trade places (the hardest shift: the new
    # favourite is what the user's history argues against most); "user": the taste becomes that of
    # another fitted user, drawn at random (a new person on the account, a change of life)
    shift: str = "swap"
    seed: int = 0
    cohorts: tuple[str, ...] = ("explore", "no_explore")  # which cohorts run (same tastes in each)

    def __post_init__(self) -> None:
        if not self.cohorts or set(self.cohorts) - {"explore", "no_explore"}:
            raise ValueError(f"cohorts {self.cohorts!r}: expected some of 'explore', 'no_explore'")
        if self.mode not in ("slate", "feed"):
            raise ValueError(f"mode {self.mode!r}: expected 'slate' or 'feed'")
        if self.shift not in ("swap", "user"):
            raise ValueError(f"shift {self.shift!r}: expected 'swap' or 'user'")


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _category_cosine(cats: np.ndarray) -> np.ndarray:
    """(n, n) cosine similarity of items' category vectors (n, G)."""
    unit = cats / np.maximum(np.linalg.norm(cats, axis=1, keepdims=True), 1e-12)
    return unit @ unit.T


def ndcg_at(slate_util: np.ndarray, ideal_util: np.ndarray, k: int = 10) -> float:
    """NDCG@k with gains ``max(utility, 0)`` (graded by the hidden utility)."""
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    gains = np.maximum(slate_util[:k], 0.0)
    ideal = np.maximum(np.sort(ideal_util)[::-1][:k], 0.0)
    idcg = float((ideal * disc[: len(ideal)]).sum())
    return float((gains * disc[: len(gains)]).sum() / idcg) if idcg > 0 else 0.0


class SimUser:
    """One simulated user with a hidden taste (and its shifted version)."""

    def __init__(self, world: World, uid: str, taste: np.ndarray, rng: np.random.Generator, cfg: SimConfig) -> None:
        self.world, self.uid, self.cfg, self.rng = world, uid, cfg, rng
        self.taste = taste.astype(np.float64).copy()
        self.noise = rng.standard_normal(len(world.item_ids)) * cfg.noise  # (N,) fixed per item
        self.averse: set[str] = set()
        self.blocked_items: set[str] = set()
        self.blocked_cats: set[str] = set()
        self.consumed: set[str] = set()
        self.negatives = 0
        self.feedback_events = 0
        self.index = {m: r for r, m in enumerate(world.item_ids)}

    def utility(self, rows: np.ndarray) -> np.ndarray:
        cats = self.world.item_cats[rows]  # (K, G)
        aff = (cats @ self.taste) / np.maximum(cats.sum(1), 1.0)
        return aff + self.cfg.pop_weight * self.world.popularity[rows] + self.noise[rows]

    def is_averse(self, row: int) -> bool:
        return any(c in self.averse for c in self.world.categories[row])

    def shift(self) -> None:
        """The taste moves (``cfg.shift``); aversions stay."""
        if self.cfg.shift == "user":
            self.taste = self.world.tastes[int(self.rng.integers(len(self.world.tastes)))].astype(np.float64).copy()
            return
        ok = [g for g, name in enumerate(self.world.names) if name not in self.averse]
        fav = max(ok, key=lambda g: self.taste[g])
        low = min(ok, key=lambda g: self.taste[g])
        self.taste[fav], self.taste[low] = self.taste[low], self.taste[fav]

    def allowed_rows(self) -> np.ndarray:
        keep = [r for r, m in enumerate(self.world.item_ids)
                if m not in self.consumed and m not in self.blocked_items
                and not any(c in self.blocked_cats for c in self.world.categories[r])]
        return np.asarray(keep, dtype=np.int64)

    def react(self, slate: list[str], now_step: int) -> list[dict]:
        """Events for one slate (read top-down, stop at the first click; in feed mode at the first event)."""
        events: list[dict] = []
        for item in slate:
            if events and self.cfg.mode == "feed":
                break
            r = self.index.get(item)
            if r is None:
                continue
            if self.is_averse(r):
                x = self.rng.random()
                if x < 0.1:
                    cats = [c for c in self.world.categories[r] if c in self.averse]
                    if len(self.blocked_items) >= 2 and cats:
                        events.append({"type": "block", "scope": "category", "target": cats[0]})
                        self.blocked_cats.add(cats[0])
                    else:
                        events.append({"type": "block", "item_id": item})
                        self.blocked_items.add(item)
                elif x < 0.7:
                    events.append({"type": "dislike", "item_id": item})
                else:
                    events.append({"type": "skip", "item_id": item})
                self.negatives += 1
                continue
            u = float(self.utility(np.array([r]))[0])
            if self.rng.random() < _sigmoid(2.0 * (u - self.cfg.click_threshold)):
                events.append({"type": "click", "item_id": item})
                self.consumed.add(item)
                if u > self.cfg.like_threshold:
                    events.append({"type": "like", "item_id": item})
                break
            if u < 0.0:
                events.append({"type": "skip", "item_id": item})
        self.feedback_events += len(events)
        return events


def _median_or_never(values: list[float], total: int) -> float | None:
    """Median of ``total`` outcomes of which ``values`` happened and the rest never did (None: never)."""
    if total == 0:
        return float("nan")
    full = sorted(values) + [math.inf] * (total - len(values))
    m = float(np.median(full))
    return None if math.isinf(m) or math.isnan(m) else m


def setup_app(client: Client, world: World, app: str, batch: int = 5000) -> None:
    """Post the catalog and the background history into ``app``."""
    api = client.with_app(app)
    items = [Item(m, title=t, categories=c) for m, t, c in zip(world.item_ids, world.titles, world.categories)]
    for s in range(0, len(items), 1000):
        api.upsert_items(items[s:s + 1000])
    for s in range(0, len(world.history), batch):
        api.send_events(world.history[s:s + batch])


def run(client: Client, world: World, cfg: SimConfig, app: str, setup: bool = True, progress: bool = False) -> dict[str, Any]:
    """Run both cohorts (exploration on / off) in ``app`` and return the report."""
    if setup:
        setup_app(client, world, app)
    api = client.with_app(app)
    rng = np.random.default_rng(cfg.seed)
    taste_rows = rng.choice(len(world.tastes), size=cfg.users, replace=len(world.tastes) < cfg.users)
    user_seeds = rng.integers(0, 2**31, size=cfg.users)
    report: dict[str, Any] = {"app": app, "config": cfg.__dict__.copy(), "cohorts": {}}
    t0 = time.perf_counter()
    # Event timestamps from a simulated clock (1 ms per event batch from the start): feedback decay
    # then sees the same ages in every run, so a seeded run is reproducible (wall-clock timestamps
    # would differ by scheduling noise).
    clock_start, ticks = time.time(), 0
    requests = 0
    for cohort, explore in (("explore", True), ("no_explore", False)):
        if cohort not in cfg.cohorts:
            continue
        ctr = np.zeros(cfg.steps)
        negatives = items_shown = 0
        ndcg_steps: list[list[float]] = []  # per user: NDCG@10 of each slate (hidden utility)
        dropped_flags: list[bool] = []
        before_share, after_share, after_n = [], [], []
        recurrences, blocked_total = 0, 0
        recovery: list[float] = []
        recovery_dropped: list[float] = []
        recovery_slates: list[int] = []  # dropped users: requests after the shift until recovered
        shift_slate_events: list[int] = []  # dropped users: feedback events on the slate at the shift
        shown: set[str] = set()
        ild: list[float] = []
        not_recovered = dropped_users = 0
        for k in range(cfg.users):
            user = SimUser(world, f"{cohort}-u{k}", world.tastes[taste_rows[k]], np.random.default_rng(int(user_seeds[k])), cfg)
            steady: list[float] = []
            dropped = False  # NDCG fell below 90% of steady state at the shift
            shift_events: int | None = None
            recovered_after: int | None = None
            recovered_step: int | None = None
            at_shift_events = 0
            trace: list[float] = []
            first_share: float | None = None
            shares_after: list[float] = []
            for step in range(cfg.steps):
                if step == cfg.shift_at:
                    user.shift()
                    shift_events = user.feedback_events
                slate = api.recommend(user.uid, n=cfg.n, explore=explore, diversity=cfg.diversity).item_ids
                requests += 1
                rows = np.array([user.index[i] for i in slate if i in user.index], dtype=np.int64)
                shown.update(slate)
                if len(rows) > 1:
                    ild.append(intra_list_diversity(_category_cosine(world.item_cats[rows])))
                if step == 0:
                    # aversions: 1-2 random categories among those of the first slate
                    present = sorted({c for r in rows for c in world.categories[r]})
                    if present:
                        pick = user.rng.choice(len(present), size=min(len(present), 1 + int(user.rng.random() < 0.5)), replace=False)
                        user.averse = {present[p] for p in pick}
                # blocked recurrence: anything shown that the user has blocked
                for r in rows:
                    if world.item_ids[r] in user.blocked_items or any(c in user.blocked_cats for c in world.categories[r]):
                        recurrences += 1
                share = float(np.mean([user.is_averse(r) for r in rows])) if len(rows) else 0.0
                if step == 0:
                    first_share = share
                elif user.negatives >= 3:
                    shares_after.append(share)
                allowed = user.allowed_rows()
                nd = ndcg_at(user.utility(rows), user.utility(allowed)) if len(rows) else 0.0
                trace.append(nd)
                if step < cfg.shift_at and step >= cfg.shift_at - 4:
                    steady.append(nd)
                if step == cfg.shift_at and steady and nd < 0.9 * float(np.mean(steady)):
                    dropped = True
                if step >= cfg.shift_at and recovered_after is None and steady and nd >= 0.9 * float(np.mean(steady)):
                    recovered_after = user.feedback_events - (shift_events or 0)
                    recovered_step = step
                events = user.react(slate, step)
                items_shown += len(slate)
                negatives += sum(e["type"] in NEGATIVE for e in events)
                if step == cfg.shift_at:
                    at_shift_events = len(events)
                clicked = any(e["type"] == "click" for e in events)
                ctr[step] += clicked
                if events:
                    ticks += 1
                    ts = clock_start + 0.001 * ticks
                    batch = [{"user_id": user.uid, "timestamp": ts, **e} for e in events]
                    api.send_events(batch)
            ndcg_steps.append(trace)
            dropped_flags.append(dropped)
            blocked_total += len(user.blocked_items) + len(user.blocked_cats)
            if first_share is not None and first_share > 0 and shares_after:
                before_share.append(first_share)
                after_share.append(float(np.mean(shares_after)))
                after_n.append(len(shares_after))
            if recovered_after is None:
                not_recovered += 1
            else:
                recovery.append(recovered_after)
                if dropped:
                    recovery_dropped.append(recovered_after)
                    recovery_slates.append(int(recovered_step or 0) - cfg.shift_at)
            if dropped:
                shift_slate_events.append(at_shift_events)
            dropped_users += int(dropped)
            if progress:
                print(f"{cohort} user {k + 1}/{cfg.users}", flush=True)
        b, a = float(np.mean(before_share)) if before_share else float("nan"), float(np.mean(after_share)) if after_share else float("nan")
        report["cohorts"][cohort] = {
            "averse_share_before": b,
            "averse_share_after_3_negatives": a,
            "averse_share_reduction": 1.0 - a / b if b and b == b and a == a else float("nan"),
            "users_measured_for_aversion": len(before_share),
            "blocks": blocked_total,
            "blocked_recurrences": recurrences,
            "recovery_events_median": float(np.median(recovery)) if recovery else float("nan"),
            "recovery_events_mean": float(np.mean(recovery)) if recovery else float("nan"),
            "recovered_users": len(recovery),
            "users_whose_ndcg_dropped_at_shift": dropped_users,
            "recovery_events_median_dropped": float(np.median(recovery_dropped)) if recovery_dropped else float("nan"),
            # the same in requests: 1 = the very next slate after the one at the shift was back at 90%
            "recovery_slates_median_dropped": float(np.median(recovery_slates)) if recovery_slates else float("nan"),
            # feedback events the dropped users gave on the slate at the shift (before any new slate
            # could react): the floor of recovery_events for a service that recovers on the next request
            "shift_slate_events_median_dropped": float(np.median(shift_slate_events)) if shift_slate_events else float("nan"),
            "not_recovered_users": not_recovered,
            # all dropped users, those never back counted as never: None when fewer than half came back
            "recovery_events_median_dropped_all": _median_or_never(recovery_dropped, dropped_users),
            "dropped_users_recovered": len(recovery_dropped),
            "ndcg_per_step": np.mean(ndcg_steps, axis=0).round(4).tolist() if ndcg_steps else [],
            "ndcg_per_step_dropped": (np.mean([t for t, d in zip(ndcg_steps, dropped_flags) if d], axis=0).round(4).tolist()
                                      if any(dropped_flags) else []),
            "ctr_per_step": (ctr / cfg.users).round(4).tolist(),
            "ctr": float(ctr.sum() / (cfg.users * cfg.steps)),
            # negative reactions (skip, dislike, block) per item shown
            "negative_share": negatives / items_shown if items_shown else float("nan"),
            "coverage": len(shown) / len(world.item_ids),  # share of the catalog ever shown
            "intra_list_diversity": float(np.mean(ild)) if ild else float("nan"),  # 1 - genre cosine
        }
    report["requests"] = requests
    report["seconds"] = round(time.perf_counter() - t0, 2)
    return report


def run_experiment(client: Client, world: World, cfg: SimConfig, app: str, name: str, variants: list[dict[str, Any]],
                   kind: str = "split", setup: bool = True, confidence: float = 0.95) -> dict[str, Any]:
    """Start an experiment in ``app``, let ``cfg.users`` simulated users (no taste shift) ask
    for ``cfg.steps`` slates each and react, and return the experiment as the API reads it
    (variants' metrics, verdict) with the clicks the simulator counted per variant (split) and
    the requests made. The server assigns the variants; the simulator only reads the tag."""
    if setup:
        setup_app(client, world, app)
    api = client.with_app(app)
    experiment = api.create_experiment(name, variants, kind=kind, confidence=confidence)
    rng = np.random.default_rng(cfg.seed)
    taste_rows = rng.choice(len(world.tastes), size=cfg.users, replace=len(world.tastes) < cfg.users)
    user_seeds = rng.integers(0, 2**31, size=cfg.users)
    clicks: dict[str, int] = {}
    shown: dict[str, int] = {}
    clock_start, ticks, requests = time.time(), 0, 0
    for k in range(cfg.users):
        user = SimUser(world, f"{name}-u{k}", world.tastes[taste_rows[k]], np.random.default_rng(int(user_seeds[k])), cfg)
        for step in range(cfg.steps):
            recs = api.recommend(user.uid, n=cfg.n, diversity=cfg.diversity)
            requests += 1
            tag = recs.experiment or {}
            events = user.react(recs.item_ids, step)
            variant = tag.get("variant") or ""
            shown[variant] = shown.get(variant, 0) + 1
            clicks[variant] = clicks.get(variant, 0) + sum(e["type"] == "click" for e in events)
            if events:
                ticks += 1
                api.send_events([{"user_id": user.uid, "timestamp": clock_start + 0.001 * ticks, **e} for e in events])
    result = api.experiment(experiment.experiment_id)
    return {"experiment": result.data, "verdict": result.verdict, "requests": requests,
            "simulated_clicks_per_slate": {v: clicks[v] / shown[v] for v in shown}}
