"""Live experiments in a serving process: which experiment runs per app, which variant a request
gets, interleaved slates, and the metrics fold kept current.

:class:`LiveExperiments` is a service component. The store's experiment role is the truth;
creating or stopping one writes an ``experiment`` change, which every worker's follower applies
in commit order (:meth:`LiveExperiments.apply_change`), so all workers serve the same variants
from their next request on. On the request path the running experiment of the app is one dict
read, the variant one hash (:func:`liverec.experiments.spec.unit_hash`).

Several experiments may run in one app; they share its users, each user in at most one: the
oldest running experiment whose ``traffic`` takes the user (by its own hash) has them, the next
one is asked only for users the earlier ones left. An experiment with ``traffic`` 1 takes every
user while it runs: give concurrent ones smaller shares.

The metrics (:class:`~liverec.experiments.metrics.ExperimentFold`) fold the tagged impressions of
every worker, read from the impression log (polled every ``interval_s`` and before each read-out),
and the feedback events this process's follower applies. At start they are rebuilt from the two
logs.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import fields, replace
from typing import Any, Callable, Mapping, Protocol

from ..erasure import UserDeletion
from ..events import DEFAULT_TYPES, Event, TypeSpec
from ..ranking.config import RankingConfig
from ..ranking.impressions import ImpressionLog
from ..ranking.stages import RankingStages
from ..recommend.pipeline import Pipeline, Recommendation, RecommendRequest
from ..store.base import Change, EventLog, ExperimentRecord, Experiments, StoreUnavailable
from .interleave import team_draft
from .metrics import ExperimentFold
from .spec import NOT_PER_VARIANT, Experiment, Variant, check, unit_hash, variant_name

log = logging.getLogger(__name__)

READ_BATCH = 10_000


class ExperimentInvalid(ValueError):
    def __init__(self, errors: list[dict[str, Any]]):
        self.errors = errors
        super().__init__("; ".join(f"{e['field']}={e['value']!r}: expected {e['expected']}" for e in errors))


class Versions(Protocol):
    def __call__(self, app: str) -> set[str]: ...


def ranking_fields() -> set[str]:
    """The :class:`RankingConfig` fields a variant may override."""
    return {f.name for f in fields(RankingConfig)} - NOT_PER_VARIANT


def variant_config(base: RankingConfig, overrides: Mapping[str, Any]) -> RankingConfig:
    """``base`` with a variant's overrides, checked by :class:`RankingConfig` itself."""
    return RankingConfig.from_dict({**{f.name: getattr(base, f.name) for f in fields(base)}, **overrides})


class LiveExperiments:
    """The running experiments of every app and their metrics (a service component)."""

    def __init__(self, store: Experiments, impressions: ImpressionLog, events: EventLog, ranking: RankingStages,
                 versions: Versions, position: Callable[[], int], catch_up: Callable[[], None],
                 types: Mapping[str, TypeSpec] = DEFAULT_TYPES, interval_s: float = 1.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.impressions = impressions
        self.events = events
        self.ranking = ranking
        self.versions = versions
        self.position = position
        self.catch_up = catch_up
        self.interval_s = interval_s
        self.clock = clock
        self.fold = ExperimentFold(types)
        self._running: dict[str, tuple[Experiment, ...]] = {}  # app -> running ones, oldest first (replaced, never changed)
        self._all: dict[str, Experiment] = {}
        self._configs: dict[tuple[str, str], RankingConfig] = {}
        self._lock = threading.Lock()  # the fold and the positions
        self._event_pos: int | None = None  # None until started: events before are read from the log
        self._impression_pos = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- component ----------------------------------------------------------------------------
    def start(self) -> None:
        """Load every experiment and rebuild the metrics from the two logs, then poll."""
        with self._lock:
            for record in self.store.list():
                self._load(record)
            upto = self.impressions.head()
            rows = self._tagged(0, upto)
            position = self.position()
            if rows:
                first = min(imp.event_seq or 0 for imp in rows)
                events, seqs = [], []
                for seq, event in self.events.scan(after_seq=first):
                    if seq > position:
                        break
                    if event.app in self.fold.apps:
                        events.append(event)
                        seqs.append(seq)
                self.fold.impressions(rows)
                self.fold.events(events, seqs)
            self._impression_pos = upto
            self._event_pos = position
        self._stopping.clear()
        self._thread = threading.Thread(target=self._poll, name="liverec-experiments", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _poll(self) -> None:
        while not self._stopping.wait(self.interval_s):
            try:
                self.refresh()
            except StoreUnavailable as exc:  # PostgreSQL away: the next poll tries again
                log.warning("reading experiment impressions: %s", exc)
            except Exception:  # noqa: BLE001 - a read-out's fold must not stop; the next poll tries again
                log.exception("reading experiment impressions failed")

    def _tagged(self, after: int, upto: int) -> list[Any]:
        rows: list[Any] = []
        while True:
            batch = self.impressions.experiment_after(after, upto, READ_BATCH)
            rows.extend(imp for _, imp in batch)
            if len(batch) < READ_BATCH:
                return rows
            after = batch[-1][0]

    def refresh(self, flush: bool = False) -> None:
        """Fold the tagged impressions logged since the last read (``flush``: this process's
        queued ones too)."""
        if self._event_pos is None:
            return
        if flush:
            self.impressions.flush()
        upto = self.impressions.head()
        with self._lock:
            if upto > self._impression_pos:
                self.fold.impressions(self._tagged(self._impression_pos, upto))
                self._impression_pos = upto

    # ---- the logs -----------------------------------------------------------------------------
    def observe(self, events: list[Event], seqs: list[int]) -> None:
        """Service listener: committed events with their log positions."""
        with self._lock:
            if self._event_pos is None or not events:
                return  # not started: the start reads them from the log
            keep = [k for k, s in enumerate(seqs) if s > self._event_pos]
            if keep:
                self.fold.events([events[k] for k in keep], [seqs[k] for k in keep])
                self._event_pos = seqs[keep[-1]]

    def apply_change(self, change: Change) -> None:
        """An experiment was created or stopped (by any process): serve it as stored now."""
        if change.kind != "experiment":
            return
        record = self.store.get(change.key)
        if record is not None:
            with self._lock:
                self._load(record)

    def _load(self, record: ExperimentRecord) -> None:
        exp = Experiment.from_record(record.experiment_id, record.app, record.name, record.kind, record.spec,
                                     record.created_at, record.stopped_at)
        base = self.ranking.settings.for_app(exp.app)
        for v in exp.variants:
            try:
                self._configs[(exp.experiment_id, v.name)] = variant_config(base, v.ranking)
            except (TypeError, ValueError):  # checked when created; the app's settings may have changed since
                log.exception("experiment %s variant %s: ranking overrides no longer apply; the app's config serves",
                              exp.experiment_id, v.name)
                self._configs[(exp.experiment_id, v.name)] = base
        self.fold.register(exp)
        self._all[exp.experiment_id] = exp
        running = dict(self._running)
        others = [e for e in running.get(exp.app, ()) if e.experiment_id != exp.experiment_id]
        if exp.running:
            others.append(exp)
        running[exp.app] = tuple(sorted(others, key=lambda e: (e.created_at, e.experiment_id)))
        self._running = running  # one assignment: the request path reads it without the lock

    # ---- the request path ---------------------------------------------------------------------
    def assign(self, app: str, user_id: str) -> tuple[Experiment, Variant] | None:
        """The user's experiment and variant: the oldest running experiment of ``app`` whose
        traffic takes them (``None``: none does)."""
        for exp in self._running.get(app, ()):
            variant = exp.assign(user_id)
            if variant is not None:
                return exp, variant
        return None

    def _variant_request(self, request: RecommendRequest, exp: Experiment, v: Variant) -> RecommendRequest:
        return replace(request, config=self._configs[(exp.experiment_id, v.name)], model_version=v.model_version,
                       experiment=exp.experiment_id, variant=v.name)

    def recommend(self, pipeline: Pipeline, request: RecommendRequest) -> tuple[list[Recommendation], str, dict | None]:
        """The slate for ``request`` under the user's experiment (if a running one takes them),
        the scorer's name, and the experiment tag of the answer."""
        assigned = self.assign(request.app, request.user_id) if request.user_id is not None else None
        if assigned is None:
            recs, name = pipeline.recommend(request)
            return recs, name, None
        exp, variant = assigned
        tag: dict[str, Any] = {"id": exp.experiment_id, "name": exp.name, "kind": exp.kind}
        if exp.kind == "split":
            recs, name = pipeline.recommend(self._variant_request(request, exp, variant))
            tag["variant"] = variant.name
            return recs, name, tag
        recs, name = self._interleave(pipeline, request, exp)
        tag["variant"] = None
        return recs, name, tag

    def _interleave(self, pipeline: Pipeline, request: RecommendRequest, exp: Experiment) -> tuple[list[Recommendation], str]:
        """Both variants rank the request (nothing logged), team draft merges the two slates
        (the coin seeded by the new request id), and the merged slate is logged once, every
        impression tagged with its team."""
        ranking = self.ranking
        requests = [self._variant_request(request, exp, v) for v in exp.variants]
        slates, names = [], []
        for r in requests:
            c = pipeline.candidates(r)
            slates.append(ranking.slate(r, c.state, c.scored, c.allow))
            names.append(c.scorer.name)
        request_id = uuid.uuid4().hex
        merged = team_draft([x.item_id for x in slates[0][0]], [x.item_id for x in slates[1][0]], request.n,
                            seed=int(unit_hash(exp.experiment_id, request_id) * 2**32))
        index = [{x.item_id: k for k, x in enumerate(recs)} for recs, _ in slates]
        recs_out: list[Recommendation] = []
        impressions = []
        for pos, (item, team) in enumerate(merged):
            recs, imps = slates[team]
            k = index[team][item]
            team_name = exp.variants[team].name
            rec = recs[k]
            recs_out.append(replace(rec, request_id=request_id,
                                    because=[*rec.because, {"kind": "experiment", "team": team_name}]))
            if k < len(imps):
                impressions.append(replace(imps[k], impression_id=f"{request_id}:{pos}", request_id=request_id,
                                           position=pos, variant=team_name))
        ranking.log(requests[0], recs_out, impressions)
        return recs_out, names[0] if names[0] == names[1] else "+".join(names)

    # ---- administration -----------------------------------------------------------------------
    def create(self, app: str, name: str, kind: str, variants: list[Mapping[str, Any]], traffic: float = 1.0,
               window_s: float | None = None, confidence: float = 0.95) -> dict[str, Any]:
        """Check and store a new running experiment of ``app`` (:class:`ExperimentInvalid`);
        every worker serves it from its next request."""
        base = self.ranking.settings.for_app(app)
        window = base.reward_window_s if window_s is None else window_s
        errors = check(kind, variants, traffic, window, confidence, ranking_fields(), self.versions(app))
        if not errors:
            for k, v in enumerate(variants):
                try:
                    variant_config(base, v.get("ranking") or {})
                except (TypeError, ValueError) as exc:
                    errors.append({"field": f"variants[{k}].ranking", "value": dict(v.get("ranking") or {}),
                                   "expected": f"settings the ranking accepts ({exc})"})
        if errors:
            raise ExperimentInvalid(errors)
        spec = {"variants": [{**v, "name": variant_name(v, k)} for k, v in enumerate(variants)], "traffic": traffic,
                "window_s": window, "confidence": confidence}
        record = ExperimentRecord(f"exp_{uuid.uuid4().hex[:12]}", app, name, kind,
                                  Experiment.from_record("", app, name, kind, spec, 0.0).spec(), self.clock())
        self.store.create(record)
        view = self.view(app, record.experiment_id)  # caught up: this process serves it now, the others at their next request
        assert view is not None
        return view

    def stop_experiment(self, app: str, experiment_id: str) -> dict[str, Any] | None:
        record = self.store.get(experiment_id)
        if record is None or record.app != app:
            return None
        self.store.stop(experiment_id, self.clock())
        return self.view(app, experiment_id)

    def view(self, app: str, experiment_id: str) -> dict[str, Any] | None:
        """The experiment with its variants' metrics (``None``: not an experiment of ``app``), as
        of every event committed and every impression of this process logged so far."""
        self.catch_up()
        self.refresh(flush=True)
        return self._view(app, experiment_id)

    def _view(self, app: str, experiment_id: str) -> dict[str, Any] | None:
        with self._lock:
            exp = self._all.get(experiment_id)
            if exp is None or exp.app != app:
                return None
            summary = self.fold.summary(experiment_id)
        return {"experiment_id": exp.experiment_id, "app": exp.app, "name": exp.name, "kind": exp.kind,
                "status": "running" if exp.running else "stopped", "created_at": exp.created_at,
                "stopped_at": exp.stopped_at, "traffic": exp.traffic, "window_s": exp.window_s, **summary}

    def list(self, app: str) -> list[dict[str, Any]]:
        """The app's experiments, newest first."""
        self.catch_up()
        self.refresh(flush=True)
        ids = sorted((e.created_at, e.experiment_id) for e in self._all.values() if e.app == app)
        views = [self._view(app, i) for _, i in reversed(ids)]
        return [v for v in views if v is not None]

    # ---- deletion -----------------------------------------------------------------------------
    def forget_user(self, deletion: UserDeletion) -> dict[str, int]:
        """Take a deleted user's counts out of the app's experiments."""
        with self._lock:
            user = deletion.find(self.fold.users(deletion.app))
            found = self.fold.forget_user(deletion.app, user) if user is not None else 0
        return {"experiment_users": found}
