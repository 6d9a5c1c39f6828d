"""Exchanges (one source of truth for the body), replies' with_* helpers, the stage chain."""

from __future__ import annotations

import attrs
import pytest
from twisted.internet.defer import Deferred

from txrelay.pipeline import Exchange, Proceed, Reply, compose, request_body, stage_name
from txrelay.protocol.anthropic import parse_request
from txrelay.protocol.errors import RelayError
from txrelay.protocol.jsoncodec import loads
from txrelay.streams import CollectingSink, StageContext, current_stage
from txrelay.testing import make_exchange, text_reply


def run(d: Deferred[Reply] | object) -> Reply:
    results: list[object] = []
    assert isinstance(d, Deferred)
    d.addBoth(results.append)
    (outcome,) = results
    if not isinstance(outcome, Reply):
        outcome.raiseException()  # type: ignore[attr-defined]
    return outcome


def test_replacing_the_request_replaces_the_raw_body() -> None:
    """The old tree kept the client's bytes in raw_body after a stage set exchange.request."""
    exchange = make_exchange({"model": "a", "metadata": {"user_id": "u"}, "beta_x": 1})
    original = exchange.raw_body
    assert exchange.raw_body is exchange.original_body and not exchange.body_replaced
    req = exchange.require_request()
    exchange.request = attrs.evolve(req, model="b", max_tokens=7)
    body = loads(exchange.raw_body)
    assert body["model"] == "b" and body["max_tokens"] == 7 and body["beta_x"] == 1
    assert body["metadata"] == {"user_id": "u"} and "temperature" not in body
    assert parse_request(exchange.raw_body) == exchange.request
    assert exchange.original_body == original and exchange.body_replaced
    assert exchange.raw_body is exchange.raw_body  # derived once


def test_replacing_the_raw_body_reparses_the_request() -> None:
    exchange = make_exchange({"model": "a"})
    assert exchange.require_request().model == "a"
    exchange.raw_body = b'{"model": "c", "max_tokens": 3, "messages": [{"role": "user", ' \
                        b'"content": "x"}]}'
    assert exchange.require_request().model == "c" and exchange.body_replaced
    exchange.raw_body = b"{}"
    with pytest.raises(RelayError, match="max_tokens"):
        exchange.require_request()


def test_request_body_round_trips() -> None:
    exchange = make_exchange({"system": [{"type": "text", "text": "s"}], "tools": [
        {"name": "Read", "input_schema": {"type": "object"}}], "stream": True})
    req = exchange.require_request()
    assert parse_request(request_body(req)) == req


def test_with_request_copies_what_later_stages_change() -> None:
    exchange = make_exchange({"model": "a"})
    exchange.state["k"] = 1
    copy = exchange.with_request(attrs.evolve(exchange.require_request(), model="z"))
    copy.state["k"] = 2
    copy.client = "someone"
    assert exchange.state["k"] == 1 and exchange.client is None
    assert exchange.require_request().model == "a" and copy.require_request().model == "z"
    assert loads(copy.raw_body)["model"] == "z"


class Noop:
    def feed(self, event: dict[str, object]) -> list[dict[str, object]]:
        return [event]

    def finish(self) -> list[dict[str, object]]:
        return []


def test_reply_helpers_leave_the_reply_alone() -> None:
    reply = text_reply("hi").with_headers(("x-a", "1"))
    assert reply.stream is not None
    filtered = reply.with_filter(Noop(), name="n").with_headers(("x-b", "2"))
    assert reply.stream.filters == () and reply.headers == [("x-a", "1")]
    assert filtered.stream is not None and len(filtered.stream.filters) == 1
    assert filtered.headers == [("x-a", "1"), ("x-b", "2")]
    assert filtered.stream.owners[0] == StageContext("n")
    hooked = reply.on_end(lambda _: None)
    assert hooked.stream is not reply.stream
    json_reply = Reply.json({"a": 1})
    assert json_reply.with_filter(Noop()) is json_reply
    assert json_reply.on_end(lambda _: None) is json_reply


def test_compose_names_each_stage_while_it_runs() -> None:
    seen: list[tuple[str, StageContext | None]] = []

    def stage(label: str):  # type: ignore[no-untyped-def]
        async def run_stage(exchange: Exchange, proceed: Proceed) -> Reply:
            seen.append((label + " before", current_stage.get()))
            reply = await proceed(exchange)
            seen.append((label + " after", current_stage.get()))
            return reply.with_filter(Noop())
        return run_stage

    async def terminal(exchange: Exchange) -> Reply:
        seen.append(("terminal", current_stage.get()))
        return text_reply("ok")

    chain = compose([stage("a"), stage("b")], terminal, ["first", "second"])
    reply = run(Deferred.fromCoroutine(chain(make_exchange())))
    assert [(w, c.name if c else None) for w, c in seen] == [
        ("a before", "first"), ("b before", "second"), ("terminal", "second"),
        ("b after", "second"), ("a after", "first")]
    assert reply.stream is not None
    assert [o.name for o in reply.stream.owners if o] == ["second", "first"]
    assert all(o is not None and o.request_id == "req_test" for o in reply.stream.owners)
    assert current_stage.get() is None


def test_a_stage_that_raises_a_bug_is_named_in_the_error() -> None:
    async def broken(exchange: Exchange, proceed: Proceed) -> Reply:
        raise KeyError("oops")

    async def outer(exchange: Exchange, proceed: Proceed) -> Reply:
        return await proceed(exchange)

    async def terminal(exchange: Exchange) -> Reply:
        raise AssertionError("not reached")

    chain = compose([outer, broken], terminal, ["outer", "broken"])
    with pytest.raises(RelayError) as info:
        run(Deferred.fromCoroutine(chain(make_exchange())))
    assert info.value.message == "stage 'broken' failed while handling the request " \
                                 "(request req_test)"
    assert info.value.status == 500 and "KeyError" not in info.value.message


def test_compose_default_names_and_mismatch() -> None:
    class Named:
        name = "custom"

        async def __call__(self, exchange: Exchange, proceed: Proceed) -> Reply:
            return await proceed(exchange)

    async def plain(exchange: Exchange, proceed: Proceed) -> Reply:
        return await proceed(exchange)

    assert stage_name(Named()) == "custom" and stage_name(plain) == "plain"
    with pytest.raises(ValueError):
        compose([plain], plain, [])  # type: ignore[arg-type]


def test_filters_of_a_composed_chain_fail_with_the_config_label() -> None:
    class Boom:
        def feed(self, event: dict[str, object]) -> list[dict[str, object]]:
            if event["type"] == "content_block_delta":
                raise ValueError("no")
            return [event]

        def finish(self) -> list[dict[str, object]]:
            return []

    async def shout(exchange: Exchange, proceed: Proceed) -> Reply:
        return (await proceed(exchange)).with_filter(Boom())

    async def terminal(exchange: Exchange) -> Reply:
        return text_reply("hello")

    reply = run(Deferred.fromCoroutine(compose([shout], terminal, ["loud"])(make_exchange())))
    sink = CollectingSink()
    assert reply.stream is not None
    reply.stream.start(sink)
    assert sink.error is not None
    assert sink.error.message == "stage 'loud' failed while filtering the stream " \
                                 "(request req_test)"
