"""API keys (per app, with scopes) and per-key rate limits.

- :mod:`liverec.auth.keys`: the key format, the keyed hash the store keeps, :class:`Keyring`;
- :mod:`liverec.auth.ratelimit`: the token bucket and its two engines (one machine's shared
  map, Redis for several machines).

The HTTP side (which route needs which scope, the 401 / 403 / 429 answers) is
:mod:`liverec.api.auth`.
"""

from .keys import ADMIN, INGEST, READ, SCOPES, AuthConfigError, Keyring, SecretSource, allows, describe_auth, parse_scopes
from .ratelimit import Decision, LocalBuckets, RateLimiter, RedisBuckets, open_limiter, take

__all__ = ["ADMIN", "INGEST", "READ", "SCOPES", "AuthConfigError", "Decision", "Keyring", "LocalBuckets", "RateLimiter",
           "RedisBuckets", "SecretSource", "allows", "describe_auth", "open_limiter", "parse_scopes", "take"]
