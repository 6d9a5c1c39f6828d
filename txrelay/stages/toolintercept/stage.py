# -*- test-case-name: tests.stages.toolintercept.test_stage -*-
"""
The ``tool-intercept`` stage: Anthropic server tools (web search, web fetch) for backends
that cannot run them.

The model is offered equivalent function tools; when it calls one, the stage turns the
call into a ``server_tool_use`` block on the client's stream, runs the search or fetch
itself (pings go out meanwhile), splices in the ``web_search_tool_result`` /
``web_fetch_tool_result`` block, and continues the turn with another upstream call. The
client sees one message, as the Anthropic API would send it, with
``usage.server_tool_use`` counting the requests run.
"""

from __future__ import annotations

import datetime
import fnmatch
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import attrs
from twisted.internet.defer import Deferred, FirstError, gatherResults

from txrelay.catalog import ModelCatalog, Route
from txrelay.config import Secret
from txrelay.interfaces import StageServices
from txrelay.logs import RelayLogger
from txrelay.pipeline import Exchange, Proceed, Reply
from txrelay.protocol.anthropic import MessagesRequest
from txrelay.protocol.events import Event
from txrelay.redact import register_secret
from txrelay.stages.toolintercept.addresses import parse_networks
from txrelay.stages.toolintercept.extract import UnsupportedContent, extract
from txrelay.stages.toolintercept.fetch import FetchError, FetchPolicy, Resolver, SafeFetcher
from txrelay.stages.toolintercept.search import (
    DEFAULT_URLS,
    BraveProvider,
    FixedProvider,
    SearchError,
    SearchProvider,
    SearxngProvider,
    TavilyProvider,
)
from txrelay.stages.toolintercept.servertools import (
    USAGE_KEYS,
    SearchHit,
    ServerTool,
    continue_request,
    conversation_text,
    error_result_block,
    fetch_result_block,
    has_server_blocks,
    rewrite_request,
    search_result_block,
    server_tool_id,
    server_tools,
    tool_input,
    url_allowed,
    url_in_text,
)
from txrelay.toolkit import CallOutcome, EventStream, blocks_stream, call_again, splice

log = RelayLogger()

# options


@attrs.frozen
class FixedResult:
    """A result the ``fixed`` search provider returns."""

    url: str
    title: str
    snippet: str = ""
    page_age: str | None = None


@attrs.frozen
class SearchOptions:
    """Where ``web_search`` runs."""

    provider: Literal["searxng", "brave", "tavily", "fixed"]
    #: searxng: the instance's base URL; brave/tavily: override the API URL.
    url: str | None = None
    #: brave/tavily: the API key (``{ env = "VAR" }`` or ``{ file = "/path" }``).
    api_key: Secret | None = None
    #: Seconds one search may take (then ``unavailable``).
    timeout: float = 10.0
    max_results: int = 5
    #: Longer queries get ``query_too_long``.
    max_query_chars: int = 400
    #: searxng: the ``language`` parameter.
    language: str | None = None
    #: fixed: the results, and an optional simulated latency or error code.
    results: tuple[FixedResult, ...] = ()
    delay: float = 0.0
    error: str | None = None


@attrs.frozen
class FetchOptions:
    """How ``web_fetch`` runs."""

    enabled: bool = True
    #: Seconds one fetch may take, redirects and body included.
    timeout: float = 20.0
    connect_timeout: float = 10.0
    max_bytes: int = 10 * 1024 * 1024
    max_redirects: int = 5
    max_url_chars: int = 2048
    #: Characters of extracted text given to the model (the rest is cut).
    max_chars: int = 100_000
    #: Networks opened on purpose (``["127.0.0.0/8"]``); all others that are not public
    #: unicast addresses are refused.
    allow_networks: tuple[str, ...] = ()
    #: Only fetch URLs that appeared in the conversation (user turns, tool and search
    #: results), as the Anthropic API does; guards against exfiltration through URLs.
    require_url_in_context: bool = True


@attrs.frozen
class RouteOptions:
    """Search and fetch settings for some models or providers (first match wins)."""

    #: Globs matched against the requested model name and the routed model's id.
    models: tuple[str, ...] = ()
    #: Provider names.
    providers: tuple[str, ...] = ()
    search: SearchOptions | None = None
    fetch: FetchOptions | None = None


@attrs.frozen
class ToolInterceptOptions:
    """Options of the ``tool-intercept`` stage."""

    #: Provider kinds or names whose backends run server tools themselves (left alone).
    native: tuple[str, ...] = ("anthropic",)
    #: Upstream calls one client turn may make; then the turn ends with ``pause_turn``.
    max_calls: int = 8
    #: The default search; without one, ``web_search`` is not intercepted.
    search: SearchOptions | None = None
    fetch: FetchOptions = FetchOptions()
    routes: tuple[RouteOptions, ...] = ()


# what runs the tools


@attrs.frozen
class Toolbox:
    """A search provider and a fetcher, with their limits."""

    search: SearchProvider | None
    search_options: SearchOptions | None
    fetcher: SafeFetcher | None
    fetch_options: FetchOptions

    def runs(self, kind: str) -> bool:
        """Whether this toolbox can run ``kind``."""
        return self.search is not None if kind == "web_search" else self.fetcher is not None


def _secret_value(secret: Secret | None, where: str, env: Mapping[str, str]) -> str:
    from txrelay.config import _resolve_secret

    if secret is None:
        raise ValueError(f"{where}: an api_key is required")
    problems: list[str] = []
    resolved = _resolve_secret(secret, where, env, problems)
    if problems:
        raise ValueError("; ".join(problems))
    register_secret(resolved.value)
    return resolved.value


def build_search(options: SearchOptions, reactor: Any, where: str,
                 env: Mapping[str, str]) -> SearchProvider:
    """The provider ``options`` describe; ``ValueError`` naming what is missing."""
    if options.provider == "fixed":
        hits = tuple(SearchHit(r.url, r.title, r.snippet, r.page_age) for r in options.results)
        return FixedProvider(hits, reactor, options.delay, options.error)
    if options.provider == "searxng":
        if not options.url:
            raise ValueError(f"{where}.url: the SearXNG instance's URL is required")
        return SearxngProvider(reactor, options.url, options.timeout, language=options.language)
    key = _secret_value(options.api_key, f"{where}.api_key", env)
    url = options.url or DEFAULT_URLS[options.provider]
    if options.provider == "brave":
        return BraveProvider(reactor, url, options.timeout, api_key=key)
    return TavilyProvider(reactor, url, options.timeout, api_key=key)


def build_toolbox(search: SearchOptions | None, fetch: FetchOptions, reactor: Any, where: str,
                  env: Mapping[str, str], resolver: Resolver | None = None) -> Toolbox:
    """A :class:`Toolbox` from options."""
    place = f"{where}.search" if where else "search"
    provider = build_search(search, reactor, place, env) if search else None
    fetcher = None
    if fetch.enabled:
        policy = FetchPolicy(fetch.timeout, fetch.connect_timeout, fetch.max_bytes,
                             fetch.max_redirects, parse_networks(fetch.allow_networks))
        fetcher = SafeFetcher(reactor, policy, resolver)
    return Toolbox(provider, search, fetcher, fetch)


# the stream


@attrs.define(eq=False)
class ServerToolBlocks:
    """
    A call's filter: a ``tool_use`` of one of the offered function tools becomes a
    ``server_tool_use`` block with a ``srvtoolu_`` id; everything else passes unchanged.
    """

    names: frozenset[str]

    def feed(self, event: Event) -> list[Event]:
        if event["type"] == "content_block_start":
            block = event["content_block"]
            if block.get("type") == "tool_use" and block.get("name") in self.names:
                return [dict(event, content_block={
                    "type": "server_tool_use", "id": server_tool_id(), "name": block["name"],
                    "input": {}})]
        return [event]

    def finish(self) -> list[Event]:
        return []


@attrs.define(eq=False)
class TurnUsage:
    """The spliced stream's filter: server-tool counts and ``pause_turn`` on the last delta."""

    turn: Turn

    def feed(self, event: Event) -> list[Event]:
        if event["type"] != "message_delta":
            return [event]
        usage = dict(event.get("usage") or {})
        counts = dict(usage.get("server_tool_use") or {})
        for key in USAGE_KEYS.values():
            counts[key] = int(counts.get(key) or 0) + self.turn.requests[key]
        usage["server_tool_use"] = counts
        out = dict(event, usage=usage)
        if self.turn.paused:
            out["delta"] = dict(event.get("delta") or {}, stop_reason="pause_turn")
        return [out]

    def finish(self) -> list[Event]:
        return []


def _now_iso(seconds: float) -> str:
    stamp = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return stamp.isoformat(timespec="seconds").replace("+00:00", "Z")


@attrs.define(eq=False)
class Turn:
    """One client turn: its upstream calls, the tools run and their results."""

    stage: ToolInterceptStage
    toolbox: Toolbox
    request: MessagesRequest
    tools: Sequence[ServerTool]
    exchange: Exchange
    proceed: Proceed
    blocks: list[dict[str, Any]] = attrs.Factory(list)
    uses: Counter[str] = attrs.Factory(Counter)
    requests: Counter[str] = attrs.Factory(Counter)
    calls: int = 0
    pending: Exchange | None = None
    done: bool = False
    paused: bool = False

    @property
    def names(self) -> frozenset[str]:
        return frozenset(t.name for t in self.tools)

    def upstream_exchange(self, turn: Sequence[dict[str, Any]] = ()) -> Exchange:
        request = self.request
        if turn:
            request = continue_request(request, turn)
            choice = request.tool_choice or {}
            if choice.get("type") == "any" or (choice.get("type") == "tool"
                                               and choice.get("name") in self.names):
                # forced once, as the API does: the continuation may answer in words
                relaxed = {k: v for k, v in choice.items() if k != "name"}
                request = attrs.evolve(request, tool_choice={**relaxed, "type": "auto"})
        return self.exchange.with_request(rewrite_request(request, self.tools))

    def wrap(self, stream: EventStream) -> EventStream:
        self.calls += 1
        return stream.through(ServerToolBlocks(self.names)) if self.tools else stream

    async def start(self) -> Reply:
        reply = await self.proceed(self.upstream_exchange())
        if reply.stream is None:
            return reply
        spliced = splice(self.wrap(reply.stream), self.next_call, reactor=self.stage.reactor,
                         ping_interval=self.stage.ping_interval)
        return reply.with_stream(spliced.through(TurnUsage(self)))

    async def next_call(self, outcome: CallOutcome) -> EventStream | None:
        if self.pending is not None:
            exchange, self.pending = self.pending, None
            return self.wrap(await call_again(self.proceed, exchange))
        if self.done:
            return None
        self.blocks.extend(outcome.blocks())
        calls = [b for b in outcome.blocks("server_tool_use") if b.get("name") in self.names]
        if outcome.stop_reason != "tool_use" or not calls:
            return None
        # Concurrently; each run counts its use before its first wait, in call order.
        runs = [Deferred.fromCoroutine(self.run(call)) for call in calls]
        try:
            results: list[dict[str, Any]] = await gatherResults(runs, consumeErrors=True)
        except FirstError as e:
            e.subFailure.raiseException()
        self.blocks.extend(results)
        if outcome.blocks("tool_use"):  # the client has tools of its own to run first
            self.done = True
        elif self.calls >= self.stage.max_calls:
            self.done = self.paused = True
        else:
            self.pending = self.upstream_exchange(self.blocks)
        return blocks_stream(results)

    async def run(self, call: Mapping[str, Any]) -> dict[str, Any]:
        tool = next(t for t in self.tools if t.name == call.get("name"))
        tool_id = str(call.get("id"))
        if tool.max_uses is not None and self.uses[tool.name] >= tool.max_uses:
            return error_result_block(tool.kind, tool_id, "max_uses_exceeded")
        self.uses[tool.name] += 1
        if tool.kind == "web_search":
            return await self.search(tool, tool_id, call)
        return await self.fetch(tool, tool_id, call)

    async def search(self, tool: ServerTool, tool_id: str, call: Mapping[str, Any]
                     ) -> dict[str, Any]:
        options = self.toolbox.search_options
        provider = self.toolbox.search
        assert options is not None and provider is not None
        query = tool_input(call, "query")
        if query is None:
            return error_result_block(tool.kind, tool_id, "invalid_tool_input")
        if len(query) > options.max_query_chars:
            return error_result_block(tool.kind, tool_id, "query_too_long")
        wanted = options.max_results * (2 if tool.allowed_domains or tool.blocked_domains
                                        else 1)
        try:
            hits = await provider.search(query, count=wanted, tool=tool)
        except SearchError as e:
            self.stage.log_failure("web_search", self.exchange, str(e))
            return error_result_block(tool.kind, tool_id, e.code)
        self.requests[USAGE_KEYS["web_search"]] += 1
        kept = [h for h in hits if url_allowed(h.url, tool)][:options.max_results]
        return search_result_block(tool_id, kept)

    async def fetch(self, tool: ServerTool, tool_id: str, call: Mapping[str, Any]
                    ) -> dict[str, Any]:
        options = self.toolbox.fetch_options
        fetcher = self.toolbox.fetcher
        assert fetcher is not None
        url = tool_input(call, "url")
        if url is None:
            return error_result_block(tool.kind, tool_id, "invalid_tool_input")
        if len(url) > options.max_url_chars:
            return error_result_block(tool.kind, tool_id, "url_too_long")
        if not url_allowed(url, tool):
            return error_result_block(tool.kind, tool_id, "url_not_allowed")
        if options.require_url_in_context and not url_in_text(
                url, conversation_text(self.request, self.blocks)):
            return error_result_block(tool.kind, tool_id, "url_not_in_prior_context")
        try:
            fetched = await fetcher.fetch(url, lambda u: url_allowed(u, tool))
            page = extract(fetched.body, fetched.content_type)
        except FetchError as e:
            self.stage.log_failure("web_fetch", self.exchange, str(e))
            return error_result_block(tool.kind, tool_id, e.code)
        except UnsupportedContent as e:
            self.stage.log_failure("web_fetch", self.exchange, str(e))
            return error_result_block(tool.kind, tool_id, "unsupported_content_type")
        self.requests[USAGE_KEYS["web_fetch"]] += 1
        limit = options.max_chars
        if tool.max_content_tokens:
            limit = min(limit, tool.max_content_tokens * 4)
        text = page.text if len(page.text) <= limit else page.text[:limit] + "\n[truncated]"
        return fetch_result_block(tool_id, url, text, title=page.title,
                                  retrieved_at=_now_iso(self.stage.reactor.seconds()))


def _route_matches(route: Route | None, entry: RouteOptions) -> bool:
    if route is None:
        return False
    names = [route.requested, route.upstream_model]
    if route.model is not None:
        names.append(route.model.id)
    if entry.models and not any(fnmatch.fnmatchcase(n, g) for n in names for g in entry.models):
        return False
    return not entry.providers or route.provider in entry.providers


@attrs.define(eq=False)
class ToolInterceptStage:
    """See the module docstring."""

    reactor: Any
    catalog: ModelCatalog
    default: Toolbox
    routes: Sequence[tuple[RouteOptions, Toolbox]] = ()
    #: Provider names whose backends run server tools natively.
    native_providers: frozenset[str] = frozenset()
    max_calls: int = 8
    ping_interval: float = 10.0

    async def __call__(self, exchange: Exchange, proceed: Proceed) -> Reply:
        if exchange.operation != "messages":
            return await proceed(exchange)
        request = exchange.require_request()
        route = exchange.route or self.catalog.resolve(request.model)
        if route is not None and route.provider in self.native_providers:
            return await proceed(exchange)
        toolbox = next((box for entry, box in self.routes if _route_matches(route, entry)),
                       self.default)
        tools = [t for t in server_tools(request) if toolbox.runs(t.kind)]
        if not tools and not has_server_blocks(request.messages):
            return await proceed(exchange)
        return await Turn(self, toolbox, request, tools, exchange, proceed).start()

    def log_failure(self, tool: str, exchange: Exchange, message: str) -> None:
        """One line for a tool run that failed (the model gets the error code)."""
        log.info("tool-intercept: {tool} failed: {message} (request {request_id})",
                           tool=tool, message=message, request_id=exchange.request_id)


def build_tool_intercept(options: ToolInterceptOptions, services: StageServices, *,
                         env: Mapping[str, str] | None = None,
                         resolver: Resolver | None = None) -> ToolInterceptStage:
    """The stage from its options; ``ValueError`` naming a bad option."""
    environ = os.environ if env is None else env
    if options.max_calls < 2:
        raise ValueError("max_calls: at least 2 (a tool call and the answer after it)")
    native = set(options.native)
    native_providers = frozenset(p.name for p in services.config.providers
                                 if p.name in native or p.kind in native)
    reactor = services.reactor
    default = build_toolbox(options.search, options.fetch, reactor, "", environ, resolver)
    routes = []
    for i, entry in enumerate(options.routes):
        where = f"routes[{i}]"
        unknown = set(entry.providers) - {p.name for p in services.config.providers}
        if unknown:
            raise ValueError(f"{where}.providers: no provider named {', '.join(sorted(unknown))}")
        box = build_toolbox(entry.search or options.search, entry.fetch or options.fetch,
                            reactor, where, environ, resolver)
        routes.append((entry, box))
    return ToolInterceptStage(reactor, services.catalog, default, tuple(routes),
                              native_providers, options.max_calls,
                              services.config.server.ping_interval)
