"""Storage backends, chosen by URL.

>>> store = open_store("sqlite:///:memory:")
>>> store.events.count()
0
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from .base import ApiKey, ApiKeys, AppendResult, Catalog, Change, EventLog, Item, Snapshots, Store, StoreUnavailable

_BACKENDS: dict[str, Callable[[str], Store]] = {}


def register_backend(scheme: str, opener: Callable[[str], Store]) -> None:
    """Make ``open_store`` open URLs of ``scheme`` with ``opener``."""
    _BACKENDS[scheme] = opener


def _open_sqlite(url: str) -> Store:
    from .sqlite import SQLiteStore

    path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else urlparse(url).path
    return SQLiteStore(path or ":memory:")


def _open_postgres(url: str) -> Store:
    from .postgres import PostgresStore

    return PostgresStore(url)


register_backend("sqlite", _open_sqlite)
register_backend("postgresql", _open_postgres)
register_backend("postgres", _open_postgres)


def default_url(data_dir: str | Path) -> str:
    """The embedded default: one SQLite file in the data dir."""
    return f"sqlite:///{Path(data_dir).resolve() / 'liverec.db'}"


def open_store(url: str) -> Store:
    """Open the backend registered for the URL's scheme (``sqlite:///path``,
    ``postgresql://user@host/db?schema=name``)."""
    scheme = urlparse(url).scheme.split("+")[0]
    opener = _BACKENDS.get(scheme)
    if opener is None:
        raise ValueError(f"store URL {url!r}: unknown scheme {scheme!r}; expected one of {sorted(_BACKENDS)}")
    return opener(url)


__all__ = ["ApiKey", "ApiKeys", "AppendResult", "Catalog", "Change", "EventLog", "Item", "Snapshots", "Store", "StoreUnavailable", "default_url", "open_store", "register_backend"]
