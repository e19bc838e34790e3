"""Per-variant metrics of running experiments, as a fold of the impression log and the event log.

An impression tagged with an experiment and a variant counts for it when it is shown; feedback
on the same (app, user, item) committed after the impression's event log position and
timestamped at most ``window_s`` after it marks it **positive** (any positive event: the reward 1
of :mod:`liverec.ranking.impressions`), **liked** (like, favorite) or **negative** (skip,
dislike, block). Per variant:

- CTR = positive impressions / impressions, like rate = liked / impressions, negative share =
  negative / impressions;
- their confidence intervals are **user-clustered**: the impressions of one user are correlated
  (a user who clicks, clicks again), so the unit of the interval is the user, as in a bootstrap
  by user. The interval is the bootstrap's normal-theory form, the delta method for a ratio of
  per-user sums: ``Var(R) = U / (U - 1) * sum_u (y_u - R n_u)^2 / (sum_u n_u)^2`` (``n_u``
  impressions and ``y_u`` positives of user ``u``), which needs only running sums of per-user
  counts, their squares and products (kept exactly, as integers), so it is O(1) to read and to
  update; ``tests/test_experiments.py`` checks it against a bootstrap by user;
- the verdict compares each variant with the first (the control) on CTR: the difference's
  interval (the variances add: the users are split) above 0 at the experiment's confidence says
  "B better than A at 95%", below 0 "A better than B at 95%", else "no difference yet".

Interleaving: every slot of a slate remembers its team; a positive credits the team +1, a
negative -1; per slate the team with more credit wins, equal credit with feedback is a tie.
The verdict is a two-sided sign test (binomial, p = 1/2) of wins against losses, ties left out.

The fold is order-free: an impression read after its feedback finds the feedback among the
recent events kept per (app, user, item), feedback read after its impression finds the
impression among those pending, so replaying the two logs in any interleaving gives the same
counts (``tests/test_experiments.py``: incremental == recomputed). Memory is bounded by
``max_pending`` impressions and ``max_recent`` feedback events (the oldest go first; only then
can a late match be missed).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Iterable, Mapping, Sequence

from ..events import DEFAULT_TYPES, Event, Feedback, TypeSpec
from .spec import Experiment

IMPRESSIONS, POSITIVE, LIKED, NEGATIVE = 0, 1, 2, 3  # columns of a user's counts
BITS = {POSITIVE: 1, LIKED: 2, NEGATIVE: 4}
RATES = {"ctr": POSITIVE, "like_rate": LIKED, "negative_share": NEGATIVE}


def feedback_bits(event: Event, types: Mapping[str, TypeSpec] = DEFAULT_TYPES) -> int:
    """What an event says of the item it names, as bits (positive 1, liked 2, negative 4)."""
    spec = types.get(event.type)
    if spec is None or event.item_id is None:
        return 0
    bits = 0
    if spec.polarity == "positive":
        bits |= BITS[POSITIVE]
    elif spec.polarity == "negative":
        bits |= BITS[NEGATIVE]
    if spec.signal == Feedback.LIKE:
        bits |= BITS[LIKED]
    return bits


class Tally:
    """One variant's counts per user, and the running sums of the counts and of their pairwise
    products over users (exact integers: the interval reads them in O(1))."""

    __slots__ = ("users", "s1", "s2")

    def __init__(self) -> None:
        self.users: dict[str, list[int]] = {}
        self.s1 = [0, 0, 0, 0]
        self.s2 = [[0] * 4 for _ in range(4)]

    def add(self, user: str, k: int) -> None:
        """One more of count ``k`` for ``user``."""
        v = self.users.get(user)
        if v is None:
            v = self.users[user] = [0, 0, 0, 0]
        for j in range(4):
            if j == k:
                self.s2[k][k] += 2 * v[k] + 1
            else:
                self.s2[k][j] += v[j]
                self.s2[j][k] += v[j]
        v[k] += 1
        self.s1[k] += 1

    def remove_user(self, user: str) -> bool:
        v = self.users.pop(user, None)
        if v is None:
            return False
        for i in range(4):
            self.s1[i] -= v[i]
            for j in range(4):
                self.s2[i][j] -= v[i] * v[j]
        return True

    def state(self) -> tuple:
        """Everything the tally holds (tests compare folds by it)."""
        return (sorted((u, tuple(v)) for u, v in self.users.items()), tuple(self.s1), tuple(map(tuple, self.s2)))

    def rate(self, k: int) -> tuple[float | None, float | None]:
        """The ratio count ``k`` / impressions and its user-clustered variance (``None`` without
        impressions; the variance ``None`` with fewer than two users)."""
        n = self.s1[IMPRESSIONS]
        if n == 0:
            return None, None
        r = self.s1[k] / n
        users = len(self.users)
        if users < 2:
            return r, None
        resid = self.s2[k][k] - 2 * r * self.s2[k][IMPRESSIONS] + r * r * self.s2[IMPRESSIONS][IMPRESSIONS]
        return r, max(resid, 0.0) / (n * n) * users / (users - 1)


def _interval(value: float | None, var: float | None, z: float, clip: bool = True) -> dict[str, float | None]:
    if value is None:
        return {"value": None, "low": None, "high": None}
    if var is None:
        return {"value": value, "low": None, "high": None}
    half = z * math.sqrt(var)
    low, high = value - half, value + half
    if clip:
        low, high = max(low, 0.0), min(high, 1.0)
    return {"value": value, "low": low, "high": high}


class Duel:
    """Interleaving outcomes of one experiment: slates shown, credit per slate with feedback, and
    the wins of each team and the ties among those slates."""

    __slots__ = ("slates", "credit", "wins", "ties")

    def __init__(self) -> None:
        self.slates: dict[str, int] = {}  # user -> slates shown
        self.credit: dict[str, list] = {}  # request id -> [user, credit of team 0, credit of team 1]
        self.wins = [0, 0]
        self.ties = 0

    @staticmethod
    def _outcome(entry: list) -> int:
        return 0 if entry[1] > entry[2] else 1 if entry[2] > entry[1] else 2

    def _count(self, outcome: int, delta: int) -> None:
        if outcome == 2:
            self.ties += delta
        else:
            self.wins[outcome] += delta

    def shown(self, user: str) -> None:
        self.slates[user] = self.slates.get(user, 0) + 1

    def credit_team(self, request_id: str, user: str, team: int, delta: int) -> None:
        entry = self.credit.get(request_id)
        if entry is None:
            entry = self.credit[request_id] = [user, 0, 0]
        else:
            self._count(self._outcome(entry), -1)
        entry[1 + team] += delta
        self._count(self._outcome(entry), +1)

    def remove_user(self, user: str) -> None:
        self.slates.pop(user, None)
        for rid in [r for r, e in self.credit.items() if e[0] == user]:
            self._count(self._outcome(self.credit.pop(rid)), -1)

    def state(self) -> tuple:
        return (sorted(self.slates.items()), sorted((r, tuple(e)) for r, e in self.credit.items()), tuple(self.wins),
                self.ties)


def sign_test(wins: int, losses: int) -> float | None:
    """Two-sided p-value of ``wins`` against ``losses`` under no difference (binomial, p = 1/2);
    ``None`` without any.

    >>> round(sign_test(15, 5), 4)
    0.0414
    """
    if wins + losses == 0:
        return None
    from scipy.stats import binomtest  # the maintained exact test

    return float(binomtest(wins, wins + losses, 0.5).pvalue)


@dataclass
class Counts:
    """The fold of one experiment."""

    experiment: Experiment
    tallies: dict[str, Tally] = field(default_factory=dict)
    duel: Duel | None = None

    def __post_init__(self) -> None:
        for v in self.experiment.variants:
            self.tallies.setdefault(v.name, Tally())
        if self.experiment.kind == "interleave" and self.duel is None:
            self.duel = Duel()

    def team(self, variant: str) -> int:
        names = [v.name for v in self.experiment.variants]
        return names.index(variant) if variant in names else -1


class _Open:
    """An impression that feedback may still mark."""

    __slots__ = ("event_seq", "deadline", "experiment", "variant", "user", "request_id", "team", "bits")

    def __init__(self, event_seq: int, deadline: float, experiment: str, variant: str, user: str, request_id: str,
                 team: int) -> None:
        self.event_seq, self.deadline, self.experiment, self.variant = event_seq, deadline, experiment, variant
        self.user, self.request_id, self.team, self.bits = user, request_id, team, 0


Key = tuple[str, str, str]


class ExperimentFold:
    """Counts of every registered experiment from tagged impressions and feedback events, in
    any order (see the module's docstring)."""

    def __init__(self, types: Mapping[str, TypeSpec] = DEFAULT_TYPES, max_pending: int = 500_000,
                 max_recent: int = 500_000) -> None:
        self.types = types
        self.max_pending = max_pending
        self.max_recent = max_recent
        self.counts: dict[str, Counts] = {}
        self.apps: set[str] = set()  # apps with experiments: feedback of other apps is not kept
        self._pending: dict[Key, list[_Open]] = {}
        self._pending_order: deque[tuple[Key, _Open]] = deque()
        self._recent: dict[Key, list[tuple[int, float, int]]] = {}  # key -> (seq, timestamp, bits)
        self._recent_order: deque[Key] = deque()

    def register(self, experiment: Experiment) -> None:
        """Count ``experiment`` (again: its definition is replaced, its counts kept)."""
        counts = self.counts.get(experiment.experiment_id)
        if counts is None:
            self.counts[experiment.experiment_id] = Counts(experiment)
        else:
            counts.experiment = experiment
        self.apps.add(experiment.app)

    def impressions(self, rows: Iterable[Any]) -> None:
        """Tagged impressions (objects with the :class:`~liverec.ranking.impressions.Impression`
        fields); those of unknown experiments are left out."""
        for imp in rows:
            counts = self.counts.get(imp.experiment)
            if counts is None:
                continue
            tally = counts.tallies.get(imp.variant)
            if tally is None:
                tally = counts.tallies[imp.variant] = Tally()
            tally.add(imp.user_id, IMPRESSIONS)
            team = counts.team(imp.variant) if counts.duel is not None else -1
            if counts.duel is not None and imp.position == 0:
                counts.duel.shown(imp.user_id)
            at = imp.event_seq if imp.event_seq is not None else 0
            o = _Open(at, imp.timestamp + counts.experiment.window_s, imp.experiment, imp.variant, imp.user_id,
                      imp.request_id, team)
            key = (imp.app, imp.user_id, imp.item_id)
            for seq, ts, bits in self._recent.get(key, ()):
                if seq > o.event_seq and ts <= o.deadline:
                    self._mark(counts, o, bits)
            self._pending.setdefault(key, []).append(o)
            self._pending_order.append((key, o))
        while len(self._pending_order) > self.max_pending:
            key, o = self._pending_order.popleft()
            waiting = self._pending.get(key)
            if waiting is not None:
                waiting.remove(o)
                if not waiting:
                    del self._pending[key]

    def events(self, events: Sequence[Event], seqs: Sequence[int]) -> None:
        """Committed events with their log positions."""
        for e, seq in zip(events, seqs, strict=True):
            if e.app not in self.apps:
                continue
            bits = feedback_bits(e, self.types)
            if not bits:
                continue
            key = (e.app, e.user_id, str(e.item_id))
            self._recent.setdefault(key, []).append((seq, e.timestamp, bits))
            self._recent_order.append(key)
            for o in self._pending.get(key, ()):
                if o.event_seq < seq and e.timestamp <= o.deadline:
                    counts = self.counts.get(o.experiment)
                    if counts is not None:
                        self._mark(counts, o, bits)
        while len(self._recent_order) > self.max_recent:
            key = self._recent_order.popleft()
            kept = self._recent.get(key)
            if kept:
                kept.pop(0)  # a key's entries are in arrival order, as the queue is
                if not kept:
                    del self._recent[key]

    def _mark(self, counts: Counts, o: _Open, bits: int) -> None:
        new = bits & ~o.bits
        if not new:
            return
        o.bits |= new
        tally = counts.tallies[o.variant]
        for k, bit in BITS.items():
            if new & bit:
                tally.add(o.user, k)
        if counts.duel is not None and o.team >= 0:
            if new & BITS[POSITIVE]:
                counts.duel.credit_team(o.request_id, o.user, o.team, +1)
            if new & BITS[NEGATIVE]:
                counts.duel.credit_team(o.request_id, o.user, o.team, -1)

    def forget_user(self, app: str, user_id: str) -> int:
        """Take a deleted user's counts out of every experiment of ``app`` (what a fold of the
        logs without their impressions and events holds); returns in how many they were."""
        found = 0
        for counts in self.counts.values():
            if counts.experiment.app != app:
                continue
            hit = False
            for tally in counts.tallies.values():
                hit |= tally.remove_user(user_id)
            if counts.duel is not None:
                counts.duel.remove_user(user_id)
            found += int(hit)
        for table in (self._pending, self._recent):
            for key in [k for k in table if k[0] == app and k[1] == user_id]:
                del table[key]
        self._pending_order = deque((k, o) for k, o in self._pending_order if k in self._pending and o in self._pending[k])
        self._recent_order = deque(k for k in self._recent_order if k in self._recent)
        return found

    def users(self, app: str) -> set[str]:
        return {u for c in self.counts.values() if c.experiment.app == app for t in c.tallies.values() for u in t.users}

    def state(self, experiment_id: str) -> tuple:
        counts = self.counts[experiment_id]
        return (sorted((n, t.state()) for n, t in counts.tallies.items()), counts.duel.state() if counts.duel else None)

    # ---- read-out ---------------------------------------------------------------------------
    def summary(self, experiment_id: str) -> dict[str, Any]:
        """Per-variant metrics with intervals, comparisons with the control and the verdict."""
        counts = self.counts[experiment_id]
        exp = counts.experiment
        z = NormalDist().inv_cdf(0.5 + exp.confidence / 2)
        level = f"{round(100 * exp.confidence):g}%"
        variants = []
        for v in exp.variants:
            tally = counts.tallies[v.name]
            entry: dict[str, Any] = {**v.to_dict(), "users": len(tally.users), "impressions": tally.s1[IMPRESSIONS]}
            for name, k in RATES.items():
                entry[name] = _interval(*tally.rate(k), z)
            variants.append(entry)
        control = exp.variants[0]
        comparisons, verdicts = [], []
        for v in exp.variants[1:]:
            cmp: dict[str, Any] = {"variant": v.name, "control": control.name}
            for name, k in RATES.items():
                a, va = counts.tallies[control.name].rate(k)
                b, vb = counts.tallies[v.name].rate(k)
                if a is None or b is None:
                    cmp[name] = _interval(None, None, z)
                else:
                    cmp[name] = _interval(b - a, None if va is None or vb is None else va + vb, z, clip=False)
            ctr = cmp["ctr"]
            if ctr["low"] is not None and ctr["low"] > 0:
                cmp["verdict"] = f"{v.name} better than {control.name} at {level}"
            elif ctr["high"] is not None and ctr["high"] < 0:
                cmp["verdict"] = f"{control.name} better than {v.name} at {level}"
            else:
                cmp["verdict"] = "no difference yet"
            if cmp["verdict"] != "no difference yet":
                verdicts.append(cmp["verdict"])
            comparisons.append(cmp)
        out: dict[str, Any] = {"variants": variants, "comparisons": comparisons, "interleaving": None,
                               "confidence": exp.confidence}
        if counts.duel is not None:
            duel = counts.duel
            a, b = exp.variants[0].name, exp.variants[1].name
            p = sign_test(duel.wins[1], duel.wins[0])
            if p is not None and p < 1 - exp.confidence and duel.wins[0] != duel.wins[1]:
                winner, loser = (b, a) if duel.wins[1] > duel.wins[0] else (a, b)
                verdict = f"{winner} better than {loser} at {level}"
            else:
                verdict = "no difference yet"
            out["interleaving"] = {"slates": sum(duel.slates.values()), "slates_with_feedback": len(duel.credit),
                                   "wins": {a: duel.wins[0], b: duel.wins[1]}, "ties": duel.ties, "p_value": p,
                                   "verdict": verdict}
            out["verdict"] = verdict
        else:
            out["verdict"] = "; ".join(verdicts) if verdicts else "no difference yet"
        return out
