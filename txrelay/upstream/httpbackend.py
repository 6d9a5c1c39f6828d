# -*- test-case-name: tests.test_upstream_http -*-
"""
The generic HTTP backend: everything HTTP kinds share, around a kind's sans-IO codec.

It sends the codec's request with the auth hook's headers, decides the commit point
(:class:`~txrelay.upstream.streaming.UpstreamSource`), maps error bodies through the codec,
serves the non-streaming path, and turns our own cancellation into ``CancelledError``, never
into an upstream timeout.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
from twisted.internet.defer import CancelledError, Deferred
from zope.interface import implementer

from txrelay import __version__
from txrelay.capabilities import capabilities_of
from txrelay.config import ProviderConfig
from txrelay.interfaces import BackendContext, IBackend
from txrelay.logs import RelayLogger
from txrelay.pipeline import Exchange, Reply
from txrelay.protocol.errors import RelayError, upstream_event_error
from txrelay.protocol.tokens import estimate_input_tokens
from txrelay.streams import EventStream, stream_of
from txrelay.upstream.codec import BackendCodec, UpstreamAuth, UpstreamCall
from txrelay.upstream.http import UpstreamClient, read_body, response_headers
from txrelay.upstream.streaming import UpstreamSource

log = RelayLogger()

#: The largest error body read from an upstream.
_MAX_ERROR_BODY = 1 << 20


def prompt_too_long(tokens: int, maximum: int) -> RelayError:
    """Claude Code's compaction trigger, worded exactly as the real API words it."""
    return RelayError("invalid_request_error",
                      f"prompt is too long: {tokens} tokens > {maximum} maximum")


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


@implementer(IBackend)
@attrs.define(eq=False)
class HTTPBackend:
    """Serves one provider over HTTP with a kind's codec and auth hook."""

    provider: ProviderConfig
    reactor: Any
    codec: BackendCodec
    auth: UpstreamAuth
    #: Commit a stream after this long even without upstream content (pings start).
    commit_after: float = 10.0
    client: UpstreamClient = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.client = UpstreamClient(self.reactor, self.provider)

    @property
    def base_url(self) -> str:
        """The provider's ``base_url`` without a trailing slash."""
        assert self.provider.base_url is not None
        return self.provider.base_url.rstrip("/")

    async def count_tokens(self, exchange: Exchange) -> int:
        """A local estimate (R-C1)."""
        return estimate_input_tokens(exchange.require_request())

    async def _headers(self, call: UpstreamCall) -> dict[str, str]:
        headers = {
            "content-type": "application/json",
            "accept": "text/event-stream" if call.request.stream else "application/json",
            "user-agent": f"txrelay/{__version__}",
        }
        headers.update({k.lower(): v for k, v in call.request.headers.items()})
        try:
            credentials = await self.auth.headers()
        except (RelayError, CancelledError):
            raise
        except Exception:
            log.failure("upstream {provider}: the credential hook failed",
                        provider=self.provider.name)
            raise RelayError("api_error", f"{self.provider.name}: could not obtain the "
                             "upstream credential", status=502) from None
        headers.update({k.lower(): v for k, v in credentials.items()})
        headers.update({k.lower(): v for k, v in self.provider.headers.items()})
        return headers

    async def messages(self, exchange: Exchange) -> Reply:
        """Serve a routed ``messages`` exchange (see :class:`~txrelay.interfaces.IBackend`)."""
        req = exchange.require_request()
        route = exchange.route
        assert route is not None
        input_tokens = estimate_input_tokens(req)
        limit = capabilities_of(route).context_window
        if limit is not None and input_tokens > limit:
            raise prompt_too_long(input_tokens, limit)
        call = self.codec.prepare(req, route, input_tokens)
        headers = await self._headers(call)
        url = self.base_url + call.request.path
        log.debug("upstream {provider} request {request_id}: {size} bytes, model {model}",
                  provider=self.provider.name, request_id=exchange.request_id,
                  size=len(call.request.body), model=route.upstream_model)
        if call.request.stream:
            return await self._streaming(call, url, headers)
        return await self._non_streaming(call, url, headers)

    async def _streaming(self, call: UpstreamCall, url: str,
                         headers: Mapping[str, str]) -> Reply:
        source = UpstreamSource(call.translator(), self.reactor, self.provider.timeouts.idle,
                                self.commit_after)
        source.begin(Deferred.fromCoroutine(self._open_stream(source, call, url, headers)))
        try:
            await source.ready
        except CancelledError:
            source.stop()
            raise
        return Reply(stream=EventStream(source))

    async def _open_stream(self, source: UpstreamSource, call: UpstreamCall, url: str,
                           headers: Mapping[str, str]) -> None:
        """Send the request and hand its answer to ``source`` (a cancel just returns)."""
        try:
            response = await self.client.post(url, call.request.body, headers)
            status, hdrs = response.code, response_headers(response)
            if 200 <= status < 300 and not _is_json(hdrs.get("content-type", "")):
                # An empty body or bare JSON may still come instead of events.
                source.bare_body = lambda body: call.error(status, body, hdrs)
                source.response(response)
                return
            # A non-2xx answer, or JSON where an event stream was asked for.
            try:
                body = await read_body(response, idle=self.provider.timeouts.idle,
                                       reactor=self.reactor, limit=_MAX_ERROR_BODY)
            except RelayError:
                body = b""
            source.fail(call.error(status, body, hdrs))
        except CancelledError:
            return
        except RelayError as e:
            source.fail(e)
        except Exception:
            log.failure("upstream {provider}: reading the answer failed",
                        provider=self.provider.name)
            source.fail(RelayError("api_error", f"{self.provider.name}: the relay could not "
                                   "read the upstream's answer", status=502))

    async def _non_streaming(self, call: UpstreamCall, url: str,
                             headers: Mapping[str, str]) -> Reply:
        response = await self.client.post(url, call.request.body, headers)
        hdrs = response_headers(response)
        raw = await read_body(response, idle=self.provider.timeouts.idle, reactor=self.reactor)
        if not 200 <= response.code < 300:
            raise call.error(response.code, raw, hdrs)
        events = call.response_events(raw)
        if events and events[-1]["type"] == "error":
            # Nothing is committed yet: the client gets a proper HTTP error.
            raise upstream_event_error(events[-1]["error"])
        return Reply(stream=stream_of(events))

    def close(self) -> Deferred[None] | None:
        """Close pooled upstream connections."""
        return self.client.close()


def http_backend(context: BackendContext, codec: BackendCodec,
                 auth: UpstreamAuth) -> HTTPBackend | None:
    """
    The :class:`HTTPBackend` for ``context``'s provider, or None (with a problem recorded)
    when the provider has no ``base_url``.
    """
    provider = context.provider
    if provider.base_url is None:
        context.problem("base_url", f"required for kind {provider.kind!r}")
        return None
    ping = context.config.server.ping_interval if context.config is not None else 10.0
    return HTTPBackend(provider, context.reactor, codec, auth, commit_after=ping)

