"""Per-key rate limits: a token bucket per API key, shared by every worker process.

Each key has a ``rate`` (tokens per second) and a ``burst`` (the bucket's size); a request takes
one token, and a request that finds less than one is refused with the wait until there is one
(``Retry-After``). :func:`take` is the bucket's arithmetic; both engines run exactly it:

- :class:`RedisBuckets` (``LIVEREC_RATE_LIMIT_URL=redis://host:port/db``): one Lua script reads,
  refills and takes atomically inside Redis, on Redis's clock, so every worker on every machine
  draws from one bucket per key; one round trip a request.
- :class:`LocalBuckets` (the default): the buckets live in a small file in the data dir that every
  worker process of the machine maps into memory (``MAP_SHARED``) and updates under an exclusive
  ``flock``: a few microseconds, no server, exact across the workers of one machine (each machine
  has its own buckets: set the Redis URL when several machines serve one store).

>>> bucket = LocalBuckets(None, clock=lambda: 100.0)
>>> [bucket.take_now("k", rate=1.0, burst=2).allowed for _ in range(3)]
[True, True, False]
>>> bucket.take_now("k", rate=1.0, burst=2).retry_after
1.0
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import mmap
import os
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

log = logging.getLogger("liverec.auth")


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether the request may go on; ``remaining`` tokens after it, and when refused, the
    seconds until one token is there (``retry_after``)."""

    allowed: bool
    remaining: float
    retry_after: float = 0.0


def take(tokens: float, stamp: float, now: float, rate: float, burst: float) -> tuple[float, float, Decision]:
    """The token bucket: the state ``(tokens, stamp)`` after a request at ``now``, and the decision.
    A bucket never seen is full (``tokens = burst``). A clock that went back refills nothing.

    >>> take(0.5, 10.0, 10.25, rate=2.0, burst=5)
    (0.0, 10.25, Decision(allowed=True, remaining=0.0, retry_after=0.0))
    >>> take(0.0, 10.0, 10.25, rate=2.0, burst=5)[2]
    Decision(allowed=False, remaining=0.5, retry_after=0.25)
    """
    tokens = min(burst, tokens + max(0.0, now - stamp) * rate)
    if tokens >= 1.0:
        return tokens - 1.0, now, Decision(True, tokens - 1.0)
    return tokens, now, Decision(False, tokens, (1.0 - tokens) / rate)


class RateLimiter(Protocol):
    async def take(self, bucket: str, rate: float, burst: float) -> Decision:
        """Take one token from ``bucket`` (created full at ``burst``)."""

    def close(self) -> None: ...


# ---- one machine: a shared memory map ------------------------------------------------------------


class LocalBuckets:
    """Token buckets in a file mapped by every worker process of one machine.

    The file is a fixed table of slots: (16-byte hash of the bucket's name, tokens, stamp, the
    time it is full again). A bucket's slot is found by open addressing from its hash; a slot
    whose bucket is full again is free, since a full bucket and an absent one are the same (so
    the table never needs cleaning, and with the default 4,096 slots a live bucket is evicted only
    when more than 32 keys collide on one probe window while busy). ``path=None``: an anonymous
    map, for one process (tests).
    """

    SLOT = struct.Struct("<16sddd")
    SLOTS = 4096
    PROBES = 32
    FILE = "ratelimit-v1.buckets"

    def __init__(self, path: str | Path | None, clock: Callable[[], float] = time.time, slots: int = SLOTS):
        self.clock = clock
        self.slots = slots
        size = slots * self.SLOT.size
        self._fd = -1
        if path is None:
            self._map = mmap.mmap(-1, size)
        else:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            if os.fstat(self._fd).st_size < size:
                os.ftruncate(self._fd, size)  # zeros: every slot free (racing creators do the same)
            self._map = mmap.mmap(self._fd, size, mmap.MAP_SHARED)
        self._lock = threading.Lock()  # flock excludes other processes, not this one's threads

    async def take(self, bucket: str, rate: float, burst: float) -> Decision:
        return self.take_now(bucket, rate, burst)

    def take_now(self, bucket: str, rate: float, burst: float) -> Decision:
        name = hashlib.blake2b(bucket.encode(), digest_size=16).digest()
        home = int.from_bytes(name[:8], "little") % self.slots
        with self._lock:
            if self._fd >= 0:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                now = self.clock()
                slot = self._find(name, home, now)
                offset = slot * self.SLOT.size
                found, tokens, stamp, _ = self.SLOT.unpack_from(self._map, offset)
                if found != name:
                    tokens, stamp = float(burst), now
                tokens, stamp, decision = take(tokens, stamp, now, rate, burst)
                self.SLOT.pack_into(self._map, offset, name, tokens, stamp, stamp + (burst - tokens) / rate)
            finally:
                if self._fd >= 0:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
        return decision

    def _find(self, name: bytes, home: int, now: float) -> int:
        """The bucket's slot: its own, else the first free one, else the one full again soonest."""
        free = -1
        soonest, soonest_at = home, float("inf")
        for probe in range(self.PROBES):
            slot = (home + probe) % self.slots
            found, _, _, full_at = self.SLOT.unpack_from(self._map, slot * self.SLOT.size)
            if found == name:
                return slot
            if free < 0 and full_at <= now:  # an unused slot reads full_at 0
                free = slot
            if full_at < soonest_at:
                soonest, soonest_at = slot, full_at
        return free if free >= 0 else soonest

    def close(self) -> None:
        self._map.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


# ---- every machine: Redis ----------------------------------------------------------------------

# KEYS[1]: the bucket; ARGV: rate, burst, now ("" = Redis's clock). The arithmetic of take(),
# numbers kept as "%.17g" text (Redis would round a Lua number to 14 digits); returns
# {allowed, remaining, retry_after} as text.
TAKE_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now
if ARGV[3] == "" then
  local t = redis.call("TIME")
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[3])
end
local state = redis.call("HMGET", KEYS[1], "tokens", "stamp")
local tokens = tonumber(state[1])
local stamp = tonumber(state[2])
if tokens == nil then
  tokens = burst
  stamp = now
end
local elapsed = now - stamp
if elapsed < 0 then elapsed = 0 end
tokens = math.min(burst, tokens + elapsed * rate)
local allowed = 0
local retry = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  retry = (1 - tokens) / rate
end
local fmt = "%.17g"
redis.call("HSET", KEYS[1], "tokens", string.format(fmt, tokens), "stamp", string.format(fmt, now))
-- a bucket left alone until it is full again is the same as none: let Redis drop it then
redis.call("PEXPIRE", KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return {allowed, string.format(fmt, tokens), string.format(fmt, retry)}
"""


class RedisBuckets:
    """Token buckets in Redis, taken atomically by one Lua script (one round trip a request).

    When Redis cannot be reached the request goes on (logged at most once a minute): a limiter
    that is down should not take the API down with it; keys are still verified.
    """

    PREFIX = "liverec:bucket:"

    def __init__(self, url: str, clock: Callable[[], float] | None = None, timeout_s: float = 0.5):
        import redis.asyncio

        self.url = url
        self.clock = clock  # None: Redis's own clock (one clock for every machine)
        self._client = redis.asyncio.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._script = self._client.register_script(TAKE_SCRIPT)
        self._warned_at = 0.0

    async def take(self, bucket: str, rate: float, burst: float) -> Decision:
        now = "" if self.clock is None else repr(float(self.clock()))
        try:
            allowed, remaining, retry = await self._script(keys=[self.PREFIX + bucket], args=[repr(float(rate)), repr(float(burst)), now])
        except Exception as exc:  # noqa: BLE001 - any failure of the limiter: let the request through
            if time.monotonic() - self._warned_at > 60:
                self._warned_at = time.monotonic()
                log.error("rate limiter at %s failed (%s: %s): requests are not limited until it answers",
                          self.url, type(exc).__name__, exc)
            return Decision(True, float(burst))
        return Decision(bool(int(allowed)), float(remaining), float(retry))

    async def aclose(self) -> None:
        await self._client.aclose()

    def close(self) -> None:
        pass  # the connections are closed by aclose() on the loop that opened them


def open_limiter(url: str | None, data_dir: str | Path) -> LocalBuckets | RedisBuckets:
    """The engine for ``LIVEREC_RATE_LIMIT_URL``: Redis for ``redis://`` / ``rediss://``, else the
    machine's shared map in ``data_dir``."""
    if url:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"rate limit URL {url!r}: expected redis://host:port/db (or rediss://, unix://)")
        return RedisBuckets(url)
    return LocalBuckets(Path(data_dir) / "run" / LocalBuckets.FILE)
