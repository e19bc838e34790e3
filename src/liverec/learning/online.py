"""The online learner: committed events -> fine-tuned Transformer -> a new served version.

It listens to committed batches (``Service.listeners``) or tails the event log (``liverec learn``),
remembers which users acted, and on each :meth:`OnlineLearner.step` (every ``interval_s``, once
``min_events`` arrived):

1. copies the serving model (the served object is never trained in place);
2. gives items it has never seen a row: the served scorer's rows of catalog items it serves from
   their text are the model's from here on (:meth:`~liverec.model.scorer.TransformerScorer.export`),
   items acted on without a catalog record get a text-only row, or without text features one
   initialised from their text vector's nearest known items
   (:func:`~liverec.learning.finetune.init_new_items`);
3. moves the output bias one SGD step per new event (``bias_lr``; each user's newest event
   excluded, it validates), from the scores the model gives the event's prefix
   (:func:`~liverec.learning.finetune.bias_step`: the fast-moving part, what is popular now), then
   fine-tunes on the acting users' sequences (each user's newest event held out) mixed with
   sequences of other users replayed from the state (``replay_users``), guarded: if NDCG@10 on
   the held-out events drops by more than ``tolerance`` (and, the held-out set being small,
   significantly: ``significance`` standard errors of the paired per-event differences) the update
   is rolled back and not served,
   and its users stay pending, so the next update learns their events with the newer ones;
4. registers the new version in the app's :class:`~liverec.model.registry.ModelRegistry`,
   promotes it (the registry keeps the previous ones for rollback) and swaps the serving
   :class:`~liverec.model.scorer.TransformerScorer` in one assignment.

``staleness_s`` of a served version is the time from the oldest event it learned from to the
moment it was served (the target: within 60 s under a steady stream).

Deleted users (:meth:`OnlineLearner.forget_user`, fed by the ``user_deleted`` changes the learner's
process follows): their pending events leave the buffers, the optimizer's moments (computed from
the updates that learned from them) are dropped, and an update that read a state deleted before
it is registered is discarded. Each version records the log position its data reached
(``log_position``), so the registry can tell which versions learned from a user.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch

from ..catalog import encoder_text
from ..erasure import UserDeletion, deleted_since
from ..events import Event
from ..model.data import Sequences, input_windows, training_windows
from ..model.features import type_id
from ..model.negatives import NegativeFeedback
from ..model.registry import ModelRegistry
from ..model.scorer import TransformerScorer
from ..model.text import HashingEncoder
from ..model.train import mask_seen
from ..model.transformer import FeedbackTransformer
from ..state import ITEM, TIMESTAMP, TYPE, VALUE, StateStore
from ..store.base import Change, Item, StoreUnavailable
from .finetune import FineTuneConfig, FineTuner, bias_step, init_new_items

log = logging.getLogger(__name__)


@dataclass
class LearnerConfig:
    interval_s: float = 10.0  # how often the background thread tries an update
    min_events: int = 50  # events since the last update before one is tried
    replay_users: int = 256  # other users' sequences mixed in
    # the held-out set (each acting user's newest event) is small: a drop must also be significant
    # skips, dislikes and blocks in the acting users' sequences push their items (and neighbours) down
    finetune: FineTuneConfig = field(default_factory=lambda: FineTuneConfig(steps=20, batch_size=64, lr=3e-4, significance=1.64,
                                                                            negatives=NegativeFeedback()))
    bias_lr: float = 0.0  # per-event SGD rate of the output bias before each update (0: off; 0.03 was best on the ML-1M validation replay)
    bias_events: int = 256  # most new events scored for the bias step (a uniform sample, the rate scaled up to match)
    seed: int = 0


@dataclass
class LearnerStats:
    updates: int = 0
    accepted: int = 0
    rejected: int = 0
    discarded: int = 0  # accepted updates not published: a user they learned from was deleted meanwhile
    new_items: int = 0
    last_version: str | None = None
    last_staleness_s: float | None = None
    last_val_before: float | None = None
    last_val_after: float | None = None


def _grown(v: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """``v`` copied over the leading rows of ``base`` (as large or larger: the model gained
    items); ``base`` keeps what it holds for the new rows. ``v`` itself when the shapes agree."""
    if v.shape == base.shape:
        return v
    base[tuple(slice(0, n) for n in v.shape)] = v
    return base


def _sequences(states: list, index: dict[str, int], max_len: int) -> Sequences:
    """Sequences of the given users' states (items mapped through ``index``; unknown -> 0)."""
    items, types, values, ts = [], [], [], []
    for st in states:
        seq = list(st.sequence)[-(max_len + 1):]
        items.append([index.get(i[ITEM], 0) if i[ITEM] is not None else 0 for i in seq])
        types.append([type_id(i[TYPE]) for i in seq])
        values.append([np.nan if i[VALUE] is None else i[VALUE] for i in seq])
        ts.append([i[TIMESTAMP] for i in seq])
    return Sequences.from_lists(items, types, values, ts) if states else Sequences.from_lists([[]])


def _new_event_positions(seqs: Sequences, new: np.ndarray) -> list[tuple[int, int]]:
    """(user's first flat index, flat index) of each user's ``new[u]`` newest events, the newest
    itself left out (it validates); events of unknown items (0) and first events are skipped."""
    out = []
    for u in range(seqs.n_users):
        a, b = int(seqs.offsets[u]), int(seqs.offsets[u + 1])
        out.extend((a, p) for p in range(max(a + 1, b - 1 - int(new[u])), b - 1) if seqs.items[p] > 0)
    return out


def _prefixes(seqs: Sequences, positions: list[tuple[int, int]]) -> tuple[Sequences, np.ndarray, np.ndarray]:
    """(prefix sequences, 1-based target item, timestamp) of the events at ``positions``: what the
    model read just before each of them."""
    pre = [slice(a, p) for a, p in positions]
    seq = Sequences.from_lists([seqs.items[s].tolist() for s in pre], [seqs.types[s].tolist() for s in pre],
                               [seqs.values[s].tolist() for s in pre], [seqs.timestamps[s].tolist() for s in pre])
    at = np.array([p for _, p in positions], dtype=np.int64)
    return seq, seqs.items[at].astype(np.int64), seqs.timestamps[at].astype(np.float64)


class OnlineLearner:
    """Incremental fine-tuning of one app's served Transformer."""

    def __init__(
        self,
        app: str,
        state: StateStore,
        serving: Callable[[], TransformerScorer],
        swap: Callable[[TransformerScorer], None],
        registry: ModelRegistry,
        items: Callable[[str, str], Item | None],
        cfg: LearnerConfig | None = None,
        position: Callable[[], tuple[int, int]] | None = None,
        changes: Callable[[int], list[Change]] | None = None,
    ) -> None:
        self.app = app
        # where the learner's process stands in the log (event, change positions) and the changes
        # after a position: what tells an update that a user it learned from was deleted meanwhile
        self.position = position
        self.changes = changes
        self.state = state
        self.serving = serving
        self.swap = swap
        self.registry = registry
        self.items = items
        self.cfg = cfg or LearnerConfig()
        self.stats = LearnerStats()
        self._users: dict[str, float] = {}  # user -> oldest unlearned event time (wall clock of arrival)
        self._new: dict[str, int] = {}  # user -> unlearned events
        self._count = 0
        self._lock = threading.Lock()
        self._rng = np.random.default_rng(self.cfg.seed)
        self._tuner: FineTuner | None = None
        # (version, optimizer state, steps) of the last update this learner published: the next
        # update of that version continues its AdamW moments (and warm-up) instead of starting cold
        self._opt: tuple[str, dict, int] | None = None
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
                    self._new[e.user_id] = self._new.get(e.user_id, 0) + 1
                    self._count += 1

    def forget_user(self, deletion: UserDeletion) -> int:
        """A user of this app was deleted: their events waiting to be learned leave the buffers,
        and the optimizer's moments (built from updates that may have learned from them) are
        dropped. Returns 1 when the buffers held the user."""
        if deletion.app != self.app:
            return 0
        with self._lock:
            gone = [u for u in self._users if deletion.matches(self.app, u)]
            for u in gone:
                del self._users[u]
                self._count -= self._new.pop(u, 0)
            self._opt = None
            self._tuner = None
        return len(gone)

    def _deleted(self, since: int, users: list[str]) -> dict[str, str]:
        """Which of ``users`` were deleted after change position ``since``: user -> deletion id."""
        if self.changes is None:
            return {}
        return deleted_since(self.changes(since), self.app, users)

    # ---- learning side --------------------------------------------------------------------------
    def _text(self, item_id: str) -> str:
        it = self.items(self.app, item_id)
        return encoder_text(it) if it is not None else ""

    def _grow(self, current: TransformerScorer, model: FeedbackTransformer, item_ids: list[str],
              new_ids: list[str]) -> tuple[FeedbackTransformer, list[str], int]:
        """``model`` (a copy of the served one, rows for ``item_ids``) with rows for ``new_ids``
        too (items acted on that the served scorer does not know: no catalog text).

        With text features and an encoder, the scorer's own cold-start path is used (zero ID
        embedding + the item's projected text vector); otherwise the ID embedding is the mean of
        the item's nearest known items in text space (hashed title/text/categories).
        """
        if not new_ids:
            return model, item_ids, 0
        if model.cfg.text_dim and current.text_encoder is not None:
            grown = TransformerScorer(self.app, model, item_ids, current.version, current.text_encoder).add_items(
                new_ids, [self._text(i) or i for i in new_ids])
            model, item_ids = grown.export()
            return model, item_ids, len(new_ids)
        cfg = copy.deepcopy(model.cfg)
        cfg.n_items = len(item_ids) + len(new_ids)
        bigger = FeedbackTransformer(cfg)
        state = bigger.state_dict()
        for k, v in model.state_dict().items():
            state[k] = _grown(v, state[k])  # item-sized tensors: known rows copied, new rows as initialised
            if k == "out_bias" and v.shape != state[k].shape:
                state[k][v.shape[0]:] = v.mean()
        bigger.load_state_dict(state)
        all_ids = item_ids + list(new_ids)
        text = np.zeros((len(all_ids) + 1, 64), dtype=np.float32)
        text[1:] = HashingEncoder(64).encode([self._text(i) for i in all_ids])
        n = init_new_items(bigger, np.arange(len(item_ids) + 1, len(all_ids) + 1), np.arange(1, len(item_ids) + 1), text)
        return bigger, all_ids, n

    def step(self) -> dict | None:
        """One guarded update if enough events arrived; returns what happened (or ``None``)."""
        with self._lock:
            if self._count < self.cfg.min_events or not self._users:
                return None
            users, self._users, self._count = dict(self._users), {}, 0
            new_counts, self._new = dict(self._new), {}
        try:
            return self._update(users, new_counts)
        except StoreUnavailable:
            self._requeue(users, new_counts)  # learnt at the next step once the store is back
            raise

    def _update(self, users: dict[str, float], new_counts: dict[str, int]) -> dict:
        """One guarded update from ``users``' events (those that arrived since the last update)."""
        current = self.serving()
        max_len = current.model.cfg.max_len
        # deletions after this change position are checked before publishing; the data read
        # below reaches at most the event position read after it (a bound the registry relies on)
        change_seq = self.position()[1] if self.position is not None else 0
        with self.state.lock:
            pairs = [(u, self.state.get(self.app, u)) for u in users]
            pairs = [(u, copy.deepcopy(s)) for u, s in pairs if s is not None and len(s.sequence) >= 2]
            acting = [s for _, s in pairs]
            unlearned = np.array([new_counts.get(u, 0) for u, _ in pairs], dtype=np.int64)
            others = [u for u in self.state.users(self.app) if u not in users]
            pick = self._rng.choice(len(others), size=min(self.cfg.replay_users, len(others)), replace=False) if others else []
            replay_ids = [others[k] for k in pick]
            replay = [copy.deepcopy(self.state.get(self.app, u)) for u in replay_ids]
            replay = [s for s in replay if s is not None and len(s.sequence) >= 2]
            learned = [u for u, _ in pairs] + replay_ids  # whose events this update reads
        log_position = self.position()[0] if self.position is not None else None
        if not acting:
            return None
        model, item_ids = current.export()  # a copy with the rows of the items it serves from their text
        new_ids = sorted({i[ITEM] for s in acting for i in s.sequence if i[ITEM] and i[ITEM] not in current.index})
        model, item_ids, n_new = self._grow(current, model, item_ids, new_ids)
        index = {item: k + 1 for k, item in enumerate(item_ids)}
        seqs = _sequences(acting, index, max_len)
        held = seqs.truncate_last(1)  # training: everything but each user's newest event
        targets = np.array([seqs.items[seqs.offsets[u + 1] - 1] for u in range(seqs.n_users)], dtype=np.int64)
        ok = targets > 0
        newest_ts = np.array([seqs.timestamps[seqs.offsets[u + 1] - 1] for u in range(seqs.n_users)], dtype=np.float64)
        val_windows = input_windows(held, max_len, np.flatnonzero(ok), request_times=newest_ts)

        def validate(m: FeedbackTransformer) -> np.ndarray:
            """NDCG@10 of each acting user's newest event."""
            if not ok.any():
                return np.zeros(1)
            with torch.no_grad():
                m.eval()
                t = {k: torch.from_numpy(getattr(val_windows, k)) for k in ("items", "types", "values", "gaps", "next_gaps")}
                scores = m.score_last(t["items"], t["types"], t["values"], t["gaps"], next_gaps=t["next_gaps"])
                scores = mask_seen(scores, t["items"])  # (V, N)
                tgt = torch.from_numpy(targets[ok] - 1)
                rank = (scores > scores.gather(1, tgt[:, None])).sum(1).numpy()
            return np.where(rank < 10, 1.0 / np.log2(rank + 2.0), 0.0)

        n_bias = self._bias_steps(model, seqs, unlearned, max_len)
        recent = training_windows(held, max_len)
        replay_w = training_windows(_sequences(replay, index, max_len), max_len) if replay else None
        tuner = self._tuner = self._tuner_for(current.version, model)
        result = tuner.guarded_update(recent, replay_w, validate) if len(recent) else None
        self.stats.updates += 1
        self.stats.new_items += n_new
        out = {"users": len(acting), "new_items": n_new, "bias_events": n_bias, "accepted": bool(result and result.accepted)}
        if result is None or not result.accepted:
            self.stats.rejected += 1
            self._requeue(users, new_counts)
            if result is not None:
                out.update(val_before=result.before, val_after=result.after)
            return out
        metrics = {"NDCG@10": result.after, "NDCG@10_before": result.before}
        with self._lock:  # a deletion applied from here on finds the version registered (and marks it)
            if self._deleted(change_seq, learned):
                # a user this update learned from was deleted meanwhile: it is not published
                self.stats.discarded += 1
                self._requeue(users, new_counts, locked=True)
                out.update(accepted=False, discarded="a user it learned from was deleted")
                return out
            manifest = {"source": "online", "parent": current.version, "validation": metrics,
                        "data": {"events": sum(len(s.sequence) for s in acting), "users": len(acting)}, "new_items": n_new}
            if log_position is not None:
                manifest["log_position"] = log_position
            version = self.registry.register(model, item_ids, manifest)
            self.registry.promote(version)
            self._opt = (version, tuner.opt.state_dict(), tuner.steps_taken)
        # a deletion that committed while the version was written: marked as any version trained on the user
        for deletion in sorted(set(self._deleted(change_seq, learned).values())):
            self.registry.mark_deleted(version, deletion)
        # a large catalog's index is built here, in the learner's thread, before the swap
        self.swap(TransformerScorer(self.app, model, item_ids, version, current.text_encoder, metrics, ann=current.ann))
        served_at = time.time()
        self.stats.accepted += 1
        self.stats.last_version = version
        self.stats.last_staleness_s = served_at - min(users.values())
        self.stats.last_val_before, self.stats.last_val_after = result.before, result.after
        out.update(version=version, val_before=result.before, val_after=result.after, staleness_s=self.stats.last_staleness_s)
        return out

    def _tuner_for(self, version: str, model: FeedbackTransformer) -> FineTuner:
        """A fine-tuner of ``model`` (the served ``version``'s copy, maybe grown by new items).

        When this learner published ``version``, the optimizer goes on from where that update left
        it: the moments of item-sized tensors get zero rows for the new items. A version from
        elsewhere (a retrain, a rollback) starts a fresh optimizer.
        """
        # a seed per update: each update samples its own batches and dropout masks
        tuner = FineTuner(model, replace(self.cfg.finetune, seed=self.cfg.finetune.seed + self.stats.updates))
        if self._opt is None or self._opt[0] != version:
            return tuner
        _, saved, steps = self._opt
        params = [p for group in tuner.opt.param_groups for p in group["params"]]
        state = {}
        for k, moments in saved["state"].items():
            shape = params[int(k)].shape
            state[k] = {name: _grown(v, torch.zeros(shape, dtype=v.dtype)) if torch.is_tensor(v) and v.dim() > 0 else v
                        for name, v in moments.items()}
        tuner.opt.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
        tuner.steps_taken = steps
        return tuner

    def _requeue(self, users: dict[str, float], counts: dict[str, int], locked: bool = False) -> None:
        """A rejected update's users stay pending (oldest arrival kept): the next update learns
        their events together with whatever arrived since. Users deleted meanwhile (no state) do not."""
        if not locked:
            with self._lock:
                return self._requeue(users, counts, locked=True)
        for u, arrived in users.items():
            if self.state.get(self.app, u) is None:
                continue
            self._users[u] = min(arrived, self._users.get(u, arrived))
            self._new[u] = self._new.get(u, 0) + counts.get(u, 0)
            self._count += counts.get(u, 0)

    def _bias_steps(self, model: FeedbackTransformer, seqs: Sequences, n_new: np.ndarray, max_len: int) -> int:
        """The output bias learns from the new events (each user's newest held out); returns how many."""
        if self.cfg.bias_lr <= 0:
            return 0
        positions = _new_event_positions(seqs, n_new)
        n, rate = len(positions), self.cfg.bias_lr
        if n == 0:
            return 0
        if n > self.cfg.bias_events > 0:  # an unbiased estimate of the summed gradient, for a bounded cost
            keep = np.sort(self._rng.choice(n, size=self.cfg.bias_events, replace=False))
            positions = [positions[k] for k in keep]
            rate *= n / self.cfg.bias_events
        prefixes, targets, times = _prefixes(seqs, positions)
        w = input_windows(prefixes, max_len, request_times=times)
        with torch.no_grad():
            model.eval()
            t = {k: torch.from_numpy(getattr(w, k)) for k in ("items", "types", "values", "gaps", "next_gaps")}
            scores = mask_seen(model.score_last(t["items"], t["types"], t["values"], t["gaps"], next_gaps=t["next_gaps"]), t["items"])
        bias_step(model, scores, torch.from_numpy(targets - 1), rate)
        return n

    # ---- background thread ----------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"online-learner-{self.app}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.cfg.interval_s):
            try:
                self.step()
            except StoreUnavailable as exc:  # the next interval tries again with the same users
                log.warning("online learner of %s: %s", self.app, exc)
            except Exception:  # noqa: BLE001 - the learner must outlive one failed update
                log.exception("online learner of %s: an update failed", self.app)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None
