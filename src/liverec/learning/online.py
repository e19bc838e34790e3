"""The online learner: committed events -> fine-tuned Transformer -> a new served version.

It listens to committed batches (``Service.listeners``) or tails the event log (``liverec learn``),
remembers which users acted, and on each :meth:`OnlineLearner.step` (every ``interval_s``, once
``min_events`` arrived):

1. copies the serving model (the served object is never trained in place);
2. gives items it has never seen a row, initialised from their text vector's nearest known
   items (:func:`~liverec.learning.finetune.init_new_items`);
3. fine-tunes on the acting users' sequences (each user's newest event held out) mixed with
   sequences of other users replayed from the state (``replay_users``), guarded: if NDCG@10 on
   the held-out events drops by more than ``tolerance`` the update is rolled back and not served;
4. publishes the new version (:class:`~liverec.learning.serving.DirectoryVersions`) and swaps the
   serving scorer in one assignment.

``staleness_s`` of a served version is the time from the oldest event it learned from to the
moment it was served (the target: within 60 s under a steady stream).
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..events import Event
from ..model.data import Sequences, input_windows, training_windows
from ..model.features import type_id
from ..model.text import HashingEncoder
from ..model.train import mask_seen
from ..model.transformer import FeedbackTransformer
from ..state import StateStore
from ..store.base import Item
from .finetune import FineTuneConfig, FineTuner, init_new_items
from .serving import DirectoryVersions, LearnedScorer, Vocabulary


@dataclass
class LearnerConfig:
    interval_s: float = 10.0  # how often the background thread tries an update
    min_events: int = 50  # events since the last update before one is tried
    replay_users: int = 256  # other users' sequences mixed in
    finetune: FineTuneConfig = field(default_factory=lambda: FineTuneConfig(steps=20, batch_size=64, lr=3e-4))
    seed: int = 0


@dataclass
class LearnerStats:
    updates: int = 0
    accepted: int = 0
    rejected: int = 0
    new_items: int = 0
    last_version: str | None = None
    last_staleness_s: float | None = None
    last_val_before: float | None = None
    last_val_after: float | None = None


def _sequences(states: list, vocab: Vocabulary, max_len: int) -> Sequences:
    """Sequences of the given users' states (items mapped through ``vocab``; unknown -> 0)."""
    items, types, values, ts = [], [], [], []
    for st in states:
        seq = list(st.sequence)[-(max_len + 1):]
        items.append([vocab.get(i.item_id) for i in seq])
        types.append([type_id(i.type) for i in seq])
        values.append([np.nan if i.value is None else i.value for i in seq])
        ts.append([i.timestamp for i in seq])
    return Sequences.from_lists(items, types, values, ts) if states else Sequences.from_lists([[]])


class OnlineLearner:
    """Incremental fine-tuning of one app's served Transformer."""

    def __init__(
        self,
        app: str,
        state: StateStore,
        serving: Callable[[], LearnedScorer],
        swap: Callable[[LearnedScorer], None],
        versions: DirectoryVersions,
        items: Callable[[str, str], Item | None],
        cfg: LearnerConfig | None = None,
    ) -> None:
        self.app = app
        self.state = state
        self.serving = serving
        self.swap = swap
        self.versions = versions
        self.items = items
        self.cfg = cfg or LearnerConfig()
        self.stats = LearnerStats()
        self._users: dict[str, float] = {}  # user -> oldest unlearned event time (wall clock of arrival)
        self._count = 0
        self._lock = threading.Lock()
        self._rng = np.random.default_rng(self.cfg.seed)
        self._tuner: FineTuner | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- event side -----------------------------------------------------------------------------
    def observe(self, events: list[Event]) -> None:
        """Listener of committed batches: remember who acted (cheap; learning happens in ``step``)."""
        now = time.time()
        with self._lock:
            for e in events:
                if e.app == self.app and e.item_id is not None:
                    self._users.setdefault(e.user_id, now)
                    self._count += 1

    # ---- learning side --------------------------------------------------------------------------
    def _grow(self, model: FeedbackTransformer, vocab: Vocabulary, new_ids: list[str]) -> tuple[FeedbackTransformer, Vocabulary, int]:
        """A model with rows for ``new_ids``, initialised from their text neighbours."""
        if not new_ids:
            return model, vocab, 0
        bigger_vocab = vocab.extended(new_ids)
        cfg = copy.deepcopy(model.cfg)
        cfg.n_items = len(bigger_vocab)
        bigger = FeedbackTransformer(cfg)
        old = model.state_dict()
        new = bigger.state_dict()
        for k, v in old.items():
            if new[k].shape == v.shape:
                new[k] = v
            else:  # item-sized tensors: copy the known rows, keep fresh ones for new items
                sl = tuple(slice(0, s) for s in v.shape)
                new[k][sl] = v
        bigger.load_state_dict(new)
        enc = HashingEncoder(64)
        texts = []
        for item_id in bigger_vocab.ids:
            it = self.items(self.app, item_id)
            texts.append(f"{it.title} {it.text} {' '.join(it.categories)}" if it is not None else "")
        text = np.zeros((len(bigger_vocab) + 1, 64), dtype=np.float32)
        text[1:] = enc.encode(texts)
        n = init_new_items(bigger, np.arange(len(vocab) + 1, len(bigger_vocab) + 1), np.arange(1, len(vocab) + 1), text)
        return bigger, bigger_vocab, n

    def step(self) -> dict | None:
        """One guarded update if enough events arrived; returns what happened (or ``None``)."""
        with self._lock:
            if self._count < self.cfg.min_events or not self._users:
                return None
            users, self._users, self._count = dict(self._users), {}, 0
        current = self.serving()
        max_len = current.model.cfg.max_len
        with self.state.lock:
            acting = [self.state.get(self.app, u) for u in users]
            acting = [copy.deepcopy(s) for s in acting if s is not None and len(s.sequence) >= 2]
            others = [u for u in self.state.users(self.app) if u not in users]
            pick = self._rng.choice(len(others), size=min(self.cfg.replay_users, len(others)), replace=False) if others else []
            replay = [copy.deepcopy(self.state.get(self.app, others[k])) for k in pick]
            replay = [s for s in replay if s is not None and len(s.sequence) >= 2]
        if not acting:
            return None
        model = copy.deepcopy(current.model)
        new_ids = sorted({i.item_id for s in acting for i in s.sequence if i.item_id and current.vocab.get(i.item_id) == 0})
        model, vocab, n_new = self._grow(model, current.vocab, new_ids)
        seqs = _sequences(acting, vocab, max_len)
        held = seqs.truncate_last(1)  # training: everything but each user's newest event
        targets = np.array([seqs.items[seqs.offsets[u + 1] - 1] for u in range(seqs.n_users)], dtype=np.int64)
        ok = targets > 0
        val_windows = input_windows(held, max_len, np.flatnonzero(ok))

        def validate(m: FeedbackTransformer) -> float:
            if not ok.any():
                return 0.0
            with torch.no_grad():
                m.eval()
                t = {k: torch.from_numpy(getattr(val_windows, k)) for k in ("items", "types", "values", "gaps")}
                scores = mask_seen(m.score_last(t["items"], t["types"], t["values"], t["gaps"]), t["items"])  # (V, N)
                tgt = torch.from_numpy(targets[ok] - 1)
                rank = (scores > scores.gather(1, tgt[:, None])).sum(1).numpy()
            return float(np.mean(np.where(rank < 10, 1.0 / np.log2(rank + 2.0), 0.0)))

        recent = training_windows(held, max_len)
        replay_w = training_windows(_sequences(replay, vocab, max_len), max_len) if replay else None
        self._tuner = FineTuner(model, self.cfg.finetune)  # the copy gets its own optimizer
        result = self._tuner.guarded_update(recent, replay_w, validate) if len(recent) else None
        self.stats.updates += 1
        self.stats.new_items += n_new
        out = {"users": len(acting), "new_items": n_new, "accepted": bool(result and result.accepted)}
        if result is None or not result.accepted:
            self.stats.rejected += 1
            if result is not None:
                out.update(val_before=result.before, val_after=result.after)
            return out
        version = self.versions.publish(self.app, model, vocab, {"val_ndcg10_before": result.before, "val_ndcg10_after": result.after,
                                                                 "users": len(acting), "new_items": n_new})
        scorer = LearnedScorer(self.app, model, vocab, version.version)
        self.swap(scorer)
        served_at = time.time()
        self.stats.accepted += 1
        self.stats.last_version = version.version
        self.stats.last_staleness_s = served_at - min(users.values())
        self.stats.last_val_before, self.stats.last_val_after = result.before, result.after
        out.update(version=version.version, val_before=result.before, val_after=result.after, staleness_s=self.stats.last_staleness_s)
        return out

    # ---- background thread ----------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"online-learner-{self.app}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.cfg.interval_s):
            self.step()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None
