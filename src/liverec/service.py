"""The service core: the event path and the request path, wired together.

Event path: validate -> event log append (durable, idempotent) -> user state apply -> scorer
observe -> listeners (online learner) -> acknowledged. The whole path runs under one write lock,
so the next request for that user, arriving after the acknowledgement, reads a state that
already holds the event (read-your-writes).

Request path: user state (as it is now) -> scorer -> policy -> ranker -> response.
"""

from __future__ import annotations

import gc
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from .catalog import CatalogIndex, parse_item, parse_items
from .config import Settings
from .events import Event, EventRules, EventValidationError, FieldError, parse_batch
from .recommend.cooccurrence import CooccurrenceScorer
from .recommend.pipeline import Pipeline, Policy, RecommendRequest
from .recommend.scoring import Scorer
from .state import StateStore
from .store import Store, open_store


class BatchTooLarge(ValueError):
    def __init__(self, size: int, limit: int):
        self.size, self.limit = size, limit
        super().__init__(f"batch of {size} events; at most {limit} per request")


@dataclass
class Counters:
    """Plain counters the metrics endpoint and the dashboard read."""

    events_accepted: int = 0
    events_duplicate: int = 0
    events_rejected: int = 0
    recommendations: int = 0
    impressions: int = 0  # items returned in recommendation responses (each logged as an impression)
    by_type: dict[str, int] = field(default_factory=dict)


class Service:
    """Everything behind the HTTP API; usable in-process (benchmarks, tests, evaluation)."""

    def __init__(self, settings: Settings, store: Store | None = None, scorer: Scorer | None = None):
        self.settings = settings
        self.rules: EventRules = settings.event_rules()
        self.store = store or open_store(settings.store_url_resolved())
        self.catalog = CatalogIndex()
        self.state = StateStore(self.rules.types, settings.sequence_length, user_events=self.store.events.user_events)
        self.baseline = CooccurrenceScorer(types=self.rules.types)
        self.pipeline = Pipeline(
            history=self.state.get,
            scorer=scorer or self.baseline,
            policy=Policy(self.catalog.get),
            fallback=self.baseline,
        )
        # Ranking stages after the hard filters: feedback policy, diversity, exploration, `because`.
        from .ranking import build_ranking, open_impressions

        impressions = open_impressions(self.settings.store_url_resolved(), settings.data_dir)
        self.ranking = build_ranking(
            self.catalog, lambda: self.pipeline.scorer, self._similar_pairs, self.rules.types, impressions,
            pairs=self.baseline.pair_similarity,
        )
        self.pipeline.ranking = self.ranking
        self.counters = Counters()
        self.listeners: list[Callable[[list[Event]], None]] = [self.ranking.observe]
        self._write = threading.Lock()
        self.started_at = time.time()
        self.ready = False

    # ---- start-up ---------------------------------------------------------------------------
    def start(self, progress: bool = False) -> None:
        """Load the catalog and fold the whole event log into state and the baseline scorer."""
        self.catalog.load(self.store.catalog.scan())
        total = self.store.events.count()
        events: list[Event] = []
        bar = None
        if progress and total:
            from tqdm import tqdm

            bar = tqdm(total=total, desc="rebuilding state", unit="ev", unit_scale=True)
        for _, event in self.store.events.scan():
            events.append(event)
            if bar is not None and len(events) % 10_000 == 0:
                bar.update(10_000)
        if bar is not None:
            bar.update(len(events) % 10_000)
            bar.close()
        self.baseline.rebuild(events)
        self.state.rebuild(events)
        del events
        # Millions of long-lived objects now exist; keep the cyclic collector from re-walking them
        # on every full collection (those pauses show up as request-latency tails).
        gc.collect()
        gc.freeze()
        # The promoted Transformer of each app (liverec train / liverec models promote), if any;
        # newly promoted versions are swapped in while serving.
        if self.settings.scorer in ("auto", "transformer"):
            from .model.serving import attach_promoted

            attach_promoted(self)
        # In-process online learners for the apps LIVEREC_LEARNER names (none by default).
        from .learning import attach_from_env

        self.learners = attach_from_env(self)
        self.ready = True

    # ---- event path -------------------------------------------------------------------------
    def ingest(self, app: str, raws: list[Any], single: bool = False) -> dict[str, int]:
        """Validate and store a batch (all-or-nothing); returns accepted / duplicate counts.

        ``single``: the request sent one event object (errors then name plain fields).
        """
        if len(raws) > self.settings.max_batch:
            self.counters.events_rejected += len(raws)
            raise BatchTooLarge(len(raws), self.settings.max_batch)
        try:
            events = parse_batch(raws, app=app, rules=self.rules, positions=not single)
        except EventValidationError:
            self.counters.events_rejected += len(raws)
            raise
        return self.ingest_events(events)

    def ingest_events(self, events: list[Event]) -> dict[str, int]:
        """Store already-validated events and apply them; the return is the acknowledgement."""
        with self._write:
            result = self.store.events.append(events)
            for event in result.accepted:
                self.state.apply(event)
                self.baseline.observe(event.app, event)
                if self.pipeline.scorer is not self.baseline:
                    self.pipeline.scorer.observe(event.app, event)
                self.counters.by_type[event.type] = self.counters.by_type.get(event.type, 0) + 1
            for listener in self.listeners:
                listener(result.accepted)
            self.counters.events_accepted += len(result.accepted)
            self.counters.events_duplicate += result.duplicates
        return {"accepted": len(result.accepted), "duplicates": result.duplicates}

    def upsert_items(self, app: str, raws: list[Any]) -> int:
        items = parse_items(raws, app=app)
        return self._store_items(items)

    def put_item(self, app: str, item_id: str, raw: Any) -> None:
        self._store_items([parse_item(raw, app=app, item_id=item_id)])

    def _store_items(self, items: list) -> int:
        with self._write:
            written = self.store.catalog.upsert(items)
            for item in items:
                self.catalog.put(item)
        return written

    def delete_user(self, app: str, user_id: str) -> dict[str, Any]:
        """Delete the user's events and state in ``app``; returns a receipt with counts."""
        with self._write:
            events = self.store.events.user_events(app, user_id)
            deleted = self.store.events.delete_user(app, user_id)
            had_state = self.state.delete(app, user_id)
            self.baseline.forget_user(app, events)
            if self.pipeline.scorer is not self.baseline:
                self.pipeline.scorer.forget_user(app, events)
        return {
            "app": app,
            "user_id": user_id,
            "events_deleted": deleted,
            "state_deleted": had_state,
            "deleted_at": time.time(),
        }

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
        with self.state.lock:  # a consistent view of this user's state while scoring
            recs, scorer_name = self.pipeline.recommend(request)
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
        return out

    def _similar_pairs(self, app: str, item_id: str, n: int) -> list[tuple[str, float]]:
        """The scorer's similar items, else the baseline's (the ranking stages' last resort)."""
        pairs = self.pipeline.scorer.similar(app, item_id, n)
        if not pairs and self.pipeline.scorer is not self.baseline:
            pairs = self.baseline.similar(app, item_id, n)
        return pairs

    def similar(self, app: str, item_id: str, n: int = 10) -> dict[str, Any]:
        pairs = self.pipeline.scorer.similar(app, item_id, n)
        if not pairs and self.pipeline.scorer is not self.baseline:
            pairs = self.baseline.similar(app, item_id, n)
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
        state = self.state.get(app, user_id)
        if state is None:
            return None
        with self.state.lock:
            sequence = list(state.sequence)
            blocked = {scope: sorted(t) for scope, t in state.blocked.items()}
        history = []
        for i in sequence[-50:][::-1]:
            entry: dict[str, Any] = {"item_id": i.item_id, "type": i.type, "timestamp": i.timestamp}
            if i.value is not None:
                entry["value"] = i.value
            if i.text:
                entry["text"] = i.text
            if i.event_id:
                entry["event_id"] = i.event_id
            item = self.catalog.get(app, i.item_id) if i.item_id else None
            if item is not None:
                entry["title"] = item.title
            history.append(entry)
        return {"user_id": user_id, "app": app, "n_events": state.n_events, "history": history, "blocked": blocked}

    def close(self) -> None:
        for learner in getattr(self, "learners", []):
            learner.stop()
        for watcher in getattr(self, "model_watchers", []):
            watcher.stop()
        self.ranking.impressions.close()
        self.store.close()


def field_errors(exc: Exception) -> list[dict[str, Any]]:
    """The API's error list for a validation failure."""
    if isinstance(exc, EventValidationError):
        return [e.to_dict() for e in exc.errors]
    if isinstance(exc, BatchTooLarge):
        return [FieldError("events", exc.size, f"at most {exc.limit} events per request").to_dict()]
    return [{"field": "body", "value": None, "expected": str(exc)}]
