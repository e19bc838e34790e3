"""A user deletion as every fold and store of a process sees it.

``DELETE /v1/users/{id}`` removes the user's events from the log and records a ``user_deleted``
change in the same transaction (:meth:`liverec.store.base.EventLog.remove_user`). Every process
applies that change when it follows the log, in commit order, and hands a :class:`UserDeletion`
to each component that holds something of users (:class:`ForgetsUsers`): the ranking folds
(posteriors, pending impressions, last slates), the text vector caches, the online learner's
buffers, the snapshots, the model registry's marks. The process that deleted the user
(``local``) still has the removed events and does the work on shared stores once (the
impression log's rows, the on-disk text cache, the registry, the stored snapshots); the others
drop what they hold in memory.

The change names the user by :func:`~liverec.store.base.user_digest`, not by id (no file keeps a
deleted user's id), so a process that did not delete them finds them by comparing digests:
:meth:`UserDeletion.matches`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol, runtime_checkable

from .events import Event
from .state import TEXT
from .store.base import user_digest


@dataclass
class UserDeletion:
    """One user's deletion, handed to the components of a process in commit order.

    ``user_id`` is known where the user was found (the deleting process, or a process whose
    state holds them); ``events`` (the removed events, log order) and ``first_seq`` only in the
    deleting process; ``state`` is the user's folded state as it was, when this process had one.
    """

    app: str
    digest: str
    change_seq: int  # the ``user_deleted`` change's position in the changes feed
    event_seq: int  # the event log's head when it committed: what came before is the user's past
    local: bool = False  # this process deleted the user (and does the work on shared stores)
    user_id: str | None = None
    events: list[Event] | None = None
    first_seq: int | None = None  # the log position of the user's first event (None: no events)
    state: Any = None  # the user's state before it was dropped (a UserState), or None
    counts: dict[str, int] = field(default_factory=dict)  # what this process removed, by store

    @property
    def deletion_id(self) -> str:
        """The deletion's name in the audit log and in the marks on model versions: from its
        place in the changes feed, so every process that follows the log names it alike."""
        return deletion_id(self.change_seq)

    def matches(self, app: str, user_id: str) -> bool:
        """Whether ``(app, user_id)`` is the deleted user."""
        if app != self.app:
            return False
        if self.user_id is not None:
            return user_id == self.user_id
        return user_digest(app, user_id) == self.digest

    def find(self, users: Iterable[str]) -> str | None:
        """The deleted user among ``users`` (ids of ``app``), by digest; ``None`` if absent."""
        if self.user_id is not None:
            return self.user_id if self.user_id in set(users) else None
        return next((u for u in users if user_digest(self.app, u) == self.digest), None)

    def texts(self) -> list[str]:
        """The texts of the user's events this process knows of (all of them in the deleting
        process; those in the folded state elsewhere), sorted."""
        found: set[str] = set()
        for e in self.events or ():
            if e.text:
                found.add(e.text)
        if self.state is not None:
            found.update(i[TEXT] for i in self.state.sequence if i[TEXT])
        return sorted(found)


def deletion_id(change_seq: int) -> str:
    """The id of the deletion recorded at ``change_seq`` in the changes feed.

    >>> deletion_id(17)
    'd17'
    """
    return f"d{change_seq}"


def deleted_since(changes: Iterable[Any], app: str, users: Iterable[str]) -> dict[str, str]:
    """Which of ``users`` (ids of ``app``) the ``user_deleted`` changes among ``changes`` delete:
    user id -> deletion id. For work that read the log before a deletion and finishes after it
    (a training run, an online update)."""
    digests = {c.key: deletion_id(c.seq) for c in changes if c.kind == "user_deleted" and c.app == app}
    if not digests:
        return {}
    return {u: digests[d] for u in users if (d := user_digest(app, u)) in digests}


@runtime_checkable
class ForgetsUsers(Protocol):
    """A component that holds something of users and drops it when one is deleted."""

    def forget_user(self, deletion: UserDeletion) -> dict[str, int]:
        """Drop what this component holds of the deleted user (called in commit order, with the
        follower's lock held: slow work goes to a thread of the component's own); returns how
        many of what were removed, by store, for the deletion's receipt."""


@runtime_checkable
class DescribesUsers(Protocol):
    """A component that can say what it holds of one user (``GET /v1/users/{id}/export``)."""

    def describe_user(self, app: str, user_id: str, first_seq: int | None) -> dict[str, Any]:
        """What this component holds of the user, as JSON-ready fields of the export
        (``first_seq``: the log position of the user's first event, ``None`` without events)."""


@runtime_checkable
class Refolds(Protocol):
    """A component whose folds are refolded in the background after a deletion."""

    @property
    def refolding(self) -> bool:
        """Whether a refold is pending or running (until then the folds hold the deleted user's share)."""
