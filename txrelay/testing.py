# -*- test-case-name: tests.test_testing -*-
"""
Helpers for testing pipeline stages in a few lines, for txrelay itself and plugin authors.

Everything runs in memory and synchronously: no reactor, no sockets::

    from txrelay.testing import run_stage, text_reply

    def test_shouting_stage():
        result = run_stage(ShoutStage(), {"messages": [{"role": "user", "content": "hi"}]},
                           reply=text_reply("hello"))
        assert result.text == "HELLO"

``run_stage`` checks the events the stage lets through against the Anthropic stream grammar,
so a filter that breaks the stream fails the test.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs
from twisted.internet.defer import Deferred

from txrelay.catalog import ModelCatalog, Route
from txrelay.config import RelayConfig, parse_config
from txrelay.interfaces import StageServices
from txrelay.pipeline import Exchange, Operation, Reply
from txrelay.protocol import events as ev
from txrelay.protocol.accumulate import MessageAccumulator
from txrelay.protocol.errors import RelayError
from txrelay.protocol.events import Event, StreamGrammar
from txrelay.protocol.jsoncodec import dumps
from txrelay.streams import CollectingSink, stream_of

__all__ = [
    "StageResult",
    "build_stage",
    "make_exchange",
    "run_stage",
    "text_events",
    "text_reply",
    "tool_reply",
]

_MINIMAL_CONFIG: dict[str, Any] = {
    "providers": [{"name": "test", "kind": "demo"}],
    "models": [{"id": "test-model", "provider": "test", "patterns": ["*"]}],
    "pipeline": [{"type": "translate"}],
}


def text_events(text: str, *, model: str = "test-model", pieces: int = 3) -> list[Event]:
    """A complete, grammatical stream answering ``text`` in ``pieces`` deltas."""
    step = max(1, -(-len(text) // pieces))
    out = [ev.message_start("msg_test", model, ev.empty_usage(10)), ev.text_block_start(0)]
    out += [ev.text_delta(0, text[i:i + step]) for i in range(0, len(text), step)]
    out += [ev.block_stop(0), ev.message_delta("end_turn", None, {"output_tokens": 5}),
            ev.message_stop()]
    return out


def text_reply(text: str, *, model: str = "test-model", pieces: int = 3) -> Reply:
    """A streamed reply with one text block."""
    return Reply(stream=stream_of(text_events(text, model=model, pieces=pieces)))


def tool_reply(name: str, tool_input: dict[str, Any], *, tool_id: str = "toolu_test") -> Reply:
    """A streamed reply with one ``tool_use`` block and ``stop_reason: tool_use``."""
    args = dumps(tool_input).decode()
    events = [
        ev.message_start("msg_test", "test-model", ev.empty_usage(10)),
        ev.tool_use_block_start(0, tool_id, name),
        ev.input_json_delta(0, args[: len(args) // 2]),
        ev.input_json_delta(0, args[len(args) // 2:]),
        ev.block_stop(0),
        ev.message_delta("tool_use", None, {"output_tokens": 5}),
        ev.message_stop(),
    ]
    return Reply(stream=stream_of(events))


def make_exchange(
    body: Mapping[str, Any] | None = None,
    *,
    operation: Operation = "messages",
    headers: Mapping[str, str] | None = None,
    route: Route | None = None,
) -> Exchange:
    """An exchange for ``body``; ``model``, ``max_tokens`` and ``messages`` get defaults."""
    full = {"model": "test-model", "max_tokens": 1024,
            "messages": [{"role": "user", "content": "hello"}], **(body or {})}
    if operation == "count_tokens":
        full.pop("max_tokens", None)
    return Exchange(
        operation,
        {k.lower(): v
         for k, v in ({"x-api-key": "test-key"} if headers is None else headers).items()},
        "req_test",
        raw_body=dumps(full),
        route=route or Route(str(full["model"]), "test", str(full["model"]), None),
    )


@attrs.define
class StageResult:
    """
    What a stage did with one exchange.

    :ivar reply: the reply the stage returned (``None`` if it raised).
    :ivar error: the :class:`RelayError` it raised, if any.
    :ivar calls: the exchanges it passed to ``proceed``, in order.
    :ivar events: the events its reply stream delivered, after its filters.
    :ivar message: those events folded into one message (``None`` for JSON replies).
    """

    reply: Reply | None
    error: RelayError | None
    calls: list[Exchange]
    events: list[Event]
    message: dict[str, Any] | None

    @property
    def text(self) -> str:
        """The concatenated text blocks of :attr:`message`."""
        if self.message is None:
            return ""
        return "".join(b.get("text", "") for b in self.message["content"]
                       if b.get("type") == "text")


def run_stage(
    stage: Callable[[Exchange, Any], Awaitable[Reply]],
    body: Mapping[str, Any] | Exchange | None = None,
    *,
    reply: Reply | Callable[[Exchange], Reply] | None = None,
    headers: Mapping[str, str] | None = None,
) -> StageResult:
    """
    Run ``stage`` on one exchange with a fake rest-of-chain and collect what comes out.

    :param body: a request body (see :func:`make_exchange`) or a ready exchange.
    :param reply: what ``proceed`` answers: a reply, or a function of the exchange.
        Defaults to a short text reply. Replies are rebuilt per call only when a function
        is given, so give one if the stage calls ``proceed`` more than once.
    """
    exchange = body if isinstance(body, Exchange) else make_exchange(body, headers=headers)
    calls: list[Exchange] = []

    async def proceed(ex: Exchange) -> Reply:
        calls.append(ex)
        if callable(reply):
            return reply(ex)
        return reply if reply is not None else text_reply("ok")

    async def call() -> Reply:
        return await stage(exchange, proceed)

    d: Deferred[Reply] = Deferred.fromCoroutine(call())
    results: list[Any] = []
    d.addBoth(results.append)
    if not results:
        raise AssertionError("the stage did not finish synchronously; did it wait on real I/O?")
    outcome = results[0]
    if not isinstance(outcome, Reply):
        failure = outcome
        if failure.check(RelayError):
            return StageResult(None, failure.value, calls, [], None)
        failure.raiseException()
    events: list[Event] = []
    message: dict[str, Any] | None = None
    error: RelayError | None = None
    if outcome.stream is not None:
        sink = CollectingSink()
        outcome.stream.start(sink)
        if not sink.ended:
            raise AssertionError("the reply stream did not end")
        events, error = sink.events, sink.error
        grammar = StreamGrammar()
        acc = MessageAccumulator()
        for e in events:
            grammar.feed(e)
            acc.feed(e)
        if error is None:
            grammar.close()
            message = acc.result()
    return StageResult(outcome, error, calls, events, message)


def build_stage(
    type_name: str, options: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | RelayConfig | None = None,
) -> Any:
    """
    Build the stage plugin ``type_name`` exactly as the relay would from config.

    Finds it through plugin discovery, structures ``options`` with its options type (unknown
    keys are errors) and calls its factory; raises :class:`~txrelay.config.ConfigError`.
    """
    from txrelay.config import ConfigError
    from txrelay.service import _structure_options, stage_factories

    cfg = config if isinstance(config, RelayConfig) else parse_config(
        dict(config or _MINIMAL_CONFIG), "test", env={}
    )
    factory = stage_factories().get(type_name)
    if factory is None:
        raise ConfigError("test", [f"unknown stage type {type_name!r}"])
    problems: list[str] = []
    opts = _structure_options(options or {}, factory.options_type, "options", problems)
    if problems:
        raise ConfigError("test", problems)
    services = StageServices(cfg, ModelCatalog.from_config(cfg), {}, {}, None)
    return factory.build(opts, services)
