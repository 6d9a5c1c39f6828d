"""The resource in memory: routes, errors, composition with a filtering stage."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from tests.server.conftest import failures
from tests.server.memory import Harness
from txrelay.pipeline import Exchange, Proceed, Reply, compose
from txrelay.protocol.errors import RelayError
from txrelay.protocol.events import Event
from txrelay.server.models import catalog_terminal
from txrelay.testing import text_events, text_reply

ANTHROPIC_ERROR_KEYS = {"type", "error", "request_id"}


def answering(reply: Reply) -> Proceed:
    async def pipeline(exchange: Exchange) -> Reply:
        return reply

    return pipeline


def raising(error: Exception) -> Proceed:
    async def pipeline(exchange: Exchange) -> Reply:
        raise error

    return pipeline


def test_health_and_root_answer_json_with_a_request_id() -> None:
    h = Harness.over(answering(Reply.json({})))
    conn = h.connect()
    conn.get("/health")
    conn.get("/")
    health, root = conn.responses()
    assert health.status == 200 and health.json() == {"status": "ok"}
    assert health.headers["request-id"].startswith("req_")
    assert root.json()["name"] == "txrelay"
    assert health.headers["request-id"] != root.headers["request-id"]


def test_unknown_path_and_wrong_method_are_anthropic_errors() -> None:
    h = Harness.over(answering(Reply.json({})))
    conn = h.connect()
    conn.get("/v1/nothing")
    conn.get("/v1/messages")
    missing, wrong = conn.responses()
    assert missing.status == 404 and set(missing.json()) == ANTHROPIC_ERROR_KEYS
    assert missing.json()["error"]["type"] == "not_found_error"
    assert "/v1/nothing" in missing.json()["error"]["message"]
    assert wrong.status == 405 and "use POST" in wrong.json()["error"]["message"]
    assert missing.json()["request_id"] == missing.headers["request-id"]


def test_models_endpoints_through_the_catalog_terminal() -> None:
    h = Harness.over(answering(Reply.json({})))
    h.resource.pipeline = catalog_terminal(h.resource.catalog)
    conn = h.connect()
    conn.get("/v1/models")
    conn.get("/v1/models/m")
    conn.get("/v1/models/absent")
    conn.get("/v1/models?limit=0")
    listed, one, absent, bad = conn.responses()
    assert [m["id"] for m in listed.json()["data"]] == ["m"]
    assert one.json()["id"] == "m"
    assert absent.status == 404 and "'absent'" in absent.json()["error"]["message"]
    assert bad.status == 400 and "limit" in bad.json()["error"]["message"]


def test_a_relay_error_from_the_pipeline_keeps_its_status_and_headers() -> None:
    error = RelayError("rate_limit_error", "slow down", headers=(("retry-after", "7"),))
    h = Harness.over(raising(error))
    conn = h.connect()
    conn.post()
    resp = conn.response()
    assert resp.status == 429 and resp.headers["retry-after"] == "7"
    assert resp.json()["error"] == {"type": "rate_limit_error", "message": "slow down"}


def test_a_bug_in_a_stage_is_a_500_without_internals(logged: list[dict[str, Any]]) -> None:
    h = Harness.over(raising(KeyError("secret-internal-name")))
    conn = h.connect()
    conn.post()
    resp = conn.response()
    assert resp.status == 500 and resp.json()["error"]["type"] == "api_error"
    message = resp.json()["error"]["message"]
    assert "KeyError" not in message and "secret-internal-name" not in message
    assert resp.headers["request-id"] in message
    assert len(failures(logged)) == 1


def test_non_streaming_client_gets_the_folded_message() -> None:
    h = Harness.over(answering(text_reply("hello there")))
    conn = h.connect()
    conn.post()
    resp = conn.response()
    assert resp.status == 200 and resp.complete
    assert resp.json()["content"] == [{"type": "text", "text": "hello there"}]
    assert resp.headers["content-type"] == "application/json"


def test_streaming_client_gets_a_complete_event_stream() -> None:
    h = Harness.over(answering(text_reply("hello there")))
    conn = h.connect()
    conn.post(stream=True)
    resp = conn.response()
    assert resp.status == 200 and resp.complete  # the chunked terminator was written
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.types()[0] == "message_start" and resp.types()[-1] == "message_stop"
    assert not conn.closing  # keep-alive: the connection stays open for the next request
    assert h.clock.getDelayedCalls() == []  # the ping timer is gone


class Upper:
    """A filter that upper-cases text deltas and holds the last one until the end."""

    held: Event | None = None

    def feed(self, event: Event) -> list[Event]:
        if event["type"] == "content_block_delta":
            event = {**event, "delta": {**event["delta"], "text": event["delta"]["text"].upper()}}
        return [event]

    def finish(self) -> list[Event]:
        return []


def test_composition_with_a_filtering_stage_streamed_and_folded() -> None:
    async def upper(exchange: Exchange, proceed: Proceed) -> Reply:
        reply = await proceed(exchange)
        reply.headers.append(("x-stage", "upper"))
        assert reply.stream is not None
        reply.stream = reply.stream.through(Upper())
        return reply

    async def terminal(exchange: Exchange) -> Reply:
        return text_reply("quiet words")

    h = Harness.over(compose([upper], terminal))
    conn = h.connect()
    conn.post(stream=True)
    conn.post()
    streamed, folded = conn.responses()
    text = "".join(e["delta"]["text"] for e in streamed.events()
                   if e["type"] == "content_block_delta")
    assert text == "QUIET WORDS" and streamed.headers["x-stage"] == "upper"
    assert folded.json()["content"][0]["text"] == "QUIET WORDS"
    assert folded.headers["x-stage"] == "upper"


def test_a_client_leaving_before_the_reply_cancels_the_pipeline() -> None:
    waiting: Deferred[Reply] = Deferred()

    async def slow(exchange: Exchange) -> Reply:
        return await waiting

    h = Harness.over(slow)
    conn = h.connect()
    conn.post()
    assert h.resource.lifecycle.live
    conn.lose()
    assert waiting.called  # cancelled
    assert not h.resource.lifecycle.live
    assert conn.transport.value().count(b"HTTP/1.1") == 0


def test_text_events_helper_is_grammatical() -> None:
    # Guards the fixtures above: the helper ends with message_stop.
    assert text_events("x")[-1]["type"] == "message_stop"


def test_the_resource_serves_treq_clients_through_stub_treq() -> None:
    import json

    from treq.testing import StubTreq

    h = Harness.over(answering(text_reply("via treq")))
    client = StubTreq(h.resource)
    body = json.dumps({"model": "m", "max_tokens": 5, "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]})
    d = client.post("http://relay/v1/messages", data=body.encode(),
                    headers={"content-type": "application/json"})
    client.flush()
    response = d.result
    assert response.code == 200
    content = client.content(response)
    client.flush()
    text = content.result.decode()
    assert text.startswith("event: message_start") and "content_block_delta" in text
    assert text.rstrip().endswith('data: {"type":"message_stop"}')
