# -*- test-case-name: tests.stages.toolintercept.test_search -*-
"""
Search providers for relay-run ``web_search``: SearXNG's JSON API, Brave Search, Tavily,
and a fixed-result provider for tests. Each call is bounded in time; failures become the
``web_search_tool_result_error`` codes (``too_many_requests``, ``unavailable``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, cast
from urllib.parse import urlencode

import attrs
from treq.client import HTTPClient
from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.web.client import Agent

from txrelay.logs import RelayLogger
from txrelay.protocol.jsoncodec import JSONDecodeError, dumps, loads
from txrelay.stages.toolintercept.httpio import (
    BodyFailed,
    BodyTooLarge,
    NoCookies,
    QuietPool,
    bounded,
    read_limited,
)
from txrelay.stages.toolintercept.servertools import SearchHit, ServerTool

log = RelayLogger()

#: The largest search API answer read.
MAX_ANSWER = 4 * 1024 * 1024


class SearchError(Exception):
    """A search that failed; ``code`` is a ``web_search_tool_result_error`` code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class SearchProvider(Protocol):
    """Runs one web search."""

    async def search(self, query: str, *, count: int, tool: ServerTool) -> list[SearchHit]:
        """Up to ``count`` results for ``query``; raises :class:`SearchError`."""


@attrs.frozen
class FixedProvider:
    """The same results for every query (tests, demos); optionally slow or failing."""

    hits: tuple[SearchHit, ...] = ()
    reactor: Any = None
    delay: float = 0.0
    error: str | None = None
    queries: list[str] = attrs.field(factory=list, eq=False)

    async def search(self, query: str, *, count: int, tool: ServerTool) -> list[SearchHit]:
        self.queries.append(query)
        if self.delay and self.reactor is not None:
            await deferLater(self.reactor, self.delay, lambda: None)
        if self.error is not None:
            raise SearchError(self.error, f"fixed provider fails with {self.error}")
        return list(self.hits[:count])


def _client(reactor: Any) -> HTTPClient:
    pool = QuietPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 4
    pool.retryAutomatically = False
    agent = Agent(reactor, connectTimeout=10, pool=pool)
    return HTTPClient(agent, cookiejar=cast("Any", NoCookies()))


def _country(tool: ServerTool) -> str | None:
    location = tool.user_location or {}
    country = location.get("country")
    return country.upper() if isinstance(country, str) and len(country) == 2 else None


@attrs.define(eq=False)
class _HTTPProvider:
    """What the HTTP providers share: a client, a time bound and answer decoding."""

    reactor: Any
    url: str
    timeout: float
    name: str = "search"
    http: HTTPClient | None = None

    async def _call(self, method: str, url: str, *, headers: Mapping[str, str],
                    body: bytes | None = None) -> Any:
        if self.http is None:
            self.http = _client(self.reactor)
        http = self.http

        async def go() -> Any:
            hdrs: dict[str | bytes, list[str | bytes]] = {k: [v] for k, v in headers.items()}
            response = await http.request(method, url, data=body, headers=hdrs,
                                          allow_redirects=False, unbuffered=True)
            raw = await read_limited(response, MAX_ANSWER)
            return response.code, raw

        try:
            code, raw = await bounded(self.reactor, self.timeout, go)
        except defer.TimeoutError:
            raise SearchError("unavailable",
                              f"{self.name}: no answer within {self.timeout:g} s") from None
        except defer.CancelledError:  # the client went away: nothing to report
            raise
        except (BodyTooLarge, BodyFailed) as e:
            raise SearchError("unavailable", f"{self.name}: bad answer: {e}") from None
        except Exception as e:  # connection refused, DNS, TLS: the provider is unreachable
            raise SearchError("unavailable", f"{self.name}: {type(e).__name__}: {e}") from None
        if code == 429:
            raise SearchError("too_many_requests", f"{self.name}: rate limited (429)")
        if code != 200:
            raise SearchError("unavailable", f"{self.name}: HTTP {code}")
        try:
            return loads(raw)
        except JSONDecodeError:
            raise SearchError("unavailable", f"{self.name}: answer is not JSON") from None


def _hits(items: Any, *, url: str, title: str, snippet: Sequence[str], age: Sequence[str]
          ) -> list[SearchHit]:
    out: list[SearchHit] = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict) or not isinstance(item.get(url), str):
            continue
        text = next((item[k] for k in snippet if isinstance(item.get(k), str)), "")
        page_age = next((item[k] for k in age if isinstance(item.get(k), str) and item[k]),
                        None)
        out.append(SearchHit(item[url], str(item.get(title) or item[url]), text, page_age))
    return out


@attrs.define(eq=False)
class SearxngProvider(_HTTPProvider):
    """A SearXNG instance's JSON API (``/search?format=json``; enable ``json`` there)."""

    name: str = "searxng"
    language: str | None = None

    async def search(self, query: str, *, count: int, tool: ServerTool) -> list[SearchHit]:
        params = {"q": query, "format": "json", "pageno": "1"}
        if self.language:
            params["language"] = self.language
        url = self.url.rstrip("/") + "/search?" + urlencode(params)
        answer = await self._call("GET", url, headers={"accept": "application/json"})
        results = answer.get("results") if isinstance(answer, dict) else None
        return _hits(results, url="url", title="title", snippet=("content",),
                     age=("publishedDate",))[:count]


@attrs.define(eq=False)
class BraveProvider(_HTTPProvider):
    """Brave Search's web search API (``X-Subscription-Token``)."""

    name: str = "brave"
    api_key: str = attrs.field(default="", repr=False)

    async def search(self, query: str, *, count: int, tool: ServerTool) -> list[SearchHit]:
        params = {"q": query, "count": str(min(20, max(1, count)))}
        country = _country(tool)
        if country:
            params["country"] = country
        headers = {"accept": "application/json", "x-subscription-token": self.api_key}
        location = tool.user_location or {}
        for key, name in (("city", "x-loc-city"), ("region", "x-loc-state-name"),
                          ("country", "x-loc-country"), ("timezone", "x-loc-timezone")):
            value = location.get(key)
            if isinstance(value, str) and value and value.isascii():
                headers[name] = value
        answer = await self._call("GET", self.url + "?" + urlencode(params), headers=headers)
        web = answer.get("web") if isinstance(answer, dict) else None
        results = web.get("results") if isinstance(web, dict) else None
        return _hits(results, url="url", title="title", snippet=("description",),
                     age=("page_age", "age"))[:count]


@attrs.define(eq=False)
class TavilyProvider(_HTTPProvider):
    """Tavily's search API (bearer key); domain rules are passed on to it as well."""

    name: str = "tavily"
    api_key: str = attrs.field(default="", repr=False)

    async def search(self, query: str, *, count: int, tool: ServerTool) -> list[SearchHit]:
        body: dict[str, Any] = {"query": query, "max_results": min(20, max(1, count))}
        if tool.allowed_domains:
            body["include_domains"] = list(tool.allowed_domains)
        if tool.blocked_domains:
            body["exclude_domains"] = list(tool.blocked_domains)
        headers = {"accept": "application/json", "content-type": "application/json",
                   "authorization": f"Bearer {self.api_key}"}
        answer = await self._call("POST", self.url, headers=headers, body=dumps(body))
        results = answer.get("results") if isinstance(answer, dict) else None
        return _hits(results, url="url", title="title", snippet=("content",),
                     age=("published_date",))[:count]


DEFAULT_URLS = {"brave": "https://api.search.brave.com/res/v1/web/search",
                "tavily": "https://api.tavily.com/search"}
