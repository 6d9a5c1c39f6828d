# -*- test-case-name: tests.stages.test_limits -*-
"""
The ``limits`` stage (issue 12.4): rate limits, concurrency, budgets and allowed models per
client key and per group of keys, kept in the shared state store so that every relay using
one store enforces one limit.

Per minute, a request counts 1 against ``requests_per_minute`` and its *estimated* input
tokens against ``input_tokens_per_minute`` before it is sent; when its stream ends the
estimate is corrected with the real usage and the output tokens are added to
``output_tokens_per_minute`` (a request is admitted while that window has room). Budgets
(tokens or spend per UTC day or month) are checked before a request and charged when it
ends. Concurrency slots are released on every way a request ends.

Store keys (the store adds its own namespace)::

    limits:<k|g>:<name>:<rpm|itpm|otpm>:<minute number>   sliding-window counters
    limits:<k|g>:<name>:<tokens|spend>:<d|m><period id>  budget counters (spend in µ$)
    limits:<k|g>:<name>:<requests|streams>               concurrency slot sets

``k`` is a client key (``exchange.client``), ``g`` a group; names are percent-encoded.
"""

from __future__ import annotations

import fnmatch
import itertools
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, cast
from urllib.parse import quote

import attrs
from twisted.internet.defer import Deferred, ensureDeferred

from txrelay.limits.headers import Dimension, Reading, ratelimit_headers, retry_after
from txrelay.limits.periods import Period, period_end, period_id, rfc3339
from txrelay.limits.prices import (
    ModelPrice,
    PriceTable,
    dollars,
    tokens,
    total_tokens,
    window_input_tokens,
)
from txrelay.limits.windows import Window, capacity, remaining, replenished_at, wait_for
from txrelay.logs import RelayLogger
from txrelay.pipeline import Exchange, Proceed, Reply
from txrelay.protocol.errors import RelayError
from txrelay.protocol.tokens import estimate_input_tokens
from txrelay.state.interfaces import StoreUnavailable
from txrelay.state.memory import MemoryStore
from txrelay.streams import StreamEnd

log = RelayLogger()

#: The key name limits apply to when no ``auth`` stage ran before this one.
ANONYMOUS = "(anonymous)"
MINUTE = 60.0
#: Seconds a refused-for-concurrency client is told to wait.
CONCURRENCY_RETRY = 1.0
#: Seconds a client is told to wait when the store cannot be reached (fail closed).
UNAVAILABLE_RETRY = 5.0


@attrs.frozen
class LimitSet:
    """Limits of one key or group; an absent limit does not apply."""

    requests_per_minute: int | None = None
    input_tokens_per_minute: int | None = None
    output_tokens_per_minute: int | None = None
    #: Requests (streaming or not) in flight at once.
    concurrent_requests: int | None = None
    #: Streaming requests in flight at once.
    concurrent_streams: int | None = None
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None
    #: US dollars (computed from ``prices``).
    spend_per_day: float | None = None
    spend_per_month: float | None = None
    #: Glob patterns of the model names that may be asked for; empty: any model.
    models: tuple[str, ...] = ()

    def has_spend(self) -> bool:
        """Whether a spend budget is set."""
        return self.spend_per_day is not None or self.spend_per_month is not None


@attrs.frozen(kw_only=True)
class KeyLimits(LimitSet):
    """The limits of the client key ``name`` (in place of ``default``)."""

    name: str


@attrs.frozen(kw_only=True)
class GroupLimits(LimitSet):
    """
    Limits shared by the keys of a group: the ``keys`` listed here, and managed keys whose
    record names the group (``exchange.state["key"]["groups"]``).
    """

    name: str
    keys: tuple[str, ...] = ()


@attrs.frozen
class LimitsOptions:
    """Options of the ``limits`` stage."""

    #: Limits of every key without an entry in ``keys`` (each key counted on its own).
    default: LimitSet = LimitSet()
    keys: tuple[KeyLimits, ...] = ()
    groups: tuple[GroupLimits, ...] = ()
    #: Dollars per million tokens, first matching glob wins (see :mod:`txrelay.limits.prices`).
    prices: tuple[ModelPrice, ...] = ()
    #: Seconds a concurrency slot lives without renewal: the slots of a relay that died
    #: come back after this long. Live requests renew theirs every third of it.
    slot_ttl: float = 60.0


_COUNTS = ("requests_per_minute", "input_tokens_per_minute", "output_tokens_per_minute",
           "concurrent_requests", "concurrent_streams", "tokens_per_day", "tokens_per_month")


def options_problems(options: LimitsOptions, model_ids: Iterable[str]) -> list[str]:
    """What is wrong with ``options`` (paths relative to the stage's ``options``)."""
    problems: list[str] = []
    entries: list[tuple[str, LimitSet]] = [("default", options.default)]
    entries += [(f"keys[{i}]", k) for i, k in enumerate(options.keys)]
    entries += [(f"groups[{i}]", g) for i, g in enumerate(options.groups)]
    for where, entry in entries:
        for field in _COUNTS:
            value = getattr(entry, field)
            if value is not None and value < 1:
                problems.append(f"{where}.{field}: must be at least 1")
        for field in ("spend_per_day", "spend_per_month"):
            value = getattr(entry, field)
            if value is not None and value <= 0:
                problems.append(f"{where}.{field}: must be greater than 0 (dollars)")
        for pattern in entry.models:
            if not pattern:
                problems.append(f"{where}.models: an empty pattern matches nothing")
    for label, names in (("keys", [k.name for k in options.keys]),
                         ("groups", [g.name for g in options.groups])):
        seen: set[str] = set()
        for i, name in enumerate(names):
            if not name:
                problems.append(f"{label}[{i}].name: must not be empty")
            elif name in seen:
                problems.append(f"{label}[{i}].name: duplicate name {name!r}")
            seen.add(name)
    for i, price in enumerate(options.prices):
        if not price.model:
            problems.append(f"prices[{i}].model: must not be empty")
        for field in ("input", "output", "cache_read", "cache_write"):
            value = getattr(price, field)
            if value is not None and value < 0:
                problems.append(f"prices[{i}].{field}: must not be negative")
    if options.slot_ttl < 1:
        problems.append("slot_ttl: must be at least 1 second")
    if any(entry.has_spend() for _, entry in entries):
        # A spend budget over an unpriced model would never be reached: refuse that here.
        table = PriceTable(options.prices)
        unpriced = [m for m in model_ids if table.find(m) is None]
        if unpriced:
            problems.append("prices: spend budgets need a price for every model (here or in "
                            "the top-level [[prices]]); none for "
                            + ", ".join(repr(m) for m in unpriced))
    return problems


def _esc(name: str) -> str:
    return quote(name, safe="")


@attrs.frozen
class Scope:
    """One set of limits a request counts against: its key's or one of its groups'."""

    kind: Literal["key", "group"]
    name: str
    limits: LimitSet
    #: The store key prefix: ``limits:k:alice``.
    prefix: str

    @classmethod
    def of(cls, kind: Literal["key", "group"], name: str, limits: LimitSet) -> Scope:
        """The scope of key or group ``name``."""
        return cls(kind, name, limits, f"limits:{kind[0]}:{_esc(name)}")

    def describe(self, key: str) -> str:
        """``key 'alice'`` or ``group 'team' (of key 'alice')``, for messages."""
        if self.kind == "key":
            return f"key {self.name!r}"
        return f"group {self.name!r} (of key {key!r})"


_CODES = {"requests": "rpm", "input-tokens": "itpm", "output-tokens": "otpm"}


@attrs.define(eq=False)
class _Rate:
    """One per-minute limit of one scope, as counted for one request."""

    scope: Scope
    dimension: Dimension
    limit: int
    amount: int
    prev: int = 0

    def key(self, index: int) -> str:
        return f"{self.scope.prefix}:{_CODES[self.dimension]}:{index}"

    def counter_limit(self, window: Window) -> int:
        """
        The ``limit`` for the increment of this minute's counter. Output tokens are only
        known later, so a request is admitted while any are left: the increment by 0 is
        refused when the counter is already at capacity.
        """
        room = capacity(self.limit, self.prev, window)
        return room if self.amount else room - 1


@attrs.frozen
class _Slot:
    scope: Scope
    what: Literal["requests", "streams"]
    limit: int

    @property
    def key(self) -> str:
        return f"{self.scope.prefix}:{self.what}"


@attrs.frozen
class _Budget:
    scope: Scope
    unit: Literal["tokens", "spend"]
    period: Period
    #: Tokens, or µ$ for spend.
    limit: int

    def key(self, now: float) -> str:
        return f"{self.scope.prefix}:{self.unit}:{self.period[0]}{period_id(now, self.period)}"

    def exhausted(self, key: str, now: float) -> RelayError:
        amount = (f"{self.limit:,} tokens" if self.unit == "tokens" else dollars(self.limit))
        daily = "daily" if self.period == "day" else "monthly"
        ends = period_end(now, self.period)
        return RelayError(
            "rate_limit_error",
            f"{self.scope.describe(key)} has used its {daily} {self.unit} budget of {amount}; "
            f"it resets at {rfc3339(ends)} ({_span(ends - now)} from now)",
            headers=(("retry-after", retry_after(ends - now)), ("x-should-retry", "false")),
        )


def _span(seconds: float) -> str:
    minutes = max(1, int(-(-seconds // 60)))
    days, rest = divmod(minutes, 1440)
    hours, minutes = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    parts += [f"{hours}h"] if hours else []
    parts += [f"{minutes}m"] if minutes or not parts else []
    return " ".join(parts)


async def _all(awaitables: Iterable[Awaitable[Any]], concurrent: bool = True) -> list[Any]:
    """
    Run the store calls at once (one round trip for a pipelining client) and return their
    results in order; raise the first failure after every call has ended. ``concurrent``
    false (an in-process store, whose calls never wait) awaits them one by one, cheaper.
    """
    results: list[Any] = []
    error: BaseException | None = None
    if not concurrent:
        for a in awaitables:
            try:
                results.append(await a)
            except Exception as e:
                error = error or e
    else:
        # Starting them all before waiting on any is what makes them concurrent.
        started: list[Deferred[Any]] = [ensureDeferred(cast(Any, a)) for a in awaitables]
        for d in started:
            try:
                results.append(await d)
            except Exception as e:
                error = error or e
    if error is not None:
        raise error
    return results


@attrs.define(eq=False)
class Admission:
    """What one admitted request counted, so its end can correct and release it."""

    stage: LimitsStage
    key: str
    index: int
    rates: list[_Rate]
    budgets: list[_Budget]
    slots: list[tuple[str, str]]
    exchange: Exchange
    headers: list[tuple[str, str]]
    _done: bool = False

    def model_names(self) -> tuple[str | None, ...]:
        """
        The names a price is looked up under, in the usage ledger's order: the configured
        model id, the upstream model, the name asked for (the route is known by now: the
        routing stages run after this one).
        """
        route = self.exchange.route
        req = self.exchange.request
        return (route.model.id if route is not None and route.model is not None else None,
                route.upstream_model if route is not None else None,
                req.model if req is not None else None)

    @property
    def needs_end(self) -> bool:
        """Whether the request's end changes anything (slots, tokens, budgets)."""
        return bool(self.slots or self.budgets) or any(
            r.dimension != "requests" for r in self.rates)

    async def finish(self, usage: Mapping[str, Any] | None) -> None:
        """Charge ``usage`` (``None``: nothing was used) and give the slots back, once."""
        if self._done:
            return
        self._done = True
        stage = self.stage
        store = stage.store
        usage = usage or {}
        now = stage.clock()
        calls: list[Awaitable[Any]] = [store.release(k, h) for k, h in self.slots]
        for k, h in self.slots:
            stage._live.pop((k, h), None)
        current = Window.at(now, MINUTE).index
        for rate in self.rates:
            if rate.dimension == "input-tokens":
                delta = window_input_tokens(usage) - rate.amount
                if delta:  # in the window the estimate went into
                    calls.append(store.increment(rate.key(self.index), delta, 3 * MINUTE))
            elif rate.dimension == "output-tokens":
                out = tokens(usage, "output_tokens")
                if out:
                    calls.append(store.increment(rate.key(current), out, 3 * MINUTE))
        if self.budgets:
            used = total_tokens(usage)
            cost = stage.cost(self.model_names(), usage) if any(
                b.unit == "spend" for b in self.budgets) else 0
            for budget in self.budgets:
                amount = used if budget.unit == "tokens" else cost
                if amount:
                    ttl = period_end(now, budget.period) - now + 3600
                    calls.append(store.increment(budget.key(now), amount, ttl))
        try:
            await _all(calls, stage.concurrent)
        except StoreUnavailable as e:
            log.warn("limits: could not record the end of a request of key {key} in the "
                     "state store: {error}", key=self.key, error=str(e))

    def on_end(self, end: StreamEnd) -> Awaitable[None]:
        """The stream's end hook."""
        return self.finish(end.usage)


@attrs.define(eq=False)
class LimitsStage:
    """Enforces the configured limits; see the module docstring."""

    options: LimitsOptions
    #: The shared state store (:class:`~txrelay.state.interfaces.IStateStore`).
    store: Any
    clock: Callable[[], float] = time.time
    #: A reactor to renew concurrency slots with (``None``: slots are not renewed).
    reactor: Any = None
    name: str = "limits"
    _keys: dict[str, KeyLimits] = attrs.field(init=False)
    _groups: dict[str, GroupLimits] = attrs.field(init=False)
    _members: dict[str, tuple[str, ...]] = attrs.field(init=False)
    _prices: PriceTable = attrs.field(init=False)
    _holder: str = attrs.field(init=False, factory=lambda: os.urandom(6).hex())
    _seq: itertools.count[int] = attrs.field(init=False, factory=itertools.count)
    #: Live slots (store key, holder) → limit, renewed while the request lasts.
    _live: dict[tuple[str, str], int] = attrs.field(init=False, factory=dict)
    _renewal: Any = attrs.field(init=False, default=None)
    _unpriced: set[str] = attrs.field(init=False, factory=set)
    #: Whether to issue store calls concurrently (not for the in-process store).
    concurrent: bool = attrs.field(init=False, default=True)
    #: The previous minute's counts, as read (store key → count), and which minute it is.
    _prev: dict[str, int] = attrs.field(init=False, factory=dict)
    _prev_index: int = attrs.field(init=False, default=-1)

    def __attrs_post_init__(self) -> None:
        self.concurrent = not isinstance(self.store, MemoryStore)
        self._keys = {k.name: k for k in self.options.keys}
        self._groups = {g.name: g for g in self.options.groups}
        members: dict[str, list[str]] = {}
        for g in self.options.groups:
            for k in g.keys:
                members.setdefault(k, []).append(g.name)
        self._members = {k: tuple(v) for k, v in members.items()}
        self._prices = PriceTable(self.options.prices)

    # -- which limits apply

    def scopes_for(self, key: str, exchange: Exchange) -> list[Scope]:
        """
        The key's own limits, then each of its groups': those listing it in ``groups``,
        and those its key record names (:func:`key_record`).
        """
        record_groups, record_models = key_record(exchange)
        scopes = [Scope.of("key", key, self._keys.get(key, self.options.default))]
        if record_models:
            # The record's allowed models (a managed key's) apply as well as the config's.
            scopes.append(Scope.of("key", key, LimitSet(models=record_models)))
        names = list(self._members.get(key, ()))
        names += [g for g in record_groups if g not in names]
        for group in names:
            limits = self._groups.get(group)
            if limits is not None:
                scopes.append(Scope.of("group", group, limits))
        return scopes

    def check_model(self, key: str, scopes: Sequence[Scope], model: str) -> None:
        """Raise the 403 when a scope does not allow ``model``."""
        for scope in scopes:
            patterns = scope.limits.models
            if patterns and not any(fnmatch.fnmatchcase(model, p) for p in patterns):
                raise RelayError(
                    "permission_error",
                    f"{scope.describe(key)} may not use model {model!r} "
                    f"(allowed: {', '.join(patterns)})")

    def cost(self, names: Iterable[str | None], usage: Mapping[str, Any]) -> int:
        """What ``usage`` cost (µ$) at the first of ``names`` that has a price, else 0."""
        listed = tuple(names)
        price = self._prices.find(*listed)
        if price is None:
            model = next((n for n in listed if n), "?")
            if model not in self._unpriced:
                self._unpriced.add(model)
                log.warn("limits: no price for model {model}; its spend counts as 0",
                         model=model)
            return 0
        return price.micro_cost(usage)

    # -- the stage

    async def __call__(self, exchange: Exchange, proceed: Proceed) -> Reply:
        if exchange.operation not in ("messages", "count_tokens"):
            return await proceed(exchange)
        key = exchange.client or ANONYMOUS
        scopes = self.scopes_for(key, exchange)
        req = exchange.require_request()
        self.check_model(key, scopes, req.model)
        if exchange.operation != "messages":
            return await proceed(exchange)
        try:
            admission = await self.admit(key, scopes, exchange)
        except StoreUnavailable as e:
            log.warn("limits: the state store is unavailable, refusing request {request_id}: "
                     "{error}", request_id=exchange.request_id, error=str(e))
            raise RelayError(
                "overloaded_error",
                "the relay cannot check this key's limits right now (its state store is "
                "unreachable); retry shortly",
                headers=(("retry-after", retry_after(UNAVAILABLE_RETRY)),)) from None
        if admission is None:
            return await proceed(exchange)
        try:
            reply = await proceed(exchange)
        except BaseException:
            if admission.needs_end:
                _spawn(admission.finish(None))
            raise
        if not admission.needs_end:  # requests per minute alone: nothing to settle
            return reply.with_headers(*admission.headers)
        if reply.stream is None:
            _spawn(admission.finish(None))
            return reply.with_headers(*admission.headers)
        return reply.on_end(admission.on_end).with_headers(*admission.headers)

    async def admit(self, key: str, scopes: Sequence[Scope],
                    exchange: Exchange) -> Admission | None:
        """Count the request against every limit, or raise the 429 of the first it breaks."""
        req = exchange.require_request()
        now = self.clock()
        window = Window.at(now, MINUTE)
        rates: list[_Rate] = []
        budgets: list[_Budget] = []
        slots: list[_Slot] = []
        estimate: int | None = None
        for scope in scopes:
            lim = scope.limits
            if lim.requests_per_minute is not None:
                rates.append(_Rate(scope, "requests", lim.requests_per_minute, 1))
            if lim.input_tokens_per_minute is not None:
                if estimate is None:
                    estimate = estimate_input_tokens(req)
                rates.append(_Rate(scope, "input-tokens", lim.input_tokens_per_minute,
                                   estimate))
            if lim.output_tokens_per_minute is not None:
                rates.append(_Rate(scope, "output-tokens", lim.output_tokens_per_minute, 0))
            for unit, period, value in (
                ("tokens", "day", lim.tokens_per_day), ("tokens", "month", lim.tokens_per_month),
                ("spend", "day", lim.spend_per_day), ("spend", "month", lim.spend_per_month),
            ):
                if value is not None:
                    limit = int(value) if unit == "tokens" else round(value * 1_000_000)
                    budgets.append(_Budget(scope, unit, period, limit))  # type: ignore[arg-type]
            if lim.concurrent_requests is not None:
                slots.append(_Slot(scope, "requests", lim.concurrent_requests))
            if lim.concurrent_streams is not None and req.stream:
                slots.append(_Slot(scope, "streams", lim.concurrent_streams))
        if not (rates or budgets or slots):
            return None
        store = self.store

        # Round 1: the budgets so far and the previous minute of every window. A minute
        # that is over no longer grows (but for late token corrections), so each relay
        # reads it once and keeps it until the next minute.
        if self._prev_index != window.index - 1:
            self._prev_index, self._prev = window.index - 1, {}
        unread = [r for r in rates if r.key(window.index - 1) not in self._prev]
        values = await _all([store.get_count(b.key(now)) for b in budgets]
                            + [store.get_count(r.key(window.index - 1)) for r in unread],
                            self.concurrent)
        for budget, used in zip(budgets, values, strict=False):
            if used >= budget.limit:
                raise budget.exhausted(key, now)
        for rate, prev in zip(unread, values[len(budgets):], strict=True):
            self._prev[rate.key(window.index - 1)] = prev
        for rate in rates:
            rate.prev = self._prev.get(rate.key(window.index - 1), 0)

        # Round 2: count the request in this minute (each refused if over) and take slots.
        holder = f"{self._holder}:{next(self._seq)}"
        counted: list[Any] = await _all(
            [store.increment(r.key(window.index), r.amount, 3 * MINUTE,
                             limit=r.counter_limit(window)) for r in rates]
            + [store.acquire(s.key, holder, s.limit, self.options.slot_ttl) for s in slots],
            self.concurrent)
        outcomes: list[bool] = ([c.allowed for c in counted[:len(rates)]]
                                + [bool(got) for got in counted[len(rates):]])
        if not all(outcomes):
            await self._undo(rates, counted, slots, holder, window)
            raise self._refusal(key, rates, counted, slots, outcomes, window)
        readings = [
            Reading(r.dimension, r.limit,
                    remaining(r.limit, r.prev, c.value, window),
                    replenished_at(r.prev, c.value, window))
            for r, c in zip(rates, counted, strict=False)]
        taken = [(s.key, holder) for s in slots]
        for s in slots:
            self._live[(s.key, holder)] = s.limit
        if taken:
            self._schedule_renewal()
        return Admission(self, key, window.index, rates, budgets, taken, exchange,
                         ratelimit_headers(readings))

    async def _undo(self, rates: list[_Rate], counted: list[Any],
                    slots: list[_Slot], holder: str, window: Window) -> None:
        calls: list[Awaitable[Any]] = [
            self.store.increment(r.key(window.index), -r.amount, 3 * MINUTE)
            for r, c in zip(rates, counted, strict=False) if c.allowed and r.amount]
        calls += [self.store.release(s.key, holder)
                  for s, got in zip(slots, counted[len(rates):], strict=True) if got]
        await _all(calls, self.concurrent)

    def _refusal(self, key: str, rates: list[_Rate], counted: list[Any],
                 slots: list[_Slot], outcomes: list[bool],
                 window: Window) -> RelayError:
        """The 429 for the refused limit the client must wait longest for."""
        worst: tuple[float, str, bool] | None = None  # (wait, message, retry at all)
        readings: list[Reading] = []
        for r, c in zip(rates, counted, strict=False):
            cur = c.value
            readings.append(Reading(r.dimension, r.limit,
                                    remaining(r.limit, r.prev, cur, window),
                                    replenished_at(r.prev, cur, window)))
            if c.allowed:
                continue
            unit = {"requests": "requests", "input-tokens": "input tokens",
                    "output-tokens": "output tokens"}[r.dimension]
            wait = wait_for(r.limit, r.prev, cur, max(r.amount, 1), window)
            if wait is None:
                message = (f"this request's estimated {r.amount:,} input tokens exceed "
                           f"{r.scope.describe(key)}'s limit of {r.limit:,} {unit} per "
                           "minute; it can never be served under that limit")
                candidate = (float("inf"), message, False)
            else:
                message = (f"{r.scope.describe(key)} is over its limit of {r.limit:,} {unit} "
                           f"per minute; retry in {retry_after(wait)}s")
                candidate = (wait, message, True)
            if worst is None or candidate[0] > worst[0]:
                worst = candidate
        for slot, got in zip(slots, outcomes[len(rates):], strict=True):
            if got:
                continue
            message = (f"{slot.scope.describe(key)} already has {slot.limit} concurrent "
                       f"{slot.what} in flight (its limit); retry when one ends")
            if worst is None or worst[0] < CONCURRENCY_RETRY:
                worst = (CONCURRENCY_RETRY, message, True)
        assert worst is not None
        wait, message, retry = worst
        headers = [("retry-after", retry_after(min(wait, 24 * 3600.0)))]
        if not retry:
            headers.append(("x-should-retry", "false"))
        headers += ratelimit_headers(readings)
        return RelayError("rate_limit_error", message, headers=tuple(headers))

    # -- slot renewal

    def _schedule_renewal(self) -> None:
        if self.reactor is None or self._renewal is not None:
            return
        self._renewal = self.reactor.callLater(self.options.slot_ttl / 3, self._renew)

    def _renew(self) -> None:
        self._renewal = None
        if not self._live:
            return
        ttl = self.options.slot_ttl
        _spawn(_all([self.store.acquire(k, h, limit, ttl)
                     for (k, h), limit in list(self._live.items())]))
        self._schedule_renewal()


def key_record(exchange: Exchange) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """
    The groups and allowed models the ``auth`` stage recorded for the key in
    ``exchange.state["key"]`` (a :class:`txrelay.keys.KeyInfo`, or a mapping with the same
    names): the one place this stage reads what another stage left. Absent: none.
    """
    record = exchange.state.get("key")
    if record is None:
        return (), ()

    def strings(name: str) -> tuple[str, ...]:
        value = (record.get(name) if isinstance(record, Mapping)
                 else getattr(record, name, None))
        if isinstance(value, str):
            return (value,)
        return tuple(v for v in value or () if isinstance(v, str) and v)

    return strings("groups"), strings("models")


def _spawn(awaitable: Awaitable[Any]) -> None:
    """Run ``awaitable`` on its own; log what it raises."""
    d: Deferred[Any] = ensureDeferred(cast(Any, awaitable))
    d.addErrback(lambda f: log.failure("limits: bookkeeping failed", f))


def shared_prices(config: Any) -> tuple[ModelPrice, ...]:
    """
    The top-level ``[[prices]]`` of the configuration (the usage ledger's), when it has
    them: the stage's own ``prices`` option is used instead when given.
    """
    return tuple(getattr(config, "prices", None) or ())


def build_limits(options: LimitsOptions, services: Any) -> LimitsStage:
    """The stage for ``options``; raise ``ValueError`` listing the problems."""
    if not options.prices:
        options = attrs.evolve(options, prices=shared_prices(services.config))
    model_ids = [m.id for m in services.config.models]
    problems = options_problems(options, model_ids)
    if problems:
        raise ValueError("; ".join(problems))
    reactor = services.reactor
    clock = reactor.seconds if reactor is not None else time.time
    return LimitsStage(options, services.state, clock, reactor)
