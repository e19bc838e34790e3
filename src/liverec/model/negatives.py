"""Negative feedback as a training signal: the not-to-recommend term of the loss.

Skips, dislikes and blocks are model *input* (their type, value and time embeddings say what the
user did) and were never a target. :class:`NegativeFeedback` makes them a training signal too: at
the positions around a negative event on item ``j`` the loss adds

    w * -log(1 - p(j))  +  sum over j's nearest items n of  w_n * -log(1 - p(n))

where ``p`` is the model's full-softmax distribution over the catalog at that position
("not-to-recommend", as in Google's RecSys 2023 work on learning from negative user feedback in
sequential recommenders: the push is proportional to how much the model would recommend the
item). The positions are the one just before the event (the state in which the item was
dismissed) and the ``horizon`` positions from the event on (the states that have read it: what
to show after a dislike). ``j``'s neighbours are its nearest items by cosine of the model's own
item vectors (detached, the vectors of the step), each weighted ``weight * neighbour_weight /
neighbours``: a dislike says a little about the items like it. The strength of an event follows
its type's weight (a skip a third of a dislike, a block five thirds).

Data with ratings only (MovieLens) has no dislike events but low ratings: with ``low_rating`` a
rating at or below it counts as negative feedback for the positions that have read it (the rated
item is still the target before it: the user did watch it), and with ``low_rating_as_dislike`` a
share of those ratings is read in *training input* as a dislike event (type dislike, the rating's
value kept), so the model learns what a dislike event says before one is ever served. The input
encoding itself is unchanged.

>>> import torch
>>> nf = NegativeFeedback(weight=1.0, neighbours=1, neighbour_weight=0.5, horizon=2)
>>> items = torch.tensor([[1, 2, 3, 4]])
>>> types = torch.tensor([[TYPE_IDS["view"], TYPE_IDS["dislike"], TYPE_IDS["view"], TYPE_IDS["view"]]])
>>> unit = torch.nn.functional.normalize(torch.tensor([[0., 0.], [1., 0.], [0.9, 0.1], [0., 1.], [0.1, 0.9]]), dim=1)
>>> idx, w = nf.avoid(items, types, torch.zeros_like(items), unit)
>>> [sorted(zip(idx[0, q][w[0, q] > 0].tolist(), w[0, q][w[0, q] > 0].tolist())) for q in range(4)]
[[(0, 0.5), (1, 1.0)], [(0, 0.5), (1, 1.0)], [(0, 0.5), (1, 1.0)], []]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from liverec.events import DEFAULT_TYPES
from liverec.model.features import N_TYPES, NEGATIVE_TYPES, TYPE_IDS, value_bucket


def _strength_table() -> torch.Tensor:
    """(N_TYPES,) strength of each negative type's event, relative to a dislike (0: not negative)."""
    table = torch.zeros(N_TYPES)
    unit = abs(DEFAULT_TYPES["dislike"].weight)
    for name in NEGATIVE_TYPES:
        table[TYPE_IDS[name]] = abs(DEFAULT_TYPES[name].weight) / unit
    return table


_STRENGTH = _strength_table()
_RATING = TYPE_IDS["rating"]
_DISLIKE = TYPE_IDS["dislike"]


@dataclass(frozen=True)
class NegativeFeedback:
    """Settings of the not-to-recommend term (see the module docstring)."""

    weight: float = 1.0  # on the item itself, per unit of strength (a dislike is 1)
    neighbours: int = 10  # the item's nearest items (cosine of the model's item vectors) pushed too
    neighbour_weight: float = 0.5  # their share of the push: each gets weight * neighbour_weight / neighbours
    horizon: int = 5  # positions from the event on (itself included) that are pushed away
    low_rating: float | None = None  # ratings at or below this are negative feedback too (None: off)
    low_rating_as_dislike: float = 0.0  # training input: share of those read as a dislike event

    def __post_init__(self) -> None:
        if self.weight < 0 or self.neighbour_weight < 0 or self.neighbours < 0 or self.horizon < 1:
            raise ValueError(f"negative feedback settings out of range: {self}")
        if not 0.0 <= self.low_rating_as_dislike <= 1.0:
            raise ValueError(f"low_rating_as_dislike {self.low_rating_as_dislike}: expected a share in [0, 1]")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def _low(self, types: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """(B, T) bool: ratings at or below ``low_rating`` (``values`` are value buckets)."""
        if self.low_rating is None:
            return torch.zeros_like(types, dtype=torch.bool)
        top = int(value_bucket(np.array([self.low_rating]))[0])
        return (types == _RATING) & (values > 0) & (values <= top)

    def read_low_ratings_as_dislikes(self, types: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """(B, T) training input types: a random ``low_rating_as_dislike`` share of the low ratings
        read as dislike events (torch's generator: the training seed decides)."""
        if self.low_rating is None or self.low_rating_as_dislike <= 0:
            return types
        low = self._low(types, values)
        pick = low & (torch.rand(types.shape, device=types.device) < self.low_rating_as_dislike)
        return torch.where(pick, torch.full_like(types, _DISLIKE), types)

    def avoid(self, items: torch.Tensor, types: torch.Tensor, values: torch.Tensor, unit: torch.Tensor,
              next_negative: torch.Tensor | None = None,
              next_negative_type: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The items each position's state is pushed away from, and their weights.

        ``items``, ``types``, ``values`` (B, T): a window as stored (before any input aliasing);
        ``unit`` (N+1, D): unit item vectors (row 0 padding) for the neighbours;
        ``next_negative`` / ``next_negative_type`` (B, T): the item and type of the event after
        each position when it is negative feedback (:class:`~liverec.model.data.Windows`: it sees
        past a window's last input; without them the next input stands in). Returns ``idx``
        (B, T, K) 0-based items and ``w`` (B, T, K) weights (0 = an unused slot).
        """
        b, t = items.shape
        dev = items.device
        explicit = _STRENGTH.to(dev)[types] * (items > 0)  # (B, T) skip / dislike / block
        low = self._low(types, values) & (items > 0)
        strength = torch.where(low, torch.ones_like(explicit), explicit) * self.weight  # (B, T)
        # slots: offset o = 0..horizon-1 -> the event o positions back (this position or earlier);
        # offset horizon -> the next event (explicit negatives only: a low rating is the target there)
        src_items, src_w = [], []
        for o in range(self.horizon):
            it = torch.zeros_like(items)
            w = torch.zeros_like(strength)
            if o < t:
                it[:, o:] = items[:, : t - o]
                w[:, o:] = strength[:, : t - o]
            src_items.append(it)
            src_w.append(w)
        if next_negative is not None and next_negative_type is not None:
            it = next_negative.long()
            w = _STRENGTH.to(dev)[next_negative_type.long()] * (it > 0) * self.weight
        else:
            it = torch.zeros_like(items)
            w = torch.zeros_like(strength)
            it[:, :-1] = items[:, 1:]
            w[:, :-1] = (explicit * self.weight)[:, 1:]
        src_items.append(it)
        src_w.append(w)
        own = torch.stack(src_items, -1)  # (B, T, S) 1-based, 0 = none
        own_w = torch.stack(src_w, -1)  # (B, T, S)
        if self.neighbours <= 0 or self.neighbour_weight <= 0 or not bool((own_w > 0).any()):
            return (own - 1).clamp(min=0), own_w
        k = min(self.neighbours, unit.shape[0] - 2)
        if k <= 0:
            return (own - 1).clamp(min=0), own_w
        used = torch.unique(own[own_w > 0])  # (U,) 1-based items that are pushed
        with torch.no_grad():
            sims = unit[used] @ unit[1:].T  # (U, N)
            sims[torch.arange(len(used), device=dev), used - 1] = float("-inf")  # not itself
            near = sims.topk(k, dim=1).indices  # (U, k) 0-based
        table = torch.zeros(int(unit.shape[0]), k, dtype=torch.int64, device=dev)  # 1-based item -> its neighbours
        table[used] = near
        nb = table[own]  # (B, T, S, k)
        nb_w = (own_w * (self.neighbour_weight / k))[..., None].expand_as(nb)  # (B, T, S, k)
        idx = torch.cat([(own - 1).clamp(min=0), nb.reshape(b, t, -1)], -1)  # (B, T, S * (k + 1))
        w = torch.cat([own_w, nb_w.reshape(b, t, -1)], -1)
        return idx, w
