"""Search providers against in-memory APIs (treq.testing), and the stage's options."""

from __future__ import annotations

import json
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from txrelay.config import ConfigError
from txrelay.redact import default_redactor
from txrelay.stages.toolintercept.search import (
    BraveProvider,
    SearchError,
    SearxngProvider,
    TavilyProvider,
)
from txrelay.stages.toolintercept.servertools import SearchHit, ServerTool
from txrelay.testing import build_stage

TOOL = ServerTool("web_search", "web_search", "web_search_20250305",
                  blocked_domains=("bad.example",),
                  user_location={"type": "approximate", "city": "Berlin", "country": "de",
                                 "timezone": "Europe/Berlin"})


class API(Resource):
    isLeaf = True

    def __init__(self, answer: Any, status: int = 200, hang: bool = False) -> None:
        super().__init__()
        self.answer, self.status, self.hang = answer, status, hang
        self.requests: list[Any] = []
        self.bodies: list[bytes] = []

    def render(self, request: Any) -> Any:
        self.requests.append(request)
        self.bodies.append(request.content.read())
        if self.hang:
            return NOT_DONE_YET
        request.setResponseCode(self.status)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(self.answer).encode()


def run(provider: Any, query: str = "q", count: int = 5) -> list[SearchHit] | SearchError:
    out: list[Any] = []
    Deferred.fromCoroutine(provider.search(query, count=count, tool=TOOL)).addBoth(out.append)
    assert out, "the search did not finish"
    if isinstance(out[0], list):
        return out[0]
    assert isinstance(out[0].value, SearchError), out[0]
    return out[0].value


def test_searxng() -> None:
    api = API({"results": [
        {"url": "https://a.example/", "title": "A", "content": "alpha",
         "publishedDate": "2026-01-02"},
        {"url": "https://b.example/", "title": "B"}, {"title": "no url"}]})
    provider = SearxngProvider(Clock(), "http://searx.local/", 5, http=StubTreq(api),
                               language="de")
    assert run(provider, "twisted relay") == [
        SearchHit("https://a.example/", "A", "alpha", "2026-01-02"),
        SearchHit("https://b.example/", "B", "", None)]
    (request,) = api.requests
    assert request.path == b"/search"
    assert request.args == {b"q": [b"twisted relay"], b"format": [b"json"], b"pageno": [b"1"],
                            b"language": [b"de"]}


def test_brave_sends_its_key_and_the_users_location() -> None:
    api = API({"web": {"results": [{"url": "https://a.example/", "title": "A",
                                    "description": "alpha", "page_age": "2026-01-02T00:00:00"}]}})
    provider = BraveProvider(Clock(), "https://brave.local/search", 5, http=StubTreq(api),
                             api_key="brave-key")
    assert run(provider, count=3) == [
        SearchHit("https://a.example/", "A", "alpha", "2026-01-02T00:00:00")]
    (request,) = api.requests
    assert request.args == {b"q": [b"q"], b"count": [b"3"], b"country": [b"DE"]}
    headers = request.requestHeaders
    assert headers.getRawHeaders(b"x-subscription-token") == [b"brave-key"]
    assert headers.getRawHeaders(b"x-loc-city") == [b"Berlin"]
    assert headers.getRawHeaders(b"x-loc-timezone") == [b"Europe/Berlin"]


def test_tavily_passes_domain_rules() -> None:
    api = API({"results": [{"url": "https://a.example/", "title": "A", "content": "alpha"}]})
    provider = TavilyProvider(Clock(), "https://tavily.local/search", 5, http=StubTreq(api),
                              api_key="tvly-key")
    assert run(provider) == [SearchHit("https://a.example/", "A", "alpha", None)]
    (request,) = api.requests
    assert json.loads(api.bodies[0]) == {
        "query": "q", "max_results": 5, "exclude_domains": ["bad.example"]}
    assert request.requestHeaders.getRawHeaders(b"authorization") == [b"Bearer tvly-key"]


@pytest.mark.parametrize(("status", "answer", "code"), [
    (429, {}, "too_many_requests"), (500, {}, "unavailable"), (200, "not json", "unavailable")])
def test_failures_become_error_codes(status: int, answer: Any, code: str) -> None:
    api = API(answer, status)
    if answer == "not json":
        api.render = lambda request: b"<html>"  # type: ignore[method-assign]
    provider = SearxngProvider(Clock(), "http://searx.local", 5, http=StubTreq(api))
    error = run(provider)
    assert isinstance(error, SearchError) and error.code == code


def test_each_call_is_bounded_in_time() -> None:
    clock = Clock()
    provider = SearxngProvider(clock, "http://searx.local", 2.5, http=StubTreq(API({}, hang=True)))
    out: list[Any] = []
    Deferred.fromCoroutine(provider.search("q", count=5, tool=TOOL)).addBoth(out.append)
    assert not out
    clock.advance(2.5)
    assert isinstance(out[0].value, SearchError) and out[0].value.code == "unavailable"
    assert "2.5 s" in str(out[0].value)
    assert not clock.getDelayedCalls()


# options, as the relay builds them


def test_options_are_strict() -> None:
    with pytest.raises(ConfigError, match=r"options\.search: unknown key\(s\): provder"):
        build_stage("tool-intercept", {"search": {"provider": "searxng", "provder": "x"}})
    with pytest.raises(ConfigError, match="provider"):
        build_stage("tool-intercept", {"search": {"provider": "bing"}})


def test_missing_settings_are_named() -> None:
    with pytest.raises(ValueError, match=r"search\.url: the SearXNG instance's URL"):
        build_stage("tool-intercept", {"search": {"provider": "searxng"}})
    with pytest.raises(ValueError, match=r"search\.api_key: an api_key is required"):
        build_stage("tool-intercept", {"search": {"provider": "brave"}})
    with pytest.raises(ValueError, match=r"'nope' is not an IP network"):
        build_stage("tool-intercept", {"fetch": {"allow_networks": ["nope"]}})
    with pytest.raises(ValueError, match=r"routes\[0\]\.providers: no provider named ghost"):
        build_stage("tool-intercept", {"routes": [{"providers": ["ghost"]}]})


def test_api_keys_are_secrets(tmp_path: Any) -> None:
    key = tmp_path / "brave.key"
    key.write_text("brv-0123456789abcdef\n")
    stage = build_stage("tool-intercept", {"search": {"provider": "brave",
                                                      "api_key": {"file": str(key)}}})
    assert stage.default.search.api_key == "brv-0123456789abcdef"
    assert "brv-0123456789abcdef" not in repr(stage.default.search)
    assert default_redactor.redact("key=brv-0123456789abcdef") == "key=[redacted]"


def test_route_problems_name_the_route() -> None:
    with pytest.raises(ValueError, match=r"routes\[0\]\.search\.api_key: an api_key"):
        build_stage("tool-intercept", {"routes": [{"models": ["x*"],
                                                   "search": {"provider": "tavily"}}]})
