# -*- test-case-name: tests.test_testing -*-
"""
Helpers for testing pipeline stages in a few lines, for txrelay itself and plugin authors.

Everything runs in memory and synchronously: no reactor, no sockets::

    from txrelay.testing import run_stage, text_reply

    def test_shouting_stage():
        result = run_stage(ShoutStage(), {"messages": [{"role": "user", "content": "hi"}]},
                           reply=text_reply("hello"))
        assert result.text == "HELLO"

``run_stage`` behaves like the relay: the streams ``proceed`` answers carry the ``ping`` real
streams carry right after ``message_start``, and it checks the events the stage lets through
against the Anthropic stream grammar, so a filter that breaks the stream fails the test. A
stage that waits on time (:func:`txrelay.toolkit.splice` pings, a tool call with a timeout)
runs with ``clock=``: give the stage a :class:`~twisted.internet.task.Clock` and the same
clock to ``run_stage``, which advances it until the stage and its stream are done.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from txrelay.catalog import ModelCatalog, Route
from txrelay.config import RelayConfig, parse_config
from txrelay.interfaces import StageServices
from txrelay.pipeline import Exchange, Operation, Reply
from txrelay.protocol import events as ev
from txrelay.protocol.accumulate import MessageAccumulator
from txrelay.protocol.errors import RelayError
from txrelay.protocol.events import Event, StreamGrammar
from txrelay.protocol.jsoncodec import dumps
from txrelay.streams import CollectingSink, EventSink, EventStream, stream_of

__all__ = [
    "ManualSource",
    "PingAfterStart",
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
    out = [ev.message_start("msg_test", model, ev.empty_usage(10)), ev.ping(),
           ev.text_block_start(0)]
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
        ev.ping(),
        ev.tool_use_block_start(0, tool_id, name),
        ev.input_json_delta(0, args[: len(args) // 2]),
        ev.input_json_delta(0, args[len(args) // 2:]),
        ev.block_stop(0),
        ev.message_delta("tool_use", None, {"output_tokens": 5}),
        ev.message_stop(),
    ]
    return Reply(stream=stream_of(events))


@attrs.define(eq=False)
class PingAfterStart:
    """
    A filter that makes a stream look like the relay's: one ``ping`` right after
    ``message_start`` (R-S2), as every backend sends; a ping already there is kept, not
    doubled.
    """

    _after_start: bool = False

    def feed(self, event: Event) -> list[Event]:
        if event["type"] == "message_start":
            self._after_start = True
            return [event, ev.ping()]
        if self._after_start:
            self._after_start = False
            if event["type"] == "ping":
                return []
        return [event]

    def finish(self) -> list[Event]:
        return []


@attrs.define(eq=False)
class ManualSource:
    """
    An :class:`~txrelay.streams.EventSource` a test drives by hand: :meth:`send` events,
    :meth:`end` the stream, and look at what the consumer did (``paused``, ``stopped``).
    """

    sink: EventSink | None = None
    paused: bool = False
    stopped: bool = False
    #: How often pause/resume were called, in order (``"pause"``/``"resume"``).
    flow: list[str] = attrs.Factory(list)

    @property
    def started(self) -> bool:
        """Whether the consumer started the stream."""
        return self.sink is not None

    def stream(self) -> EventStream:
        """An :class:`EventStream` over this source."""
        return EventStream(self)

    def start(self, sink: EventSink) -> None:
        self.sink = sink

    def pause(self) -> None:
        self.paused = True
        self.flow.append("pause")

    def resume(self) -> None:
        self.paused = False
        self.flow.append("resume")

    def stop(self) -> None:
        self.stopped = True

    def send(self, *events: Event) -> None:
        """Deliver ``events`` (the stream must be started and not stopped)."""
        if self.sink is None or self.stopped:
            raise AssertionError("send() on a stream that is not started or was stopped")
        self.sink.write_events(list(events))

    def end(self, error: RelayError | None = None) -> None:
        """End the stream, normally or with ``error``."""
        if self.sink is None or self.stopped:
            raise AssertionError("end() on a stream that is not started or was stopped")
        self.sink.end(error)


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
    clock: Clock | None = None,
    max_seconds: float = 3600.0,
) -> StageResult:
    """
    Run ``stage`` on one exchange with a fake rest-of-chain and collect what comes out.

    :param body: a request body (see :func:`make_exchange`) or a ready exchange.
    :param reply: what ``proceed`` answers: a reply, or a function of the exchange.
        Defaults to a short text reply. Replies are rebuilt per call only when a function
        is given, so give one if the stage calls ``proceed`` more than once. Their streams
        get a ``ping`` after ``message_start`` if they lack one, as real streams have.
    :param clock: the clock the stage was built with; it is advanced (delayed call by
        delayed call) until the stage returns and its stream ends, for at most
        ``max_seconds`` of simulated time. Without it the stage must finish synchronously.

    A filter that raises (other than :class:`RelayError`) is re-raised here with its
    traceback, where the relay would end the stream with an ``api_error``.
    """
    exchange = body if isinstance(body, Exchange) else make_exchange(body, headers=headers)
    calls: list[Exchange] = []

    async def proceed(ex: Exchange) -> Reply:
        calls.append(ex)
        answer = text_reply("ok") if reply is None else reply(ex) if callable(reply) else reply
        return answer.with_filter(PingAfterStart(), name="backend")

    async def call() -> Reply:
        return await stage(exchange, proceed)

    d: Deferred[Reply] = Deferred.fromCoroutine(call())
    results: list[Any] = []
    d.addBoth(results.append)
    _pump(clock, lambda: bool(results), max_seconds,
          "the stage did not finish synchronously; did it wait on real I/O?"
          if clock is None else "the stage did not return")
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
        _pump(clock, lambda: sink.ended, max_seconds, "the reply stream did not end")
        events, error = sink.events, sink.error
        cause = error.__cause__ if error is not None else None
        if cause is not None and not isinstance(cause, RelayError):
            raise cause
        grammar = StreamGrammar()
        acc = MessageAccumulator()
        for e in events:
            grammar.feed(e)
            acc.feed(e)
        if error is None:
            grammar.close()
            message = acc.result()
    return StageResult(outcome, error, calls, events, message)


def _pump(clock: Clock | None, done: Callable[[], bool], max_seconds: float,
          complaint: str) -> None:
    """Advance ``clock`` one delayed call at a time until ``done()``."""
    if clock is not None:
        limit = clock.seconds() + max_seconds
        while not done():
            pending = [c.getTime() for c in clock.getDelayedCalls()]
            if not pending or min(pending) > limit:
                break
            clock.advance(max(0.0, min(pending) - clock.seconds()))
    if not done():
        where = f" within {max_seconds:g} simulated seconds" if clock is not None else ""
        raise AssertionError(complaint + where)


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
