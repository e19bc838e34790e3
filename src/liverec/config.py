"""One typed settings object; every field can be set by an env var with the ``LIVEREC_`` prefix.

>>> Settings(data_dir="/tmp/x").store_url_resolved().startswith("sqlite:///")
True
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .events import DEFAULT_TYPES, EventRules, TypeSpec


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LIVEREC_", extra="forbid")

    data_dir: Path = Field(Path("data"), description="Where the embedded store, models and caches live.")
    store_url: str | None = Field(None, description="Backend URL; default sqlite:///<data_dir>/liverec.db.")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    max_batch: int = Field(10_000, ge=1, description="Most events accepted in one POST /v1/events.")
    sequence_length: int = Field(200, ge=1, description="Recent interactions kept per user.")
    rating_min: float = 0.0
    rating_max: float = 5.0
    type_weights: dict[str, float] = Field(
        default_factory=dict, description="Override per-type weights, e.g. {\"view\": 0.5}; the sign sets polarity."
    )
    scorer: str = Field("auto", description="auto (promoted model if any, else cooccurrence) | cooccurrence | transformer")

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
            spec = table[name]
            polarity = "positive" if weight > 0 else "negative" if weight < 0 else "neutral"
            table[name] = TypeSpec(polarity, weight, spec.in_sequence, spec.needs_item, spec.needs_text)
        return table

    def event_rules(self) -> EventRules:
        return EventRules(types=self.types(), rating_min=self.rating_min, rating_max=self.rating_max)
