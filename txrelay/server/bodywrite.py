# -*- test-case-name: tests.server.test_bodywrite -*-
"""
Writing a chunked response body frame by frame without twisted.web's per-write layers.

Each ``Request.write`` of a streamed reply runs ``twisted.web.server.Request.write`` (the
default ``Content-Type``, ``HEAD`` and encoder checks), ``twisted.web.http.Request.write``
(the ``finished`` and header checks, ``sentLength``), ``toChunk`` (a tuple of four pieces)
and ``HTTPChannel.writeSequence``. Once the response head is out, a chunked body write is
always the same: add the length to ``sentLength`` and send ``<hex length>CRLF<data>CRLF``.
:func:`write_body` does exactly that, in one frame, handed to ``channel.write`` once;
:func:`direct_body` says when that is safe. Anything unusual goes to ``Request.write``.

It relies on these attributes of ``twisted.web.http.Request`` and ``twisted.web.server.
Request`` (checked by ``tests/server/test_bodywrite.py::test_twisted_private_contract``):
``startedWriting``, ``chunked``, ``finished``, ``sentLength``, ``method``, ``channel``,
``_disconnected`` (set when the connection is lost; ``Request.write`` then drops the data),
``_inFakeHead`` (a ``HEAD`` answered by rendering ``GET``: nothing may be written) and
``_encoder`` (a content encoder such as gzip); and on ``HTTPChannel.write`` and
``writeSequence`` putting the same bytes on the wire.
"""

from __future__ import annotations

from typing import Any

from twisted.web.http import HTTPChannel
from twisted.web.server import Request

_REQUEST_WRITE = Request.write


def direct_body(request: Any) -> bool:
    """
    Whether :func:`write_body` may write ``request``'s body from now on: the response head
    was sent and the body is chunked, the request is a plain ``twisted.web.server.Request``
    (no ``write`` of its own, not ``HEAD``, no encoder) on an open ``HTTPChannel``.

    What it checks does not change for the rest of the response, but ``finished`` and the
    connection, which :func:`write_body` checks on every write.
    """
    return bool(
        # first: anything else (a test double, another request class) may lack the rest
        getattr(type(request), "write", None) is _REQUEST_WRITE
        and "write" not in request.__dict__
        and request.startedWriting
        and request.chunked
        and not request.finished
        and not request._disconnected
        and request.method != b"HEAD"
        and not request._inFakeHead
        and request._encoder is None
        and isinstance(request.channel, HTTPChannel)
    )


def write_body(request: Any, data: bytes) -> None:
    """
    ``request.write(data)`` for a request :func:`direct_body` accepted: the same bytes on the
    wire, the same ``sentLength``, the same error once the request finished.
    """
    if request.finished or request._disconnected:
        request.write(data)  # raises, or drops the data, as it always does
        return
    n = len(data)
    request.sentLength += n
    if n:
        request.channel.write(b"%x\r\n%b\r\n" % (n, data))
