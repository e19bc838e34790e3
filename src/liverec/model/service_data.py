"""Training on what the service holds: its event log and catalog -> a registered model version.

The served model learns from every event; the user's **last** target event is the validation
position (early stopping, the metrics stored with the version), everything before it is training
data. Catalog items with text but no events are added as text-only items (cold start), so the
served version knows the whole catalog.

With a :class:`~liverec.model.distributed.Launch` of several processes (``liverec train
--nproc N``) the data is read and encoded once here, the ranks train, and this process registers
rank 0's model: one version per run, from node 0 only.
"""

from __future__ import annotations

import time
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from liverec.catalog import encoder_text
from liverec.erasure import deleted_since
from liverec.evaluation.offline import DEFAULT_RECIPE, split_overrides
from liverec.evaluation.protocol import InteractionLog, build_log, leave_one_out
from liverec.model.distributed import Launch, Rendezvous, train_parallel
from liverec.model.registry import ModelRegistry
from liverec.model.text import MiniLMEncoder, TextEncoder, erase_texts, text_matrix
from liverec.model.train import TrainConfig, ValidationSet
from liverec.model.transformer import ModelConfig


@contextmanager
def _open_store(data_dir: str | Path, store_url: str | None) -> Iterator[Any]:
    from liverec.config import Settings
    from liverec.store import open_store

    store = open_store(Settings(data_dir=Path(data_dir), store_url=store_url).store_url_resolved())
    try:
        yield store
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            close()


@dataclass
class LogRead:
    """Where a read of the log stood: the event position its data reaches and the changes feed's
    head before it began (user deletions after that head may have been read)."""

    event_seq: int = 0
    change_seq: int = 0
    texts: dict[str, set[str]] = field(default_factory=dict)  # user -> the texts of their events read


def log_from_store(data_dir: str | Path, app: str, store_url: str | None = None,
                   until_seq: int | None = None, read: LogRead | None = None) -> tuple[InteractionLog, dict[str, str]]:
    """The app's events (log order, up to ``until_seq`` when given) as an :class:`InteractionLog`,
    and every catalog item's text. ``read`` is filled with the positions of the read."""
    read = read if read is not None else LogRead()
    with _open_store(data_dir, store_url) as store:
        read.change_seq = store.events.heads()[1]
        read.event_seq = store.events.last_seq() if until_seq is None else until_seq
        users, items, ts, types, values, texts = [], [], [], [], [], []
        with closing(store.events.scan(app)) as events:
            for seq, e in events:
                if until_seq is not None and seq > until_seq:
                    break
                read.event_seq = max(read.event_seq, seq)
                if e.scope != "item":  # scoped feedback (a whole category, a creator) is policy input
                    continue
                users.append(e.user_id)
                if e.text:
                    read.texts.setdefault(e.user_id, set()).add(e.text)
                items.append(e.item_id)
                ts.append(e.timestamp)
                types.append(e.type)
                values.append(np.nan if e.value is None else e.value)
                texts.append(e.text)
        catalog = {it.item_id: encoder_text(it) for it in store.catalog.scan(app)}
    if not users:
        raise ValueError(f"app {app!r} in {data_dir}: no events to train on")
    log = build_log(app, np.asarray(users, dtype=object), np.asarray(items, dtype=object), np.asarray(ts),
                    types=np.asarray(types, dtype=object), values=np.asarray(values, dtype=np.float64),
                    event_texts=np.asarray(texts, dtype=object), item_text=catalog)
    return log, catalog


def _log_head(data_dir: str | Path, store_url: str | None) -> int:
    with _open_store(data_dir, store_url) as store:
        return store.events.last_seq()


def train_from_service(
    data_dir: str | Path,
    app: str,
    recipe: dict[str, Any] | None = None,
    seed: int = 0,
    text_encoder: TextEncoder | None = None,
    log_fn: Callable[[str], None] | None = None,
    progress: bool = True,
    launch: Launch | None = None,
    store_url: str | None = None,
) -> str | None:
    """Train on the app's events, register the model; returns the new version name (None on a
    machine other than node 0 of a multi-machine ``launch``: node 0 registers).

    Several machines read the log up to the position node 0 saw when they met, so they train on
    the same events while the log grows.
    """
    say = log_fn or (lambda s: None)
    launch = launch or Launch()
    rendezvous = until = None
    if launch.parallel:
        rendezvous = Rendezvous(launch)
        if launch.nnodes > 1:
            until = int(rendezvous.agree("log_head", str(_log_head(data_dir, store_url))))
            say(f"node {launch.node_rank}: training on the log up to seq {until}")
    read = LogRead()
    log, catalog = log_from_store(data_dir, app, store_url, until, read)
    recipe = {**DEFAULT_RECIPE, "time_budget_s": None, **(recipe or {})}
    mo, to, use_text = split_overrides(recipe)
    split = leave_one_out(log, max_len=mo.get("max_len", 200))
    if len(split.eval_users) == 0:
        raise ValueError(f"app {app!r}: no user has 3 positive events; nothing to validate on")
    enc = None
    item_text = event_text = None
    text_dim = 0
    if use_text and (any(log.item_texts) or log.event_texts):
        enc = text_encoder or MiniLMEncoder()
        cache = Path(data_dir) / "text_cache"
        item_text = text_matrix(log.item_texts, enc, cache)
        if log.event_texts:
            event_text = text_matrix(log.event_texts, enc, cache)[1:]
        text_dim = enc.dim
    mc = ModelConfig(n_items=log.n_items, text_dim=text_dim, **mo)
    tc = TrainConfig(seed=seed, **to)
    # Serve-time split: train on everything before each user's last target, validate on it.
    res = train_parallel(launch, mc, tc, split.test_prefix, ValidationSet(split.test_windows, split.test_targets),
                         item_text=item_text, event_text=event_text, progress=progress, log=say,
                         rendezvous=rendezvous)
    if res is None:
        say(f"node {launch.node_rank}: training done; node 0 registers the version")
        return None
    model, item_ids = res.model, [str(i) for i in log.item_ids]
    cold = [i for i in catalog if i not in set(item_ids) and catalog[i]]
    if cold and enc is not None and text_dim:
        from liverec.model.scorer import TransformerScorer

        extended = TransformerScorer(app, model, item_ids, text_encoder=enc, text_cache_dir=Path(data_dir) / "text_cache")
        model, item_ids = extended.add_items(cold, [catalog[i] for i in cold]).export()
        say(f"added {len(cold)} catalog items with text only (cold start)")
    reg = ModelRegistry.for_data_dir(data_dir, app)
    version = reg.register(model, item_ids, {
        "app": app,
        "created_iso": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "data_fingerprint": log.source_fingerprint,
        "data": {"events": log.seqs.n_events, "users": log.seqs.n_users, "items_with_events": log.n_items,
                 "text_only_items": len(item_ids) - log.n_items},
        "validation": res.best_metrics,
        "train_config": tc.to_dict(),
        "ranks": launch.world_size,
        "train_seconds": round(res.train_seconds, 1),
        "best_epoch": res.best_epoch,
        "text_encoder": enc.name if enc is not None else None,
        "trained_at": time.time(),
        "log_position": read.event_seq,
    })
    # users deleted while this run trained: the version learned from their events, so it is marked
    # as every version trained on a deleted user is (and their texts leave the cache it filled)
    with _open_store(data_dir, store_url) as store:
        deleted = deleted_since(store.events.changes(read.change_seq), app, [str(u) for u in log.user_ids])
        for deletion in sorted(set(deleted.values())):
            reg.mark_deleted(version, deletion)
        if deleted and enc is not None:
            theirs = {t for u in deleted for t in read.texts.get(u, ())}
            erase_texts(Path(data_dir) / "text_cache", theirs - store.events.texts_in_use(sorted(theirs)))
    if deleted:
        say(f"version {version}: {len(deleted)} of its users were deleted while it trained; marked as trained on them")
    say(f"version {version}: validation NDCG@10 {res.best_metrics.get('NDCG@10', float('nan')):.4f}")
    return version
