"""The scorer seam of the pipeline: what any model must offer the service.

A scorer sees every committed event (``observe``; incremental models update counters there) and,
at request time, scores candidates for a user's *current* state (``score``). The co-occurrence
baseline (:mod:`liverec.recommend.cooccurrence`) and the Transformer
(:mod:`liverec.model.scorer`) both implement it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from ..events import Event
from ..state import UserState


@dataclass(frozen=True, slots=True)
class Scored:
    """Scores for a candidate set: ``item_ids[k]`` has ``scores[k]`` (higher is better)."""

    item_ids: np.ndarray  # (K,) object array of str
    scores: np.ndarray  # (K,) float32

    @staticmethod
    def empty() -> "Scored":
        return Scored(np.empty(0, dtype=object), np.empty(0, dtype=np.float32))


class Scorer(Protocol):
    """A model behind the pipeline."""

    name: str

    def observe(self, app: str, event: Event) -> None:
        """Called for every committed event, in log order (after the user state was updated)."""

    def forget_user(self, app: str, events: Sequence[Event]) -> None:
        """Remove what ``events`` (one deleted user's, in log order) contributed, where the
        scorer keeps per-event statistics."""

    def score(self, app: str, state: UserState | None, n: int) -> Scored:
        """Score candidates for a user (``None``: no history). ``n`` is how many the caller will
        show; a scorer may return more (the policy stage filters some out)."""

    def similar(self, app: str, item_id: str, n: int) -> list[tuple[str, float]]:
        """Items most similar to ``item_id``, best first (excluding the item itself)."""
