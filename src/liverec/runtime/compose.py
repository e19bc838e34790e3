"""The composition root: the one place that builds and wires a service's objects.

Every role (the all-in-one server, an API worker, benchmarks and tests in-process) gets its
service from :func:`build_service`. Modules below it take their collaborators as arguments and
never set attributes on each other's objects.

>>> import tempfile
>>> from liverec.config import Settings
>>> service = build_service(Settings(data_dir=tempfile.mkdtemp(), scorer="cooccurrence"))
>>> service.start(); service.recommend("default", "nobody")["items"]
[]
>>> service.close()
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

from ..catalog import CatalogIndex
from ..config import Settings
from ..events import Event
from ..experiments.live import LiveExperiments
from ..learning import LearnerConfig, Learners
from ..model.registry import ModelRegistry
from ..model.serving import PromotedModels
from ..model.text import SharedTextVectors
from ..ranking import build_ranking, open_impressions, read_settings
from ..ranking.replicas import ImpressionFollower
from ..recommend.cooccurrence import CooccurrenceScorer
from ..recommend.pipeline import Pipeline, Policy
from ..recommend.retrieval import AnnConfig
from ..recommend.scoring import Scorer
from ..service import Component, Service
from ..state import TEXT, StateStore
from ..store import Store, open_store
from .models import ModelServer, TrainedModels
from .snapshots import SnapshotWriter, restore

def learner_config(settings: Settings) -> LearnerConfig:
    """The in-process online learner's config, from the settings."""
    return LearnerConfig(interval_s=settings.learner_interval, bias_lr=settings.learner_bias_lr)


def _texts_of(state: StateStore) -> Callable[[str], Iterable[str]]:
    def texts(app: str) -> Iterable[str]:
        seen: set[str] = set()
        for (a, _), user in state.items():
            if a != app:
                continue
            for interaction in user.sequence:
                if interaction[TEXT]:
                    seen.add(interaction[TEXT])
        return sorted(seen)

    return texts


def build_service(settings: Settings, store: Store | None = None, scorer: Scorer | None = None,
                  watch_models: bool = True) -> Service:
    """A service with every collaborator built and wired (not started: call ``start``).

    ``scorer`` replaces the main scorer (tests, benchmarks); by default the promoted Transformer
    of each app serves it, and the co-occurrence baseline answers apps without one.
    """
    rules = settings.event_rules()
    store = store or open_store(settings.store_url_resolved())
    catalog = CatalogIndex()
    state = StateStore(rules.types, settings.sequence_length, user_events=store.events.user_events)
    baseline = CooccurrenceScorer(types=rules.types)
    components: list[Component] = []
    listeners: list[Callable[[list[Event]], None]] = []
    main: Scorer = baseline
    models_dir = Path(settings.data_dir) / "models"
    router: PromotedModels | None = None
    if scorer is not None:
        main = scorer
    elif settings.scorer in ("auto", "transformer"):
        # apps without a promoted model get nothing: the baseline answers; catalog items a version
        # was not trained on are served from their text
        # item texts are encoded once, by the process that takes the upsert (SharedTextVectors)
        router = PromotedModels(catalog=catalog.items, shared_texts=SharedTextVectors(store.snapshots))
        main = router

    # The ranking stages read the pipeline's scorer when they run (it is swapped while serving);
    # the closures bind the name ``pipeline``, assigned just below.
    def similar(app: str, item_id: str, n: int) -> list[tuple[str, float]]:
        return pipeline.similar(app, item_id, n)  # the scorer's similar items, else the baseline's

    impressions = open_impressions(settings.store_url_resolved(), settings.data_dir)
    ranking = build_ranking(catalog, lambda: pipeline.scorer, similar, rules.types, impressions,
                            settings=read_settings(settings.ranking_config), seed=settings.ranking_seed,
                            pairs=baseline.pair_similarity)
    server: ModelServer | None = None  # assigned below when models serve; read by the closure when a request names a version
    pipeline = Pipeline(history=state.get, scorer=main, policy=Policy(catalog.get), fallback=baseline, ranking=ranking,
                        versions=lambda app, version: server.versioned(app, version) if server is not None else None)
    # with each event's log position (impressions record the position they were shown at); the
    # follower keeps the ranking's folds equal to the fold of the impression and event logs
    listeners.append(lambda events: ranking.observe(events, service.follower.applying))
    components.append(ImpressionFollower(ranking, impressions, store.events, lambda: service.follower,
                                          snapshots=store.snapshots))
    # live experiments: served from the store's experiment role, their metrics a fold of the
    # impression log and the events (``service`` is assigned below)
    experiments = LiveExperiments(store.experiments, impressions, store.events, ranking,
                                  versions=lambda app: set(ModelRegistry(models_dir / app).versions()),
                                  position=lambda: service.follower.event_seq,
                                  catch_up=lambda: service.follower.catch_up(force=True), types=rules.types)
    listeners.append(lambda events: experiments.observe(events, service.follower.applying))
    components.append(experiments)
    if router is not None:
        server = ModelServer(Path(settings.data_dir), router, texts=_texts_of(state), watch=watch_models,
                             ann=AnnConfig(threshold=settings.ann_threshold),
                             max_versions=settings.experiment_model_versions)
        components.append(server)
        # an update learns from data up to the log's head at most, and checks the deletions
        # committed after the change position it started at (``service`` is assigned below)
        learners = Learners(settings.learner, learner_config(settings), models_dir, router, state, catalog.get,
                            position=lambda: (store.events.last_seq(), service.follower.change_seq),
                            changes=store.events.changes)
        listeners.append(learners.observe)
        components.append(learners)  # after the model server: a learner needs its app's model loaded
    # after the learners: a deletion marks the versions an update in flight registered meanwhile
    components.append(TrainedModels(Path(settings.data_dir), store.events, router))
    # Started after the folds are ready and stopped first (interval 0: no schedule, but a deletion
    # still replaces the stored snapshot); the closure reads ``service``, assigned just below.
    # The workers of one server fold the same log into the same folds: worker 0 writes them for
    # all (every worker writing them cost each a few % of its interpreter time under load).
    interval = settings.snapshot_interval_s if settings.worker_index == 0 else 0.0
    components.append(SnapshotWriter(lambda: service, interval, settings.snapshot_min_tail))
    service = Service(settings, store, catalog, state, baseline, pipeline, ranking, listeners, components,
                      restore=restore, experiments=experiments)
    return service
