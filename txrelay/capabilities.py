# -*- test-case-name: tests.test_capabilities -*-
"""
What each model can take: the ``[[models]] capabilities`` table, its presets, and the check.

Every backend kind gets the same treatment: the ``translate`` stage runs
:func:`apply_capabilities` on the routed request just before the backend is called (after
every other stage, so it sees what is actually sent), and what the model cannot take is a
400 ``invalid_request_error`` naming the model, the capability and where the request asked
for it — ``model 'deepseek-chat' does not accept images (messages.2.content.0)`` — instead of
an upstream failure. Some capabilities are mapped rather than refused: an output limit
clamps ``max_tokens`` (or refuses, like the real API, with ``clamp_max_tokens = false``), a
thinking style rewrites ``thinking``/``output_config.effort`` into the form the model takes,
and ``cache_control = false`` removes the hints.

A table's keys left out come from the first preset whose glob matches the upstream model
(:data:`PRESETS`; ``preset`` picks one by name or turns them off), and then from the
defaults of :class:`Capabilities`, which refuse and rewrite nothing. Backends read the
resolved table through :func:`capabilities_of` only.

Nothing here imports Twisted.
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

import attrs

from txrelay.protocol.anthropic import MessagesRequest
from txrelay.protocol.errors import RelayError, invalid_request

if TYPE_CHECKING:
    from txrelay.catalog import Route
    from txrelay.config import ModelConfig

#: ``any``: the client's ``thinking`` goes to the backend as asked (the backend maps it);
#: ``none``: the model does not think, ``thinking`` and ``output_config.effort`` are removed;
#: ``budget``: a token budget (``enabled`` + ``budget_tokens``: Claude ≤ 4.5, Gemini 2.5);
#: ``adaptive``: the model decides (``adaptive`` + effort: newer Claude models);
#: ``effort``: effort levels (OpenAI reasoning models, DeepSeek, Gemini 3 ``thinkingLevel``).
ThinkingStyle = Literal["any", "none", "budget", "adaptive", "effort"]

EFFORT_LEVELS = ("low", "medium", "high", "xhigh", "max")
#: Thinking budgets for an effort, when a ``budget`` model is asked for an effort (mapping.md
#: §5.5's Gemini 2.5 column; ``xhigh``/``max`` as ``high``).
BUDGET_FOR_EFFORT = {"low": 1024, "medium": 8192, "high": 24576, "xhigh": 24576, "max": 24576}
#: The smallest budget Anthropic accepts.
MIN_BUDGET = 1024
#: Budgets below these give effort ``low`` / ``medium`` (as the openai codec maps them).
EFFORT_LOW_BELOW = 4096
EFFORT_MEDIUM_BELOW = 16384


@attrs.frozen
class CapabilityTable:
    """
    ``[[models]] capabilities`` as written: every key optional (left out: from the preset,
    then the default of :class:`Capabilities`).
    """

    #: ``auto`` (the first preset whose glob matches the upstream model), a preset's name,
    #: or ``none`` (defaults only).
    preset: str = "auto"
    vision: bool | None = None
    documents: bool | None = None
    thinking: ThinkingStyle | None = None
    max_output_tokens: int | None = None
    clamp_max_tokens: bool | None = None
    context_window: int | None = None
    reasoning_passback: bool | None = None
    tools: bool | None = None
    cache_control: bool | None = None


@attrs.frozen
class Capabilities:
    """A model's resolved capabilities; the defaults refuse and rewrite nothing."""

    #: Image blocks (in messages, tool results and documents) are accepted.
    vision: bool = True
    #: PDF documents (``document`` blocks with a base64, URL or file source) are accepted;
    #: plain-text and content documents are text and always are.
    documents: bool = True
    #: How the model thinks, hence what ``thinking`` becomes (see :data:`ThinkingStyle`).
    thinking: ThinkingStyle = "any"
    #: The model's largest ``max_tokens`` (``models.max_tokens`` is the same limit).
    max_output_tokens: int | None = None
    #: Above ``max_output_tokens``: clamp (true) or refuse as the real API does (false).
    clamp_max_tokens: bool = True
    #: Prompt + output tokens the model holds (``models.max_input_tokens`` is the same).
    context_window: int | None = None
    #: Thinking from the history is sent back upstream (where the backend kind can); when
    #: not given, false for a ``thinking = "none"`` model.
    reasoning_passback: bool = True
    #: A request with ``tools`` is accepted.
    tools: bool = True
    #: ``cache_control`` hints reach the backend (false: removed first).
    cache_control: bool = True


@attrs.frozen
class Preset:
    """Capabilities of a model family, matched by upstream model glob (case-insensitive)."""

    name: str
    globs: tuple[str, ...]
    table: CapabilityTable


#: Known families, first match wins. They hold what a family can take, never limits that
#: depend on a deployment (set ``max_output_tokens`` and ``context_window`` yourself). A
#: glob is tried on the upstream model and on its part after the last ``/``
#: (``deepseek/deepseek-chat`` on OpenRouter).
PRESETS: tuple[Preset, ...] = (
    Preset("deepseek", ("deepseek-*",),
           CapabilityTable(vision=False, documents=False, thinking="effort")),
    Preset("openai-reasoning", ("gpt-5*", "o1", "o1-*", "o3", "o3-*", "o4-*"),
           CapabilityTable(thinking="effort")),
    Preset("openai", ("gpt-4o*", "gpt-4.1*", "chatgpt-4o*"), CapabilityTable(thinking="none")),
    Preset("openai-text", ("gpt-3.5*", "gpt-4", "gpt-4-0*"),
           CapabilityTable(vision=False, documents=False, thinking="none")),
    # Gemini 2.5 and 3 are left to the gemini codec, which maps every thinking form to
    # thinkingBudget or thinkingLevel itself (mapping.md §5.5, R-G9).
    Preset("gemini-2.0", ("gemini-2.0-*", "gemini-1.5-*"), CapabilityTable(thinking="none")),
)
PRESET_NAMES = tuple(p.name for p in PRESETS)

_FIELDS = tuple(f.name for f in attrs.fields(Capabilities))


@functools.lru_cache(maxsize=1024)
def preset_for(upstream_model: str) -> Preset | None:
    """
    The first preset whose glob matches ``upstream_model`` (or its last path part).

    Cached: it runs on every request, and its ~30 glob matches were the largest single
    item of a small request's own work outside Twisted (bench/README.md).
    """
    name = upstream_model.lower()
    tail = name.rsplit("/", 1)[-1]
    for preset in PRESETS:
        for glob in preset.globs:
            if fnmatch.fnmatchcase(name, glob) or fnmatch.fnmatchcase(tail, glob):
                return preset
    return None


@functools.lru_cache(maxsize=1024)
def resolve(table: CapabilityTable, upstream_model: str, *, max_tokens: int | None = None,
            max_input_tokens: int | None = None) -> Capabilities:
    """
    ``table`` over its preset over the defaults; ``max_tokens``/``max_input_tokens`` (the
    model's older keys) stand in for ``max_output_tokens``/``context_window``.

    Cached (every argument is immutable, and so is the result): a request resolves its
    model's capabilities about three times.
    """
    if table.preset == "auto":
        preset = preset_for(upstream_model)
    else:
        preset = next((p for p in PRESETS if p.name == table.preset), None)
    values: dict[str, Any] = {}
    layers = [preset.table] if preset is not None else []
    layers.append(CapabilityTable(max_output_tokens=max_tokens,
                                  context_window=max_input_tokens))
    layers.append(table)
    for layer in layers:
        for name in _FIELDS:
            value = getattr(layer, name)
            if value is not None:
                values[name] = value
    if values.get("thinking") == "none":
        values.setdefault("reasoning_passback", False)  # a model that does not think
    return Capabilities(**values)


def table_problems(table: CapabilityTable, where: str, *, max_tokens: int | None,
                   max_input_tokens: int | None) -> list[str]:
    """Problems of one ``capabilities`` table (``where`` is its config path)."""
    problems: list[str] = []
    if table.preset not in ("auto", "none", *PRESET_NAMES):
        problems.append(f"{where}.preset: unknown preset {table.preset!r} (one of auto, "
                        f"none, {', '.join(PRESET_NAMES)})")
    for key in ("max_output_tokens", "context_window"):
        value = getattr(table, key)
        if value is not None and value < 1:
            problems.append(f"{where}.{key}: must be at least 1")
    for key, old, value in (("max_output_tokens", "max_tokens", max_tokens),
                            ("context_window", "max_input_tokens", max_input_tokens)):
        given = getattr(table, key)
        if given is not None and value is not None and given != value:
            problems.append(f"{where}.{key}: {given} differs from the model's {old} ({value}); "
                            "they are the same limit, give one")
    return problems


def model_capabilities(model: ModelConfig, upstream_model: str | None = None) -> Capabilities:
    """A configured model's capabilities, its upstream model being ``upstream_model``."""
    return resolve(model.capabilities, upstream_model or model.upstream_model or model.id,
                   max_tokens=model.max_tokens, max_input_tokens=model.max_input_tokens)


def capabilities_of(route: Route) -> Capabilities:
    """
    The routed model's capabilities: the accessor backends and codecs use (a ``provider/model``
    route without a ``[[models]]`` entry gets its preset, or the defaults).
    """
    if route.model is None:
        return resolve(CapabilityTable(), route.upstream_model)
    return model_capabilities(route.model, route.upstream_model)


# --- the check --------------------------------------------------------------------------------


def _is_pdf(block: dict[str, Any]) -> bool:
    source = block.get("source")
    return isinstance(source, dict) and source.get("type") in ("base64", "url", "file")


def _media(blocks: Any, path: str) -> Iterator[tuple[str, str]]:
    """``(kind, path)`` of every image and PDF document in ``blocks``, nested ones too."""
    if not isinstance(blocks, list):
        return
    for i, block in enumerate(blocks):
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        where = f"{path}.{i}"
        if kind == "image":
            yield "image", where
        elif kind == "document":
            if _is_pdf(block):
                yield "document", where
            else:
                source = block.get("source")
                if isinstance(source, dict) and source.get("type") == "content":
                    yield from _media(source.get("content"), f"{where}.source.content")
        elif kind in ("tool_result", "mcp_tool_result"):
            yield from _media(block.get("content"), f"{where}.content")


def _subject(model: str, upstream_model: str) -> str:
    if upstream_model and upstream_model != model:
        return f"model {model!r} (served by {upstream_model!r})"
    return f"model {model!r}"


def _refusal(subject: str, what: str, paths: list[str]) -> RelayError:
    where = paths[0] + (f" and {len(paths) - 1} more" if len(paths) > 1 else "")
    return invalid_request(f"{subject} does not accept {what} ({where})")


def _strip_cache_control(value: Any) -> Any:
    """``value`` without ``cache_control`` keys in its blocks (a copy where it changed)."""
    if isinstance(value, list):
        return [_strip_cache_control(v) for v in value]
    if isinstance(value, dict):
        out = {k: v for k, v in value.items() if k != "cache_control"}
        for key in ("content", "source"):
            if isinstance(out.get(key), list | dict):
                out[key] = _strip_cache_control(out[key])
        return out
    return value


def _has_cache_control(value: Any) -> bool:
    if isinstance(value, list):
        return any(_has_cache_control(v) for v in value)
    if isinstance(value, dict):
        return "cache_control" in value or any(
            _has_cache_control(value.get(k)) for k in ("content", "source"))
    return False


def _effort_for_budget(budget: int) -> str:
    if budget < EFFORT_LOW_BELOW:
        return "low"
    return "medium" if budget < EFFORT_MEDIUM_BELOW else "high"


def _map_thinking(req: MessagesRequest, style: ThinkingStyle) -> MessagesRequest:
    """``thinking`` and ``output_config.effort`` in the form a ``style`` model takes."""
    thinking = req.thinking
    kind = thinking.get("type") if thinking else None
    config = dict(req.output_config or {})
    effort = config.get("effort") if isinstance(config.get("effort"), str) else None
    if style == "any":
        return req
    if style == "none":
        if thinking is None and "effort" not in config:
            return req
        config.pop("effort", None)
        return attrs.evolve(req, thinking=None, output_config=config or None)
    if kind in (None, "disabled"):
        if style == "budget" and effort is not None:  # a budget model has no effort knob
            config.pop("effort")
            return attrs.evolve(req, output_config=config or None)
        return req
    assert thinking is not None
    display = {"display": thinking["display"]} if "display" in thinking else {}
    if style == "budget":
        if kind == "enabled":
            return req
        if kind == "between_tools":  # thinking off, in the newest models' words
            config.pop("effort", None)
            return attrs.evolve(req, thinking={"type": "disabled"},
                                output_config=config or None)
        budget = BUDGET_FOR_EFFORT.get(effort or "high", BUDGET_FOR_EFFORT["high"])
        config.pop("effort", None)
        return attrs.evolve(req, thinking={"type": "enabled", "budget_tokens": budget,
                                           **display}, output_config=config or None)
    if kind != "enabled":  # adaptive / between_tools / effort take these as they are
        return req
    asked = thinking.get("budget_tokens")
    if effort is None and isinstance(asked, int):
        config["effort"] = _effort_for_budget(asked)
    if style == "adaptive":
        return attrs.evolve(req, thinking={"type": "adaptive", **display},
                            output_config=config or None)
    return attrs.evolve(req, output_config=config or None)


def _fit_budget(req: MessagesRequest) -> MessagesRequest:
    """A thinking budget below ``max_tokens`` (Anthropic rejects it otherwise)."""
    thinking = req.thinking
    if (req.max_tokens is None or thinking is None or thinking.get("type") != "enabled"
            or not isinstance(thinking.get("budget_tokens"), int)
            or thinking["budget_tokens"] < req.max_tokens):
        return req
    if req.max_tokens > MIN_BUDGET:
        return attrs.evolve(req, thinking={**thinking, "budget_tokens": req.max_tokens - 1})
    return attrs.evolve(req, thinking={"type": "disabled"})


def apply_capabilities(req: MessagesRequest, caps: Capabilities, *, model: str,
                       upstream_model: str = "") -> MessagesRequest:
    """
    ``req`` as a model with ``caps`` takes it: the same object when nothing changes.

    :param model: the model name the client asked for (named in refusals).
    :param upstream_model: the model it is served by (named too, when different).
    :raises RelayError: 400 ``invalid_request_error`` for what the model cannot take.
    """
    subject = _subject(model, upstream_model)
    if not caps.vision or not caps.documents:
        images: list[str] = []
        pdfs: list[str] = []
        for i, msg in enumerate(req.messages):
            for kind, where in _media(msg.content, f"messages.{i}.content"):
                (images if kind == "image" else pdfs).append(where)
        if images and not caps.vision:
            raise _refusal(subject, "images", images)
        if pdfs and not caps.documents:
            raise _refusal(subject, "PDF documents", pdfs)
    if req.tools and not caps.tools:
        raise _refusal(subject, "tools", ["tools"])

    out = req
    if caps.max_output_tokens is not None and out.max_tokens is not None \
            and out.max_tokens > caps.max_output_tokens:
        if not caps.clamp_max_tokens:
            # The real API's wording.
            raise invalid_request(
                f"max_tokens: {out.max_tokens} > {caps.max_output_tokens}, which is the "
                f"maximum allowed number of output tokens for {model}")
        out = attrs.evolve(out, max_tokens=caps.max_output_tokens)
    out = _map_thinking(out, caps.thinking)
    if out is not req:
        out = _fit_budget(out)
    if not caps.cache_control:
        changes: dict[str, Any] = {}
        if any(_has_cache_control(m.content) for m in out.messages):
            changes["messages"] = [attrs.evolve(m, content=_strip_cache_control(m.content))
                                   for m in out.messages]
        if isinstance(out.system, list) and _has_cache_control(out.system):
            changes["system"] = _strip_cache_control(out.system)
        if out.tools and _has_cache_control(out.tools):
            changes["tools"] = _strip_cache_control(out.tools)
        if "cache_control" in out.extra:
            changes["extra"] = {k: v for k, v in out.extra.items() if k != "cache_control"}
        if changes:
            out = attrs.evolve(out, **changes)
    return out


def model_object_capabilities(caps: Capabilities) -> dict[str, Any]:
    """
    The ``capabilities`` of a ``GET /v1/models`` object (the SDK's ``ModelCapabilities``:
    every key present). Thinking types and effort levels are all accepted, since the relay
    maps them to what the model takes; what no backend here serves is unsupported.
    """
    def yes(flag: bool) -> dict[str, bool]:
        return {"supported": flag}

    thinks = caps.thinking != "none"
    return {
        "batch": yes(False),
        "citations": yes(False),
        "code_execution": yes(False),
        "context_management": yes(False),
        "effort": {"supported": thinks, **{level: yes(True) for level in EFFORT_LEVELS}},
        "image_input": yes(caps.vision),
        "pdf_input": yes(caps.documents),
        "server_tools": {"supported": False, "code_execution": yes(False),
                         "web_search": yes(False)},
        "structured_outputs": yes(True),
        "thinking": {"supported": thinks, "types": {
            "adaptive": yes(True), "between_tools": yes(True), "disabled": yes(True),
            "enabled": yes(True)}},
    }
