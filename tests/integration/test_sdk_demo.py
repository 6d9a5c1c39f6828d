"""
The real relay (twistd plugin) on loopback with the demo backend, driven by the official
anthropic SDK, which validates every response and event stream it parses.
"""

from __future__ import annotations

import http.client
import json
from typing import Any

import anthropic
import pytest

from tests.relayproc import DEMO_KEY, SECOND_KEY, Relay

pytestmark = pytest.mark.integration

WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                     "required": ["city"]},
}


def raw(relay: Relay, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def post_json(relay: Relay, path: str, body: Any, key: str | None = DEMO_KEY,
              header: str = "x-api-key") -> tuple[int, dict[str, str], Any]:
    headers = {"content-type": "application/json", "anthropic-version": "2023-06-01"}
    if key is not None:
        headers[header] = key if header == "x-api-key" else f"Bearer {key}"
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, hdrs, payload = raw(relay, "POST", path, data, headers)
    return status, hdrs, json.loads(payload) if payload else None


def test_create_non_streaming(client: anthropic.Anthropic) -> None:
    msg = client.messages.create(
        model="claude-haiku-4-5", max_tokens=200,
        messages=[{"role": "user", "content": "hello relay"}],
    )
    assert msg.model == "claude-haiku-4-5"  # R-X5: the name asked for is echoed
    assert msg.stop_reason == "end_turn"
    assert msg.content[0].type == "text"
    assert "hello relay" in msg.content[0].text
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0
    assert msg.id.startswith("msg_")


def test_stream_final_message_matches_non_streaming(client: anthropic.Anthropic) -> None:
    kwargs: dict[str, Any] = dict(model="sonnet", max_tokens=300,
                                  messages=[{"role": "user", "content": "same answer?"}])
    with client.messages.stream(**kwargs) as stream:
        kinds = [event.type for event in stream]
        streamed = stream.get_final_message()
    plain = client.messages.create(**kwargs)
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert kinds.count("content_block_delta") >= 3  # several deltas, like a real model
    assert [b.model_dump() for b in streamed.content] == [b.model_dump() for b in plain.content]
    assert streamed.stop_reason == plain.stop_reason == "end_turn"


def test_tool_round_trip(client: anthropic.Anthropic) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Use get_weather for Paris, please."}]
    with client.messages.stream(model="claude-sonnet-4-6", max_tokens=500, tools=[WEATHER],
                                messages=messages) as stream:
        first = stream.get_final_message()
    assert first.stop_reason == "tool_use"
    call = next(b for b in first.content if b.type == "tool_use")
    assert call.name == "get_weather" and isinstance(call.input, dict)
    assert set(call.input) == {"city"}
    messages += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call.id, "content": "18°C, cloudy"}]},
    ]
    second = client.messages.create(model="claude-sonnet-4-6", max_tokens=500, tools=[WEATHER],
                                    messages=messages)
    assert second.stop_reason == "end_turn"
    assert "18°C, cloudy" in second.content[0].text  # type: ignore[union-attr]


def test_thinking_blocks_carry_signatures(client: anthropic.Anthropic) -> None:
    msg = client.messages.create(
        model="claude-sonnet-4-6", max_tokens=2048,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "think first"}],
    )
    assert msg.content[0].type == "thinking"
    assert msg.content[0].signature  # type: ignore[union-attr]


def test_count_tokens(client: anthropic.Anthropic) -> None:
    short = client.messages.count_tokens(
        model="sonnet", messages=[{"role": "user", "content": "hi"}])
    long = client.messages.count_tokens(
        model="sonnet", messages=[{"role": "user", "content": "hi " * 2000}], tools=[WEATHER])
    assert 0 < short.input_tokens < long.input_tokens


def test_count_tokens_beta_query_is_ignored(relay: Relay) -> None:
    status, headers, body = post_json(relay, "/v1/messages/count_tokens?beta=true", {
        "model": "claude-opus-4-8", "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200 and body["input_tokens"] > 0
    assert headers["request-id"].startswith("req_")


def test_models_list_and_paging(client: anthropic.Anthropic) -> None:
    everything = client.models.list(limit=1000)
    ids = [m.id for m in everything.data]
    assert ids == ["claude-sonnet-4-6", "demo-small", "demo-third"]
    first = client.models.list(limit=1)
    assert [m.id for m in first.data] == ["claude-sonnet-4-6"] and first.has_more
    assert first.first_id == first.last_id == "claude-sonnet-4-6"
    # The SDK's auto-pagination follows after_id until has_more is false.
    assert [m.id for m in client.models.list(limit=1)] == ids
    nxt = client.models.list(limit=2, after_id="claude-sonnet-4-6")
    assert [m.id for m in nxt.data] == ["demo-small", "demo-third"] and not nxt.has_more
    before = client.models.list(limit=5, before_id="demo-third")
    assert [m.id for m in before.data] == ["claude-sonnet-4-6", "demo-small"]


def test_models_get_resolves_aliases(client: anthropic.Anthropic) -> None:
    model = client.models.retrieve("sonnet")
    assert model.id == "claude-sonnet-4-6" and model.display_name == "Demo Sonnet"
    assert model.max_tokens == 64000
    with pytest.raises(anthropic.NotFoundError):
        client.models.retrieve("gpt-4o")


@pytest.mark.parametrize("header", ["x-api-key", "authorization"])
def test_both_auth_headers(relay: Relay, header: str) -> None:
    status, _, body = post_json(relay, "/v1/messages", {
        "model": "sonnet", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]},
        key=SECOND_KEY, header=header)
    assert status == 200, body
    assert body["type"] == "message"


def test_x_api_key_wins_over_bearer(relay: Relay) -> None:
    headers = {"x-api-key": DEMO_KEY, "authorization": "Bearer wrong",
               "content-type": "application/json"}
    body = json.dumps({"model": "sonnet", "max_tokens": 10,
                       "messages": [{"role": "user", "content": "x"}]}).encode()
    status, _, _ = raw(relay, "POST", "/v1/messages", body, headers)
    assert status == 200


def test_sdk_with_x_api_key_and_old_version(relay: Relay) -> None:
    c = anthropic.Anthropic(base_url=relay.url, api_key=None, max_retries=0,
                            default_headers={"x-api-key": DEMO_KEY,
                                             "anthropic-version": "2023-06-01",
                                             "anthropic-beta": "claude-code-20250219,x-y"})
    msg = c.messages.create(model="sonnet", max_tokens=20,
                            messages=[{"role": "user", "content": "x"}])
    assert msg.content


def assert_error(status: int, headers: dict[str, str], body: Any, want_status: int,
                 want_type: str, *fragments: str) -> None:
    assert status == want_status, body
    assert body["type"] == "error"
    assert body["error"]["type"] == want_type
    assert headers["request-id"] == body["request_id"]
    assert headers["content-type"].startswith("application/json")
    for fragment in fragments:
        assert fragment in body["error"]["message"]
    assert "Traceback" not in body["error"]["message"]


def test_bad_key(relay: Relay) -> None:
    status, headers, body = post_json(relay, "/v1/messages", {}, key="nope")
    assert_error(status, headers, body, 401, "authentication_error", "invalid")


def test_missing_key(relay: Relay, client: anthropic.Anthropic) -> None:
    status, headers, body = post_json(relay, "/v1/messages", {}, key=None)
    assert_error(status, headers, body, 401, "authentication_error", "x-api-key")
    bad = anthropic.Anthropic(base_url=relay.url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model="sonnet", max_tokens=5,
                            messages=[{"role": "user", "content": "x"}])


def test_malformed_json(relay: Relay) -> None:
    status, headers, body = post_json(relay, "/v1/messages", b'{"model": "sonnet",')
    assert_error(status, headers, body, 400, "invalid_request_error", "not valid JSON")


def test_wrong_field_types(relay: Relay) -> None:
    status, headers, body = post_json(relay, "/v1/messages", {
        "model": 7, "max_tokens": "10", "messages": [{"role": "user", "content": 5}]})
    assert_error(status, headers, body, 400, "invalid_request_error",
                 "model: expected a string", "max_tokens: expected an integer",
                 "messages.0.content")


def test_missing_max_tokens(relay: Relay, client: anthropic.Anthropic) -> None:
    status, headers, body = post_json(relay, "/v1/messages", {
        "model": "sonnet", "messages": [{"role": "user", "content": "x"}]})
    assert_error(status, headers, body, 400, "invalid_request_error", "max_tokens")
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        client.post("/v1/messages", cast_to=object,
                    body={"model": "sonnet", "messages": [{"role": "user", "content": "x"}]})


def test_unknown_model(relay: Relay, client: anthropic.Anthropic) -> None:
    status, headers, body = post_json(relay, "/v1/messages", {
        "model": "gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})
    assert_error(status, headers, body, 404, "not_found_error", "gpt-4o", "claude-sonnet-4-6")
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="gpt-4o", max_tokens=5,
                               messages=[{"role": "user", "content": "x"}])


def test_oversized_body(relay: Relay, client: anthropic.Anthropic) -> None:
    # The test relay keeps the default limit of 32 MiB.
    big = "x" * (33 * 1024 * 1024)
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(model="sonnet", max_tokens=5,
                               messages=[{"role": "user", "content": big}])
    assert info.value.status_code == 413
    assert info.value.body["error"]["type"] == "request_too_large"  # type: ignore[index]


def test_unknown_fields_are_ignored(relay: Relay) -> None:
    status, _, body = post_json(relay, "/v1/messages?beta=true", {
        "model": "sonnet", "max_tokens": 20, "messages": [{"role": "user", "content": "x"}],
        "context_management": {"edits": []}, "output_config": {"effort": "high"},
        "temperature": 1, "metadata": {"user_id": '{"device_id":"abc"}'},
        "brand_new_beta_field": {"x": 1}})
    assert status == 200 and body["content"]


def test_role_system_message_is_accepted(client: anthropic.Anthropic) -> None:
    msg = client.messages.create(
        model="sonnet", max_tokens=50,
        messages=[{"role": "user", "content": "first"},
                  {"role": "system", "content": "be brief"},  # type: ignore[list-item, misc]
                  {"role": "user", "content": "second"}])
    assert msg.stop_reason == "end_turn"


def test_endpoints_outside_the_api(relay: Relay) -> None:
    for method, path in (("HEAD", "/"), ("GET", "/"), ("GET", "/health"),
                         ("GET", "/health/ready")):
        status, headers, _ = raw(relay, method, path)
        assert status == 200, path
        assert headers["request-id"].startswith("req_")
    status, headers, payload = raw(relay, "GET", "/v1/nothing")
    assert_error(status, headers, json.loads(payload), 404, "not_found_error", "/v1/nothing")
    status, headers, payload = raw(relay, "GET", "/v1/messages")
    assert_error(status, headers, json.loads(payload), 405, "invalid_request_error", "POST")


def test_streaming_wire_format(relay: Relay) -> None:
    status, headers, payload = raw(
        relay, "POST", "/v1/messages?beta=true",
        json.dumps({"model": "sonnet", "max_tokens": 50, "stream": True,
                    "messages": [{"role": "user", "content": "hi"}]}).encode(),
        {"x-api-key": DEMO_KEY, "content-type": "application/json"})
    assert status == 200
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    assert headers["cache-control"] == "no-cache"
    frames = payload.decode().split("\n\n")
    assert frames[-1] == ""
    for frame in frames[:-1]:
        event_line, data_line = frame.split("\n")
        name = event_line.removeprefix("event: ")
        assert json.loads(data_line.removeprefix("data: "))["type"] == name
    assert "data: [DONE]" not in payload.decode()


def test_access_log_names_client_and_model(relay: Relay, client: anthropic.Anthropic) -> None:
    client.messages.create(model="demo-small", max_tokens=5,
                           messages=[{"role": "user", "content": "log me"}])
    # The access-log line is written just after the answer left: wait for it.
    log = relay.wait_for_log("client=tester model=demo-small provider=demo")
    assert "client=tester model=demo-small provider=demo" in log
    assert DEMO_KEY not in log  # secrets never reach the log


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        head, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def test_prometheus_metrics(relay: Relay, client: anthropic.Anthropic) -> None:
    def scrape() -> str:
        status, headers, body = raw(relay, "GET", "/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain")
        return body.decode()

    before = scrape()
    with client.messages.stream(model="demo-third", max_tokens=200,
                                messages=[{"role": "user", "content": "count me"}]) as s:
        final = s.get_final_message()
    client.messages.create(model="demo-third", max_tokens=200,
                           messages=[{"role": "user", "content": "count me too"}])
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="nope", max_tokens=5,
                               messages=[{"role": "user", "content": "x"}])
    after = scrape()
    labels = {"operation": "messages", "status": "200", "provider": "demo",
              "model": "demo-third", "client": "tester"}
    assert metric(after, "txrelay_requests_total", **labels) - \
        metric(before, "txrelay_requests_total", **labels) == 2
    out = {"kind": "output", "model": "demo-third", "client": "tester"}
    assert metric(after, "txrelay_tokens_total", **out) - \
        metric(before, "txrelay_tokens_total", **out) >= final.usage.output_tokens
    assert metric(after, "txrelay_errors_total", type="not_found_error") >= 1
    assert metric(after, "txrelay_streams_active") == 0
    assert DEMO_KEY not in after


@pytest.mark.parametrize("stream", [False, True])
def test_max_tokens_zero_is_an_empty_message(client: anthropic.Anthropic, stream: bool) -> None:
    # The SDK documents max_tokens 0 (prompt-cache pre-warming): valid, nothing generated.
    kwargs: dict[str, Any] = {"model": "sonnet", "max_tokens": 0,
                              "messages": [{"role": "user", "content": "warm the cache"}]}
    if stream:
        with client.messages.stream(**kwargs) as s:
            msg = s.get_final_message()
    else:
        msg = client.messages.create(**kwargs)
    assert msg.content == [] and msg.stop_reason == "max_tokens"
    assert msg.usage.output_tokens == 0 and msg.usage.input_tokens > 0
    assert msg.model == "sonnet"


def test_negative_max_tokens_is_a_400(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        client.messages.create(model="sonnet", max_tokens=-1,
                               messages=[{"role": "user", "content": "x"}])
