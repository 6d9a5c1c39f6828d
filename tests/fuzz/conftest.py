"""
The fuzz suite's relays: one per backend per module (demo; openai-chat in front of the fake
upstream), a keep-alive HTTP client, and the checks every answer must pass.

``TXRELAY_FUZZ_EXAMPLES`` scales the run: unset, the CI budget (about a minute on two cores);
``bench/fuzz`` sets it to thousands.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
from collections.abc import Iterator
from typing import Any

import attrs
import pytest

from tests.fakeupstream import FakeOpenAI, Handler, Recorded, json_response, sse, text_stream
from tests.relayproc import DEMO_KEY, Relay, config_text, start_relay

#: Examples per fuzz test; ``bench/fuzz`` raises it.
EXAMPLES = int(os.environ.get("TXRELAY_FUZZ_EXAMPLES", "0")) or None


def examples(ci: int) -> int:
    """``ci`` examples in CI, or the long run's count."""
    return EXAMPLES or ci


@attrs.define
class Answer:
    status: int
    body: bytes

    def error_events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.body.split(b"\n"):
            if line.startswith(b"data: ") and b'"type":"error"' in line.replace(b" ", b""):
                out.append(json.loads(line[6:]))
        return out


@attrs.define
class Target:
    """A relay under fuzz: sends requests and checks every answer and the log."""

    relay: Relay
    fake: FakeOpenAI | None = None
    _conn: http.client.HTTPConnection | None = None
    _log_offset: int = 0

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> Answer:
        hdrs = {"content-type": "application/json", "x-api-key": DEMO_KEY,
                "anthropic-version": "2023-06-01", **(headers or {})}
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self.relay.port, timeout=30)
            try:
                # An early answer (413 for a body over the limit, 7.8) closes the connection
                # while the body is still being sent: read that answer.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self._conn.request("POST", path, body, hdrs)
                response = self._conn.getresponse()
                data = response.read()
                if response.getheader("connection", "").lower() == "close":
                    self._conn.close()
                    self._conn = None
                return Answer(response.status, data)
            except (ConnectionError, http.client.HTTPException, OSError):
                self._conn.close()
                self._conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def new_log(self) -> str:
        with self.relay.log_path.open("rb") as f:
            f.seek(self._log_offset)
            data = f.read()
        self._log_offset += len(data)
        return data.decode("utf-8", "replace")

    def check(self, answer: Answer, sent: bytes) -> None:
        """The bar: no 5xx of our own, no api_error event, no traceback in the log."""
        shown = sent[:600]
        log = self.new_log()
        assert "Traceback" not in log and "Unhandled" not in log, (
            f"traceback in the relay log for body {shown!r}:\n{log[-3000:]}")
        assert answer.status < 500, (
            f"{answer.status} {answer.body[:500]!r} for body {shown!r}")
        for event in answer.error_events():
            assert event["error"]["type"] != "api_error", (
                f"api_error event {event} for body {shown!r}")
        if self.fake is not None:
            bad = [r for r in self.fake.requests if not isinstance(r.body, dict)]
            self.fake.requests.clear()
            assert not bad, f"the relay sent the upstream non-JSON for body {shown!r}"

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def fake_answer(h: Handler, rec: Recorded) -> None:
    """A well-behaved upstream: SSE for stream requests, a JSON completion otherwise."""
    body = rec.body if isinstance(rec.body, dict) else {}
    if body.get("stream"):
        sse(text_stream("Hello from the fake upstream."))(h, rec)
        return
    json_response({"id": "chatcmpl-1", "object": "chat.completion", "model": "m", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Hello."},
         "finish_reason": "stop"}], "usage": {"prompt_tokens": 5, "completion_tokens": 2}})(h, rec)


MODELS = [{"id": "claude-sonnet-4-6", "aliases": ["sonnet"], "patterns": ["claude-*"],
           "max_tokens": 64000, "max_input_tokens": 200000},
          {"id": "demo-small", "max_tokens": 8192}]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    relay = start_relay(tmp_path_factory.mktemp("fuzz-demo"), config_text(
        server={"access_log": False}))
    target = Target(relay)
    target.new_log()
    yield target
    target.close()
    relay.stop()


@pytest.fixture(scope="module")
def openai(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    fake = FakeOpenAI(default=fake_answer).start()
    relay = start_relay(tmp_path_factory.mktemp("fuzz-openai"), config_text(
        server={"access_log": False},
        providers=[{"name": "up", "kind": "openai-chat", "base_url": fake.url,
                    "timeouts": {"connect": 2, "first_byte": 5, "idle": 5},
                    "options": {"dialect": "openai"}}],
        models=[{**m, "provider": "up", "upstream_model": "gpt-fake"} for m in MODELS]))
    target = Target(relay, fake)
    target.new_log()
    yield target
    target.close()
    relay.stop()
    fake.stop()


@pytest.fixture(params=["demo", "openai"])
def target(request: pytest.FixtureRequest) -> Target:
    """Each fuzz test runs on both backends."""
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]
