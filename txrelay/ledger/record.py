# -*- test-case-name: tests.ledger.test_record -*-
"""
:class:`RequestRecord`: what one finished request was, built once where the access line is
written (:class:`txrelay.server.resource.RelayResource`) and handed to its observers (the
usage ledger; the status page and metrics could read the same).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs


@attrs.frozen
class RequestRecord:
    """
    One answered request. Times are seconds: ``at`` is the wall-clock (Unix) time it
    arrived, ``duration`` and ``ttft`` (to the first content delta of a stream) are measured
    from then. Token counts are the response's usage, ``None`` where it gave none.
    """

    at: float
    request_id: str
    operation: str
    status: int
    duration: float
    #: The client key's configured name (``auth`` stage), if any.
    key: str | None = None
    #: Claude Code's ``X-Claude-Code-Session-Id``.
    session: str | None = None
    #: The model name the client asked for, the configured model it matched, the upstream
    #: model that served it, and that upstream's provider.
    model_requested: str | None = None
    model: str | None = None
    model_served: str | None = None
    provider: str | None = None
    stream: bool = False
    ttft: float | None = None
    error_type: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_creation_tokens: int | None = None
    thinking_tokens: int | None = None
    #: Upstream calls made, the route target that answered (or failed last) and the
    #: provider pool's key it used, as the router records them on the route.
    attempts: int | None = None
    target: str | None = None
    upstream_key: str | None = None
    #: USD, from the price table (:mod:`txrelay.ledger.prices`); None when unpriced.
    spend: float | None = None

    def usage(self) -> dict[str, int]:
        """The token counts in Anthropic's usage field names (those that are known)."""
        out = {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
               "cache_read_input_tokens": self.cache_read_tokens,
               "cache_creation_input_tokens": self.cache_creation_tokens}
        return {k: v for k, v in out.items() if v is not None}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def usage_fields(usage: Mapping[str, Any] | None) -> dict[str, Any]:
    """:class:`RequestRecord`'s token fields from a response's Anthropic ``usage``."""
    usage = usage or {}
    details = usage.get("output_tokens_details")
    thinking = _int(details.get("thinking_tokens")) if isinstance(details, Mapping) else None
    return {
        "input_tokens": _int(usage.get("input_tokens")),
        "output_tokens": _int(usage.get("output_tokens")),
        "cache_read_tokens": _int(usage.get("cache_read_input_tokens")),
        "cache_creation_tokens": _int(usage.get("cache_creation_input_tokens")),
        "thinking_tokens": thinking,
    }


def routing_fields(route: Any) -> dict[str, Any]:
    """``attempts`` (upstream calls made), ``target`` and ``upstream_key`` (the pool key of
    the last call) from a route the router annotated (:mod:`txrelay.routing`)."""
    tried = [a for a in getattr(route, "attempts", ()) or ()
             if getattr(a, "outcome", None) not in ("breaker_open", "unfit")]
    target = getattr(route, "target", None)
    key = getattr(tried[-1], "key", None) if tried else None
    return {"attempts": len(tried) or None,
            "target": target[:200] if isinstance(target, str) else None,
            "upstream_key": key[:200] if isinstance(key, str) else None}
