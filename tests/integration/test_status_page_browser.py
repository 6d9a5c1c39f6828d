"""
The status page in headless Chromium (issue 11.9), driven over the DevTools protocol on a
pipe (``--remote-debugging-pipe``: NUL-terminated JSON on fds 3/4, no websocket needed):
the login form takes the admin key, the page then shows a live stream while a slow demo
stream runs, and the drain once ``POST /admin/drain`` starts one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.integration.test_admin_reload import ADMIN_KEY, STREAM_BODY, call, config
from tests.relayproc import DEMO_KEY, start_relay

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class DevTools:
    """A CDP client on Chromium's debugging pipe (flattened sessions)."""

    def __init__(self, profile: Path) -> None:
        assert CHROMIUM is not None
        self._to_r, self._to_w = os.pipe()
        self._from_r, self._from_w = os.pipe()
        # Chromium reads commands on fd 3 and writes replies on fd 4. preexec_fn only
        # dup2()s (async-signal-safe); the test starts its thread after this.
        command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                   "--disable-dev-shm-usage", "--remote-debugging-pipe", "--no-first-run",
                   f"--user-data-dir={profile}", "about:blank"]
        self.process = subprocess.Popen(
            command, pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=self._fds)  # noqa: PLW1509

        os.close(self._to_r)
        os.close(self._from_w)
        self._next = 0
        self._buffer = b""

    def _fds(self) -> None:
        os.dup2(self._to_r, 3)
        os.dup2(self._from_w, 4)

    def send(self, method: str, params: dict[str, Any] | None = None,
             session: str | None = None, timeout: float = 30) -> dict[str, Any]:
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_w, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._next:
                    if "error" in reply:
                        raise AssertionError(f"{method}: {reply['error']}")
                    return reply["result"]  # type: ignore[no-any-return]
            chunk = os.read(self._from_r, 65536)
            if not chunk:
                raise AssertionError("chromium closed its debugging pipe")
            self._buffer += chunk
        raise AssertionError(f"{method}: no answer in {timeout}s")

    def close(self) -> None:
        with contextlib.suppress(AssertionError, OSError):
            self.send("Browser.close", timeout=5)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        os.close(self._to_w)
        os.close(self._from_r)


def evaluate(tools: DevTools, session: str, expression: str) -> Any:
    result = tools.send("Runtime.evaluate", {"expression": expression,
                                             "returnByValue": True}, session)
    return result["result"].get("value")


def wait_until(tools: DevTools, session: str, expression: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = evaluate(tools, session, expression)
        if value:
            return value
        time.sleep(0.2)
    text = evaluate(tools, session, "document.body ? document.body.innerText : ''")
    raise AssertionError(f"{expression!r} stayed {value!r}; the page shows:\n{text}")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_the_page_logs_in_shows_a_live_stream_then_the_drain(tmp: Path) -> None:
    relay = start_relay(tmp, config(), serve=True)
    tools = DevTools(tmp / "profile")
    streamed: list[str] = []

    def slow_stream() -> None:
        client = anthropic.Anthropic(base_url=relay.url, api_key=DEMO_KEY, max_retries=0)
        with client.messages.stream(**{k: v for k, v in STREAM_BODY.items()
                                       if k != "stream"}) as stream:
            streamed.extend(stream.text_stream)

    worker = threading.Thread(target=slow_stream)
    try:
        target = tools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = tools.send("Target.attachToTarget",
                             {"targetId": target, "flatten": True})["sessionId"]
        tools.send("Page.navigate", {"url": f"{relay.url}/admin"}, session)
        # Not logged in: the login form, no data.
        wait_until(tools, session, "!!document.getElementById('key')")
        assert not evaluate(tools, session, "!!document.getElementById('streams')")
        evaluate(tools, session, f"document.getElementById('key').value = "
                                 f"{json.dumps(ADMIN_KEY)}; "
                                 "document.querySelector('form').submit(); true")
        assert wait_until(tools, session,
                          "document.getElementById('drain-state') && "
                          "document.getElementById('drain-state').textContent === 'serving'")
        # The cookie is HttpOnly: the page's script cannot read it.
        assert "txrelay_admin" not in evaluate(tools, session, "document.cookie")
        assert evaluate(tools, session,
                        "document.getElementById('generation').textContent") == "0"

        worker.start()
        rid = wait_until(tools, session,
                         "(() => { const r = document.querySelector('#streams tr');"
                         " return r ? r.dataset.requestId : null; })()")
        assert rid.startswith("req_")
        row = evaluate(tools, session, "document.querySelector('#streams tr').innerText")
        assert "tester" in row and "sonnet" in row and "demo" in row
        assert evaluate(tools, session,
                        "document.getElementById('live-count').textContent") == "1"

        assert call(relay.port, "POST", "/admin/drain")[0] == 200
        assert wait_until(tools, session, "document.getElementById('drain-state')"
                                          ".textContent === 'draining'")
        worker.join(60)
        assert not worker.is_alive() and "".join(streamed)
        # The finished stream leaves the live table and counts in today's usage.
        wait_until(tools, session, "!document.querySelector('#streams tr')")
        keys = wait_until(tools, session, "(() => { const t = document.getElementById("
                                          "'keys').innerText; return t.includes('tester') "
                                          "? t : null; })()")
        assert "tester" in keys
        providers = evaluate(tools, session, "document.getElementById('providers').innerText")
        assert "demo" in providers and "ok" in providers
    finally:
        tools.close()
        if worker.is_alive():
            worker.join(60)
        code = relay.stop()
    assert code == 0
    assert "Traceback" not in relay.log()
