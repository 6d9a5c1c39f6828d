"""
What a new HTTP backend kind supplies: a sans-IO codec and an auth hook.

:class:`~txrelay.upstream.httpbackend.HTTPBackend` does the I/O every HTTP kind shares
(sending, the commit point, error bodies, the non-streaming path, timeouts, retries, flow
control); a kind only says how one request looks on the wire (:class:`BackendCodec` →
:class:`UpstreamCall`) and which credential headers go with it (:class:`UpstreamAuth`, which
may await, e.g. to refresh an OAuth token without blocking the reactor). Nothing here imports
Twisted.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Protocol

import attrs

from txrelay.catalog import Route
from txrelay.protocol.anthropic import MessagesRequest
from txrelay.protocol.errors import RelayError
from txrelay.protocol.events import Event
from txrelay.protocol.translator import StreamTranslator
from txrelay.routing.keys import KeyPool


def _tight(body: bytes) -> bytes:
    """
    ``body`` in a bytes object of its own size: orjson's result keeps its whole write
    buffer (at least 4 KiB, up to twice the length), and the request body lives as long as
    its stream (retries, failover), so a held-open stream would keep that slack (issue 13).
    """
    return bytes(memoryview(body))


@attrs.frozen
class UpstreamRequest:
    """One request as the upstream wants it."""

    #: Appended to the provider's ``base_url`` (``/chat/completions``).
    path: str
    body: bytes = attrs.field(converter=_tight)
    #: Whether the upstream answers with an event stream (else one JSON body).
    stream: bool
    #: Kind-specific headers (``content-type``, ``accept`` and credentials are added).
    headers: Mapping[str, str] = attrs.Factory(dict)


class UpstreamCall(Protocol):
    """One request in flight, with the per-request state its answers are read with."""

    @property
    def request(self) -> UpstreamRequest:
        """What to send."""

    def translator(self) -> StreamTranslator:
        """A new sans-IO translator for a streamed 2xx answer."""

    def error(self, status: int, body: bytes, headers: Mapping[str, str]) -> RelayError:
        """
        The client's error for an answer that is not a usable result: any non-2xx status,
        and a 2xx whose body is empty or bare JSON where an event stream was asked for.
        ``headers`` have lower-case names. Never raises.
        """

    def response_events(self, body: bytes) -> list[Event]:
        """The Anthropic events of a non-streaming 2xx body; raise :class:`RelayError`."""


class BackendCodec(Protocol):
    """Builds one :class:`UpstreamCall` per request."""

    def prepare(self, request: MessagesRequest, route: Route,
                input_tokens: int) -> UpstreamCall:
        """The call for a routed request (``input_tokens``: the relay's estimate)."""


class UpstreamAuth(Protocol):
    """Credential headers for each upstream request."""

    def headers(self) -> Awaitable[Mapping[str, str]]:
        """The headers (``authorization``…); may await; raise :class:`RelayError`."""


@attrs.frozen
class BearerAuth:
    """A fixed API key sent as ``Authorization: Bearer …`` (none when empty)."""

    token: str = attrs.field(default="", repr=False)
    #: The provider's ``api_keys``: the attempt's key is sent instead of ``token``.
    pool: KeyPool | None = None

    async def headers(self) -> Mapping[str, str]:
        """``{"authorization": "Bearer <token>"}``."""
        token = self.pool.current() if self.pool is not None else self.token
        return {"authorization": f"Bearer {token}"} if token else {}
