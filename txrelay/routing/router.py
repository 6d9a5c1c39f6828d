# -*- test-case-name: tests.routing.test_router -*-
"""
Serving one exchange from its route's targets: fallbacks, retries, breakers, key pools and
cache affinity, with their state in the shared store (README "Routes, fallbacks and key
pools").

The commit point decides what may be retried: a backend's ``messages`` returns once the
client's response may be committed (the upstream's first content arrived, or the commit
deadline passed and pings start), and raises :class:`RelayError` before that. So an attempt
that raised sent the client nothing and may go elsewhere; a reply that was returned is handed
on as it is, its stream unbuffered and backpressured, and nothing is retried after that.

Store keys (the store adds its own namespace prefix):

- ``routing:breakers`` (hash): target name → its open :class:`BreakerRecord` (JSON);
- ``routing:failures:<target>:<window>`` (counter): failures in one breaker window;
- ``routing:probe:<target>`` (slots, limit 1): the one half-open probe of the fleet;
- ``routing:keys:<provider>`` (hash): key name → cooling-until (JSON);
- ``routing:affinity:<model>:<conversation hash>`` (value): ``target\\nkey`` of a conversation.

Times in the store are wall-clock seconds (the reactor's), so every relay reads them alike.
A store that cannot be reached makes routing forget its state for that request (fail open),
with a warning in the log.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import attrs
from twisted.internet.task import deferLater

from txrelay.catalog import Route
from txrelay.logs import RelayLogger
from txrelay.pipeline import Exchange, Reply
from txrelay.protocol.errors import RelayError
from txrelay.routing import breaker as br
from txrelay.routing.affinity import affinity_key
from txrelay.routing.keys import (
    KeyPool,
    cooldown_for,
    decode_cooling,
    encode_cooling,
    using_key,
)
from txrelay.routing.policy import (
    Attempt,
    Backoff,
    RetryPolicy,
    Target,
    counts_against_target,
    is_retryable,
    next_wait,
    order_targets,
    retry_after_of,
)
from txrelay.state.interfaces import StoreUnavailable
from txrelay.streams import StreamEnd

log = RelayLogger()

T = TypeVar("T")

BREAKERS = "routing:breakers"
HEALTH_NAME = "routing"

#: One attempt: serve the exchange (routed to one target) from that target's backend.
AttemptCall = Callable[[Exchange, Any], Awaitable[Reply]]


class Unfit(Exception):
    """An attempt's target cannot take this request (its capabilities refused it): try the
    next target without counting a failure; ``error`` is the refusal."""

    def __init__(self, error: RelayError) -> None:
        super().__init__(error)
        self.error = error


@attrs.frozen
class ModelPolicy:
    """The routing policy of one route, from its model's ``routing`` table."""

    retry: RetryPolicy
    breaker: br.BreakerPolicy
    affinity: bool
    affinity_ttl: float

    @classmethod
    def of(cls, route: Route) -> ModelPolicy:
        """The policy of ``route`` (defaults for a route without a configured model)."""
        cfg = route.model.routing if route.model is not None else None
        if cfg is None:
            return _DEFAULT_POLICY
        several = len(route.targets) > 1
        attempts = cfg.attempts or (len(route.targets) + 1 if several else 1)
        breaker = cfg.breaker if cfg.breaker is not None else several
        return cls(RetryPolicy(attempts, Backoff(cfg.backoff, cfg.max_backoff),
                               cfg.max_retry_after),
                   br.BreakerPolicy(breaker, cfg.breaker_failures, cfg.breaker_window,
                                    cfg.breaker_cooldown),
                   cfg.affinity, cfg.affinity_ttl)


#: The policy of a route whose model has no ``routing`` table (immutable, so shared).
_DEFAULT_POLICY = ModelPolicy(RetryPolicy(), br.BreakerPolicy(enabled=False), True, 3600.0)


@attrs.define(eq=False)
class Board:
    """What this relay last saw of the breakers and key pools, for ``/health/ready``."""

    health: Any
    targets: dict[str, dict[str, Any]] = attrs.Factory(dict)
    keys: dict[str, dict[str, Any]] = attrs.Factory(dict)

    def breaker(self, name: str, record: br.BreakerRecord | None, now: float) -> None:
        """Note target ``name``'s breaker."""
        entry: dict[str, Any] = {"state": br.state_of(record, now)}
        if record is not None:
            entry["open_until"] = round(record.until, 3)
            entry["trips"] = record.trips
        if self.targets.get(name) != entry:
            self.targets[name] = entry
            self.publish()

    def cooling(self, provider: str, pool: KeyPool, cooling: Mapping[str, float],
                now: float) -> None:
        """Note ``provider``'s keys' cooling times."""
        entry = {n: ({"cooling_until": round(cooling[n], 3)}
                     if cooling.get(n, 0.0) > now else {"state": "ready"})
                 for n in pool.names}
        if self.keys.get(provider) != entry:
            self.keys[provider] = entry
            self.publish()

    def publish(self) -> None:
        """Replace the ``routing`` health report (always ready: an open breaker narrows
        where requests go, it does not make this relay unfit to serve)."""
        if self.health is not None:
            self.health.report(HEALTH_NAME, {"targets": dict(sorted(self.targets.items())),
                                             "keys": dict(sorted(self.keys.items()))})


@attrs.define(eq=False)
class Router:
    """Serves routed exchanges from their targets (see the module docstring)."""

    backends: Mapping[str, Any]
    pools: Mapping[str, KeyPool]
    state: Any
    reactor: Any
    board: Board
    rand: Callable[[], float] = random.random

    # the store, failing open

    async def _store(self, what: Awaitable[T], default: T) -> T:
        try:
            return await what
        except StoreUnavailable as e:
            log.warn("routing state unavailable ({error}): routing without it",
                     error=str(e) or type(e).__name__)
            return default

    async def _breakers(self) -> dict[str, br.BreakerRecord]:
        raw = await self._store(self.state.hash_all(BREAKERS), {})
        out: dict[str, br.BreakerRecord] = {}
        for name, value in raw.items():
            record = br.BreakerRecord.decode(value)
            if record is not None:
                out[name] = record
        return out

    async def _cooling(self, pool: KeyPool) -> dict[str, float]:
        raw = await self._store(self.state.hash_all(f"routing:keys:{pool.provider}"), {})
        return decode_cooling(raw)

    # the request

    async def serve(self, exchange: Exchange, attempt: AttemptCall) -> Reply:
        """
        Serve ``exchange`` (routed by ``model-map``) with ``attempt``, target after target;
        ``exchange.route`` ends as the route of the target that served (or failed last),
        with the attempts made.
        """
        route = exchange.route
        assert route is not None
        targets = route.targets or (Target(route.target or route.provider, route.provider,
                                           route.upstream_model),)
        policy = ModelPolicy.of(route)
        now = self.reactor.seconds()
        pools = {t.provider: self.pools[t.provider] for t in targets
                 if t.provider in self.pools}
        choice = len(targets) > 1 or any(len(p.keys) > 1 for p in pools.values())
        breakers = await self._breakers() if policy.breaker.enabled else {}
        for t in targets:
            if policy.breaker.enabled:
                self.board.breaker(t.name, breakers.get(t.name), now)

        sticky_key: str | None = None
        sticky_target: str | None = None
        store_key: str | None = None
        if policy.affinity and choice:
            conversation = affinity_key(exchange.headers, exchange.require_request())
            if conversation is not None:
                model = route.model.id if route.model is not None else route.requested
                store_key = f"routing:affinity:{model}:{conversation}"
                raw = await self._store(self.state.get(store_key), None)
                if raw is not None:
                    sticky_target, _, key = raw.decode("utf-8", "replace").partition("\n")
                    sticky_key = key or None

        order = order_targets(targets, self.rand, sticky_target)
        run = _Run(self, exchange, route, policy, pools, breakers, attempt)
        reply = await run.go(order, sticky_target, sticky_key)
        if store_key is not None and run.served is not None:
            # Written on every turn, so a live conversation keeps its affinity.
            value = f"{run.served[0]}\n{run.served[1] or ''}".encode()
            await self._store(self.state.set(store_key, value, policy.affinity_ttl), None)
        return reply

    # breaker bookkeeping

    async def failed(self, target: Target, policy: br.BreakerPolicy,
                     record: br.BreakerRecord | None, probe: bool,
                     request_id: str) -> br.BreakerRecord | None:
        """
        Count a failure of ``target``; open its breaker when that was one too many (or the
        failure was its probe's). The breaker's record when it is open now.
        """
        if not policy.enabled:
            return None
        now = self.reactor.seconds()
        if probe:
            new = br.opened(now, policy, record)
            await self._store(self.state.hash_set(BREAKERS, target.name, new.encode()), None)
            await self._store(self.state.release(f"routing:probe:{target.name}", request_id),
                              None)
            log.warn("circuit breaker of {target} stays open: its probe failed "
                     "(again in {cooldown:g}s)", target=target.name, cooldown=policy.cooldown)
            self.board.breaker(target.name, new, now)
            return new
        window = br.window_of(now, policy)
        counted = await self._store(
            self.state.increment(f"routing:failures:{target.name}:{window}", 1,
                                 policy.window * 2), None)
        if counted is not None and br.should_open(counted.value, policy):
            new = br.opened(now, policy)
            await self._store(self.state.hash_set(BREAKERS, target.name, new.encode()), None)
            log.warn("circuit breaker of {target} opened after {failures} failures "
                     "(probed again in {cooldown:g}s)", target=target.name,
                     failures=counted.value, cooldown=policy.cooldown)
            self.board.breaker(target.name, new, now)
            return new
        return None

    async def recovered(self, target: Target, request_id: str) -> None:
        """A half-open target's probe succeeded: close its breaker."""
        await self._store(self.state.hash_delete(BREAKERS, target.name), None)
        await self._store(self.state.release(f"routing:probe:{target.name}", request_id), None)
        log.info("circuit breaker of {target} closed: its probe succeeded", target=target.name)
        self.board.breaker(target.name, None, self.reactor.seconds())

    async def cool(self, pool: KeyPool, key: str, seconds: float,
                   cooling: dict[str, float]) -> None:
        """Cool ``pool``'s ``key`` for ``seconds`` (it was rate-limited)."""
        now = self.reactor.seconds()
        cooling[key] = now + seconds
        await self._store(self.state.hash_set(f"routing:keys:{pool.provider}", key,
                                              encode_cooling(now + seconds)), None)
        log.info("upstream key {key} of {provider} rate-limited: cooling for {seconds:g}s",
                 key=key, provider=pool.provider, seconds=seconds)
        self.board.cooling(pool.provider, pool, cooling, now)


@attrs.define(eq=False)
class _Run:
    """The attempts of one request."""

    router: Router
    exchange: Exchange
    route: Route
    policy: ModelPolicy
    pools: Mapping[str, KeyPool]
    breakers: dict[str, br.BreakerRecord]
    attempt: AttemptCall
    attempts: list[Attempt] = attrs.Factory(list)
    served: tuple[str, str | None] | None = None
    _cooling: dict[str, dict[str, float]] = attrs.Factory(dict)

    async def cooling(self, pool: KeyPool) -> dict[str, float]:
        if pool.provider not in self._cooling:
            self._cooling[pool.provider] = await self.router._cooling(pool)
            self.router.board.cooling(pool.provider, pool, self._cooling[pool.provider],
                                      self.router.reactor.seconds())
        return self._cooling[pool.provider]

    def _finish(self, target: Target | None) -> None:
        route = self.route.for_target(target) if target is not None else self.route
        self.exchange.route = attrs.evolve(route, attempts=tuple(self.attempts))

    async def go(self, order: list[Target], sticky_target: str | None,
                 sticky_key: str | None) -> Reply:
        router, policy = self.router, self.policy
        candidates = list(order)
        tried: set[str] = set()
        retry_after: dict[str, float | None] = {}
        calls = retries = 0
        last: tuple[Target, RelayError] | None = None
        unfit: RelayError | None = None
        all_open_until: float | None = None
        keys_soonest: float | None = None
        #: Keys rate-limited during this request: never tried again by it.
        limited: set[tuple[str, str]] = set()
        i = 0
        while candidates and calls < policy.retry.attempts:
            target = candidates[i % len(candidates)]
            now = router.reactor.seconds()
            record = self.breakers.get(target.name)
            state = br.state_of(record, now) if policy.breaker.enabled else "closed"
            if state == "open":
                assert record is not None
                all_open_until = min(all_open_until or record.until, record.until)
                candidates.remove(target)
                self.attempts.append(Attempt(target.name, None, "breaker_open"))
                continue
            probe = False
            if state == "half_open":
                probe = await router._store(router.state.acquire(
                    f"routing:probe:{target.name}", self.exchange.request_id, 1,
                    max(policy.breaker.cooldown, 60.0)), False)
                if not probe:  # another request (maybe on another relay) is the probe
                    assert record is not None
                    all_open_until = min(all_open_until or record.until, record.until)
                    candidates.remove(target)
                    self.attempts.append(Attempt(target.name, None, "breaker_open"))
                    continue
            pool = self.pools.get(target.provider)
            key: str | None = None
            if pool is not None:
                cooling = await self.cooling(pool)
                key = pool.choose(cooling, now, router.rand,
                                  sticky_key if target.name == sticky_target else None,
                                  tuple(k for p, k in limited if p == pool.provider))
                if key is None:
                    soon = pool.soonest(cooling, now)
                    keys_soonest = soon if keys_soonest is None else min(keys_soonest, soon)
                    candidates.remove(target)
                    if probe:
                        await router._store(router.state.release(
                            f"routing:probe:{target.name}", self.exchange.request_id), None)
                    continue
            if target.name in tried:
                retries += 1
                wait = next_wait(policy.retry, retries, True, retry_after.get(target.name),
                                 router.rand)
                if wait is None:  # it asked for longer than we wait
                    candidates.remove(target)
                    continue
                if wait > 0:
                    await deferLater(router.reactor, wait, lambda: None)
            tried.add(target.name)
            calls += 1
            backend = router.backends.get(target.provider)
            if backend is None:
                raise RelayError("api_error", f"provider {target.provider!r} is not "
                                 "configured")
            self.exchange.route = self.route.for_target(target)
            try:
                with using_key(target.provider, key):
                    reply = await self.attempt(self.exchange, backend)
            except Unfit as e:
                calls -= 1
                unfit = unfit or e.error
                self.attempts.append(Attempt(target.name, key, "unfit"))
                candidates.remove(target)
                continue
            except RelayError as e:
                self.attempts.append(Attempt(target.name, key, e.type))
                last = (target, e)
                if not is_retryable(e):
                    if probe:  # the upstream answered: it is back
                        await router.recovered(target, self.exchange.request_id)
                    self._finish(target)
                    raise
                log.info("upstream attempt {n} of request {request_id} on {target} "
                         "failed: {status} {type}", n=calls,
                         request_id=self.exchange.request_id, target=target.name,
                         status=e.status, type=e.type)
                after = retry_after_of(e, router.reactor.seconds())
                retry_after[target.name] = after
                if pool is not None and key is not None and e.status == 429:
                    cooling = await self.cooling(pool)
                    await router.cool(pool, key, cooldown_for(after), cooling)
                    limited.add((pool.provider, key))
                    now = router.reactor.seconds()
                    spent = tuple(k for p, k in limited if p == pool.provider)
                    if pool.choose(cooling, now, router.rand, None, spent) is not None:
                        # Another key of the same target: right away, not a retry.
                        calls -= 1
                        tried.discard(target.name)
                        continue
                    soon = pool.soonest(cooling, now)
                    keys_soonest = soon if keys_soonest is None else min(keys_soonest, soon)
                    candidates.remove(target)
                    continue
                elif counts_against_target(e):
                    new = await router.failed(target, policy.breaker, record, probe,
                                              self.exchange.request_id)
                    if new is not None:
                        self.breakers[target.name] = new
                    if probe:
                        candidates.remove(target)
                        continue
                i += 1
                continue
            except BaseException:
                if probe:
                    await router._store(router.state.release(
                        f"routing:probe:{target.name}", self.exchange.request_id), None)
                raise
            if probe:
                await router.recovered(target, self.exchange.request_id)
            self.attempts.append(Attempt(target.name, key, "served"))
            self.served = (target.name, key)
            self._finish(target)
            if policy.breaker.enabled:
                return reply.on_end(self._watch(target))
            return reply
        return self._give_up(last, unfit, all_open_until, keys_soonest)

    def _watch(self, target: Target) -> Callable[[StreamEnd], Awaitable[None]]:
        router, policy, rid = self.router, self.policy.breaker, self.exchange.request_id

        async def ended(end: StreamEnd) -> None:
            # A stream the upstream broke after the commit is not retried, but it counts.
            if end.outcome == "error" and end.error is not None \
                    and counts_against_target(end.error):
                await router.failed(target, policy, None, False, rid)
        return ended

    def _give_up(self, last: tuple[Target, RelayError] | None, unfit: RelayError | None,
                 open_until: float | None, keys_soonest: float | None) -> Reply:
        now = self.router.reactor.seconds()
        if last is not None and not (keys_soonest is not None and last[1].status == 429):
            self._finish(last[0])
            raise last[1]
        self._finish(last[0] if last is not None else None)
        if keys_soonest is not None:
            wait = max(1, math.ceil(keys_soonest))
            raise RelayError(
                "rate_limit_error", f"every upstream key of {self._name()} is rate-limited; "
                f"retry in {wait}s", headers=(("retry-after", str(wait)),))
        if unfit is not None:
            raise unfit
        wait = max(1, math.ceil((open_until or now) - now))
        raise RelayError(
            "overloaded_error", f"every upstream of {self._name()} is unavailable (circuit "
            f"open); retry in {wait}s", headers=(("retry-after", str(wait)),))

    def _name(self) -> str:
        return self.route.model.id if self.route.model is not None else self.route.requested


def build_router(services: Any) -> Router:
    """The router of a configuration (:class:`~txrelay.interfaces.StageServices`)."""
    pools = {p.name: pool for p in services.config.providers
             if (pool := KeyPool.of(p)) is not None}
    return Router(services.backends, pools, services.state, services.reactor,
                  Board(services.health))
