"""One typed settings object; every field can be set by an env var with the ``LIVEREC_`` prefix.

``liverec.env.example`` lists every field with its default (``tests/test_config.py`` holds the
two to each other).

>>> Settings(data_dir="/tmp/x").store_url_resolved().startswith("sqlite:///")
True
>>> Settings(learner="shop, news").learner
['shop', 'news']
>>> Settings.env_var("ranking_config")
'LIVEREC_RANKING_CONFIG'
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .events import DEFAULT_TYPES, EventRules, TypeSpec

ENV_PREFIX = "LIVEREC_"


class Settings(BaseSettings):
    # An empty variable (``LIVEREC_RANKING_CONFIG=``) means unset: the default, not an empty value.
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", env_ignore_empty=True)

    data_dir: Path = Field(Path("data"), description="Where the embedded store, models and caches live.")
    store_url: str | None = Field(None, description="Backend URL; default sqlite:///<data_dir>/liverec.db.")
    host: str = Field("127.0.0.1", description="Address the API listens on.")
    port: int = Field(8000, ge=1, le=65535, description="Port the API listens on.")
    workers: int = Field(1, ge=1, description="API worker processes.")
    worker_index: int = Field(
        0, ge=0, description="This worker's index among the API workers (set by `serve --workers`): worker 0 writes the "
        "scheduled snapshots of the folds for all of them.",
    )
    request_threads: int = Field(
        8, ge=1, description="Threads per worker that run recommendation requests (Python runs one at a time; "
        "more only queue on the interpreter lock, while concurrent requests share one model pass).",
    )
    max_batch: int = Field(10_000, ge=1, description="Most events accepted in one POST /v1/events.")
    sequence_length: int = Field(200, ge=1, description="Recent interactions kept per user.")
    rating_min: float = Field(0.0, description="Lowest accepted rating (inclusive).")
    rating_max: float = Field(5.0, description="Highest accepted rating (inclusive).")
    type_weights: dict[str, float] = Field(
        default_factory=dict, description="Override per-type weights, e.g. {\"view\": 0.5}; the sign sets polarity."
    )
    scorer: str = Field("auto", description="auto (promoted model if any, else cooccurrence) | cooccurrence | transformer")
    ann_threshold: int = Field(
        50_000, ge=1, description="Catalogs of at least this many items retrieve the Transformer's candidates from an "
        "approximate index (faiss IVF, int8 codes) instead of scoring every item exactly.",
    )
    experiment_model_versions: int = Field(
        2, ge=0, description="Model versions other than the promoted ones a worker keeps loaded for live experiments' "
        "variants (loaded on first use, least recently used dropped first); 0 = variants cannot name a version.",
    )
    snapshot_interval_s: float = Field(
        60.0, ge=0, allow_inf_nan=False,
        description="Seconds between background snapshots of the in-memory folds; 0 = no snapshots.",
    )
    snapshot_min_tail: int = Field(
        10_000, ge=1, description="Events and changes logged since the newest snapshot before another is written "
        "(a shorter tail folds in well under a second at start; encoding every fold again costs seconds of CPU).",
    )
    heap_trim_s: float = Field(
        30.0, ge=0, allow_inf_nan=False,
        description="Seconds between passes that hand memory the allocator holds free back to the system (glibc "
        "malloc_trim; serving and learner processes); 0 = never.",
    )
    # NoDecode: the variable is a comma-separated list (LIVEREC_LEARNER=shop,news), not JSON.
    learner: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Apps that run an in-process online learner; none by default."
    )
    learner_interval: float = Field(
        10.0, gt=0, allow_inf_nan=False, description="Seconds between the online learner's updates."
    )
    learner_bias_lr: float = Field(
        0.0, ge=0, allow_inf_nan=False, description="Per-event output-bias learning rate of the online learner; 0 = off."
    )
    ranking_config: Path | None = Field(
        None, description="JSON file of per-app ranking settings (liverec.ranking.config); none = the defaults."
    )
    ranking_seed: int = Field(0, description="Seed of the exploration bandit.")
    auth: Literal["auto", "required"] = Field(
        "auto", description="auto: API keys are required once one exists (liverec keys create), the service runs "
        "open before; required: always (with no key, every route but /v1/health answers 401).",
    )
    # repr=False: kept out of logs and tracebacks
    auth_secret: str | None = Field(
        None, min_length=32, repr=False, description="Server secret the API keys are hashed with (HMAC-SHA256); "
        "default: DATA_DIR/auth.secret, made with the first key. Every machine serving one store needs the same.",
    )
    key_rate: float = Field(
        100.0, gt=0, allow_inf_nan=False, description="A new API key's sustained requests per second (its token "
        "bucket's refill rate), unless `liverec keys create --rate` says otherwise.",
    )
    key_burst: float = Field(
        200.0, ge=1, allow_inf_nan=False, description="A new API key's burst: requests it may make at once after "
        "an idle spell (its token bucket's size), unless `liverec keys create --burst` says otherwise.",
    )
    rate_limit_url: str | None = Field(
        None, description="redis://host:port/db: the keys' token buckets in Redis, one per key for every machine; "
        "default: a file in the data dir mapped by every worker of this machine.",
    )

    @classmethod
    def env_var(cls, name: str) -> str:
        """The environment variable that sets field ``name``."""
        if name not in cls.model_fields:
            raise KeyError(f"{name!r}: not a settings field; known: {', '.join(cls.model_fields)}")
        return ENV_PREFIX + name.upper()

    @field_validator("learner", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [app.strip() for app in value.split(",") if app.strip()]
        return value

    @field_validator("type_weights")
    @classmethod
    def _known_types(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(DEFAULT_TYPES))
        if unknown:
            raise ValueError(f"unknown event types {unknown}; expected some of {sorted(DEFAULT_TYPES)}")
        return value

    @field_validator("scorer")
    @classmethod
    def _known_scorer(cls, value: str) -> str:
        if value not in ("auto", "cooccurrence", "transformer"):
            raise ValueError(f"scorer {value!r}: expected auto, cooccurrence or transformer")
        return value

    def store_url_resolved(self) -> str:
        from .store import default_url

        return self.store_url or default_url(self.data_dir)

    def types(self) -> dict[str, TypeSpec]:
        """The event type table with weight overrides applied (the sign of a weight sets its polarity)."""
        table = dict(DEFAULT_TYPES)
        for name, weight in self.type_weights.items():
            polarity = "positive" if weight > 0 else "negative" if weight < 0 else "neutral"
            table[name] = replace(table[name], polarity=polarity, weight=weight)
        return table

    def event_rules(self) -> EventRules:
        return EventRules(types=self.types(), rating_min=self.rating_min, rating_max=self.rating_max)
