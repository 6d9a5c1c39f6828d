"""The ``limits`` stage over the in-process store, on a fake clock."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import attrs
import cattrs
import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock

from txrelay.config import ConfigError
from txrelay.pipeline import Exchange, Reply
from txrelay.protocol import events as ev
from txrelay.protocol.errors import RelayError
from txrelay.stages.limits import LimitsOptions, LimitsStage
from txrelay.state.interfaces import StoreUnavailable
from txrelay.state.memory import MemoryStore
from txrelay.streams import CollectingSink, EventStream, stream_of
from txrelay.testing import ManualSource, build_stage, make_exchange, text_events

START = dt.datetime(2026, 12, 2, 10, 0, 30, tzinfo=dt.UTC).timestamp()
_converter = cattrs.Converter(forbid_extra_keys=True)


@attrs.define
class Rig:
    """A stage, its store and clock; ``ask`` runs one request through it."""

    clock: Clock
    store: Any
    stage: LimitsStage
    seq: int = 0

    def exchange(self, name: str = "alice", body: dict[str, Any] | None = None,
                 **state: Any) -> Exchange:
        ex = make_exchange(body)
        self.seq += 1
        ex.request_id = f"req_{self.seq}"
        ex.client = name
        ex.state.update(state)
        return ex

    def ask(self, key: str = "alice", body: dict[str, Any] | None = None,
            reply: Callable[[], Reply] | None = None, *,
            exchange: Exchange | None = None) -> Reply | RelayError:
        """The reply (its stream drained) or the RelayError the stage raised."""
        ex = exchange or self.exchange(key, body)

        async def proceed(_: Exchange) -> Reply:
            return reply() if reply is not None else Reply(stream=stream_of(text_events("ok")))

        out: list[Any] = []
        Deferred.fromCoroutine(self.stage(ex, proceed)).addBoth(out.append)
        assert out, "the stage did not finish synchronously"
        if isinstance(out[0], Reply):
            if out[0].stream is not None:
                sink = CollectingSink()
                out[0].stream.start(sink)
            return out[0]
        if out[0].check(RelayError):
            return out[0].value  # type: ignore[no-any-return]
        out[0].raiseException()
        raise AssertionError

    def start(self, key: str = "alice", body: dict[str, Any] | None = None
              ) -> tuple[Reply | RelayError, ManualSource]:
        """A request whose stream stays open until the test drives its source."""
        source = ManualSource()
        answer = self.ask(key, {"stream": True, **(body or {})},
                          reply=lambda: Reply(stream=source.stream()))
        return answer, source


def rig(options: dict[str, Any], store: Any = None) -> Rig:
    clock = Clock()
    clock.advance(START)
    store = store if store is not None else MemoryStore(clock=clock.seconds)
    opts = _converter.structure(options, LimitsOptions)
    return Rig(clock, store, LimitsStage(opts, store, clock.seconds, clock))


def headers(answer: Reply | RelayError) -> dict[str, str]:
    return dict(answer.headers)


def refused(answer: Reply | RelayError) -> RelayError:
    assert isinstance(answer, RelayError), answer
    return answer


def finish(source: ManualSource, usage: dict[str, int] | None = None) -> None:
    source.send(ev.message_start("msg_x", "test-model", ev.empty_usage(10)))
    source.send(ev.message_delta("end_turn", None, usage or {"output_tokens": 5}),
                ev.message_stop())
    source.end()


# -- requests per minute


def test_requests_per_minute_and_retry_after() -> None:
    r = rig({"default": {"requests_per_minute": 3}})
    answers = [r.ask() for _ in range(3)]
    assert all(isinstance(a, Reply) for a in answers)
    assert [headers(a)["anthropic-ratelimit-requests-remaining"] for a in answers] == [
        "2", "1", "0"]
    assert headers(answers[0])["anthropic-ratelimit-requests-limit"] == "3"
    assert headers(answers[0])["anthropic-ratelimit-requests-reset"] == "2026-12-02T10:02:00Z"
    error = refused(r.ask())
    assert (error.status, error.type) == (429, "rate_limit_error")
    assert "key 'alice' is over its limit of 3 requests per minute" in error.message
    h = headers(error)
    assert h["anthropic-ratelimit-requests-remaining"] == "0"
    assert "x-should-retry" not in h
    wait = int(h["retry-after"])
    # The retry-after is what it takes: a second early is still refused, then it passes.
    r.clock.advance(wait - 1)
    assert isinstance(r.ask(), RelayError)
    r.clock.advance(1)
    assert isinstance(r.ask(), Reply)
    # Another key has its own count.
    assert isinstance(r.ask("bob"), Reply)


def test_key_entry_replaces_default() -> None:
    r = rig({"default": {"requests_per_minute": 1},
             "keys": [{"name": "vip", "requests_per_minute": 100}]})
    assert all(isinstance(r.ask("vip"), Reply) for _ in range(5))
    r.ask("alice")
    assert isinstance(r.ask("alice"), RelayError)


def test_group_limit_is_shared_and_named() -> None:
    r = rig({"groups": [{"name": "team", "keys": ["alice", "bob"], "requests_per_minute": 3}]})
    assert isinstance(r.ask("alice"), Reply)
    assert isinstance(r.ask("alice"), Reply)
    assert isinstance(r.ask("bob"), Reply)
    error = refused(r.ask("bob"))
    assert "group 'team' (of key 'bob') is over its limit of 3 requests" in error.message
    assert isinstance(r.ask("carol"), Reply)


def test_managed_key_names_its_groups() -> None:
    r = rig({"groups": [{"name": "team", "requests_per_minute": 1}]})
    first = r.exchange("dave", key={"name": "dave", "groups": ["team", "unknown"]})
    assert isinstance(r.ask(exchange=first), Reply)
    second = r.exchange("erin", key={"groups": "team"})
    assert "group 'team' (of key 'erin')" in refused(r.ask(exchange=second)).message


def test_refused_request_is_not_counted() -> None:
    """A request refused by one limit gives back what other limits counted for it."""
    r = rig({"default": {"requests_per_minute": 10},
             "groups": [{"name": "g", "keys": ["alice"], "requests_per_minute": 1}]})
    r.ask()
    for _ in range(5):
        refused(r.ask())
    r.stage.options = attrs.evolve(r.stage.options, groups=())
    r.stage.__attrs_post_init__()
    remaining = [headers(r.ask())["anthropic-ratelimit-requests-remaining"] for _ in range(2)]
    assert remaining == ["8", "7"]


def test_two_stages_sharing_a_store_enforce_one_limit() -> None:
    """Two relays (two stages) over one store: the limit holds to the request."""
    a = rig({"default": {"requests_per_minute": 5}})
    b = rig({"default": {"requests_per_minute": 5}}, store=a.store)
    b.clock = a.clock
    b.stage.clock = a.clock.seconds
    outcomes = [isinstance((a if i % 2 else b).ask(), Reply) for i in range(12)]
    assert outcomes.count(True) == 5


# -- token windows


def test_input_tokens_per_minute_counts_estimate_then_usage() -> None:
    r = rig({"default": {"input_tokens_per_minute": 100}})
    first = r.ask()  # estimated a few tokens; the stream reports 10
    h = headers(first)
    assert h["anthropic-ratelimit-input-tokens-limit"] == "100"
    assert h["anthropic-ratelimit-tokens-limit"] == "100"
    estimate = 100 - int(h["anthropic-ratelimit-input-tokens-remaining"])
    assert 0 < estimate < 10
    second = r.ask()
    # Corrected to the real 10, and the second estimate taken.
    assert headers(second)["anthropic-ratelimit-input-tokens-remaining"] == str(
        100 - 10 - estimate)
    big = {"messages": [{"role": "user", "content": "x" * 2000}]}
    error = refused(r.ask(body=big))
    assert "exceed key 'alice''s limit of 100 input tokens per minute" in error.message
    assert headers(error)["x-should-retry"] == "false"


def test_input_tokens_window_refuses_and_waits() -> None:
    r = rig({"default": {"input_tokens_per_minute": 50}})
    while isinstance(answer := r.ask(), Reply):
        pass
    error = refused(answer)
    assert "over its limit of 50 input tokens per minute" in error.message
    r.clock.advance(int(headers(error)["retry-after"]))
    assert isinstance(r.ask(), Reply)


def test_output_tokens_per_minute() -> None:
    r = rig({"default": {"output_tokens_per_minute": 12}})
    assert isinstance(r.ask(), Reply)  # 5 output tokens
    assert headers(r.ask())["anthropic-ratelimit-output-tokens-remaining"] == "7"
    assert isinstance(r.ask(), Reply)  # 10 counted: room left, admitted; now 15
    error = refused(r.ask())
    assert "over its limit of 12 output tokens per minute" in error.message
    assert headers(error)["anthropic-ratelimit-output-tokens-remaining"] == "0"


# -- concurrency


def test_concurrent_streams_released_when_a_stream_completes() -> None:
    r = rig({"default": {"concurrent_streams": 1}})
    first, source = r.start()
    assert isinstance(first, Reply)
    error = refused(r.start()[0])
    assert "key 'alice' already has 1 concurrent streams in flight" in error.message
    assert headers(error)["retry-after"] == "1"
    assert isinstance(r.ask(), Reply)  # not streaming: not a stream slot
    finish(source)
    assert isinstance(r.start()[0], Reply)


def test_concurrent_requests_count_every_request() -> None:
    r = rig({"default": {"concurrent_requests": 1}})
    answer, _ = r.start()
    refused(r.ask())
    assert isinstance(answer, Reply) and answer.stream is not None
    answer.stream.stop()  # the client went away
    assert isinstance(r.ask(), Reply)


@pytest.mark.parametrize("how", ["error", "stopped", "never-started", "stream-error",
                                 "raised", "cancelled", "json"])
def test_slots_released_on_every_exit(how: str) -> None:
    r = rig({"default": {"concurrent_streams": 1, "concurrent_requests": 1}})
    source = ManualSource()
    ex = r.exchange(body={"stream": True})
    holder: list[Any] = []

    async def proceed(_: Exchange) -> Reply:
        if how == "raised":
            raise RelayError("api_error", "upstream broke", status=502)
        if how == "cancelled":
            raise CancelledError()
        if how == "json":
            return Reply.json({"ok": True})
        return Reply(stream=source.stream())

    Deferred.fromCoroutine(r.stage(ex, proceed)).addBoth(holder.append)
    reply = holder[0]
    if isinstance(reply, Reply) and reply.stream is not None:
        if how == "never-started":  # the server stops a stream it will not send (drain)
            reply.stream.stop()
        else:
            reply.stream.start(CollectingSink())
            if how == "error":
                source.end(RelayError("overloaded_error", "busy"))
            elif how == "stream-error":
                source.send(ev.message_start("msg_x", "test-model", ev.empty_usage(10)))
                source.end(RelayError("api_error", "cut"))
            else:
                reply.stream.stop()  # client gone
    assert isinstance(r.start()[0], Reply)


def test_slots_are_renewed_while_the_stream_lasts() -> None:
    r = rig({"default": {"concurrent_streams": 1}, "slot_ttl": 30})
    _, source = r.start()
    r.clock.pump([10.0] * 12)  # two minutes, four slot lifetimes
    refused(r.start()[0])
    finish(source)
    r.clock.pump([10.0] * 3)
    assert not r.clock.getDelayedCalls()  # nothing left to renew: no timer
    assert isinstance(r.start()[0], Reply)


# -- budgets


def test_daily_token_budget() -> None:
    r = rig({"keys": [{"name": "alice", "tokens_per_day": 20}]})
    assert isinstance(r.ask(), Reply)  # 10 in + 5 out
    assert isinstance(r.ask(), Reply)  # 30 used now
    error = refused(r.ask())
    assert error.message == ("key 'alice' has used its daily tokens budget of 20 tokens; it "
                             "resets at 2026-12-03T00:00:00Z (14h from now)")
    h = headers(error)
    assert h["x-should-retry"] == "false"
    assert int(h["retry-after"]) == int(dt.datetime(2026, 12, 3, tzinfo=dt.UTC).timestamp()
                                         - START)
    r.clock.advance(int(h["retry-after"]))
    assert isinstance(r.ask(), Reply)


def test_monthly_spend_budget_of_a_group_with_prices() -> None:
    r = rig({"groups": [{"name": "team", "keys": ["alice", "bob"], "spend_per_month": 0.02}],
             "prices": [{"model": "test-*", "input": 1000, "output": 1000}]})
    assert isinstance(r.ask("alice"), Reply)  # 15 tokens at $0.001 each: $0.015
    assert isinstance(r.ask("bob"), Reply)  # $0.030
    error = refused(r.ask("alice"))
    assert error.message.startswith("group 'team' (of key 'alice') has used its monthly "
                                    "spend budget of $0.02; it resets at 2027-01-01T00:00:00Z")


def test_unpriced_model_counts_nothing() -> None:
    r = rig({"default": {"spend_per_day": 0.000001},
             "prices": [{"model": "other-*", "input": 1000}]})
    assert all(isinstance(r.ask(), Reply) for _ in range(3))


# -- allowed models


def test_allowed_models() -> None:
    r = rig({"keys": [{"name": "alice", "models": ["claude-*-haiku-*", "test-*"]}],
             "groups": [{"name": "g", "keys": ["bob"], "models": ["claude-*"]}]})
    assert isinstance(r.ask(body={"model": "test-model"}), Reply)
    error = refused(r.ask(body={"model": "claude-opus-4-1"}))
    assert (error.status, error.type) == (403, "permission_error")
    assert "key 'alice' may not use model 'claude-opus-4-1'" in error.message
    assert "group 'g' (of key 'bob') may not use model 'test-model'" in refused(
        r.ask("bob")).message
    counting = make_exchange({"model": "claude-opus-4-1"}, operation="count_tokens")
    counting.client = "alice"
    assert refused(r.ask(exchange=counting)).type == "permission_error"


# -- the store


@attrs.define
class DownStore(MemoryStore):
    async def get_count(self, key: str) -> int:
        raise StoreUnavailable("connection refused")


def test_store_unavailable_fails_closed_with_529() -> None:
    r = rig({"default": {"requests_per_minute": 3}}, store=DownStore())
    error = refused(r.ask())
    assert (error.status, error.type) == (529, "overloaded_error")
    assert headers(error)["retry-after"] == "5"


def test_no_limits_no_store_calls() -> None:
    r = rig({}, store=DownStore())
    assert isinstance(r.ask(), Reply)
    assert headers(r.ask()) == {}


# -- options


def test_options_problems_name_their_paths() -> None:
    config = {
        "providers": [{"name": "test", "kind": "demo"}],
        "models": [{"id": "priced", "provider": "test"}, {"id": "free", "provider": "test"}],
        "pipeline": [{"type": "translate"}],
    }
    with pytest.raises(ValueError) as caught:  # the relay reports it at pipeline[i].options
        build_stage("limits", {
            "default": {"requests_per_minute": 0, "spend_per_day": 5},
            "keys": [{"name": "a"}, {"name": "a", "models": [""]}],
            "prices": [{"model": "priced", "input": -1}],
            "slot_ttl": 0,
        }, config)
    text = str(caught.value)
    for expected in ("default.requests_per_minute: must be at least 1",
                     "keys[1].name: duplicate name 'a'",
                     "keys[1].models: an empty pattern matches nothing",
                     "prices[0].input: must not be negative",
                     "slot_ttl: must be at least 1 second",
                     "none for 'free'"):
        assert expected in text
    with pytest.raises(ConfigError, match="requests_per_mintue"):
        build_stage("limits", {"default": {"requests_per_mintue": 3}}, config)
    stage = build_stage("limits", {"default": {"requests_per_minute": 3}}, config)
    assert isinstance(stage, LimitsStage)


def test_stream_hook_sees_events_of_wrapped_stream() -> None:
    """The end hook corrects from a stream that other stages wrap further."""
    r = rig({"default": {"output_tokens_per_minute": 100}})
    answer = r.ask(reply=lambda: Reply(stream=EventStream(stream_of(text_events("hi")))))
    assert isinstance(answer, Reply)
    assert headers(r.ask())["anthropic-ratelimit-output-tokens-remaining"] == "95"


@attrs.frozen
class KeyInfo:
    """What the ``auth`` stage leaves in ``exchange.state["key"]`` (txrelay.keys.KeyInfo)."""

    name: str
    source: str = "managed"
    groups: tuple[str, ...] = ()
    models: tuple[str, ...] = ()


def test_key_record_groups_and_models() -> None:
    r = rig({"groups": [{"name": "team", "requests_per_minute": 1}],
             "keys": [{"name": "frank", "models": ["test-*", "claude-*"]}]})
    first = r.exchange("frank", key=KeyInfo("frank", groups=("team",), models=("claude-*",)))
    error = refused(r.ask(exchange=first))
    assert error.type == "permission_error"  # the record allows claude-* only
    assert "key 'frank' may not use model 'test-model' (allowed: claude-*)" in error.message
    ok = r.exchange("frank", {"model": "claude-x"}, key=KeyInfo("frank", groups=("team",)))
    assert isinstance(r.ask(exchange=ok), Reply)
    again = r.exchange("frank", {"model": "claude-x"}, key=KeyInfo("frank", groups=("team",)))
    assert "group 'team'" in refused(r.ask(exchange=again)).message


def test_price_found_under_the_routed_model_id() -> None:
    """The route is set after this stage (model-map runs later): the price of the model
    the name routed to applies."""
    from txrelay.catalog import Route
    from txrelay.config import ModelConfig

    r = rig({"default": {"spend_per_day": 0.02},
             "prices": [{"model": "served-model", "input": 1000, "output": 1000}]})
    for _ in range(2):
        ex = r.exchange(body={"model": "alias-name"})
        ex.route = None

        def routed(ex: Exchange = ex) -> Reply:
            ex.route = Route("alias-name", "p", "up-model", ModelConfig("served-model", "p"))
            return Reply(stream=stream_of(text_events("ok")))

        assert isinstance(r.ask(exchange=ex, reply=routed), Reply)  # $0.015, then $0.030
    assert "daily spend budget" in refused(r.ask(body={"model": "alias-name"})).message


def test_top_level_prices_are_used_without_prices_of_its_own() -> None:
    """The configuration's ``[[prices]]`` (shared with the usage ledger) price spend."""
    from types import SimpleNamespace

    from txrelay.ledger.prices import Price
    from txrelay.stages.limits import build_limits

    price = Price(model="m-*", input=1000.0, output=1000.0)
    config = SimpleNamespace(models=[SimpleNamespace(id="m-1")], prices=[price])
    options = _converter.structure({"default": {"spend_per_day": 1}}, LimitsOptions)
    stage = build_limits(options, SimpleNamespace(config=config, state=MemoryStore(),
                                                  reactor=None))
    assert stage.cost(["m-1"], {"input_tokens": 10, "output_tokens": 5}) == 15_000
    with pytest.raises(ValueError, match="none for 'm-1'"):
        build_limits(options, SimpleNamespace(config=SimpleNamespace(models=config.models),
                                              state=MemoryStore(), reactor=None))


def test_top_level_prices_from_a_real_config() -> None:
    config = {
        "providers": [{"name": "test", "kind": "demo"}],
        "models": [{"id": "priced", "provider": "test"}],
        "prices": [{"model": "priced", "input": 2.0, "output": 4.0}],
        "pipeline": [{"type": "translate"}],
    }
    stage = build_stage("limits", {"default": {"spend_per_month": 10}}, config)
    assert stage.cost(["priced"], {"input_tokens": 100, "output_tokens": 10}) == 240
