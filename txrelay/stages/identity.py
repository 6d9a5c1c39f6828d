# -*- test-case-name: tests.test_identity -*-
"""
The ``identity-guard`` stage: the relay says who serves a request, and nothing else.

- a **system preamble** per model or route (who the assistant is, who operates it), put in
  the same place with the same bytes on every request, so the upstream's cached prefix is
  unchanged from turn to turn;
- a **text filter** on ``text_delta`` (optionally ``thinking_delta``) that replaces or
  removes configured phrases even when they are split across deltas, holding back only the
  characters that could begin one (:mod:`txrelay.protocol.phrases`);
- the response **``model``**: the requested name (default) or the model served, never one
  made up;
- optionally a 400 for a system prompt that asks the backend to pose as a named vendor model.

Streaming and non-streaming replies go through the same filter (the server folds the
filtered events). Held text is released before its block stops, before any other block
starts, before ``message_delta``, and when the stream fails.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import attrs

from txrelay.catalog import ModelCatalog, Route
from txrelay.config import glob_matches
from txrelay.logs import RelayLogger
from txrelay.pipeline import Exchange, Proceed, Reply
from txrelay.protocol.anthropic import MessagesRequest
from txrelay.protocol.errors import RelayError, invalid_request
from txrelay.protocol.events import Event
from txrelay.protocol.phrases import Phrase, PhraseScanner, PhraseSet
from txrelay.streams import EventSink, EventStream

if TYPE_CHECKING:
    from txrelay.interfaces import StageServices

log = RelayLogger()

#: The fields a preamble may use: ``{model}``, ``{requested}``, ``{served}``, ``{operator}``.
TEMPLATE_FIELDS = frozenset({"model", "requested", "served", "operator"})

#: How a system prompt asks a model to be someone (matched case-insensitively, with runs of
#: whitespace taken as one space), each followed by a configured name.
IMPERSONATION_LEADS = (
    "you are", "you're", "you will be", "act as", "acting as", "behave as", "pretend to be",
    "pretend you are", "impersonate", "your name is", "identify yourself as",
    "introduce yourself as", "present yourself as", "claim to be", "roleplay as",
    "role-play as", "pose as",
)


@attrs.frozen
class PhraseOptions:
    """One phrase of ``identity-guard``'s ``phrases`` list."""

    #: The literal text, or with ``pattern = true`` a bounded pattern.
    text: str
    #: What a match becomes; ``""`` (the default) removes it.
    replace: str = ""
    ignore_case: bool = False
    pattern: bool = False


@attrs.frozen
class RoutePreamble:
    """A preamble for some requests (``routes`` entries): the first that matches applies."""

    #: Globs over the requested name, the ``[[models]]`` id or the upstream model.
    models: tuple[str, ...] = ()
    #: Provider names (``[[providers]] name``).
    providers: tuple[str, ...] = ()
    #: The preamble for these requests (``""``: none).
    preamble: str = ""
    #: ``{operator}`` for these requests (default: the stage's ``operator``).
    operator: str | None = None


@attrs.frozen
class IdentityOptions:
    """Options of the ``identity-guard`` stage."""

    #: The system preamble for requests no ``routes`` entry matches (``""``: none).
    preamble: str = ""
    #: ``{operator}`` in preambles.
    operator: str = ""
    #: ``"before"`` the client's system prompt (cache-safe default) or ``"after"`` it.
    position: Literal["before", "after"] = "before"
    routes: tuple[RoutePreamble, ...] = ()
    #: Phrases replaced in the reply's text.
    phrases: tuple[PhraseOptions, ...] = ()
    #: Filter ``thinking_delta`` too (changes the text a thinking signature covers).
    thinking: bool = False
    #: The response ``model``: the ``"requested"`` name, or the ``"served"`` upstream model.
    model: Literal["requested", "served"] = "requested"
    #: Vendor model names a system prompt may not ask the backend to pose as.
    refuse_impersonation: tuple[str, ...] = ()


def check_template(text: str, where: str) -> None:
    """Raise ``ValueError`` for a preamble that uses anything but :data:`TEMPLATE_FIELDS`."""
    try:
        parts = list(string.Formatter().parse(text))
    except ValueError as e:
        raise ValueError(f"{where}: {e} (write {{{{ and }}}} for literal braces)") from None
    for _, field, spec, conversion in parts:
        if field is None:
            continue
        if field not in TEMPLATE_FIELDS or spec or conversion:
            known = ", ".join(f"{{{f}}}" for f in sorted(TEMPLATE_FIELDS))
            raise ValueError(f"{where}: unknown placeholder {{{field}}}; known: {known} "
                             "(write {{ and }} for literal braces)")


def with_preamble(request: MessagesRequest, text: str,
                  position: Literal["before", "after"]) -> MessagesRequest:
    """
    ``request`` with a system text block ``text`` first (``"before"``) or last (``"after"``).

    The block carries no ``cache_control`` (so it never adds a fifth breakpoint); a string
    system prompt becomes one text block after it. A request whose system prompt already
    has that exact block there (a continued call) is returned as it is.
    """
    block: dict[str, Any] = {"type": "text", "text": text}
    system = request.system
    if isinstance(system, str):
        blocks: list[dict[str, Any]] = [{"type": "text", "text": system}] if system else []
    else:
        blocks = list(system or [])
    if position == "before":
        if blocks and blocks[0] == block:
            return request
        blocks.insert(0, block)
    else:
        if blocks and blocks[-1] == block:
            return request
        blocks.append(block)
    return attrs.evolve(request, system=blocks)


def impersonation_set(names: tuple[str, ...]) -> PhraseSet:
    """The phrases that ask a model to be one of ``names`` (case-insensitive)."""
    phrases = []
    for name in names:
        for lead in IMPERSONATION_LEADS:
            for article in ("", "a ", "an ", "the "):
                phrases.append(Phrase(f"{lead} {article}{' '.join(name.split())}",
                                      ignore_case=True))
    return PhraseSet.compile(phrases)


@attrs.frozen
class IdentityGuardStage:
    """See the module docstring; built by the ``identity-guard`` plugin."""

    options: IdentityOptions
    catalog: ModelCatalog
    phrases: PhraseSet | None
    impersonation: PhraseSet | None = None
    name: str = "identity-guard"

    @classmethod
    def build(cls, options: IdentityOptions, catalog: ModelCatalog) -> IdentityGuardStage:
        """Check ``options`` (``ValueError`` naming every bad key) and make the stage."""
        problems: list[str] = []

        def check(where: str, text: str) -> None:
            try:
                check_template(text, where)
            except ValueError as e:
                problems.append(str(e))

        check("preamble", options.preamble)
        for i, route in enumerate(options.routes):
            check(f"routes[{i}].preamble", route.preamble)
            if not route.models and not route.providers:
                problems.append(f"routes[{i}]: give models or providers (or both)")
            unknown = set(route.providers) - catalog.providers
            if unknown:
                problems.append(f"routes[{i}].providers: no provider named "
                                f"{', '.join(sorted(unknown))}")
        phrase_list = []
        for i, p in enumerate(options.phrases):
            phrase = Phrase(p.text, p.replace, p.ignore_case, p.pattern)
            try:
                PhraseSet.compile([phrase])
            except ValueError as e:
                problems.append(f"phrases[{i}]: {e}")
            phrase_list.append(phrase)
        names = tuple(n for n in options.refuse_impersonation if n.strip())
        if len(names) != len(options.refuse_impersonation):
            problems.append("refuse_impersonation: names must not be empty")
        if problems:
            raise ValueError("; ".join(problems))
        return cls(options, catalog, PhraseSet.compile(phrase_list) if phrase_list else None,
                   impersonation_set(names) if names else None)

    # the request

    def route_of(self, exchange: Exchange, request: MessagesRequest) -> Route | None:
        """The exchange's route, or the catalogue's for its model (before ``model-map``)."""
        return exchange.route or self.catalog.resolve(request.model)

    def preamble_for(self, request: MessagesRequest, route: Route | None) -> str:
        """The rendered preamble for ``request``: a function of config and model only."""
        opts = self.options
        text, operator = opts.preamble, opts.operator
        for entry in opts.routes:
            if self._matches(entry, request.model, route):
                text = entry.preamble
                operator = entry.operator if entry.operator is not None else opts.operator
                break
        if not text:
            return ""
        requested = request.model
        served = route.upstream_model if route is not None else requested
        return text.format_map({
            "requested": requested, "served": served, "operator": operator,
            "model": served if opts.model == "served" else requested,
        })

    @staticmethod
    def _matches(entry: RoutePreamble, requested: str, route: Route | None) -> bool:
        if entry.providers and (route is None or route.provider not in entry.providers):
            return False
        if entry.models:
            names = {requested}
            if route is not None:
                names.add(route.upstream_model)
                if route.model is not None:
                    names.add(route.model.id)
            return any(glob_matches(g, n) for g in entry.models for n in names)
        return True

    def check_impersonation(self, request: MessagesRequest) -> None:
        """The 400 for a system prompt asking the backend to pose as a refused name."""
        if self.impersonation is None:
            return
        texts = [request.system_text()]
        texts += [m.content if isinstance(m.content, str)
                  else "\n".join(b.get("text", "") for b in m.content
                                 if isinstance(b.get("text"), str))
                  for m in request.messages if m.role == "system"]
        for text in texts:
            found = self.impersonation.find(" ".join(text.split()))
            if found is not None:
                asked = self.impersonation.phrases[found].text
                raise invalid_request(
                    f"system: the system prompt asks the model to present itself as another "
                    f"vendor's model ({asked!r}); this relay does not allow that")

    # the reply

    def reported_model(self, requested: str, route: Route | None) -> str | None:
        """The response ``model``, or ``None`` to leave the backend's."""
        if self.options.model == "served":
            return route.upstream_model if route is not None else None
        return requested

    async def __call__(self, exchange: Exchange, proceed: Proceed) -> Reply:
        if exchange.operation not in ("messages", "count_tokens"):
            return await proceed(exchange)
        request = exchange.require_request()
        self.check_impersonation(request)
        route = self.route_of(exchange, request)
        preamble = self.preamble_for(request, route)
        if preamble:
            exchange.request = with_preamble(request, preamble, self.options.position)
        reply = await proceed(exchange)
        if exchange.operation != "messages":
            return reply
        model = self.reported_model(request.model, exchange.route or route)
        if self.phrases is None and model is None:
            return reply
        if reply.stream is None:
            if isinstance(reply.body, dict) and reply.body.get("type") == "message":
                return reply.evolve(body=guard_message(reply.body, self.phrases,
                                                       self.options.thinking, model))
            return reply
        guard = IdentityFilter(self.phrases, self.options.thinking, model)
        return reply.with_stream(EventStream(FlushOnError(reply.stream.through(guard), guard)))


def guard_message(message: Mapping[str, Any], phrases: PhraseSet | None, thinking: bool,
                  model: str | None) -> dict[str, Any]:
    """A whole message (a JSON reply) treated as the stream filter treats its events."""
    out = dict(message)
    if model is not None:
        out["model"] = model
    if phrases is not None:
        content = []
        for block in message.get("content") or []:
            kind = block.get("type")
            if kind == "text" or (thinking and kind == "thinking"):
                content.append(dict(block, **{kind: phrases.apply(block.get(kind) or "")}))
            else:
                content.append(block)
        out["content"] = content
    return out


_FIELD = {"text": ("text", "text_delta"), "thinking": ("thinking", "thinking_delta")}


@attrs.define(eq=False)
class IdentityFilter:
    """
    The stream filter: rewrites ``message_start``'s ``model`` and filters text blocks (and
    thinking blocks with ``thinking``), one :class:`PhraseScanner` per open block.
    """

    phrases: PhraseSet | None
    thinking: bool
    model: str | None
    #: Open filtered blocks: index → (field, delta type, scanner).
    _open: dict[int, tuple[str, str, PhraseScanner]] = attrs.Factory(dict)

    @property
    def held(self) -> int:
        """Characters held back now, over all open blocks."""
        return sum(s.held for _, _, s in self._open.values())

    def feed(self, event: Event) -> list[Event]:
        kind = event["type"]
        if kind == "content_block_delta":
            entry = self._open.get(event["index"])
            if entry is None:
                return [event]
            field, delta_type, scanner = entry
            delta = event["delta"]
            if delta.get("type") != delta_type:  # citations, a signature: text before it
                return [*self._flush(event["index"], keep=True), event]
            text = scanner.feed(delta[field])
            return [dict(event, delta=dict(delta, **{field: text}))] if text else []
        if kind == "content_block_stop":
            return [*self._flush(event["index"]), event]
        if kind == "content_block_start":
            out = self.flush_all()
            return out + self._start(event)
        if kind == "message_start" and self.model is not None:
            return [dict(event, message=dict(event["message"], model=self.model))]
        if kind in ("message_delta", "message_stop"):
            return [*self.flush_all(), event]
        return [event]

    def finish(self) -> list[Event]:
        return self.flush_all()

    def _start(self, event: Event) -> list[Event]:
        block = event["content_block"]
        found = _FIELD.get(block.get("type", ""))
        if (self.phrases is None or found is None
                or (block["type"] == "thinking" and not self.thinking)):
            return [event]
        field, delta_type = found
        scanner = self.phrases.scanner()
        index = event["index"]
        self._open[index] = (field, delta_type, scanner)
        initial = block.get(field) or ""
        if not initial:
            return [event]
        out = [dict(event, content_block=dict(block, **{field: ""}))]
        text = scanner.feed(initial)
        if text:
            out.append(_delta(index, delta_type, field, text))
        return out

    def _flush(self, index: int, *, keep: bool = False) -> list[Event]:
        entry = self._open.get(index) if keep else self._open.pop(index, None)
        if entry is None:
            return []
        field, delta_type, scanner = entry
        text = scanner.finish()
        return [_delta(index, delta_type, field, text)] if text else []

    def flush_all(self) -> list[Event]:
        """Release the text held in every open block (as deltas of those blocks)."""
        return [e for index in sorted(self._open) for e in self._flush(index)]


def _delta(index: int, delta_type: str, field: str, text: str) -> Event:
    return {"type": "content_block_delta", "index": index,
            "delta": {"type": delta_type, field: text}}


@attrs.define(eq=False)
class FlushOnError:
    """
    The source of a guarded stream: ``inner`` (which carries ``guard``) passed on as it is,
    except that a stream ending with an error first gets the text ``guard`` still holds —
    filters see no ``error`` event, so the guard cannot release it by itself.
    """

    inner: EventStream
    guard: IdentityFilter
    _sink: EventSink | None = None

    def start(self, sink: EventSink) -> None:
        self._sink = sink
        self.inner.start(self)

    def write_events(self, events: list[Event]) -> None:
        if self._sink is not None:
            self._sink.write_events(events)

    def end(self, error: RelayError | None) -> None:
        if self._sink is None:
            return
        if error is not None:
            try:
                held = self.guard.flush_all()
            except Exception:  # the guard itself failed: what it held is lost, not the error
                log.failure("identity-guard could not release held text after an error")
                held = []
            if held:
                self._sink.write_events(held)
        self._sink.end(error)

    def pause(self) -> None:
        self.inner.pause()

    def resume(self) -> None:
        self.inner.resume()

    def stop(self) -> None:
        self.inner.stop()

    def usage_so_far(self) -> dict[str, Any] | None:
        """What the inner stream reports it used."""
        return self.inner.usage_so_far()


def build_identity_guard(options: IdentityOptions, services: StageServices) -> IdentityGuardStage:
    """The ``identity-guard`` stage (see :meth:`IdentityGuardStage.build`)."""
    return IdentityGuardStage.build(options, services.catalog)
