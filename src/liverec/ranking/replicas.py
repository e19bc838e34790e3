"""The ranking's learned state as a fold of the impression log and the event log, in every worker.

``liverec serve --workers N`` runs N processes over one store. What the ranking stages learn from
traffic (the bandit's posteriors, the contextual policy's reward regression, the impressions waiting
for feedback, each user's last slates)
lives in each process's memory; for it not to be lost at a restart nor differ between workers, it
is a fold of the two durable logs, as the user state is a fold of the event log:

* an impression records the event log position its process had folded when it was shown
  (``Impression.event_seq``); feedback committed after that position decides its reward
  (:class:`~liverec.ranking.bandit.RewardTracker`), and reactions committed after it are read
  against its slate (:class:`~liverec.ranking.examined.Examined`);
* :class:`ImpressionFollower` rebuilds the folds at start by replaying both logs in that order
  (the same code that folds them while serving), then polls the impression log every
  ``interval_s`` and folds what the other workers showed (:meth:`RankingStages.adopt`). A
  process folds its own impressions when it shows them and skips them when it reads them back
  (they carry its ``origin``).

Why a background poll rather than a check on the request path: every worker writes impressions on
nearly every request, so a per-request check would find new rows almost every time and add a
query and the folding of other workers' impressions to each request; the exploration bandit does
not need another worker's last half second of traffic to choose well. A poll reads only the
columns the folds need (:class:`~liverec.ranking.impressions.Shown`), and leaves this process's
own rows out in the query.

The race: feedback on another worker's impression is often folded here before that impression is
read from the log. The folds keep the recent feedback and reactions with their log positions, so
the impression, when it arrives, is decided (and its slate read) as if it had been shown here at
its position. An impression is folded only once this process has applied the event log up to its
position (the poll catches the event log up first), so events it was shown after are never taken
for feedback on it.

Exact (every worker, and a restart, reach the same posteriors, pending impressions and last
slates, once they have read the same prefix of both logs):

* rewards decided by feedback, and 0.5 for impressions whose window and grace
  (``RewardTracker.grace_s``) passed without feedback, as long as feedback is committed before
  the window and grace close on the clock of the process that closes it, and the impression is
  read by every worker while its feedback is still among the last ``RewardTracker.max_recent``
  feedback events (``undecidable`` counts the ones that were not);
* the last slates and items read past, as long as a slate is read while the user's reactions to it
  are among the last ``Examined.max_recent`` reactions and fewer than ``Examined.keep`` newer
  slates of the user arrived first (``unplaced`` counts the ones that did not).

Eventually consistent: a worker folds another's impressions up to ``interval_s`` (plus that
worker's write delay) late, so for that long its posteriors and that user's last slate lag.

Not exact: feedback committed after the window and grace closed but timestamped inside the window
(counted by processes that had not closed the impression yet, and by a rebuild); impressions closed
early because more than ``RewardTracker.max_pending`` were waiting; users evicted from
``Examined.max_users``. Impressions logged before positions were recorded
(``event_seq`` is ``None``) get the rewards :func:`~liverec.ranking.impressions.assign_rewards`
gives them from the event log.

Cost: without a snapshot, a start reads the whole impression log (its columns, not the records)
and the event log from the first impression's position on, and the whole event log again if any
impression has no position: minutes after a day of traffic. So the folds are also snapshotted
(:meth:`ImpressionFollower.write_snapshot`, called by the snapshot writer of the user folds) with
the two positions they hold: the event log position folded up to and the impression log position
adopted up to. A start installs the newest snapshot and replays only what follows both positions,
as the poll would have folded it; the logs stay the source of truth, so a snapshot that is missing,
unreadable, of another format version or folded under other settings means the full rebuild.

A deleted user (:meth:`ImpressionFollower.forget_user`): their pending impressions, slates and
recent reactions are dropped at once, their impressions are deleted from the log (by the process
that deleted them; every process drops those still in its queue, and leaves out any of theirs
shown before the deletion that it reads later), and the folds are refolded from the two logs in the
background (:meth:`ImpressionFollower.refold`), so the posteriors equal those of a rebuild
without the user. A snapshot taken before a deletion is not installed after it.

This process's own impressions are folded when shown, not when read back, so a snapshot holds
some that lie after its impression position (shown since the last poll, or still queued for the
log). A start skips those of the snapshot's ``origin`` that were folded before it was taken: every
one shown at an event position before the snapshot's, every one at that position that was in the
log when it was taken, and every one at that position still waiting for feedback in it. Only one
shown at exactly that position, queued but not yet written when the snapshot was taken, and
already closed early by then, would be folded twice.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Protocol

import orjson

from ..erasure import UserDeletion
from ..events import Event
from ..memory import collector_paused
from ..store.base import EventLog, Snapshots, StoreUnavailable, user_digest
from .bandit import encode_rewards, shown_at_position, waiting_rows
from .contextual import FEATURES
from .examined import encode_examined
from .impressions import ImpressionLog, Shown, assign_rewards, feedback_reward
from .stages import RankingStages

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = 5  # 2: with the changes feed position (deletions after it void the snapshot); 3: the contextual policy's sums;
# 4: waiting impressions in columns; 5: recent reactions as (type, item, target, ts, event id)
SNAPSHOT_APP = "_liverec"  # the service's own records in the store's snapshot role
SNAPSHOT_NAME = "ranking"


def _reads(cfg: Any) -> bool:
    return cfg.passed_item > 0 or cfg.passed_mass > 0


def fold_settings(ranking: RankingStages) -> dict[str, Any]:
    """What the folds depend on besides the two logs: a snapshot folded under other settings is
    not the fold of this process's logs."""
    rewards, examined = ranking.rewards, ranking.examined
    settings = {
        "window_s": rewards.window_s, "grace_s": rewards.grace_s, "max_pending": rewards.max_pending,
        "rewards_recent": rewards.max_recent, "max_users": examined.max_users, "per_user": examined.per_user,
        "keep": examined.keep, "reactions_recent": examined.max_recent, "reactions": sorted(examined.reactions),
        "features": list(FEATURES),  # what the contextual policy's sums are sums of
        # which apps' slates are read (the others' reactions are not folded into the readings)
        "reads_slates": {"": _reads(ranking.settings.default),
                         **{app: _reads(cfg) for app, cfg in sorted(ranking.settings.apps.items())}},
    }
    return orjson.loads(orjson.dumps(settings))  # as it reads back from the blob


@dataclass
class RankingSnapshot:
    """A decoded snapshot of the ranking folds, ready to install."""

    event_seq: int  # every event up to here is folded
    change_seq: int  # every change up to here (user deletions) is applied
    impression_seq: int  # every other process's impression up to here is adopted
    impression_head: int  # the snapshot's own process's impressions up to here are folded
    origin: str  # that process
    at_position: set[str]  # its impressions shown at ``event_seq`` and still waiting for feedback
    data: dict[str, Any]


def decode_snapshot(blob: bytes, ranking: RankingStages) -> RankingSnapshot:
    """The snapshot in ``blob``; ``ValueError`` when it cannot be used by ``ranking``."""
    try:
        with collector_paused():
            data = orjson.loads(zlib.decompress(blob))
        version = data.get("format")
    except Exception as exc:  # noqa: BLE001 - whatever is wrong with the bytes, the logs remain
        raise ValueError(f"unreadable ({type(exc).__name__}: {exc})") from None
    if version != SNAPSHOT_FORMAT:
        raise ValueError(f"format version {version!r}, this process reads {SNAPSHOT_FORMAT}")
    if data.get("settings") != fold_settings(ranking):
        raise ValueError("folded under other settings")
    try:
        return RankingSnapshot(int(data["event_seq"]), int(data["change_seq"]), int(data["impression_seq"]),
                               int(data["impression_head"]), str(data["origin"]), set(data["at_position"]), data)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"unreadable ({type(exc).__name__}: {exc})") from None


class EventPosition(Protocol):
    """What the impression follower needs of the process's event log follower
    (:class:`liverec.runtime.follower.LogFollower`)."""

    lock: threading.RLock  # held while events are folded
    event_seq: int  # every event up to here is folded
    change_seq: int  # every change up to here is applied

    def catch_up(self, force: bool = False) -> int: ...


class _Fixed:
    """A position that does not move: what a refold replays the logs up to."""

    def __init__(self, event_seq: int, change_seq: int = 0) -> None:
        self.lock = threading.RLock()
        self.event_seq = event_seq
        self.change_seq = change_seq

    def catch_up(self, force: bool = False) -> int:
        return 0


def _responses(shown: list[Shown]) -> list[list[Shown]]:
    """Consecutive impressions of one request (one response is appended, so logged, together)."""
    out: list[list[Shown]] = []
    for imp in shown:
        if out and out[-1][0].request_id == imp.request_id:
            out[-1].append(imp)
        else:
            out.append([imp])
    return out


class ImpressionFollower:
    """Keeps a process's ranking folds equal to the fold of the impression and event logs
    (a service component: ``start`` rebuilds them and starts following, ``stop`` stops)."""

    def __init__(
        self,
        ranking: RankingStages,
        impressions: ImpressionLog,
        events: EventLog,
        follower: Callable[[], EventPosition],
        interval_s: float = 0.5,
        batch: int = 5_000,
        lookback: int = 10_000,
        clock: Callable[[], float] = time.time,
        snapshots: Snapshots | None = None,
    ) -> None:
        self.ranking = ranking
        self.impressions = impressions
        self.events = events
        self.follower = follower
        self.interval_s = interval_s
        self.batch = batch
        # events replayed at start even before the first impression: the recent feedback that
        # impressions other workers showed but had not written yet are decided from
        self.lookback = lookback
        self.clock = clock
        self.snapshots = snapshots  # where snapshots of the folds are kept (none: every start rebuilds)
        self.restored: int | None = None  # the event position of the snapshot the last start installed
        self._written: tuple[int, int] | None = None  # the positions of the last snapshot written
        self.seq = 0  # the impression log position folded up to
        self.adopted = 0  # other processes' impressions folded while following
        self._lock = threading.Lock()  # one poll at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False
        # deleted users (app, digest) -> the event position of their deletion: their impressions
        # shown up to it are left out wherever they are read (rows written late, or not yet deleted)
        self._erased: OrderedDict[tuple[str, str], int] = OrderedDict()
        self.max_erased = 10_000
        self._refold_lock = threading.Lock()
        self._refold_state: bool | None = None  # None: no refold; False: one runs; True: run again after it
        self._refolded = threading.Condition(self._refold_lock)
        self._rewrite = False  # a deletion removed the stored snapshot: write one after the refold
        self.refolds = 0
        self._unavailable = False  # the last poll found the store unreachable

    # ---- component ----------------------------------------------------------------------------
    def start(self) -> None:
        self.rebuild()
        self._started = True
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="liverec-impression-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        self.wait_refolded(timeout=30)  # a refold after a deletion finishes before the logs close

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll()
                self._unavailable = False
            except StoreUnavailable as exc:  # retried at the next poll, quietly: it lasts as long as the outage
                if not self._unavailable:
                    log.warning("following the impression log: %s", exc)
                self._unavailable = True
                continue
            except Exception:  # noqa: BLE001 - a failed poll is retried at the next one
                log.exception("following the impression log failed")

    # ---- start-up -----------------------------------------------------------------------------
    def rebuild(self) -> None:
        """Fold both logs into the ranking (replacing whatever it holds): from the stored snapshot
        of the folds when there is a usable one, else from the start; every impression committed
        now, up to the first one shown after what this process has folded of the event log (the
        polls take it from there, in log order)."""
        self.impressions.flush()  # this process's own, if it has served already
        snap = self._stored_snapshot()
        follower = self.follower()
        with self._lock, follower.lock:  # no event is folded meanwhile
            follower.catch_up(force=True)
            upto = follower.event_seq
            head = self.impressions.head()
            if snap is not None and (snap.event_seq > upto or snap.impression_seq > head):
                log.warning("snapshot of the ranking folds ignored, rebuilding them from the logs: its positions "
                            "(%d, %d) are past the logs' (%d, %d)", snap.event_seq, snap.impression_seq, upto, head)
                snap = None
            if snap is not None and any(c.kind == "user_deleted" for c in self.events.changes(snap.change_seq)):
                log.info("snapshot of the ranking folds ignored, rebuilding them from the logs: a user was deleted after it")
                snap = None
            if snap is not None:
                try:
                    self._install(snap)
                except Exception as exc:  # noqa: BLE001 - any fault in a snapshot falls back to the logs
                    log.warning("snapshot of the ranking folds ignored, rebuilding them from the logs: %s: %s",
                                type(exc).__name__, exc)
                    snap = None
            shown: list[Shown] = []
            legacy: list[Shown] = []
            seq, done = (snap.impression_seq if snap is not None else 0), False
            while not done and seq < head:
                rows = self.impressions.shown_after(seq, self.batch, upto=head)
                done = not rows
                for s, imp in rows:
                    if imp.event_seq is not None and imp.event_seq > upto:
                        done = True
                        break
                    seq = s
                    if snap is not None and imp.origin == snap.origin and self._in_snapshot(snap, s, imp):
                        continue
                    if not self._keep(imp):
                        continue
                    (legacy if imp.event_seq is None else shown).append(imp)
            self.seq = head if not done else seq
            if snap is None:
                self._replay(shown, upto)
                if legacy:
                    self._fold_legacy(legacy, upto)
            else:
                self.ranking.adopt(legacy)  # as a poll adopts them: shown at the position folded
                self._replay(shown, upto, restored=snap.event_seq)
        self.restored = snap.event_seq if snap is not None else None
        log.info("ranking folds %s %d impressions, event log up to %d",
                 "restored from a snapshot and" if snap is not None else "rebuilt from", len(shown) + len(legacy), upto)

    @staticmethod
    def _in_snapshot(snap: RankingSnapshot, s: int, imp: Shown) -> bool:
        """Whether the snapshot's own process had folded ``imp`` (log position ``s``) when it was taken."""
        at = imp.event_seq
        return at is not None and (at < snap.event_seq or (at == snap.event_seq and (
            s <= snap.impression_head or imp.impression_id in snap.at_position)))

    # ---- snapshots ----------------------------------------------------------------------------
    def _stored_snapshot(self) -> RankingSnapshot | None:
        if self.snapshots is None:
            return None
        blob = self.snapshots.get(SNAPSHOT_APP, SNAPSHOT_NAME)
        if not blob:
            log.info("no snapshot of the ranking folds: rebuilding them from the logs")
            return None
        try:
            return decode_snapshot(blob, self.ranking)
        except ValueError as exc:
            log.warning("snapshot of the ranking folds ignored, rebuilding them from the logs: %s", exc)
            return None

    def _install(self, snap: RankingSnapshot) -> None:
        """Replace the folds with the snapshot's (a fault part way leaves them to the full
        rebuild, which resets every one)."""
        ranking = self.ranking
        data = snap.data
        with ranking._fold, collector_paused():
            ranking.bandit.load(data["bandit"])
            ranking.contextual.load(data["contextual"])
            ranking.rewards.load(data["rewards"])
            ranking.examined.load(data["examined"])
            ranking.position = snap.event_seq

    def write_snapshot(self) -> dict[str, Any] | None:
        """Store a snapshot of the folds unless one at the same positions was written last;
        returns what was written (positions, size, time the locks were held), or ``None``.

        The locks are held only while the folds are copied: the poll's (no impression is adopted),
        the event follower's (no event is folded) and the ranking's (no slate is shown); the
        encoding runs after they are released."""
        if self.snapshots is None:
            return None
        # not flushed first: under traffic the writer's queue may never be empty; this process's
        # impressions still queued are told apart at the start (see the module's docstring)
        ranking = self.ranking
        follower = self.follower()
        with self._lock, follower.lock:
            follower.catch_up(force=True)  # a deletion committed by now is applied before the copy
            if self.refolding:  # the posteriors still hold a deleted user's share
                return None
            head = self.impressions.head()
            changes = follower.change_seq
            with ranking._fold:
                acquired = time.perf_counter()
                position, seq = ranking.position, self.seq
                if (position, seq) == self._written:
                    return None
                bandit = ranking.bandit.posteriors()
                contextual = ranking.contextual.rows()
                rewards = ranking.rewards.copy()
                examined = ranking.examined.copy()
                held = time.perf_counter() - acquired
        started = time.perf_counter()
        waiting = waiting_rows(rewards)
        at_position = shown_at_position(waiting, position)
        data = {
            "format": SNAPSHOT_FORMAT, "settings": fold_settings(ranking), "event_seq": position, "change_seq": changes,
            "impression_seq": seq,
            "impression_head": head, "origin": ranking.origin, "at_position": at_position,
            "bandit": [[app, item, sf[0], sf[1]] for (app, item), sf in bandit.items()], "contextual": contextual,
            "rewards": encode_rewards(rewards, waiting), "examined": encode_examined(examined), "created_at": time.time(),
        }
        # level 1: a quarter of level 6's time for ~10 % more bytes (200,000 waiting impressions:
        # 0.26 s against 1.05 s on a 2-core AMD EPYC)
        blob = zlib.compress(orjson.dumps(data), 1)
        self.snapshots.put(SNAPSHOT_APP, SNAPSHOT_NAME, blob)
        self._written = (position, seq)
        return {"event_seq": position, "impression_seq": seq, "bytes": len(blob), "lock_held_s": held,
                "encode_s": time.perf_counter() - started}

    def _replay(self, shown: list[Shown], upto: int, restored: int | None = None) -> None:
        """Events and responses in the order they were folded where they were shown: a response
        shown at position ``p`` after every event up to ``p`` and before the next one. From scratch,
        or (``restored``) onto folds installed at that event position, where responses shown
        before it are adopted first, as a poll adopts them when they are read late."""
        responses = _responses(shown)
        responses.sort(key=lambda r: (r[0].event_seq, r[0].timestamp, r[0].request_id))
        ranking = self.ranking
        if restored is None:
            first = min((r[0].event_seq for r in responses), default=upto)
            start = max(0, min(first, upto - self.lookback))
            ranking.reset(start)
        else:
            start = restored
        k = 0
        events: list[Event] = []
        seqs: list[int] = []

        def fold_events() -> None:
            if events:
                ranking.observe(events, seqs)
                events.clear()
                seqs.clear()

        for seq, event in self._events_after(start, upto):
            if k < len(responses) and responses[k][0].event_seq < seq:  # type: ignore[operator]
                fold_events()
                due = []
                while k < len(responses) and responses[k][0].event_seq < seq:  # type: ignore[operator]
                    due.extend(responses[k])
                    k += 1
                ranking.adopt(due)
            events.append(event)
            seqs.append(seq)
            if len(events) >= self.batch:
                fold_events()
        fold_events()
        ranking.adopt([imp for r in responses[k:] for imp in r])
        ranking.advance(upto)

    def _events_after(self, start: int, upto: int) -> Iterator[tuple[int, Event]]:
        for seq, event in self.events.scan(after_seq=start):
            if seq > upto:
                return
            yield seq, event

    def _fold_legacy(self, legacy: list[Shown], upto: int) -> None:
        """Impressions without a position: rewarded from the event log as off-policy evaluation
        rewards them; those whose window is still open wait for feedback from now on."""
        keys = {(i.app, i.user_id, i.item_id) for i in legacy}
        types = self.ranking.types
        feedback: Iterable[Event] = (e for _, e in self._events_after(0, upto)
                                     if (e.app, e.user_id, e.item_id) in keys and feedback_reward(e, types) is not None)
        tracker = self.ranking.rewards
        decided = assign_rewards(legacy, feedback, tracker.window_s, types, now=self.clock())
        for imp, reward in decided:
            self.ranking.bandit.update(imp.app, imp.item_id, reward)
        done = {imp.impression_id for imp, _ in decided}
        tracker.shown([i for i in legacy if i.impression_id not in done])

    # ---- following ----------------------------------------------------------------------------
    def poll(self) -> int:
        """Fold the impressions other processes logged since the last poll; returns how many."""
        with self._lock:
            head = self.impressions.head()
            if head <= self.seq:
                return 0
            origin = self.ranking.origin
            rows = self.impressions.shown_after(self.seq, self.batch, upto=head, other_than=origin)
            reached = head  # every other process's impression up to here is in ``rows``
            if len(rows) == self.batch:
                reached = rows[-1][0]
                if rows[0][1].request_id != rows[-1][1].request_id:
                    # the batch may end inside a response: leave that response for the next poll
                    last = rows[-1][1].request_id
                    rows = [r for r in rows if r[1].request_id != last]
                    reached = rows[-1][0]
            follower = self.follower()
            if max((imp.event_seq or 0 for _, imp in rows), default=0) > follower.event_seq:
                follower.catch_up(force=True)  # the events they were shown after come first
            folded = follower.event_seq
            adopt: list[Shown] = []
            for s, imp in rows:
                if imp.event_seq is not None and imp.event_seq > folded:
                    reached = s - 1  # shown after events not committed when we read: the next poll
                    break
                if self._keep(imp):
                    adopt.append(imp)
            self.ranking.adopt(adopt)
            self.seq = reached
            self.adopted += len(adopt)
            return len(adopt)

    # ---- deleted users ------------------------------------------------------------------------
    def _keep(self, imp: Shown) -> bool:
        """False for an impression of a deleted user shown before their deletion."""
        if not self._erased:
            return True
        at = self._erased.get((imp.app, user_digest(imp.app, imp.user_id)))
        return at is None or (imp.event_seq is not None and imp.event_seq > at)

    def forget_user(self, deletion: UserDeletion) -> dict[str, int]:
        """A user was deleted (called in commit order, the event follower's lock held): their
        pending impressions and slates go now, their impressions leave the log (the deleting
        process deletes them; every process drops those still in its queue), and the folds are
        refolded in the background so the posteriors lose their share. Before :meth:`start` only
        the deletion is noted: the start's rebuild reads the logs as they are then."""
        app = deletion.app
        self._erased[(app, deletion.digest)] = deletion.event_seq
        self._erased.move_to_end((app, deletion.digest))
        while len(self._erased) > self.max_erased:
            self._erased.popitem(last=False)
        counts: dict[str, int] = {}
        if self._started:
            user = deletion.user_id or deletion.find(self.ranking.users(app))
            counts.update(self.ranking.forget_user(app, lambda u: deletion.matches(app, u)))
        else:
            user = deletion.user_id
        if user is not None:
            if deletion.local:  # after those deleted before the change committed (Service.delete_user)
                removed = self.impressions.remove_user(app, user, deletion.event_seq)
                counts["impressions"] = deletion.counts.get("impressions", 0) + removed
            else:  # rows this process wrote after the deleting one removed the user's
                threading.Thread(target=self._remove_late, args=(app, user, deletion.event_seq),
                                 name="liverec-erase-impressions", daemon=True).start()
        if deletion.local and self.snapshots is not None:
            removed = self.snapshots.delete(SNAPSHOT_APP, SNAPSHOT_NAME)
            counts["ranking_snapshots"] = int(removed)
            self._rewrite = self._rewrite or removed
            self._written = None
        if self._started:
            self._schedule_refold()
        return counts

    def _remove_late(self, app: str, user: str, upto: int) -> None:
        try:
            self.impressions.remove_user(app, user, upto, origin=self.ranking.origin)
        except Exception:  # noqa: BLE001 - the deleting process removed the rest; the folds leave these out
            log.exception("removing a deleted user's impressions written by this process failed")

    @property
    def refolding(self) -> bool:
        """Whether a refold after a deletion is pending or running (until it is swapped in the
        posteriors still hold the deleted user's share)."""
        return self._refold_state is not None

    def wait_refolded(self, timeout: float | None = None) -> bool:
        """Wait until no refold is pending or running; returns whether none is."""
        with self._refolded:
            return self._refolded.wait_for(lambda: self._refold_state is None, timeout)

    def _schedule_refold(self) -> None:
        with self._refold_lock:
            if self._refold_state is not None:
                self._refold_state = True  # the running one may have read the deleted user's rows
                return
            self._refold_state = False
        threading.Thread(target=self._refold_loop, name="liverec-ranking-refold", daemon=True).start()

    def _refold_loop(self) -> None:
        while True:
            try:
                self.refold()
            except Exception:  # noqa: BLE001 - the folds keep the user's share until the next deletion's refold
                log.exception("refolding the ranking folds after a deletion failed")
            with self._refold_lock:
                if not self._refold_state:
                    self._refold_state = None
                    self._refolded.notify_all()
                    break
                self._refold_state = False
        if self._rewrite and self.snapshots is not None and not self._stop.is_set():
            self._rewrite = False
            try:
                self.write_snapshot()
            except Exception:  # noqa: BLE001 - the snapshot writer's next interval writes one
                log.exception("writing the ranking folds' snapshot after a deletion failed")

    def refold(self, tries: int = 5) -> None:
        """Fold the two logs again, from the start, into empty folds off to the side, then swap
        them in with what was folded meanwhile. The request path and the polls go on during the
        replay and wait only for the swap (the tail since the replay's positions): afterwards the
        folds equal those of a rebuild from the logs as they are, without a deleted user's
        impressions and feedback."""
        follower = self.follower()
        upto = follower.event_seq
        shadow = self.ranking.fresh()
        replayer = ImpressionFollower(shadow, self.impressions, self.events, lambda: _Fixed(upto), self.interval_s,
                                      self.batch, self.lookback, self.clock)
        replayer._erased = self._erased
        replayer.rebuild()
        ranking = self.ranking
        with self._lock, follower.lock:
            for attempt in range(tries):
                follower.catch_up(force=True)
                with ranking._fold:
                    self.impressions.flush()  # every impression folded here is in the log (see RankingStages._log)
                    now, head = follower.event_seq, self.impressions.head()
                    rows: list[tuple[int, Shown]] = []
                    while True:
                        batch = self.impressions.shown_after(rows[-1][0] if rows else replayer.seq, self.batch, upto=head)
                        if not batch:
                            break
                        rows.extend(batch)
                    ahead = next((k for k, (_, imp) in enumerate(rows) if imp.event_seq is not None and imp.event_seq > now), None)
                    if ahead is not None and attempt < tries - 1:
                        continue  # shown after events another process folded and this one has not: catch up first
                    reached = head if ahead is None else (rows[ahead][0] - 1 if ahead else replayer.seq)
                    rows = rows if ahead is None else rows[:ahead]
                    shown = [imp for _, imp in rows if self._keep(imp)]
                    shadow.adopt([imp for imp in shown if imp.event_seq is None])
                    replayer._replay([imp for imp in shown if imp.event_seq is not None], now, restored=upto)
                    ranking.install(shadow)
                    self.seq = reached
                    self.refolds += 1
                    return

    # ---- export -------------------------------------------------------------------------------
    def describe_user(self, app: str, user_id: str, first_seq: int | None = None) -> dict[str, list]:
        """What the ranking holds of one user: their impressions in the log, those waiting for
        feedback, their last slates."""
        view = self.ranking.user_view(app, user_id)
        view["impressions"] = [imp.to_dict() for imp in self.impressions.user_impressions(app, user_id)]
        return view
