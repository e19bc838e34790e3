"""API keys: one app and a set of scopes each, stored as a keyed hash.

A key reads ``lrk_<id>_<secret>``: ``id`` (12 hex digits) names the record, so a request costs
one primary-key read of the store's key role, and ``secret`` is 32 random bytes (base64url).
The store keeps ``HMAC-SHA256(server secret, key)``, never the key.

Why a keyed hash and not a slow one (bcrypt, scrypt, argon2): a slow hash protects guessable
passwords by making each guess expensive, and it costs the same tens of milliseconds on every
request. A key of 256 random bits cannot be guessed, so one SHA-256 pass (about a microsecond)
is as strong as any work factor; the server secret (a setting, or a file in the data dir) adds
that a copy of the store alone cannot even check a guess offline.

>>> from liverec.store import open_store
>>> store = open_store("sqlite:///:memory:")
>>> ring = Keyring(store.keys, store.snapshots, secret=lambda: b"s" * 32)
>>> ring.enabled()
False
>>> key, record = ring.create("shop", ["read"], rate=10, burst=20)
>>> ring.enabled() and ring.verify(key).app == "shop" and ring.verify(key + "x") is None
True
>>> record.digest != key and key not in repr(store.keys.get(record.key_id))
True
>>> ring.revoke(record.key_id) and ring.verify(key) is None
True
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import math
import os
import re
import secrets
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from ..store.base import ApiKey, ApiKeys, Snapshots

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger("liverec.auth")

INGEST, READ, ADMIN = "ingest", "read", "admin"
SCOPES = (INGEST, READ, ADMIN)  # admin includes the other two

# An app a key may be bound to: what the API accepts in X-Liverec-App (liverec.api.deps.APP_PATTERN,
# held equal by tests/test_auth.py; the API's module is not imported by the light `liverec keys`).
APP_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")

PREFIX = "lrk_"
KEY_FORMAT = re.compile(r"^lrk_([0-9a-f]{12})_[A-Za-z0-9_-]{43}$")

SECRET_FILE = "auth.secret"
# Where the store keeps a check value of the secret the keys were hashed with (the store's
# internal app, beside the stream consumers' progress), so that a server started with another
# secret says so instead of answering 401 to every key.
INTERNAL_APP = "_liverec"
SECRET_CHECK = "auth/secret-check"


class AuthConfigError(RuntimeError):
    """The keys cannot be verified as configured (no secret, or not the one they were made with)."""


def allows(granted: Iterable[str], needed: str) -> bool:
    """Whether a key with scopes ``granted`` may use a route that needs ``needed``.

    >>> allows(["ingest", "read"], "read"), allows(["read"], "ingest"), allows(["admin"], "ingest")
    (True, False, True)
    """
    granted = tuple(granted)
    return needed in granted or ADMIN in granted


def parse_scopes(text: str | Iterable[str]) -> tuple[str, ...]:
    """Scopes from ``"ingest,read"`` (or a list), in the canonical order; unknown names are an error.

    >>> parse_scopes("read, ingest,read")
    ('ingest', 'read')
    """
    names = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    unknown = sorted(set(names) - set(SCOPES))
    if unknown or not names:
        raise ValueError(f"scopes {names!r}: expected a comma-separated list of {', '.join(SCOPES)}")
    return tuple(s for s in SCOPES if s in names)


def key_id_of(presented: str) -> str | None:
    """The id part of a well-formed key, else ``None``.

    >>> key_id_of("lrk_0123456789ab_" + "A" * 43), key_id_of("lrk_nothex_x")
    ('0123456789ab', None)
    """
    match = KEY_FORMAT.match(presented)
    return match.group(1) if match else None


def digest(secret: bytes, key: str) -> str:
    """The stored form of ``key``: HMAC-SHA256 under the server secret, hex."""
    return hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()


def new_key() -> tuple[str, str]:
    """A fresh (key id, key)."""
    key_id = secrets.token_hex(6)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    return key_id, f"{PREFIX}{key_id}_{secret}"


class SecretSource:
    """The server secret: ``LIVEREC_AUTH_SECRET`` when set, else ``DATA_DIR/auth.secret``
    (created, mode 0600, by the first ``liverec keys create`` on the data dir). Read once."""

    def __init__(self, setting: str | None, data_dir: str | Path):
        self.setting = setting
        self.path = Path(data_dir) / SECRET_FILE
        self._value: bytes | None = setting.encode() if setting else None

    def __call__(self) -> bytes | None:
        if self._value is None and self.path.exists():
            self._value = self.path.read_text().strip().encode()
        return self._value

    def ensure(self) -> bytes:
        """The secret, creating the file when there is none (several creators race safely: the
        first file linked in place wins and everyone reads it)."""
        value = self()
        if value is not None:
            return value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{SECRET_FILE}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        try:
            os.link(tmp, self.path)  # never replaces an existing secret
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        value = self()
        assert value is not None
        return value


class Keyring:
    """Creates, verifies and revokes API keys over the store's key role.

    ``required``: keys are required even while none exists (``LIVEREC_AUTH=required``);
    otherwise they are once the first key is created (revoked keys still count).
    """

    TOUCH_EVERY_S = 60.0  # "last used" is recorded at this resolution (a write, off the request path)

    CACHED_KEYS = 10_000  # records kept by a caching keyring (a bound, not an LRU)

    def __init__(self, keys: ApiKeys, snapshots: Snapshots, secret: Callable[[], bytes | None],
                 required: bool = False, clock: Callable[[], float] = time.time, cached: bool = False):
        self.keys = keys
        self.snapshots = snapshots
        self.secret = secret
        self.required = required
        self.clock = clock
        self._on = required
        self._checked = False
        self._misconfigured = False
        self._used: dict[str, float] = {}
        self._used_lock = threading.Lock()
        # ``cached``: whether keys exist and the records read are kept until :meth:`changed` (the
        # owner calls it for every ``api_key`` change it follows in the log, after catching up
        # before each request); otherwise every check reads the store
        self.cached = cached
        self._exists: bool | None = None
        self._records: dict[str, ApiKey] = {}

    # ---- the request path --------------------------------------------------------------------

    def changed(self) -> None:
        """A key was created or revoked (by any process): drop what was cached."""
        self._exists = None
        self._records = {}

    def enabled(self) -> bool:
        """Whether requests need a key: required, or a key exists (once true, stays true)."""
        if not self._on:
            exists = self._exists if self.cached else None
            if exists is None:
                exists = self.keys.exists()
                if self.cached:
                    self._exists = exists
            self._on = exists
        return self._on

    def _record(self, key_id: str) -> ApiKey | None:
        records = self._records
        record = records.get(key_id) if self.cached else None
        if record is None:
            record = self.keys.get(key_id)
            if record is not None and self.cached:
                if len(records) >= self.CACHED_KEYS:
                    records.clear()
                records[key_id] = record
        return record

    def verify(self, presented: str) -> ApiKey | None:
        """The record of a valid, unrevoked key; ``None`` for anything else."""
        key_id = key_id_of(presented)
        if key_id is None:
            return None
        record = self._record(key_id)
        if record is None or record.revoked_at is not None:
            return None
        secret = self._secret()
        if secret is None or not hmac.compare_digest(record.digest, digest(secret, presented)):
            return None
        now = self.clock()
        if record.last_used_at is None or now - record.last_used_at >= self.TOUCH_EVERY_S:
            with self._used_lock:
                self._used[key_id] = now
        return record

    def _secret(self) -> bytes | None:
        try:
            return self.check()
        except AuthConfigError as exc:
            if not self._misconfigured:  # every key is refused until fixed: say so once
                self._misconfigured = True
                log.error("%s", exc)
            return None

    def check(self) -> bytes | None:
        """The secret, once checked against the value the store's keys were made with; raises
        :class:`AuthConfigError` when keys exist and it is missing or another one."""
        secret = self.secret()
        if self._checked:
            return secret
        expected = self.snapshots.get(INTERNAL_APP, SECRET_CHECK)
        if expected is None:
            return secret  # no key was ever made with a secret: nothing to check yet
        if secret is None:
            raise AuthConfigError("API keys exist but this server has no auth secret: set LIVEREC_AUTH_SECRET "
                                  "(or copy DATA_DIR/auth.secret from the machine that created the keys)")
        if not hmac.compare_digest(expected, _check_value(secret)):
            raise AuthConfigError("the API keys in this store were made with another auth secret: set "
                                  "LIVEREC_AUTH_SECRET (or DATA_DIR/auth.secret) to the secret of the machine that created them")
        self._checked = True
        return secret

    def flush_used(self) -> None:
        """Write the "last used" times noted since the last flush (a background loop calls it)."""
        with self._used_lock:
            used, self._used = self._used, {}
        if used:
            self.keys.touch(used)

    # ---- administration ----------------------------------------------------------------------

    def create(self, app: str, scopes: Iterable[str] | str, rate: float, burst: float,
               ensure_secret: Callable[[], bytes] | None = None) -> tuple[str, ApiKey]:
        """A new key for ``app``: (the key, shown once; its stored record)."""
        if not APP_ID.fullmatch(app):
            raise ValueError(f"app {app!r}: expected 1-64 characters of A-Z a-z 0-9 _ . -")
        if not (math.isfinite(rate) and math.isfinite(burst) and rate > 0 and burst >= 1):
            raise ValueError(f"rate={rate}, burst={burst}: expected rate > 0 requests/s and burst >= 1")
        secret = ensure_secret() if ensure_secret is not None else self.secret()
        if secret is None:
            raise AuthConfigError("no auth secret to hash the key with")
        stored = self.snapshots.get(INTERNAL_APP, SECRET_CHECK)
        if stored is None:
            self.snapshots.put(INTERNAL_APP, SECRET_CHECK, _check_value(secret))
        elif not hmac.compare_digest(stored, _check_value(secret)):
            raise AuthConfigError("the store's keys were made with another auth secret: set LIVEREC_AUTH_SECRET "
                                  "(or DATA_DIR/auth.secret) to theirs")
        key_id, key = new_key()
        record = ApiKey(key_id, app, parse_scopes(scopes), digest(secret, key), float(rate), float(burst),
                        self.clock())
        self.keys.add(record)
        self._on = True
        self.changed()
        return key, record

    def revoke(self, key_id: str) -> bool:
        """Revoke a key by id (or by the key itself); False when there is no such key."""
        done = self.keys.revoke(key_id_of(key_id) or key_id, self.clock())
        self.changed()
        return done

    def list(self, app: str | None = None) -> list[ApiKey]:
        return self.keys.list(app)


def _check_value(secret: bytes) -> bytes:
    return hmac.new(secret, b"liverec auth secret check", hashlib.sha256).digest()



def describe_auth(settings: "Settings") -> str:
    """One line for the start of ``liverec serve``: whether requests need a key, and where the
    rate limits live."""
    from ..store import open_store

    store = open_store(settings.store_url_resolved())
    try:
        records = store.keys.list()
    finally:
        store.close()
    active = sum(r.revoked_at is None for r in records)
    limits = (f"rate limits per key in Redis ({settings.rate_limit_url})" if settings.rate_limit_url
              else "rate limits per key shared by this machine's workers")
    if records or settings.auth == "required":
        return f"auth: API keys required ({active} active); {limits}"
    return ("auth: OPEN - no API key exists and LIVEREC_AUTH is not 'required', so every route answers "
            "anyone who reaches this port; the first `liverec keys create` turns keys on")
