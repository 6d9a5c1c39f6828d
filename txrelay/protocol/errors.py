"""Anthropic-shaped errors: the one exception type every layer raises for the client to see."""

from __future__ import annotations

from typing import Any

import attrs

#: HTTP status for each Anthropic ``error.type`` (anthropic-messages.md §9.2).
STATUS_FOR_TYPE: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "conflict_error": 409,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


@attrs.frozen
class RelayError(Exception):
    """
    An error the client sees, in Anthropic's shape.

    :ivar type: the Anthropic ``error.type``.
    :ivar message: a human-readable message naming what was wrong; never a traceback.
    :ivar status: the HTTP status; derived from ``type`` unless given.
    :ivar headers: extra response headers (``retry-after``, ``x-should-retry``).
    """

    type: str
    message: str
    status: int = attrs.field()
    headers: tuple[tuple[str, str], ...] = ()

    @status.default
    def _status_from_type(self) -> int:
        return STATUS_FOR_TYPE.get(self.type, 500)

    def __str__(self) -> str:
        return f"{self.status} {self.type}: {self.message}"

    def error_object(self) -> dict[str, Any]:
        """The ``{"type": ..., "message": ...}`` object inside an error body or event."""
        return {"type": self.type, "message": self.message}

    def body(self, request_id: str | None = None) -> dict[str, Any]:
        """The full JSON error body (anthropic-messages.md §9.1, R-E6)."""
        out: dict[str, Any] = {"type": "error", "error": self.error_object()}
        if request_id is not None:
            out["request_id"] = request_id
        return out

    def event(self) -> dict[str, Any]:
        """The ``error`` stream event used after the response was committed (R-E4)."""
        return {"type": "error", "error": self.error_object()}


def invalid_request(message: str) -> RelayError:
    """A 400 ``invalid_request_error``."""
    return RelayError("invalid_request_error", message)


def not_found(message: str) -> RelayError:
    """A 404 ``not_found_error``."""
    return RelayError("not_found_error", message)


def connection_error(reason: str, *, upstream: str | None = None) -> RelayError:
    """Connection refused/reset/TLS failure before a response (502 ``api_error``)."""
    prefix = f"{upstream}: " if upstream else ""
    return RelayError("api_error", f"{prefix}upstream connection failed: {reason}", status=502)


def api_error(message: str) -> RelayError:
    """A 500 ``api_error``."""
    return RelayError("api_error", message)


def upstream_event_error(err: dict[str, Any]) -> RelayError:
    """
    The HTTP error for an ``error`` event translated from an upstream's answer before the
    client was committed: an ``api_error`` there is the upstream's fault, so a 502, not 500.
    """
    kind = err.get("type", "api_error")
    message = err.get("message", "")
    if kind == "api_error":
        return RelayError(kind, message, status=502)
    return RelayError(kind, message)
