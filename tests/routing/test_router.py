"""The router over fake backends, an in-process store and a fake clock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from txrelay.catalog import ModelCatalog
from txrelay.config import parse_config
from txrelay.health import Health
from txrelay.interfaces import StageServices
from txrelay.pipeline import Exchange, Reply
from txrelay.protocol.errors import RelayError, connection_error
from txrelay.routing.keys import KeyPool
from txrelay.routing.router import Board, Router, build_router
from txrelay.stages.translate import TranslateStage
from txrelay.state.memory import MemoryStore
from txrelay.streams import stream_of
from txrelay.testing import make_exchange

Outcome = RelayError | Reply | None | Callable[[Exchange], RelayError | None]


class FakeBackend:
    """Answers each call with the next scripted outcome (an error, or None: a reply)."""

    def __init__(self, *script: Outcome) -> None:
        self.script = list(script)
        self.seen: list[tuple[str, str, str | None]] = []
        self.pool: KeyPool | None = None

    async def messages(self, exchange: Exchange) -> Reply:
        route = exchange.route
        assert route is not None
        self.seen.append((route.target or "", route.upstream_model,
                          self.pool.current() if self.pool is not None else None))
        outcome = self.script.pop(0) if self.script else None
        if callable(outcome):
            outcome = outcome(exchange)
        if isinstance(outcome, Reply):
            return outcome
        if outcome is not None:
            raise outcome
        return Reply(stream=stream_of([]))

    async def count_tokens(self, exchange: Exchange) -> int:
        return 1


def config(routing: dict[str, Any] | None = None, keys: int = 0,
           targets: int = 2) -> dict[str, Any]:
    providers: list[dict[str, Any]] = [{"name": f"p{i}", "kind": "demo"}
                                       for i in range(targets)]
    if keys:
        providers[0]["api_keys"] = [{"env": f"K{j}", "name": f"k{j}"} for j in range(keys)]
    model: dict[str, Any] = {"id": "m", "targets": [
        {"provider": f"p{i}", "upstream_model": f"up{i}", "priority": i}
        for i in range(targets)]}
    if routing is not None:
        model["routing"] = routing
    return {"providers": providers, "models": [model], "pipeline": [{"type": "translate"}]}


class World:
    def __init__(self, raw: dict[str, Any], backends: dict[str, Any],
                 store: MemoryStore | None = None, clock: Clock | None = None) -> None:
        if clock is None:
            clock = Clock()
            clock.advance(1_000_000)
        self.clock = clock
        self.cfg = parse_config(raw, env={f"K{j}": f"secret{j}" for j in range(5)})
        self.store = store or MemoryStore(clock=self.clock.seconds)
        self.health = Health()
        self.backends = backends
        self.catalog = ModelCatalog.from_config(self.cfg)
        services = StageServices(self.cfg, self.catalog, backends, {}, self.clock,
                                 self.store, self.health)
        self.router = build_router(services)
        for name, b in backends.items():
            b.pool = self.router.pools.get(name)
        self.stage = TranslateStage(backends, self.router)

    def start(self, headers: dict[str, str] | None = None, body: dict[str, Any] | None = None,
              request_id: str = "req_test") -> tuple[Exchange, list[Any]]:
        route = self.catalog.resolve("m")
        exchange = make_exchange({"model": "m", **(body or {})}, route=route,
                                 headers=headers)
        exchange.request_id = request_id

        async def proceed(_: Exchange) -> Reply:
            raise AssertionError("translate does not proceed")

        d = Deferred.fromCoroutine(self.stage(exchange, proceed))
        out: list[Any] = []
        d.addBoth(out.append)
        return exchange, out

    def send(self, headers: dict[str, str] | None = None,
             body: dict[str, Any] | None = None) -> tuple[Exchange, Reply | RelayError]:
        exchange, out = self.start(headers, body)
        for _ in range(1000):
            if out:
                break
            self.clock.advance(0.05)
        assert out, "the router never finished"
        result = out[0]
        if hasattr(result, "value"):
            result = result.value
        assert isinstance(result, Reply | RelayError), result
        return exchange, result


def attempts(exchange: Exchange) -> list[tuple[str, str | None, str]]:
    assert exchange.route is not None
    return [(a.target, a.key, a.outcome) for a in exchange.route.attempts]


def test_a_retryable_failure_moves_to_the_next_target() -> None:
    p0, p1 = FakeBackend(connection_error("refused", upstream="p0")), FakeBackend()
    w = World(config(), {"p0": p0, "p1": p1})
    exchange, reply = w.send()
    assert isinstance(reply, Reply)
    assert p1.seen == [("p1/up1", "up1", None)]  # the target's own upstream model
    assert attempts(exchange) == [("p0/up0", None, "api_error"), ("p1/up1", None, "served")]
    assert exchange.route is not None and exchange.route.target == "p1/up1"


def test_a_client_error_is_not_retried() -> None:
    p0, p1 = FakeBackend(RelayError("invalid_request_error", "bad")), FakeBackend()
    w = World(config(), {"p0": p0, "p1": p1})
    exchange, reply = w.send()
    assert isinstance(reply, RelayError) and reply.status == 400
    assert p1.seen == [] and len(attempts(exchange)) == 1


def test_attempts_are_bounded_and_the_last_error_answers() -> None:
    busy = RelayError("overloaded_error", "busy")
    p0, p1 = FakeBackend(busy, busy, busy), FakeBackend(busy, busy)
    w = World(config({"attempts": 3, "breaker": False}), {"p0": p0, "p1": p1})
    exchange, reply = w.send()
    assert isinstance(reply, RelayError) and reply.type == "overloaded_error"
    assert [a[0] for a in attempts(exchange)] == ["p0/up0", "p1/up1", "p0/up0"]


def test_a_long_retry_after_is_not_waited_for() -> None:
    slow = RelayError("api_error", "later", status=503, headers=(("retry-after", "600"),))
    p0 = FakeBackend(slow, slow)
    w = World(config({"attempts": 3, "max_retry_after": 30}, targets=1), {"p0": p0})
    before = w.clock.seconds()
    _, reply = w.send()
    assert isinstance(reply, RelayError) and reply.headers == (("retry-after", "600"),)
    assert len(p0.seen) == 1 and w.clock.seconds() - before < 30


def test_a_short_retry_after_is_waited_for_on_the_same_target() -> None:
    slow = RelayError("api_error", "later", status=503, headers=(("retry-after", "2"),))
    p0 = FakeBackend(slow)
    w = World(config({"attempts": 2}, targets=1), {"p0": p0})
    before = w.clock.seconds()
    _, reply = w.send()
    assert isinstance(reply, Reply) and len(p0.seen) == 2
    assert w.clock.seconds() - before >= 2


def test_the_breaker_opens_is_probed_and_closes() -> None:
    down = connection_error("refused", upstream="p0")
    p0, p1 = FakeBackend(*[down] * 3), FakeBackend()
    w = World(config({"breaker_failures": 3, "breaker_window": 60, "breaker_cooldown": 30,
                      "affinity": False}), {"p0": p0, "p1": p1})
    for _ in range(3):
        w.send()
    assert w.health.detail()["routing"]["targets"]["p0/up0"]["state"] == "open"
    exchange, _ = w.send()
    assert attempts(exchange)[0] == ("p0/up0", None, "breaker_open")
    assert len(p0.seen) == 3
    w.clock.advance(31)
    exchange, _ = w.send()  # the probe, which succeeds
    assert attempts(exchange) == [("p0/up0", None, "served")]
    assert w.health.detail()["routing"]["targets"]["p0/up0"] == {"state": "closed"}


def test_a_failed_probe_opens_the_breaker_again() -> None:
    down = connection_error("refused", upstream="p0")
    p0, p1 = FakeBackend(*[down] * 4), FakeBackend()
    w = World(config({"breaker_failures": 3, "breaker_cooldown": 30, "affinity": False}),
              {"p0": p0, "p1": p1})
    for _ in range(3):
        w.send()
    w.clock.advance(31)
    exchange, reply = w.send()
    assert isinstance(reply, Reply) and attempts(exchange)[0] == ("p0/up0", None, "api_error")
    entry = w.health.detail()["routing"]["targets"]["p0/up0"]
    assert entry["state"] == "open" and entry["trips"] == 2


def test_every_target_open_answers_529_with_retry_after() -> None:
    down = connection_error("refused", upstream="x")
    p0 = FakeBackend(*[down] * 9)
    w = World(config({"breaker": True, "breaker_failures": 2, "breaker_cooldown": 20},
                     targets=1), {"p0": p0})
    w.send()
    w.send()
    _, reply = w.send()
    assert isinstance(reply, RelayError) and reply.status == 529
    assert dict(reply.headers)["retry-after"] in ("19", "20")


def test_a_rate_limited_key_cools_and_another_key_serves() -> None:
    limited = RelayError("rate_limit_error", "slow", headers=(("retry-after", "40"),))
    p0 = FakeBackend(limited)
    w = World(config(keys=2, targets=1), {"p0": p0})
    _, reply = w.send()
    assert isinstance(reply, Reply)
    used = [s[2] for s in p0.seen]
    assert len(used) == 2 and used[0] != used[1]
    keys = w.health.detail()["routing"]["keys"]["p0"]
    cooled = [n for n, e in keys.items() if "cooling_until" in e]
    assert len(cooled) == 1
    # meanwhile the other key serves every request
    for _ in range(5):
        w.send()
    assert {s[2] for s in p0.seen[2:]} == {used[1]}
    w.clock.advance(41)  # the health detail is refreshed by the next request
    w.send(headers={"x-claude-code-session-id": "fresh"})
    assert all(e == {"state": "ready"}
               for e in w.health.detail()["routing"]["keys"]["p0"].values())


def test_every_key_cooling_answers_429_with_the_soonest_retry_after() -> None:
    p0 = FakeBackend(RelayError("rate_limit_error", "a", headers=(("retry-after", "50"),)),
                     RelayError("rate_limit_error", "b", headers=(("retry-after", "8"),)))
    w = World(config(keys=2, targets=1), {"p0": p0})
    _, reply = w.send()
    assert isinstance(reply, RelayError) and reply.status == 429
    assert dict(reply.headers)["retry-after"] == "8"
    _, again = w.send()  # no upstream call at all while both cool
    assert isinstance(again, RelayError) and len(p0.seen) == 2


def test_a_conversation_sticks_to_its_target_and_key() -> None:
    backends = {"p0": FakeBackend(), "p1": FakeBackend()}
    raw = config(keys=3)
    for t in raw["models"][0]["targets"]:
        t["priority"] = 0  # two equal targets
    w = World(raw, backends)
    served = set()
    for turn in range(6):
        exchange, _ = w.send(headers={"x-claude-code-session-id": "conv-1"},
                             body={"messages": [{"role": "user", "content": f"t{turn}"}]})
        assert exchange.route is not None
        served.add((exchange.route.target, exchange.route.attempts[-1].key))
    assert len(served) == 1
    spread = set()
    for n in range(40):
        exchange, _ = w.send(headers={"x-claude-code-session-id": f"c{n}"})
        assert exchange.route is not None
        spread.add(exchange.route.target)
    assert spread == {"p0/up0", "p1/up1"}


def test_an_unfit_target_is_skipped_for_one_that_takes_the_request() -> None:
    raw = config()
    raw["models"][0]["targets"][0]["upstream_model"] = "deepseek-chat"  # no images
    raw["models"][0]["targets"][1]["upstream_model"] = "gpt-4o"
    p0, p1 = FakeBackend(), FakeBackend()
    w = World(raw, {"p0": p0, "p1": p1})
    png = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
    exchange, reply = w.send(body={"messages": [{"role": "user", "content": [
        {"type": "image", "source": png}, {"type": "text", "text": "what is it"}]}]})
    assert isinstance(reply, Reply), reply
    assert p0.seen == [] and p1.seen[0][1] == "gpt-4o"
    assert attempts(exchange)[0][2] == "unfit"


def test_a_store_that_is_down_fails_open() -> None:
    from txrelay.state.interfaces import StoreUnavailable

    class Down(MemoryStore):
        async def hash_all(self, key: str) -> Any:
            raise StoreUnavailable("no")

        async def get(self, key: str) -> Any:
            raise StoreUnavailable("no")

    p0, p1 = FakeBackend(), FakeBackend()
    w = World(config(), {"p0": p0, "p1": p1})
    w.router = Router(w.backends, {}, Down(), w.clock, Board(w.health))
    w.stage = TranslateStage(w.backends, w.router)
    _, reply = w.send(headers={"x-claude-code-session-id": "s"})
    assert isinstance(reply, Reply)


@pytest.mark.parametrize("models", [
    [{"id": "m", "provider": "p0", "targets": [{"provider": "p0"}]}],
    [{"id": "m"}],
    [{"id": "m", "targets": [{"provider": "nope"}]}],
    [{"id": "m", "targets": [{"provider": "p0", "weight": 0}]}],
    [{"id": "m", "targets": [{"provider": "p0"}, {"provider": "p0"}]}],
    [{"id": "m", "targets": [{"provider": "p0"}], "routing": {"attempts": 0}}],
    [{"id": "m", "targets": [{"provider": "p0"}], "routing": {"breaker_window": 0}}],
    [{"id": "m", "targets": [{"provider": "p0"}], "routing": {"bogus": 1}}],
    [{"id": "m", "targets": [{"provider": "p0", "bogus": 1}]}],
    [{"id": "m", "targets": [{"provider": "p0", "name": "x", "upstream_model": "a"}]},
     {"id": "n", "targets": [{"provider": "p0", "name": "x", "upstream_model": "b"}]}],
])
def test_bad_routes_are_named_by_their_key_path(models: list[dict[str, Any]]) -> None:
    from txrelay.config import ConfigError

    raw = {"providers": [{"name": "p0", "kind": "demo"}], "models": models,
           "pipeline": [{"type": "translate"}]}
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env={})
    assert len(info.value.problems) == 1, info.value.problems
    assert info.value.problems[0].startswith(("models[0].", "models[1].")), info.value.problems


def test_bad_key_pools_are_named_by_their_key_path() -> None:
    from txrelay.config import ConfigError

    raw = {"providers": [{"name": "p0", "kind": "demo", "api_keys": [
        {"env": "A", "name": "same"}, {"env": "B", "name": "same"}, {"env": "MISSING"},
        {"file": "/x", "env": "A"}], "api_key": {"env": "A"}}],
        "models": [{"id": "m", "provider": "p0"}], "pipeline": [{"type": "translate"}]}
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env={"A": "a", "B": "b"})
    assert sorted(info.value.problems) == [
        "providers[0].api_keys: give either api_key or api_keys, not both",
        "providers[0].api_keys[1].name: duplicate key name 'same'",
        "providers[0].api_keys[2].env: environment variable MISSING is not set",
        "providers[0].api_keys[3]: give exactly one of env, file or credential",
    ]


class Sink:
    def __init__(self) -> None:
        self.events: list[Any] = []
        self.ended: list[RelayError | None] = []

    def write_events(self, events: list[Any]) -> None:
        self.events.extend(events)

    def end(self, error: RelayError | None) -> None:
        self.ended.append(error)


def test_a_stream_broken_after_the_commit_is_not_retried_but_counts() -> None:
    from txrelay.routing.breaker import BreakerPolicy, window_of
    from txrelay.testing import text_events

    cut = RelayError("api_error", "upstream went away", status=502)
    broken = Reply(stream=stream_of(text_events("partial")[:3], error=cut))
    p0, p1 = FakeBackend(broken), FakeBackend()
    w = World(config({"breaker_window": 60}), {"p0": p0, "p1": p1})
    exchange, reply = w.send()
    assert isinstance(reply, Reply) and reply.stream is not None
    sink = Sink()
    reply.stream.start(sink)
    w.clock.advance(0)
    assert sink.ended == [cut] and p1.seen == []
    assert attempts(exchange) == [("p0/up0", None, "served")]
    window = window_of(w.clock.seconds(), BreakerPolicy(window=60))
    count = Deferred.fromCoroutine(
        w.store.get_count(f"routing:failures:p0/up0:{window}"))  # type: ignore[arg-type]
    assert count.result == 1


class Held:
    """A backend whose answers wait until the test releases them."""

    def __init__(self) -> None:
        self.waiting: list[Deferred[None]] = []

    async def messages(self, exchange: Exchange) -> Reply:
        d: Deferred[None] = Deferred()
        self.waiting.append(d)
        await d
        return Reply(stream=stream_of([]))


def test_one_probe_for_the_whole_fleet() -> None:
    down = connection_error("refused", upstream="p0")
    raw = config({"breaker_failures": 1, "breaker_cooldown": 30, "affinity": False})
    first = World(raw, {"p0": FakeBackend(down), "p1": FakeBackend()})
    held = Held()
    # a second relay sharing the first one's store and clock
    second = World(raw, {"p0": held, "p1": FakeBackend()}, first.store, first.clock)
    first.send()  # opens p0's breaker for everyone
    first.clock.advance(31)
    probing, out = second.start(request_id="req_probe")
    assert len(held.waiting) == 1 and out == []  # this request is the probe, in flight
    exchange, reply = first.send()  # meanwhile the other relay does not probe too
    assert isinstance(reply, Reply)
    assert attempts(exchange) == [("p0/up0", None, "breaker_open"), ("p1/up1", None, "served")]
    held.waiting[0].callback(None)
    assert isinstance(out[0], Reply)
    assert attempts(probing) == [("p0/up0", None, "served")]
    exchange, _ = first.send()  # closed again, for both relays
    assert attempts(exchange)[0] == ("p0/up0", None, "served")
