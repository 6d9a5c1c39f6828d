# -*- test-case-name: tests.server.test_channel -*-
"""
What the front door enforces before a request reaches the resource: the limits and deadlines
of :class:`FrontDoorPolicy`, the relay-wide :class:`BufferBudget`, and the bytes of an error
answered by the connection itself (:func:`error_response`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

import attrs
from twisted.web.http import RESPONSES

from txrelay.protocol.errors import RelayError
from txrelay.protocol.jsoncodec import dumps

#: The largest length HTTP framing may declare (a Content-Length or a chunk size); anything
#: larger is a malformed request (400), not an oversized one (413), as in nginx.
MAX_FRAMING_LENGTH = 2**63 - 1


class HeaderCheck(Protocol):
    """What :class:`FrontDoorPolicy` calls on complete headers (see ``IHeaderCheck``)."""

    def check_headers(self, headers: Mapping[str, str]) -> RelayError | None:
        """The error to answer at once, or None to let the request through."""


@attrs.define(eq=False)
class BufferBudget:
    """
    Request-body bytes held in memory at once, across every connection of a site.

    A body with a declared length reserves all of it when its headers arrive; a chunked
    body reserves what it has received so far.
    """

    capacity: int
    used: int = 0

    def reserve(self, amount: int) -> bool:
        """Take ``amount`` bytes if they fit; whether they did."""
        if self.used + amount > self.capacity:
            return False
        self.used += amount
        return True

    def release(self, amount: int) -> None:
        """Give back ``amount`` bytes taken with :meth:`reserve`."""
        self.used = max(0, self.used - amount)


@attrs.frozen
class FrontDoorPolicy:
    """The limits and deadlines a :class:`~txrelay.server.channel.FrontDoorChannel` enforces."""

    #: Largest request body; larger ones get 413 as soon as the length is known.
    max_request_bytes: int = 32 * 1024 * 1024
    #: Relay-wide cap on buffered request bodies; past it new uploads get 529.
    max_buffered_bytes: int = 256 * 1024 * 1024
    #: Seconds from a request head's first byte (or the connection) to its last header.
    header_timeout: float = 10.0
    #: Bytes/s a body must average once ``body_grace`` seconds have passed (0: no minimum).
    min_body_rate: int = 4096
    body_grace: float = 10.0
    #: Request-line plus headers; the request line alone over this is a 414.
    max_head_bytes: int = 16384
    #: Checks run on the headers of every request the pipeline serves, before its body.
    header_checks: tuple[HeaderCheck, ...] = ()
    #: Told of every answer the front door gives itself: the operation (``messages``…, or
    #: ``http`` outside the pipeline's routes) and the error. For metrics.
    on_reject: Callable[[str, RelayError], None] | None = None

    def checks_headers_of(self, method: bytes, path: bytes) -> bool:
        """Whether :meth:`check_headers` applies to ``method path`` (no query string)."""
        return bool(self.header_checks) and reaches_pipeline(method, path)

    def check_headers(self, headers: Mapping[str, str]) -> RelayError | None:
        """The first error a header check reports, if any."""
        for check in self.header_checks:
            error = check.check_headers(headers)
            if error is not None:
                return error
        return None


def operation_of(method: bytes, path: bytes) -> str:
    """
    The pipeline operation the resource serves ``method path`` (no query) with, or ``http``.

    Mirrors the resource's routing: other requests (health, metrics, 404, 405) are answered
    without the pipeline, so they are not header-checked either.
    """
    path = path.rstrip(b"/")
    if path == b"/v1/messages" and method == b"POST":
        return "messages"
    if path == b"/v1/messages/count_tokens" and method == b"POST":
        return "count_tokens"
    if method in (b"GET", b"HEAD"):
        if path == b"/v1/models":
            return "models.list"
        if path.startswith(b"/v1/models/"):
            return "models.get"
    return "http"


def reaches_pipeline(method: bytes, path: bytes) -> bool:
    """Whether the resource serves ``method path`` through the pipeline."""
    return operation_of(method, path) != "http"


def too_large(limit: int) -> RelayError:
    """The 413 for a body over ``limit`` bytes."""
    return RelayError("request_too_large",
                      f"request body is larger than the relay's limit of {limit} bytes")


def overloaded() -> RelayError:
    """The 529 for an upload that would pass the relay-wide buffer cap."""
    return RelayError("overloaded_error",
                      "the relay is buffering too many request bodies; retry shortly",
                      headers=(("retry-after", "1"),))


def malformed(what: str) -> RelayError:
    """A 400 for a request HTTP's framing rules reject."""
    return RelayError("invalid_request_error", f"malformed HTTP request: {what}")


def too_slow(message: str) -> RelayError:
    """The 408 for a client that sends its request too slowly."""
    return RelayError("timeout_error", message, status=408)


_REASONS = {431: b"Request Header Fields Too Large", 529: b"Overloaded"}


def error_response(error: RelayError, request_id: str) -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 response carrying ``error``."""
    body = dumps(error.body(request_id))
    reason = _REASONS.get(error.status) or RESPONSES.get(error.status, b"Error")
    lines = [
        b"HTTP/1.1 %d %s" % (error.status, reason),
        b"content-type: application/json",
        b"content-length: %d" % len(body),
        b"request-id: " + request_id.encode("ascii"),
        b"connection: close",
    ]
    lines += [f"{name}: {value}".encode("latin-1") for name, value in error.headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
