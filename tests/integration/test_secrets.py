"""
No configured secret reaches a client or the log (issue 8.5), whatever its shape.

The real relay (twistd) is configured with upstream keys and client keys of several shapes,
in front of a fake upstream that quotes the ``Authorization`` header it received — verbatim,
JSON-escaped, percent-encoded and as HTTP Basic base64 — in every error it gives. Every
upstream error path is triggered, streaming and not, through the official SDK; no response
body, header, SSE event or log line may contain any key in any of those forms.
"""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import anthropic
import pytest

from tests.fakeupstream import FakeOpenAI, Handler, Recorded, chunk, json_response, sse
from tests.relayproc import Relay, config_text, start_relay

pytestmark = pytest.mark.integration

#: Upstream keys: an OpenAI-shaped one, a UUID, a 12-character word, regex metacharacters,
#: and characters JSON and URLs escape.
UPSTREAM_KEYS = [
    "sk-proj-T3stUpstreamKey0123456789abcdefXYZ",
    "7c0a5e2d-41b9-4f83-9e6a-2b1d8c7f3e90",
    "tangerinepie",
    "a.b*c+d?(e)[f]{g}|h^$\\1",
    'qu"ote\\back/slash<&>=%',
]
#: Client keys (given by environment variable, so the relay knows their values).
CLIENT_KEYS = [
    "sk-ant-api03-ClientKeyForTests-0123456789",
    "0b9e3c5a-77d2-4c1e-8f4a-6d5e3b2a1c0f",
    "marmalade123",
    "c(l)i.e*n+t?k[e]y",
]
ALL_SECRETS = UPSTREAM_KEYS + CLIENT_KEYS


def forms(secret: str) -> list[str]:
    """The shapes a secret could leak in."""
    escaped = json.dumps(secret)[1:-1]
    return [secret, escaped, json.dumps(escaped)[1:-1], quote(secret, safe=""),
            base64.b64encode(f"user:{secret}".encode()).decode()[8:-4]]


def assert_clean(where: str, text: str) -> None:
    for secret in ALL_SECRETS:
        for form in forms(secret):
            assert form not in text, f"{where} leaks {secret!r} as {form!r}:\n{text[:2000]}"


def quoted_text(rec: Recorded) -> str:
    """What the fake upstream says about the credential it got: every common encoding."""
    auth = rec.headers.get("authorization", "")
    token = auth.partition(" ")[2]
    model = rec.body.get("model", "") if isinstance(rec.body, dict) else ""
    basic = base64.b64encode(f"user:{token}".encode()).decode()
    return (f"Incorrect API key provided: {auth}. Key {token}; "
            f"as a query key={quote(token, safe='')}; Basic {basic}; model {model}")


def quoting(status: int, form: str = "json") -> Callable[[Handler, Recorded], None]:
    """A non-2xx answer quoting the credential, in a JSON, text or HTML body."""
    def respond(h: Handler, rec: Recorded) -> None:
        text = quoted_text(rec)
        auth = rec.headers.get("authorization", "")
        if form == "json":
            raw = json.dumps({"error": {"message": text, "type": "invalid_request_error",
                                        "param": auth, "code": "invalid_api_key"}})
            ctype = "application/json"
        elif form == "text":
            raw, ctype = text, "text/plain"
        else:
            raw, ctype = f"<html><body><h1>Oops</h1><p>{text}</p></body></html>", "text/html"
        json_response(None, status, raw=raw.encode(), content_type=ctype,
                      headers={"x-echo-auth": auth, "retry-after": "1"})(h, rec)
    return respond


def stream_error(after_text: bool) -> Callable[[Handler, Recorded], None]:
    """A 200 stream whose error chunk quotes the credential (before or after content)."""
    def respond(h: Handler, rec: Recorded) -> None:
        err = {"error": {"message": quoted_text(rec), "code": 500}}
        first = [chunk({"role": "assistant", "content": "partial "})] if after_text else []
        sse([*first, err], done=False)(h, rec)
    return respond


def ok_body_error(h: Handler, rec: Recorded) -> None:
    """A 200 non-streaming answer that is an error object quoting the credential."""
    json_response({"error": {"message": quoted_text(rec), "type": "server_error"}})(h, rec)


def not_json(h: Handler, rec: Recorded) -> None:
    json_response(None, raw=quoted_text(rec).encode(), content_type="text/plain")(h, rec)


def dropped(h: Handler, rec: Recorded) -> None:
    """Starts a stream, then the connection dies."""
    h.start(200, "text/event-stream")
    h.write_chunk(f"data: {json.dumps(chunk({'content': 'partial'}))}\n\n".encode(), None)
    h.close_connection = True
    h.connection.shutdown(socket.SHUT_RDWR)


def silent(seconds: float, stream: bool) -> Callable[[Handler, Recorded], None]:
    """No headers for ``seconds`` (first-byte timeout), or a stream that goes quiet."""
    def respond(h: Handler, rec: Recorded) -> None:
        if stream:
            h.start(200, "text/event-stream")
            h.write_chunk(f"data: {json.dumps(chunk({'content': 'partial'}))}\n\n".encode(),
                          None)
        time.sleep(seconds)
        h.close_connection = True
    return respond


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    f = FakeOpenAI().start()
    yield f
    f.stop()


@pytest.fixture(scope="module")
def relay(fake: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    timeouts = {"connect": 2, "first_byte": 1.5, "idle": 1}
    providers = [{"name": f"p{i}", "kind": "openai-chat", "base_url": fake.url,
                  "api_key": {"env": f"TXRELAY_SECRET_UP{i}"}, "timeouts": timeouts}
                 for i in range(len(UPSTREAM_KEYS))]
    providers.append({"name": "dead", "kind": "openai-chat", "base_url": "http://127.0.0.1:9/v1",
                      "api_key": {"env": "TXRELAY_SECRET_UP0"}, "timeouts": timeouts})
    models = [{"id": f"m{i}", "provider": f"p{i}"} for i in range(len(UPSTREAM_KEYS))]
    models += [{"id": "dead", "provider": "dead"},
               {"id": "echo", "provider": "p1", "patterns": ["any-*"]}]
    keys = [{"name": f"client{i}", "env": f"TXRELAY_SECRET_CLIENT{i}"}
            for i in range(len(CLIENT_KEYS))]
    env = {f"TXRELAY_SECRET_UP{i}": k for i, k in enumerate(UPSTREAM_KEYS)}
    env |= {f"TXRELAY_SECRET_CLIENT{i}": k for i, k in enumerate(CLIENT_KEYS)}
    text = config_text(providers=providers, models=models, keys=keys,
                       server={"ping_interval": 5}) + '\n[log]\nlevel = "debug"\n'
    r = start_relay(tmp_path_factory.mktemp("secrets"), text, env=env)
    yield r
    r.stop()


@pytest.fixture(autouse=True)
def clean_script(fake: FakeOpenAI) -> Iterator[None]:
    fake.script.clear()
    yield
    fake.script.clear()


def call(relay: Relay, model: str, stream: bool, key: str = CLIENT_KEYS[0]) -> tuple[int, str]:
    """One request through the SDK: the status and everything the client got, as text."""
    with anthropic.Anthropic(base_url=relay.url, api_key=key, max_retries=0,
                             timeout=30) as client:
        try:
            with client.messages.with_streaming_response.create(
                model=model, max_tokens=50, stream=stream,
                messages=[{"role": "user", "content": "hi"}],
            ) as resp:
                body = b"".join(resp.iter_bytes()).decode("utf-8", "replace")
                return resp.status_code, f"{dict(resp.headers)}\n{body}"
        except anthropic.APIStatusError as e:
            return e.status_code, f"{dict(e.response.headers)}\n{e.response.text}"


def run_paths(relay: Relay, fake: FakeOpenAI, model: str,
              paths: list[tuple[str, Any, bool, bool]]) -> None:
    """Each (name, responder, stream, forwards the upstream message); assert nothing leaks."""
    for name, responder, stream, forwards in paths:
        fake.push(responder)
        before = len(fake.requests)
        status, seen = call(relay, model, stream)
        where = f"{model} {name} stream={stream}"
        assert status >= 400 or "event: error" in seen, (where, status, seen)
        assert_clean(where, seen)
        if forwards:
            # The upstream really quoted the key, and the relay passed the rest through.
            assert len(fake.requests) == before + 1
            assert fake.requests[-1].headers["authorization"].startswith("Bearer ")
            assert "[redacted]" in seen, (where, seen)
    assert_clean("relay log", relay.log())


STATUSES = (400, 403, 404, 409, 413, 422, 429, 500, 502, 503)


@pytest.mark.parametrize("index", range(len(UPSTREAM_KEYS)))
def test_upstream_error_answers_never_echo_the_key(
    relay: Relay, fake: FakeOpenAI, index: int
) -> None:
    paths: list[tuple[str, Any, bool, bool]] = []
    for stream in (False, True):
        paths += [(f"HTTP {s} json", quoting(s), stream, True) for s in STATUSES]
        paths += [("HTTP 500 text", quoting(500, "text"), stream, True),
                  ("HTTP 400 html", quoting(400, "html"), stream, True)]
    paths += [("200 + error chunk first", stream_error(False), True, True),
              ("200 + error chunk after text", stream_error(True), True, True),
              ("200 error object", ok_body_error, False, True),
              ("200 not JSON", not_json, False, False)]
    run_paths(relay, fake, f"m{index}", paths)


def test_transport_failures_and_timeouts(relay: Relay, fake: FakeOpenAI) -> None:
    run_paths(relay, fake, "m1", [
        ("connection dropped mid-stream", dropped, True, False),
        ("connection dropped mid-body", dropped, False, False),
        ("first-byte timeout", silent(2.5, False), False, False),
        ("first-byte timeout", silent(2.5, False), True, False),
        ("idle timeout", silent(2.5, True), True, False),
    ])
    for stream in (False, True):
        status, seen = call(relay, "dead", stream)
        assert status == 502
        assert_clean("connection refused", seen)
    assert_clean("relay log", relay.log())


def test_client_keys_echoed_in_model_names(relay: Relay, fake: FakeOpenAI) -> None:
    # A model name the relay repeats in a 404 message, and one routed by pattern, forwarded
    # upstream (quoted back in its error), and written in the access and debug log.
    for i, key in enumerate(CLIENT_KEYS):
        status, seen = call(relay, key, False, key=CLIENT_KEYS[(i + 1) % len(CLIENT_KEYS)])
        assert status == 404 and "[redacted]" in seen
        assert_clean("404 for a model named like a key", seen)
        fake.push(quoting(500))
        status, seen = call(relay, f"any-{key}", True, key=key)
        assert status == 500
        assert_clean("upstream error quoting the model", seen)
    log = relay.log()
    assert "model=any-[redacted]" in log
    assert_clean("relay log", log)


def test_txrelay_serve_logs_are_redacted_too(tmp_path: Any) -> None:
    # ``txrelay serve`` picks its own observer (JSON here); the key is a client key's value.
    key = CLIENT_KEYS[1]
    text = config_text(
        keys=[{"name": "only", "env": "TXRELAY_SECRET_SERVE"}],
        models=[{"id": "claude-sonnet-4-6", "provider": "demo", "patterns": ["any-*"]}],
    ) + '\n[log]\nlevel = "debug"\nformat = "json"\n'
    relay = start_relay(tmp_path, text, env={"TXRELAY_SECRET_SERVE": key}, serve=True)
    try:
        with anthropic.Anthropic(base_url=relay.url, api_key=key, max_retries=0) as client:
            reply = client.messages.create(model=f"any-{key}", max_tokens=20,
                                           messages=[{"role": "user", "content": "hi"}])
        assert reply.model == f"any-{key}"  # a success body is the client's own, unchanged
    finally:
        relay.stop()
    log = relay.log()
    assert '"model": "any-[redacted]"' in log
    assert_clean("txrelay serve log", log)
