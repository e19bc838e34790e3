"""The service core: the event path and the request path over one shared log.

Event path: validate -> event log append (durable, idempotent; concurrent requests' batches share
one transaction) -> acknowledged once the process's folds have caught up with the log (user state, scorer counters, listeners such as reward tracking
and the online learner), so the next request for that user reflects the event.

Request path: catch up with the log (one cheap query when nothing is new: events acknowledged by
*another* process are reflected too) -> user state as published (no lock: states are
copy-on-write) -> scorer -> policy -> ranking stages -> response.

Every collaborator is built and wired by :func:`liverec.runtime.compose.build_service`; this
module only runs the two paths.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol, Sequence, runtime_checkable

from .batching import MicroBatcher
from .catalog import CatalogIndex, parse_item, parse_items
from .config import Settings
from .erasure import DescribesUsers, ForgetsUsers, Refolds, UserDeletion
from .events import Event, EventRules, EventValidationError, FieldError, parse_batch
from .memory import freeze_long_lived
from .recommend.cooccurrence import CooccurrenceScorer
from .recommend.pipeline import Pipeline, RecommendRequest
from .recommend.scoring import FollowsCatalog
from .runtime.follower import LogFollower
from .state import INTERACTION_FIELDS, StateStore
from .store import AppendResult, Change, Store
from .store.base import DeletionRecord, Item, user_digest

log = logging.getLogger(__name__)


class BatchTooLarge(ValueError):
    def __init__(self, size: int, limit: int):
        self.size, self.limit = size, limit
        super().__init__(f"batch of {size} events; at most {limit} per request")


@dataclass
class Counters:
    """Plain counters the metrics endpoint and the dashboard read (this process's share)."""

    events_accepted: int = 0
    events_duplicate: int = 0
    events_rejected: int = 0
    recommendations: int = 0
    impressions: int = 0  # items returned in recommendation responses (each logged as an impression)
    by_type: dict[str, int] = field(default_factory=dict)


class Component(Protocol):
    """Something that runs beside the two paths (model watchers, learners, snapshot writer)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


@runtime_checkable
class FollowsChanges(Protocol):
    """A component that applies changes of kinds the service itself does not (an experiment
    created or stopped), in commit order."""

    def apply_change(self, change: Change) -> None: ...


class Experimenting(Protocol):
    """Live experiments on the request path (:class:`liverec.experiments.live.LiveExperiments`)."""

    def recommend(self, pipeline: Pipeline, request: RecommendRequest) -> tuple[list[Any], str, dict | None]:
        """The slate, the scorer's name and the experiment tag (``None``: no experiment)."""


@runtime_checkable
class Warming(Protocol):
    """A component with start-up work that goes on in the background after ``start``."""

    def wait_loaded(self, timeout: float | None = None) -> None: ...


class Service:
    """Everything behind the HTTP API; usable in-process (benchmarks, tests, evaluation).

    Build it with :func:`liverec.runtime.compose.build_service`; ``start`` folds the log (or
    loads the newest snapshot and folds the log after it) and starts the components.
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        catalog: CatalogIndex,
        state: StateStore,
        baseline: CooccurrenceScorer,
        pipeline: Pipeline,
        ranking: Any,
        listeners: list[Callable[[list[Event]], None]],
        components: list[Component] | None = None,
        restore: Callable[["Service"], tuple[int, int] | None] | None = None,
        experiments: Experimenting | None = None,
    ):
        self.settings = settings
        self.rules: EventRules = settings.event_rules()
        self.store = store
        self.catalog = catalog
        self.state = state
        self.baseline = baseline
        self.pipeline = pipeline
        self.ranking = ranking
        self.listeners = listeners
        self.components = components or []
        self.experiments = experiments
        self._restore = restore
        self.counters = Counters()
        self._count_lock = threading.Lock()
        self.follower = LogFollower(store.events, self._apply_events, self._apply_change, settle=self._apply_items)
        self._upserted: dict[str, dict[str, Item]] = {}  # app -> items upserted, handed to the scorer at once
        self._append: MicroBatcher[list[Event], AppendResult] = MicroBatcher(self._append_group)
        # this process's deletions being applied, by (app, digest): the deletion and the events
        # this process had folded (subtracted exactly from the counters)
        self._forget: dict[tuple[str, str], tuple[UserDeletion, list[Event]]] = {}
        self._rebuilds: dict[str, bool] = {}  # app -> a refold runs (True: run it once more after)
        self._rebuild_lock = threading.Lock()
        # compaction of the files after deletions: None, running (False), or to run again (True)
        self._compaction: bool | None = None
        self._compacted = threading.Condition()
        self._closing = threading.Event()
        self.started_at = time.time()
        self.ready = False

    def scorer_name(self, app: str) -> str:
        """The name of the scorer that answers ``app`` now (the fallback's when the main scorer
        has no model for it)."""
        return self.pipeline.scorer_for(app).name

    def wait_warm(self, timeout: float | None = None) -> None:
        """Wait for the components' background start-up work (e.g. the sentence encoder loading)."""
        for component in self.components:
            if isinstance(component, Warming):
                component.wait_loaded(timeout)

    def component(self, kind: type) -> Any:
        """The running component of ``kind`` (e.g. the model server), or ``None``."""
        return next((c for c in self.components if isinstance(c, kind)), None)

    # ---- start-up ---------------------------------------------------------------------------
    def start(self, progress: bool = False) -> None:
        """Load the catalog, restore the folds (snapshot + log tail, or the whole log), start
        the components."""
        restored = self._restore(self) if self._restore is not None else None
        if restored is None:
            heads = self.store.events.heads()  # fold exactly up to here; the follower takes over after
            self.catalog.load(self.store.catalog.scan())
            self._fold_log(heads[0], progress)
            self.follower.event_seq, self.follower.change_seq = heads
        else:
            self.follower.event_seq, self.follower.change_seq = restored
        self.follower.catch_up(force=True)
        # Millions of long-lived objects now exist; keep the cyclic collector from re-walking them
        # on every full collection (those pauses show up as request-latency tails).
        freeze_long_lived()
        for component in self.components:
            component.start()
        self.ready = True

    def _fold_log(self, upto: int, progress: bool) -> None:
        total = self.store.events.count()
        events: list[Event] = []
        bar = None
        if progress and total:
            from tqdm import tqdm

            bar = tqdm(total=total, desc="rebuilding state", unit="ev", unit_scale=True)
        for seq, event in self.store.events.scan():
            if seq > upto:
                break
            events.append(event)
            if bar is not None and len(events) % 10_000 == 0:
                bar.update(10_000)
        if bar is not None:
            bar.update(len(events) % 10_000)
            bar.close()
        self.baseline.rebuild(events)
        self.state.rebuild(events)

    # ---- folds: what the follower hands over, in commit order ----------------------------------
    def _apply_events(self, events: list[Event]) -> None:
        self._apply_items()  # the items upserted before these events are known to the scorer first
        self.state.apply_batch(events)
        scorer = self.pipeline.scorer
        for event in events:
            self.baseline.observe(event.app, event)
            if scorer is not self.baseline:
                scorer.observe(event.app, event)
        for listener in self.listeners:
            listener(events)

    def _apply_change(self, change: Change) -> None:
        if change.kind == "item":
            item = self.store.catalog.get(change.app, change.key)
            if item is not None:
                self.catalog.put(item)
                self._upserted.setdefault(change.app, {})[item.item_id] = item
        elif change.kind == "user_deleted":
            self._apply_deletion(change)
        else:
            for component in self.components:
                if isinstance(component, FollowsChanges):
                    component.apply_change(change)

    def follow_changes(self, component: FollowsChanges) -> None:
        """Hand ``component`` the changes of kinds the service does not apply itself, from now on
        (a part built beside the service: the API's keyring)."""
        self.components.append(component)

    def _apply_items(self) -> None:
        """Hand the items upserted since the last call to the scorer (a model places those it was
        not trained on from their text), a batch upsert in one call."""
        upserted, self._upserted = self._upserted, {}
        scorer = self.pipeline.scorer
        if isinstance(scorer, FollowsCatalog):
            for app, items in upserted.items():
                scorer.items_changed(app, list(items.values()))

    def _apply_deletion(self, change: Change) -> None:
        """A ``user_deleted`` change: drop the user's state, take their events out of the
        counters, and hand the deletion to every component that holds something of users."""
        app = change.app
        local = self._forget.get((app, change.key))
        if local is not None:
            deletion, folded = local
        else:  # deleted by another process: found here by the digest the change names
            deletion = UserDeletion(app, change.key, change.seq, change.event_seq)
            deletion.user_id = deletion.find(self.state.users(app))
            folded = []
        deletion.change_seq, deletion.event_seq = change.seq, change.event_seq
        if deletion.user_id is not None:
            deletion.state = self.state.get(app, deletion.user_id)
            self.state.delete(app, deletion.user_id)
        counts = deletion.counts
        counts["state"] = int(deletion.state is not None)
        if local is not None and deletion.state is not None and deletion.state.n_events > len(folded):
            # another process deleted the user first (this one removed fewer events than it had
            # folded): what remains to subtract is unknown here, so the counters are refolded
            local, counts["counters"] = None, 0
        if local is not None:  # deleted here: subtract exactly what the events added
            self.baseline.forget_user(app, folded)
            if self.pipeline.scorer is not self.baseline:
                self.pipeline.scorer.forget_user(app, folded)
            counts["counters"] = len(folded)
        else:  # deleted by another process: the events are gone, so refold the counters
            self._rebuild_counters(app)
        for component in self.components:
            if isinstance(component, ForgetsUsers):
                counts.update(component.forget_user(deletion))

    @property
    def refolding(self) -> bool:
        """Whether some app's counters are being refolded after another process deleted a user
        (until then they still hold that user's contributions)."""
        return bool(self._rebuilds)

    def _rebuild_counters(self, app: str) -> None:
        """Refold ``app``'s co-occurrence counters from the log in the background, then swap them
        in with the events that arrived meanwhile (other reads see the old counters until then).
        A deletion that arrives while a refold runs makes it run once more afterwards: the running
        one may have read that user's events."""
        with self._rebuild_lock:
            if app in self._rebuilds:
                self._rebuilds[app] = True
                return
            self._rebuilds[app] = False

        def run() -> None:
            while True:
                try:
                    upto = self.follower.event_seq
                    fresh = CooccurrenceScorer(self.baseline.config, self.rules.types)
                    fresh.rebuild(e for s, e in self.store.events.scan(app) if s <= upto)
                    with self.follower.lock:
                        for s, e in self.store.events.scan(app, after_seq=upto):
                            if s > self.follower.event_seq:
                                break
                            fresh.observe(app, e)
                        self.baseline.adopt(app, fresh)
                except BaseException:
                    with self._rebuild_lock:
                        del self._rebuilds[app]
                    raise
                with self._rebuild_lock:  # decide and clear in one step: no deletion slips between
                    if not self._rebuilds[app]:
                        del self._rebuilds[app]
                        return
                    self._rebuilds[app] = False  # another deletion came in: once more

        threading.Thread(target=run, name=f"liverec-refold-{app}", daemon=True).start()

    # ---- event path -------------------------------------------------------------------------
    def ingest(self, app: str, raws: list[Any], single: bool = False) -> dict[str, int]:
        """Validate and store a batch (all-or-nothing); returns accepted / duplicate counts.

        ``single``: the request sent one event object (errors then name plain fields).
        """
        return self.ingest_events(self._validate(app, raws, single))

    def submit(self, app: str, raws: list[Any], single: bool = False) -> Future[AppendResult]:
        """:meth:`ingest` without waiting for the commit: validated here (errors raised here),
        then queued for the next group commit; the future resolves once the batch is durable and
        folded (:meth:`acknowledge` turns its result into the answer)."""
        return self._append.submit(self._validate(app, raws, single))

    def _validate(self, app: str, raws: list[Any], single: bool) -> list[Event]:
        if len(raws) > self.settings.max_batch:
            self.counters.events_rejected += len(raws)
            raise BatchTooLarge(len(raws), self.settings.max_batch)
        try:
            return parse_batch(raws, app=app, rules=self.rules, positions=not single)
        except EventValidationError:
            self.counters.events_rejected += len(raws)
            raise

    def ingest_events(self, events: list[Event]) -> dict[str, int]:
        """Store already-validated events and apply them; the return is the acknowledgement."""
        return self.acknowledge(self._append(events))  # durable and folded once this returns

    def acknowledge(self, result: AppendResult) -> dict[str, int]:
        """Count a committed batch; the answer to its sender."""
        with self._count_lock:
            for event in result.accepted:
                self.counters.by_type[event.type] = self.counters.by_type.get(event.type, 0) + 1
            self.counters.events_accepted += len(result.accepted)
            self.counters.events_duplicate += result.duplicates
        return {"accepted": len(result.accepted), "duplicates": result.duplicates}

    def _append_group(self, batches: Sequence[list[Event]]) -> list[AppendResult]:
        """Group commit: the batches of concurrent requests in one transaction, then one catch-up.

        A batch is still all-or-nothing (a failure fails every batch of the group, none of them
        acknowledged); an event id sent twice in the group is stored once, from the first batch.
        """
        result = self.store.events.append([e for batch in batches for e in batch])  # durable
        self.follower.catch_up(force=True)  # this process's folds now hold them (and whatever came before)
        stored = set(map(id, result.accepted))
        out = []
        for batch in batches:
            accepted = [e for e in batch if id(e) in stored]
            out.append(AppendResult(accepted, len(batch) - len(accepted)))
        return out

    def upsert_items(self, app: str, raws: list[Any]) -> int:
        items = parse_items(raws, app=app)
        return self._store_items(items)

    def put_item(self, app: str, item_id: str, raw: Any) -> None:
        self._store_items([parse_item(raw, app=app, item_id=item_id)])

    def _store_items(self, items: list) -> int:
        scorer = self.pipeline.scorer
        if isinstance(scorer, FollowsCatalog):
            for app in dict.fromkeys(i.app for i in items):
                scorer.prepare_items(app, [i for i in items if i.app == app])
        written = self.store.catalog.upsert(items)
        self.follower.catch_up(force=True)
        return written

    def delete_user(self, app: str, user_id: str, requested_by: str = "open") -> dict[str, Any]:
        """Delete everything held on the user in ``app``: events, state, counters, impressions,
        the ranking's and the learners' folds, text vectors only they used, snapshots; mark the
        model versions trained on their events; record the deletion in the audit log. Returns
        the receipt (counts per store). Other processes apply it when they follow the log; the
        ranking's posteriors lose the user's share when their refold is swapped in
        (``ranking_refolding``)."""
        started = time.time()
        digest = user_digest(app, user_id)
        with self.follower.lock:
            # their impressions first: once the change commits, other workers remove only those they
            # logged themselves since (and those shown meanwhile go with the change, below)
            shown = self.ranking.impressions.remove_user(app, user_id)
            self.follower.catch_up(force=True)
            applied = self.follower.event_seq
            removed = self.store.events.remove_user(app, user_id)
            deletion = UserDeletion(app, digest, 0, 0, local=True, user_id=user_id, events=[e for _, e in removed],
                                    first_seq=removed[0][0] if removed else None)
            deletion.counts.update(events=len(removed), impressions=shown)
            # events committed by others after our catch-up were never folded here: nothing to subtract
            self._forget[(app, digest)] = (deletion, [e for seq, e in removed if seq <= applied])
            try:
                self.follower.catch_up(force=True)  # applies the deletion here (see _apply_deletion)
            finally:
                self._forget.pop((app, digest), None)
        counts = {k: int(v) for k, v in sorted(deletion.counts.items())}
        record = DeletionRecord(deletion.deletion_id, app, digest, requested_by, started,
                                {"counts": counts, "change_seq": deletion.change_seq})
        self.store.deletions.record(record)
        self._compact_files()  # the files' earlier copies of the rows go in the background
        return {
            "app": app,
            "user_id": user_id,
            "deletion_id": deletion.deletion_id,
            "events_deleted": len(removed),
            "state_deleted": bool(counts.get("state")),
            "deleted_at": started,
            "requested_by": requested_by,
            "removed": counts,
            "compacting": True,
            "ranking_refolding": self._ranking_refolding(),
        }

    # ---- the files after a deletion ---------------------------------------------------------------
    @property
    def compacting(self) -> bool:
        """Whether the store's files are being compacted after a deletion (until then they may
        hold earlier copies of deleted rows: see :meth:`liverec.store.base.Store.compact`)."""
        return self._compaction is not None

    def wait_compacted(self, timeout: float | None = None) -> bool:
        """Wait until no compaction is pending or running; returns whether none is."""
        with self._compacted:
            return self._compacted.wait_for(lambda: self._compaction is None, timeout)

    def _compact_files(self) -> None:
        """Compact the store's and the impression log's files in the background. Deletions while
        one runs make one more run after it, which starts at least four times the last run's
        duration after it ended: under a stream of deletions the files are compacted at most a
        fifth of the time (writers wait while it runs)."""
        with self._compacted:
            if self._compaction is not None:
                self._compaction = True
                return
            self._compaction = False
        threading.Thread(target=self._compact_loop, name="liverec-compact", daemon=True).start()

    def _compact_loop(self) -> None:
        while True:
            started = time.monotonic()
            try:
                done = self.store.compact() and self.ranking.impressions.compact()
            except Exception:  # noqa: BLE001 - tried again below; the rows themselves are gone already
                log.exception("compacting the store's files after a deletion failed")
                done = False
            took = time.monotonic() - started
            with self._compacted:
                if done and not self._compaction or self._closing.is_set():
                    self._compaction = None
                    self._compacted.notify_all()
                    return
                self._compaction = False
            if self._closing.wait(max(4 * took, 0.05)):
                with self._compacted:
                    self._compaction = None
                    self._compacted.notify_all()
                return

    def _ranking_refolding(self) -> bool:
        return any(c.refolding for c in self.components if isinstance(c, Refolds))

    def export_user(self, app: str, user_id: str) -> dict[str, Any] | None:
        """Everything held on the user in ``app``: their events, state, impressions, pending
        rewards, last slates and the model versions trained on their events; ``None`` when
        nothing is held (a user never seen, or deleted)."""
        self.follower.catch_up()
        events = self.store.events.user_events(app, user_id)
        span = self.store.events.user_span(app, user_id)
        state = self.state.get(app, user_id)
        out: dict[str, Any] = {"app": app, "user_id": user_id, "events": [e.to_dict() for e in events],
                               "state": state_summary(state) if state is not None else None}
        for component in self.components:
            if isinstance(component, DescribesUsers):
                out.update(component.describe_user(app, user_id, span[0] if span else None))
        held = events or state is not None or out.get("impressions") or out.get("pending_rewards") or out.get("last_slates")
        return out if held else None

    # ---- request path -----------------------------------------------------------------------
    def recommend(
        self,
        app: str,
        user_id: str | None,
        n: int = 10,
        exclude: Iterable[str] = (),
        categories: Iterable[str] = (),
        include_consumed: bool = False,
        diversity: float | None = None,
        explore: bool | None = None,
    ) -> dict[str, Any]:
        request = RecommendRequest(
            app, user_id, n, frozenset(exclude), frozenset(categories), include_consumed, diversity, explore
        )
        self.follower.catch_up()  # read-your-writes: whatever any process acknowledged is folded
        tag = None
        if self.experiments is not None:  # the app's running experiment, if the user is in it
            recs, scorer_name, tag = self.experiments.recommend(self.pipeline, request)
        else:
            recs, scorer_name = self.pipeline.recommend(request)  # reads a published state: no lock
        with self._count_lock:
            self.counters.recommendations += 1
            if user_id is not None:
                self.counters.impressions += len(recs)
        items = []
        for rec in recs:
            item = self.catalog.get(app, rec.item_id)
            entry: dict[str, Any] = {"item_id": rec.item_id, "score": round(rec.score, 6)}
            if item is not None:
                entry["title"] = item.title
                entry["categories"] = list(item.categories)
            entry["because"] = rec.because
            if rec.explored:
                entry["explored"] = True
                entry["propensity"] = round(rec.propensity, 6)
            items.append(entry)
        out = {"user_id": user_id, "app": app, "scorer": scorer_name, "items": items}
        if recs and recs[0].request_id is not None:
            out["request_id"] = recs[0].request_id
        if tag is not None:
            out["experiment"] = tag
        return out

    def similar(self, app: str, item_id: str, n: int = 10) -> dict[str, Any]:
        self.follower.catch_up()
        pairs = self.pipeline.similar(app, item_id, n)
        items = []
        for other, score in pairs:
            item = self.catalog.get(app, other)
            entry: dict[str, Any] = {"item_id": other, "score": round(score, 6)}
            if item is not None:
                entry["title"] = item.title
                entry["categories"] = list(item.categories)
            items.append(entry)
        return {"item_id": item_id, "app": app, "items": items}

    def user(self, app: str, user_id: str) -> dict[str, Any] | None:
        """The user's state as the API shows it; ``None`` for an unknown user."""
        self.follower.catch_up()
        state = self.state.get(app, user_id)
        if state is None:
            return None
        sequence = list(state.sequence)
        blocked = {scope: sorted(t) for scope, t in state.blocked.items()}
        history = []
        for item_id, kind, value, timestamp, text, event_id in sequence[-50:][::-1]:
            entry: dict[str, Any] = {"item_id": item_id, "type": kind, "timestamp": timestamp}
            if value is not None:
                entry["value"] = value
            if text:
                entry["text"] = text
            if event_id:
                entry["event_id"] = event_id
            item = self.catalog.get(app, item_id) if item_id else None
            if item is not None:
                entry["title"] = item.title
            history.append(entry)
        return {"user_id": user_id, "app": app, "n_events": state.n_events, "history": history, "blocked": blocked}

    def close(self) -> None:
        self._closing.set()
        self.wait_compacted(timeout=60)  # a compaction in progress finishes before the files close
        for component in reversed(self.components):
            component.stop()
        self.ranking.impressions.close()
        self.store.close()


def state_summary(state: Any) -> dict[str, Any]:
    """A user's folded state as the export shows it."""
    return {
        "n_events": state.n_events,
        "last_timestamp": state.last_timestamp,
        "sequence": [dict(zip(INTERACTION_FIELDS, i)) for i in state.sequence],
        "consumed": sorted(state.consumed),
        "blocked": {scope: sorted(t) for scope, t in sorted(state.blocked.items())},
        "liked": sorted(state.liked),
        "disliked": sorted(f"{scope}:{target}" for scope, target in state.disliked),
        "skipped": sorted(f"{scope}:{target}" for scope, target in state.skipped),
    }


def field_errors(exc: Exception) -> list[dict[str, Any]]:
    """The API's error list for a validation failure."""
    if isinstance(exc, EventValidationError):
        return [e.to_dict() for e in exc.errors]
    if isinstance(exc, BatchTooLarge):
        return [FieldError("events", exc.size, f"at most {exc.limit} events per request").to_dict()]
    return [{"field": "body", "value": None, "expected": str(exc)}]
