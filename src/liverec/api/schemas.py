"""The API's contract: response models, error bodies and the documented request bodies.

Request bodies are validated by hand on the hot path (``liverec.events.parse_batch``,
``liverec.catalog.parse_items``); their schemas here are built from the same field tables those
validators check (:func:`liverec.events.event_schema`, :func:`liverec.catalog.item_schema`),
for the service's own type table and rating range, so the document is the validator's.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..catalog import item_schema
from ..events import EventRules, event_schema
from .deps import APP_HEADER

# ---- errors ------------------------------------------------------------------------------------


class FieldErrorOut(BaseModel):
    """One problem with one part of the request."""

    field: str = Field(description="Where: a body field (`events[3].type`), a parameter, `body` or the header's name")
    value: Any = Field(description="The value found there (long or non-JSON values shortened)")
    expected: str = Field(description="What was expected instead")


class ErrorResponse(BaseModel):
    """Every error answer: a one-line summary and the field errors (empty when the error is not
    about a field: an unknown route, a method the route does not take)."""

    detail: str
    errors: list[FieldErrorOut]


# Every error a route can answer, described once; a route lists the statuses it can give.
ERROR_RESPONSES: dict[int, str] = {
    400: f"Unreadable request: the body is not JSON, or the `{APP_HEADER}` header is malformed",
    401: "No API key, or one that is unknown or revoked (only once auth is on: a key exists, or `LIVEREC_AUTH=required`)",
    403: f"The key lacks the scope this route needs, or `{APP_HEADER}` names another app than the key's",
    404: "No such resource in this app",
    413: "Too many events in one request (`max_batch`)",
    422: "Invalid request: every field error, with the field, the value and what was expected",
    429: "The key's rate limit: its token bucket is empty (`Retry-After` says when it has a token again)",
    503: "The store (PostgreSQL) cannot be reached now and nothing was acknowledged: `detail` names the cause, "
         "`Retry-After` when to try again (send a write again as it was: its event ids make a retry a duplicate)",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route that can answer ``statuses``."""
    return {status: {"model": ErrorResponse, "description": ERROR_RESPONSES[status]} for status in statuses}


# ---- request bodies ----------------------------------------------------------------------------

def body_schemas(rules: EventRules, max_batch: int) -> dict[str, dict[str, Any]]:
    """The request bodies' component schemas, for the service's type table and batch limit."""
    ref = "#/components/schemas/{}".format
    return {
        "EventIn": {**event_schema(rules, omit=("app",)), "title": "EventIn",
                    "description": f"One event. The app is the `{APP_HEADER}` header's."},
        "EventBatchIn": {
            "title": "EventBatchIn", "type": "object", "additionalProperties": False, "required": ["events"],
            # the limit is a 413 (too large), not a malformed body: described, not a schema bound
            "properties": {"events": {"type": "array", "items": {"$ref": ref("EventIn")},
                                      "description": f"Stored all-or-nothing, in this order; at most {max_batch} (413 beyond)"}},
        },
        "EventsBody": {"title": "EventsBody", "anyOf": [{"$ref": ref("EventIn")}, {"$ref": ref("EventBatchIn")}]},
        "ItemIn": {**item_schema(), "title": "ItemIn"},
        "ItemUpdate": {**item_schema(omit=("item_id",)), "title": "ItemUpdate",
                       "description": "One item; its id is the URL's (a body `item_id` must equal it)"},
        "ItemBatchIn": {
            "title": "ItemBatchIn", "type": "object", "additionalProperties": False, "required": ["items"],
            "properties": {"items": {"type": "array", "items": {"$ref": ref("ItemIn")}}},
        },
    }


def body(component: str) -> dict[str, Any]:
    """``openapi_extra`` for a route whose JSON body is the component ``component``."""
    schema = {"$ref": f"#/components/schemas/{component}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


# ---- responses ---------------------------------------------------------------------------------


class IngestResponse(BaseModel):
    accepted: int = Field(description="Events stored")
    duplicates: int = Field(description="Events whose event_id was already stored (not stored again)")


class UpsertResponse(BaseModel):
    upserted: int = Field(description="Items inserted or replaced")


class ItemOut(BaseModel):
    item_id: str
    title: str
    text: str
    categories: list[str]
    attributes: dict[str, Any]


class Reason(BaseModel):
    """Why an item is in the list. ``kind``: ``event`` (one of the user's events supports it:
    `item_id`, `type`, `weight`), ``policy`` (a feedback or diversity adjustment), ``exploration``
    (placed by the bandit: `policy`, `propensity`) or ``model`` (`reason`: model score, popular)."""

    model_config = ConfigDict(extra="allow")
    kind: str


class Recommendation(BaseModel):
    item_id: str
    score: float
    title: str | None = Field(None, description="Absent for an item not in the catalog")
    categories: list[str] | None = None
    because: list[Reason]
    explored: bool | None = Field(None, description="Present (true) when exploration placed the item")
    propensity: float | None = Field(None, description="The probability with which exploration chose it")


class ExperimentTag(BaseModel):
    """The live experiment this answer is part of."""

    id: str
    name: str
    kind: str = Field(description="`split` or `interleave`")
    variant: str | None = Field(description="The user's variant (null in an interleaved slate: each item's "
                                "`because` names its team)")


class Recommendations(BaseModel):
    user_id: str | None
    app: str
    scorer: str = Field(description="What scored the list (the app's model, or the co-occurrence baseline)")
    items: list[Recommendation]
    request_id: str | None = Field(None, description="Names the logged impressions of this list (absent when empty)")
    experiment: ExperimentTag | None = Field(None, description="Present when the user is in the app's running experiment")


class SimilarItem(BaseModel):
    item_id: str
    score: float
    title: str | None = None
    categories: list[str] | None = None


class SimilarItems(BaseModel):
    item_id: str
    app: str
    items: list[SimilarItem]


class HistoryEntry(BaseModel):
    item_id: str | None = Field(description="Null for an event without an item (search)")
    type: str
    timestamp: float
    value: float | None = None
    text: str | None = None
    event_id: str | None = None
    title: str | None = None


class UserOut(BaseModel):
    user_id: str
    app: str
    n_events: int
    history: list[HistoryEntry] = Field(description="The most recent events first (at most 50)")
    blocked: dict[str, list[str]] = Field(description="Blocked values by scope (item, category, creator, ...)")


class DeletionCounts(BaseModel):
    """What one deletion removed, by store (0: the store held nothing of the user)."""

    events: int = Field(0, description="Events deleted from the log")
    state: int = Field(0, description="1 when the user had online state here")
    counters: int = Field(0, description="Events whose contributions were subtracted from the co-occurrence counters")
    impressions: int = Field(0, description="Impressions deleted from the impression log")
    pending_impressions: int = Field(0, description="Impressions that waited for the user's feedback")
    last_slates: int = Field(0, description="The user's last slates kept for items read past")
    text_vectors: int = Field(0, description="Vectors of texts only this user sent (memory and the on-disk cache)")
    shared_texts_kept: int = Field(0, description="Texts of theirs that other users' events carry too: their vectors stay")
    learner_users: int = Field(0, description="1 when the online learner had the user's events waiting to be learned")
    snapshots: int = Field(0, description="Stored snapshots of the folds removed (a new one is written without the user)")
    ranking_snapshots: int = Field(0, description="Stored snapshots of the ranking's folds removed (likewise)")
    model_versions_marked: int = Field(0, description="Model versions trained on the user's events, marked as such")
    experiment_users: int = Field(0, description="Experiments whose metrics counted the user (their counts taken out)")


class DeleteReceipt(BaseModel):
    app: str
    user_id: str
    deletion_id: str = Field(description="The deletion's id in the audit log and in the marks on model versions")
    events_deleted: int
    state_deleted: bool = Field(description="Whether the user had online state")
    deleted_at: float
    requested_by: str = Field(description="The API key id that asked, or `open:` and the client address without keys")
    removed: DeletionCounts
    compacting: bool = Field(description="The store's files are compacted in the background, so no earlier copy of "
                             "the deleted rows stays in them (SQLite: `VACUUM`, the write-ahead log truncated; "
                             "docs/privacy.md)")
    ranking_refolding: bool = Field(description="The ranking's posteriors are being refolded without the user in the "
                                    "background (true until the refold is swapped in, within about a second)")


class ExportedEvent(BaseModel):
    app: str
    event_id: str
    user_id: str
    type: str
    timestamp: float
    item_id: str | None = None
    value: float | None = None
    text: str | None = None
    scope: str = "item"
    target: str | None = None
    context: dict[str, Any] | None = None


class SequenceEntry(BaseModel):
    item_id: str | None
    type: str
    value: float | None
    timestamp: float
    text: str | None
    event_id: str | None


class StateSummary(BaseModel):
    """The user's folded online state."""

    n_events: int
    last_timestamp: float
    sequence: list[SequenceEntry] = Field(description="The events the models read, oldest first (the newest `sequence_length`)")
    consumed: list[str]
    blocked: dict[str, list[str]]
    liked: list[str]
    disliked: list[str] = Field(description="`scope:target`")
    skipped: list[str] = Field(description="`scope:target`")


class ExportedImpression(BaseModel):
    """One item shown to the user (the impression log's record)."""

    impression_id: str
    request_id: str
    app: str
    user_id: str
    item_id: str
    position: int
    timestamp: float
    propensity: float
    explored: bool
    policy: str
    pool: list[str]
    pool_propensities: list[float]
    pool_scores: list[float]
    event_seq: int | None
    origin: str
    experiment: str = Field("", description="The live experiment the slate was part of (\"\": none)")
    variant: str = Field("", description="The variant (in an interleaved slate, the team) that placed the item")


class PendingReward(BaseModel):
    item_id: str
    shown_at: float
    impression_id: str


class Slate(BaseModel):
    items: list[str]
    event_seq: int = Field(description="The event log position it was served at")
    served_at: float
    request_id: str
    reacted: list[str]


class TrainedVersion(BaseModel):
    app: str
    version: str
    promoted: bool
    created: str
    log_position: int | None = Field(description="The event log position its training data reached (null: not recorded)")


class UserExport(BaseModel):
    """Everything held on one user."""

    app: str
    user_id: str
    events: list[ExportedEvent] = Field(description="Their events in the log, in log order")
    state: StateSummary | None = Field(description="Their online state (null: none)")
    impressions: list[ExportedImpression] = Field([], description="What they were shown, in log order")
    pending_rewards: list[PendingReward] = Field([], description="Impressions waiting for their feedback")
    last_slates: list[Slate] = Field([], description="Their last slates, oldest first")
    model_versions: list[TrainedVersion] = Field([], description="Model versions trained on their events")


class Health(BaseModel):
    status: str = Field(description="`ok`, or `starting` while the state is rebuilt")
    uptime_s: float
    scorer: str
    workers: int = Field(description="Ready worker processes of the server")
    warm_workers: int = Field(description="Workers whose background start-up work is done too")
    events: int = Field(description="Events accepted by this process since start")
    log_position: list[int]


class AppSummary(BaseModel):
    app: str
    items: int
    users: int


class Apps(BaseModel):
    apps: list[AppSummary]


class UserSummary(BaseModel):
    user_id: str
    n_events: int
    last_seen: float


class Users(BaseModel):
    app: str
    total: int = Field(description="Users matching the prefix")
    users: list[UserSummary]


class Latency(BaseModel):
    p50: float | None
    p99: float | None
    count: int


class Latencies(BaseModel):
    recommendations: Latency
    events: Latency
    all: Latency
    window_s: float


class Totals(BaseModel):
    events_accepted: int
    events_duplicate: int
    events_rejected: int
    recommendations: int
    impressions: int
    by_type: dict[str, int]


class CatalogEntry(BaseModel):
    model_config = ConfigDict(extra="allow")
    item_id: str
    title: str | None = None
    categories: list[str] | None = None


class CatalogGlance(BaseModel):
    items: int
    users: int
    popular: list[CatalogEntry] = Field(description="Most popular items now, with `popularity` (1 = the most)")
    newest: list[CatalogEntry] = Field(description="Newest items, with `updated_at`")


class StreamLag(BaseModel):
    """Where one stream consumer group stands on one partition (as it last reported)."""

    model_config = ConfigDict(extra="allow")
    group: str
    topic: str
    partition: int
    position: int = Field(description="The next offset the group reads; -1 before any commit")
    high: int = Field(description="The partition's high watermark")
    lag: int
    consumer: str = Field(description="host:pid of the consumer that reported")
    updated_at: float


class Stats(BaseModel):
    """The dashboard's figures. Parts that describe pluggable components (`model`, `learner`)
    carry what the component reports."""

    model_config = ConfigDict(extra="allow")
    app: str
    time: float
    uptime_s: float
    ready: bool
    interval_s: float
    throughput: dict[str, float]
    latency_ms: Latencies
    events_total: int = Field(description="Events of the app in the log, however they arrived (HTTP, a stream, an import)")
    streams: list[StreamLag]
    totals: Totals
    feedback: dict[str, Any]
    model: dict[str, Any]
    learner: dict[str, Any] | None
    learners: list[dict[str, Any]]
    catalog: CatalogGlance
    series: list[dict[str, Any]]


# ---- experiments -------------------------------------------------------------------------------


# RankingConfig's own checks, as the schema states them (the config still checks every value; a
# field without an entry takes any value of its type, an integer >= 0); the caps bound one
# request's work, which the config does not.
OVERRIDE_BOUNDS: dict[str, dict[str, Any]] = {
    "half_life_s": {"gt": 0}, "diversity": {"ge": 0, "le": 1}, "streak_diversity": {"ge": 0, "le": 1},
    "streak_forget": {"ge": 0, "le": 1}, "explore_epsilon": {"ge": 0, "le": 1}, "category_prior": {"gt": 0},
    "streak_pool": {"ge": 1}, "pool": {"ge": 1}, "explore_pool": {"ge": 1}, "explore_draws": {"ge": 1, "le": 4096},
    "recency_events": {"ge": 0}, "contextual_ridge": {"gt": 0}, "contextual_noise": {"gt": 0},
}
INT_CAP = 100_000
# names are written to the impression log's columns and shown on the dashboard: plain text only
VARIANT_NAME = r"^[A-Za-z0-9_.:-]{1,64}$"
EXPERIMENT_NAME = r"^[A-Za-z0-9 _.,:;/()+=@#-]{1,128}$"


def _ranking_overrides() -> type[BaseModel]:
    """Every :class:`~liverec.ranking.config.RankingConfig` field a variant may override, typed
    as the config types it (new fields join by themselves)."""
    import typing
    from dataclasses import fields

    from pydantic import create_model

    from ..experiments.spec import NOT_PER_VARIANT
    from ..ranking import config as ranking_config

    hints = typing.get_type_hints(ranking_config.RankingConfig)
    spec: dict[str, Any] = {}
    for f in fields(ranking_config.RankingConfig):
        if f.name in NOT_PER_VARIANT:
            continue
        hint: Any = hints[f.name]
        bounds = dict(OVERRIDE_BOUNDS.get(f.name, {}))
        if hint is int:
            bounds = {"ge": 0, "le": INT_CAP, **bounds}
        elif f.name == "explore_policy":
            hint = Literal[tuple(ranking_config.EXPLORE_POLICIES)]  # type: ignore[valid-type]
        elif f.name == "contextual_learn":
            hint = Literal[tuple(ranking_config.CONTEXTUAL_LEARN)]  # type: ignore[valid-type]
        elif f.name == "explore_slots":
            hint = tuple[typing.Annotated[int, Field(ge=0, le=1000)], ...]
            bounds = {"max_length": 64}
        spec[f.name] = (hint | None, Field(None, **bounds))
    return create_model("RankingOverrides", __config__=ConfigDict(extra="forbid", allow_inf_nan=False), **spec)


RankingOverrides = _ranking_overrides()
RankingOverrides.__doc__ = ("Ranking settings of the app this variant overrides (any field of the app's ranking config "
                            "but `reward_window_s`); checked by the ranking's own rules (422 naming the field)")


class VariantIn(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    name: str | None = Field(None, pattern=VARIANT_NAME,
                             description="Unique in the experiment (default: A, B, C... by position); the first is the control")
    share: float | None = Field(None, gt=0, le=1_000_000, description="Relative weight of the variant among the "
                                "experiment's users (default 1: an equal split); ignored by interleaving")
    model_version: str | None = Field(None, pattern=r"^v[0-9]{6}$",
                                      description="A registered model version of the app to score with (null: the promoted one)")
    ranking: RankingOverrides = Field(default_factory=RankingOverrides)  # type: ignore[valid-type]


class ExperimentIn(BaseModel):
    """A new experiment of the app. Bodies this schema accepts can still answer 422: variant
    names must differ, an interleaving has exactly two variants, a model version must be
    registered in the app, and ranking overrides must pass the ranking's own checks."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    name: str = Field(pattern=EXPERIMENT_NAME, description="For people: letters, digits, spaces and `_.,:;/()+=@#-`")
    kind: Literal["split", "interleave"] = Field("split", description="`split`: each user sees one variant (by a "
                                                 "hash of experiment and user); `interleave`: two rankers, one slate (team draft)")
    variants: list[VariantIn] = Field(min_length=2, max_length=16)
    traffic: float = Field(1.0, gt=0, le=1, description="Share of the app's users in the experiment")
    window_s: float | None = Field(None, gt=0, description="Feedback this long after an impression counts for it "
                                   "(null: the app's reward window)")
    confidence: float = Field(0.95, ge=0.5, le=0.999, description="Level of the intervals and the verdict")


class Interval(BaseModel):
    value: float | None = Field(description="Null without impressions")
    low: float | None = Field(description="Null with fewer than two users")
    high: float | None


class VariantOut(BaseModel):
    name: str
    share: float
    model_version: str | None
    ranking: dict[str, Any]
    users: int
    impressions: int
    ctr: Interval = Field(description="Impressions with positive feedback (click, like, ...) / impressions")
    like_rate: Interval = Field(description="Impressions liked / impressions")
    negative_share: Interval = Field(description="Impressions with negative feedback (skip, dislike, block) / impressions")


class Comparison(BaseModel):
    variant: str
    control: str = Field(description="The first variant")
    ctr: Interval = Field(description="The difference variant - control, with its interval")
    like_rate: Interval
    negative_share: Interval
    verdict: str = Field(description="On CTR: `B better than A at 95%`, or `no difference yet`")


class InterleavingOut(BaseModel):
    slates: int
    slates_with_feedback: int
    wins: dict[str, int] = Field(description="Slates each team won (more credit: +1 a positive, -1 a negative)")
    ties: int = Field(description="Slates with feedback and equal credit")
    p_value: float | None = Field(description="Two-sided sign test of wins against losses (null: no decided slate)")
    verdict: str


class ExperimentOut(BaseModel):
    """An experiment with its variants' metrics. Intervals are user-clustered (the impressions of
    one user are correlated): the delta method for a ratio of per-user sums, the normal-theory
    form of a bootstrap by user."""

    experiment_id: str
    app: str
    name: str
    kind: str
    status: str = Field(description="`running` or `stopped`")
    created_at: float
    stopped_at: float | None
    traffic: float
    window_s: float
    confidence: float
    variants: list[VariantOut]
    comparisons: list[Comparison] = Field(description="Each variant after the first against the first")
    interleaving: InterleavingOut | None = Field(description="Wins, ties and the sign test (interleaving experiments)")
    verdict: str


class ExperimentList(BaseModel):
    app: str
    experiments: list[ExperimentOut] = Field(description="Newest first")
