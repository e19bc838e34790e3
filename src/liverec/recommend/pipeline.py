"""The request path as named stages: history -> candidates/scorer -> policy -> ranker.

Each stage is a plain object with one method, so any of them can be replaced:

- history: the user's online state (:class:`liverec.state.StateStore`), read as it is now;
- candidates + scorer: a :class:`~liverec.recommend.scoring.Scorer` returns scores for its
  candidate set (all items for the Transformer, or a retrieved pool of a large catalog:
  :mod:`liverec.recommend.retrieval`; neighbours + popular items for the baseline); a scorer
  that returned part of its catalog is asked for more while fewer than ``n`` candidates pass the
  policy; a fallback scorer (popularity) is used when the main one has nothing for this app;
- policy: hard filters (blocks by any scope, consumed items unless asked, ``exclude``, category
  filter) — see :class:`Policy`;
- ranker: the top ``n`` by score, ties kept in the scorer's candidate order (deterministic);
- ranking stages (optional, :class:`liverec.ranking.stages.RankingStages`): when set they replace
  the plain ranker: feedback policy, diversity, exploration and explanations, always on the
  candidates the policy allows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, NamedTuple, Protocol

import numpy as np

from ..state import UserState
from ..store.base import Item
from .scoring import Scored, Scorer


@dataclass(frozen=True)
class RecommendRequest:
    app: str
    user_id: str | None
    n: int = 10
    exclude: frozenset[str] = frozenset()
    categories: frozenset[str] = frozenset()
    include_consumed: bool = False
    diversity: float | None = None  # MMR trade-off 0..1 (None: the app's configured default)
    explore: bool | None = None  # exploration slots on/off (None: the app's configured default)
    now: float | None = None  # reference time of feedback decay (None: the user's latest event)
    # A live experiment's variant (liverec.experiments): the ranking config to use instead of the
    # app's (a RankingConfig), the model version to score with instead of the promoted one, and
    # the tags its impressions carry.
    config: Any = None
    model_version: str | None = None
    experiment: str = ""
    variant: str = ""


@dataclass
class Recommendation:
    item_id: str
    score: float
    because: list[dict] = field(default_factory=list)
    propensity: float = 1.0  # probability the logging policy placed this item here
    explored: bool = False
    request_id: str | None = None


class RankingStage(Protocol):
    """Stages after the hard filters (see :mod:`liverec.ranking.stages`)."""

    def candidates_wanted(self, request: RecommendRequest, state: UserState | None = None) -> int:
        """How many scored candidates the stage would like to see for this user."""

    def rank(self, request: RecommendRequest, state: UserState | None, scored: Scored, allow: Callable[[str], bool]) -> list[Recommendation]:
        """The final slate; every item in it must pass ``allow``."""


class Candidates(NamedTuple):
    """What the stages after the scorer work on, for one request."""

    state: UserState | None
    scored: Scored
    allow: Callable[[str], bool]
    scorer: Scorer


class Policy:
    """Hard filters applied after scoring. ``items`` looks up catalog records (may be absent)."""

    def __init__(self, items: Callable[[str, str], Item | None]):
        self._items = items

    def allows(self, request: RecommendRequest, state: UserState | None, item_id: str) -> bool:
        if item_id in request.exclude:
            return False
        if state is not None and not request.include_consumed and item_id in state.consumed:
            return False
        scoped_blocks = state is not None and any(scope != "item" for scope in state.blocked)
        item = self._items(request.app, item_id) if (request.categories or scoped_blocks) else None
        if request.categories and (item is None or request.categories.isdisjoint(item.categories)):
            return False
        if state is not None and state.blocked:
            return not state.is_blocked(item_id, item.attribute_values() if item is not None else None)
        return True


class Ranker:
    """Top-n by score; walks the candidates best-first and keeps those the policy allows."""

    def rank(self, scored: Scored, n: int, allow: Callable[[str], bool]) -> list[Recommendation]:
        if len(scored.item_ids) == 0 or n <= 0:
            return []
        # Score descending; ties keep the scorer's candidate order (deterministic).
        order = np.argsort(-scored.scores, kind="stable")
        out: list[Recommendation] = []
        for k in order:
            item_id = scored.item_ids[k]
            if allow(item_id):
                out.append(Recommendation(item_id, float(scored.scores[k])))
                if len(out) >= n:
                    break
        return out


def _passing(item_ids: np.ndarray, allow: Callable[[str], bool], n: int) -> bool:
    """Whether at least ``n`` of ``item_ids`` pass ``allow`` (stops at the ``n``-th)."""
    if n <= 0:
        return True
    found = 0
    for item_id in item_ids:
        if allow(item_id):
            found += 1
            if found >= n:
                return True
    return False


class Pipeline:
    """history -> scorer (with fallback) -> policy -> ranker."""

    def __init__(
        self,
        history: Callable[[str, str], UserState | None],
        scorer: Scorer,
        policy: Policy,
        ranker: Ranker | None = None,
        fallback: Scorer | None = None,
        ranking: RankingStage | None = None,
        versions: Callable[[str, str], Scorer | None] | None = None,
    ):
        self.history = history
        self.scorer = scorer
        self.fallback = fallback
        self.policy = policy
        self.ranker = ranker or Ranker()
        self.ranking = ranking
        self.versions = versions  # (app, model version) -> a scorer of that version (experiment variants)

    def recommend(self, request: RecommendRequest) -> tuple[list[Recommendation], str]:
        """Ranked items and the name of the scorer that produced them."""
        c = self.candidates(request)
        if self.ranking is not None:
            return self.ranking.rank(request, c.state, c.scored, c.allow), c.scorer.name
        recs = self.ranker.rank(c.scored, request.n, c.allow)
        return recs, c.scorer.name

    def candidates(self, request: RecommendRequest) -> Candidates:
        """history -> scorer (the request's model version when it names one) -> hard filters."""
        state = self.history(request.app, request.user_id) if request.user_id is not None else None
        # Ask for enough candidates to survive the filters.
        want = request.n + (len(state.consumed) if state is not None else 0) + len(request.exclude)
        if self.ranking is not None:
            want += self.ranking.candidates_wanted(request, state)
        scorer = self.scorer
        if request.model_version is not None and self.versions is not None:
            scorer = self.versions(request.app, request.model_version) or scorer
        scored = scorer.score(request.app, state, want)
        if len(scored.item_ids) == 0 and self.fallback is not None:
            scorer = self.fallback
            scored = scorer.score(request.app, state, want)
        allow = lambda item: self.policy.allows(request, state, item)  # noqa: E731
        scored = self._enough(scorer, request, state, scored, want, allow)
        return Candidates(state, scored, allow, scorer)

    @staticmethod
    def _enough(scorer: Scorer, request: RecommendRequest, state: UserState | None, scored: Scored, want: int,
                allow: Callable[[str], bool]) -> Scored:
        """Candidates of which at least ``request.n`` pass the filters: a scorer that retrieved a
        part of its catalog is asked again for 4x as many while fewer pass (blocks of a whole
        category can empty a pool), until it returns every item or no more."""
        while scored.partial and not _passing(scored.item_ids, allow, request.n):
            want *= 4
            wider = scorer.score(request.app, state, want)
            if len(wider.item_ids) <= len(scored.item_ids):
                break
            scored = wider
        return scored

    def scorer_for(self, app: str) -> Scorer:
        """The scorer that answers ``app``: the main one if it serves the app, else the fallback."""
        if self.fallback is None or self.scorer.serves(app):
            return self.scorer
        return self.fallback

    def similar(self, app: str, item_id: str, n: int) -> list[tuple[str, float]]:
        """The scorer's similar items, else the fallback's."""
        pairs = self.scorer.similar(app, item_id, n)
        if not pairs and self.fallback is not None and self.fallback is not self.scorer:
            pairs = self.fallback.similar(app, item_id, n)
        return pairs

    def set_scorer(self, scorer: Scorer) -> None:
        """Swap the main scorer (one attribute assignment: requests in flight keep the old one)."""
        self.scorer = scorer
