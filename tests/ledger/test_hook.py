"""
The resource's observer hook, in memory: one :class:`RequestRecord` per finished request,
with what the exchange learnt (key, route, routing state, usage), for JSON and streamed
answers and errors alike; an observer that fails costs a log line, never the answer.
"""

from __future__ import annotations

from typing import Any

from tests.server.conftest import failures
from tests.server.memory import Harness
from txrelay.catalog import Route
from txrelay.ledger.record import RequestRecord
from txrelay.pipeline import Exchange, Reply
from txrelay.routing.policy import Attempt
from txrelay.testing import text_reply


async def _routed(exchange: Exchange) -> Reply:
    exchange.client = "alice"
    exchange.route = Route("claude-asked", "prov", "up-model", None, target="prov/up-model",
                           attempts=(Attempt("prov/other", "k1", "overloaded_error"),
                                     Attempt("prov/up-model", "k2", "served")))
    return text_reply("hello there")


def _broken(record: RequestRecord) -> None:
    raise RuntimeError("observer bug")


def test_one_record_per_request(capture_logs: list[dict[str, Any]]) -> None:
    h = Harness.over(_routed)
    seen: list[RequestRecord] = []
    h.resource.observers = (_broken, seen.append)
    conn = h.connect()
    conn.post(headers=[("x-claude-code-session-id", "sess-9")])
    conn.post(stream=True)
    conn.get("/nowhere")
    responses = conn.responses()
    assert [r.status for r in responses] == [200, 200, 404]
    plain, streamed, missing = seen
    assert plain.request_id == responses[0].headers["request-id"]
    assert (plain.key, plain.session, plain.model_requested, plain.model_served,
            plain.provider, plain.attempts, plain.target, plain.upstream_key) == (
        "alice", "sess-9", "claude-asked", "up-model", "prov", 2, "prov/up-model", "k2")
    assert (plain.operation, plain.status, plain.stream, plain.ttft) == (
        "messages", 200, False, None)
    assert plain.input_tokens == 10 and plain.output_tokens == 5
    assert streamed.stream and streamed.ttft is not None and streamed.session is None
    assert (missing.operation, missing.status, missing.error_type, missing.key) == (
        "404", 404, "not_found_error", None)
    # The failing observer was logged once per request and the others still ran.
    assert len([e for e in failures(capture_logs)
                if "request observer failed" in e.get("log_format", "")]) == 3
