"""What a call can raise: an answer the server refused (:class:`APIError`, one class per status
family, carrying the server's field errors) or no answer at all (:class:`NetworkError`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class LiverecError(Exception):
    """Every error the client raises."""


class NetworkError(LiverecError):
    """No answer: the connection was refused or dropped, or the request timed out, on every
    attempt. The request may or may not have been carried out (a retry of it is safe: every call
    the client retries is idempotent)."""


@dataclass(frozen=True)
class FieldError:
    """One problem with one part of the request, as the server names it.

    >>> FieldError("events[1].value", 11, "a rating between 0 and 5")
    FieldError(field='events[1].value', value=11, expected='a rating between 0 and 5')
    """

    field: str
    value: Any
    expected: str


class APIError(LiverecError):
    """The server answered with an error status.

    ``status`` is the HTTP status, ``detail`` the server's one-line summary, ``errors`` every field
    error it named (empty for errors about no field), ``retry_after`` the seconds the server asked
    the client to wait (429, 503), ``method`` and ``path`` the request's.
    """

    status: int = 0

    def __init__(self, status: int, detail: str, errors: list[FieldError] | None = None, *,
                 method: str = "", path: str = "", retry_after: float | None = None) -> None:
        self.status = status
        self.detail = detail
        self.errors = list(errors or [])
        self.method = method
        self.path = path
        self.retry_after = retry_after
        where = f" {method} {path}" if method else ""
        super().__init__(f"HTTP {status}{where}: {detail}")

    def field(self, name: str) -> FieldError | None:
        """The error about field ``name`` (``events[3].type``, ``n``, ...), if the server named it."""
        return next((e for e in self.errors if e.field == name), None)


class BadRequest(APIError):
    """400: the body is not JSON, or the app header is malformed."""


class Unauthorized(APIError):
    """401: no API key, or one the server does not know."""


class Forbidden(APIError):
    """403: the API key may not do this (another app's data, a scope it lacks)."""


class NotFound(APIError):
    """404: no such item or user in the app."""


class PayloadTooLarge(APIError):
    """413: more events in one request than the server takes."""


class InvalidRequest(APIError):
    """422: a body or parameter that breaks its schema; ``errors`` names every bad field."""


class RateLimited(APIError):
    """429: too many requests; ``retry_after`` says how long the server asked to wait."""


class ServerError(APIError):
    """5xx: the server failed (or was unavailable) on every attempt."""


_BY_STATUS: dict[int, type[APIError]] = {400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound,
                                         413: PayloadTooLarge, 422: InvalidRequest, 429: RateLimited}


def error_class(status: int) -> type[APIError]:
    """The exception class for an error status.

    >>> error_class(422).__name__, error_class(503).__name__, error_class(418).__name__
    ('InvalidRequest', 'ServerError', 'APIError')
    """
    if status >= 500:
        return ServerError
    return _BY_STATUS.get(status, APIError)


def from_body(status: int, body: Any, text: str, **context: Any) -> APIError:
    """The error for an answer with ``status`` whose JSON body is ``body`` (None when it was not
    JSON: a proxy's page, say; then ``text`` is the detail).

    >>> e = from_body(422, {"detail": "n=0: expected >= 1", "errors": [{"field": "n", "value": 0, "expected": ">= 1"}]}, "")
    >>> type(e).__name__, e.errors[0].field, e.field("n").expected
    ('InvalidRequest', 'n', '>= 1')
    """
    errors: list[FieldError] = []
    detail = text.strip()[:300] or f"HTTP {status}"
    if isinstance(body, dict):
        if isinstance(body.get("detail"), str):
            detail = body["detail"]
        for e in body.get("errors") or []:
            if isinstance(e, dict):
                errors.append(FieldError(str(e.get("field", "")), e.get("value"), str(e.get("expected", ""))))
    return error_class(status)(status, detail, errors, **context)
