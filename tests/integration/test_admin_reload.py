"""
The admin endpoints and configuration reload with the real relay (issue 11.1, 11.4), under
``twistd`` and ``txrelay serve``: SIGHUP (and ``POST /admin/reload``) applies a new model
alias and a new key to new requests while a slow stream started before finishes on the old
configuration; an invalid file is refused with the problems ``txrelay check-config`` prints;
``POST``/``DELETE /admin/drain``; readiness and reload reported to systemd's notify socket.
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.relayproc import DEMO_KEY, Relay, config_text, start_relay
from txrelay.config import hash_key

pytestmark = pytest.mark.integration

ADMIN_KEY = "txrelay-admin-key-for-tests"
NEW_KEY = "txrelay-key-added-by-reload"
ADMIN = [{"name": "ops", "sha256": hash_key(ADMIN_KEY)}]
SLOW_DEMO = [{"name": "demo", "kind": "demo", "options": {"event_delay": 0.3}}]
STREAM_BODY = {"model": "sonnet", "max_tokens": 500, "stream": True,
               "messages": [{"role": "user", "content": "a slow answer that outlives "
                                                        "the reload, please"}]}


def config(**changes: Any) -> str:
    server = {"admin_keys": ADMIN, "ping_interval": 0.5, **changes.pop("server", {})}
    return config_text(server=server, providers=SLOW_DEMO, **changes)


def call(port: int, method: str, path: str, body: Any = None,
         key: str | None = ADMIN_KEY) -> tuple[int, dict[str, str], Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"content-type": "application/json"}
        if key is not None:
            headers["authorization"] = f"Bearer {key}"
        conn.request(method, path, body=None if body is None else json.dumps(body),
                     headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(data)
    finally:
        conn.close()


def wait_for(relay: Relay, text: str, count: int = 1, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = relay.log()
        if log.count(text) >= count:
            return log
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not logged {count} time(s):\n{relay.log()}")


def ask(relay: Relay, model: str, key: str) -> Any:
    client = anthropic.Anthropic(base_url=relay.url, api_key=key, max_retries=0)
    return client.messages.create(model=model, max_tokens=20,
                                  messages=[{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("serve", [False, True], ids=["twistd", "txrelay-serve"])
def test_sighup_applies_a_new_alias_and_key_while_a_slow_stream_finishes_on_the_old(
    tmp: Path, serve: bool,
) -> None:
    relay = start_relay(tmp, config(), serve=serve)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=30)
        conn.request("POST", "/v1/messages", body=json.dumps(STREAM_BODY),
                     headers={"x-api-key": DEMO_KEY, "content-type": "application/json"})
        raw = conn.getresponse()
        assert raw.status == 200
        first = raw.read1(200)
        assert b"message_start" in first
        rid = raw.getheader("request-id")
        new_models = [{"id": "claude-sonnet-4-6", "provider": "demo", "aliases": ["fresh"]}]
        new_keys = [{"name": "tester", "sha256": hash_key(DEMO_KEY)},
                    {"name": "newcomer", "sha256": hash_key(NEW_KEY)}]
        (tmp / "relay.toml").write_text(config(models=new_models, keys=new_keys))
        relay.process.send_signal(signal.SIGHUP)
        wait_for(relay, "configuration generation 1 serves new requests")
        # New requests see the new file: the new alias with the new key, the old alias gone.
        answer = ask(relay, "fresh", NEW_KEY)
        assert answer.model == "fresh" and answer.content
        with pytest.raises(anthropic.NotFoundError):
            ask(relay, "sonnet", DEMO_KEY)
        # The stream that began before the reload is still live, on generation 0.
        status, _, listing = call(relay.port, "GET", "/admin/streams")
        assert status == 200
        live = [s for s in listing["streams"] if s["request_id"] == rid]
        assert live and live[0]["config_generation"] == 0
        assert live[0]["model_requested"] == "sonnet" and live[0]["key"] == "tester"
        assert live[0]["bytes_written"] >= len(first)
        rest = raw.read()  # http.client raises IncompleteRead without a chunked terminator
        assert rest.rstrip().endswith(b'data: {"type":"message_stop"}')
        # POST /admin/reload does the same as SIGHUP.
        status, _, body = call(relay.port, "POST", "/admin/reload")
        assert status == 200 and body == {"reloaded": True, "config_generation": 2,
                                          "ignored": [], "certificates_refused": []}
    finally:
        code = relay.stop()
    assert code == 0
    log = relay.log()
    assert "Traceback" not in log
    assert "without message_stop" not in log


def check_config_problems(path: Path) -> list[str]:
    done = subprocess.run([sys.executable, "-m", "txrelay", "check-config", str(path)],
                          check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    return [line.strip() for line in done.stderr.splitlines()[1:] if line.strip()]


def test_an_invalid_file_is_refused_every_problem_logged_and_the_old_one_kept(
    tmp: Path,
) -> None:
    relay = start_relay(tmp, config(), serve=False)
    try:
        path = tmp / "relay.toml"
        path.write_text(config(models=[{"id": "x", "provider": "nowhere"}],
                               server={"ping_interval": 500}))
        expected = check_config_problems(path)
        assert len(expected) >= 2
        relay.process.send_signal(signal.SIGHUP)
        log = wait_for(relay, "the running configuration is kept")
        refused = re.findall(r"reload refused: .*?relay\.toml: (.*)", log)
        assert refused == expected
        assert ask(relay, "sonnet", DEMO_KEY).model == "sonnet"  # the old one serves
        status, _, body = call(relay.port, "POST", "/admin/reload")
        assert status == 400 and body["error"]["type"] == "invalid_request_error"
        assert all(p in body["error"]["message"] for p in expected)
    finally:
        relay.stop()


def test_admin_drain_and_undo_on_the_real_relay(tmp: Path) -> None:
    relay = start_relay(tmp, config(), serve=True)
    try:
        assert call(relay.port, "POST", "/admin/drain", key=None)[0] == 401
        status, _, body = call(relay.port, "POST", "/admin/drain")
        assert status == 200 and body["draining"] is True
        assert call(relay.port, "GET", "/health/ready", key=None)[0] == 503
        status, headers, body = call(relay.port, "POST", "/v1/messages",
                                     {"model": "sonnet", "max_tokens": 5,
                                      "messages": [{"role": "user", "content": "hi"}]},
                                     key=DEMO_KEY)
        assert status == 529 and headers["retry-after"]
        assert body["error"]["type"] == "overloaded_error"
        status, _, body = call(relay.port, "DELETE", "/admin/drain")
        assert status == 200 and body["draining"] is False
        assert call(relay.port, "GET", "/health/ready", key=None)[0] == 200
        assert ask(relay, "sonnet", DEMO_KEY).model == "sonnet"
        assert relay.process.poll() is None
        # An operator's drain, then SIGTERM: the shutdown drain takes over and exits 0.
        assert call(relay.port, "POST", "/admin/drain")[0] == 200
    finally:
        code = relay.stop()
    assert code == 0
    log = relay.log()
    assert "draining on request of an operator" in log and "drain ended by an operator" in log
    assert "Traceback" not in log


def test_a_stream_the_client_cut_is_logged_with_its_id_age_and_last_event(tmp: Path) -> None:
    relay = start_relay(tmp, config(), serve=False)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=30)
        conn.request("POST", "/v1/messages", body=json.dumps(STREAM_BODY),
                     headers={"x-api-key": DEMO_KEY, "content-type": "application/json"})
        raw = conn.getresponse()
        rid = raw.getheader("request-id")
        seen = b""
        while b"content_block_delta" not in seen:
            seen += raw.read1(400)
        conn.close()  # the client goes away mid-stream
        log = wait_for(relay, f"stream {rid} ended without message_stop")
    finally:
        relay.stop()
    line = next(x for x in log.splitlines() if f"stream {rid} ended" in x)
    assert re.search(r"after \d+\.\ds \(the client went away\); last event: "
                     r"content_block_delta", line), line


def test_systemd_hears_ready_after_every_endpoint_and_reloading_on_sighup(
    tmp: Path,
) -> None:
    notify_path = tmp / "notify.sock"
    admin_path = tmp / "admin.sock"
    metrics_path = tmp / "metrics.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(30)
        cfg = config(server={"admin_listen": [f"unix:{admin_path}"],
                             "metrics_listen": [f"unix:{metrics_path}"]})
        relay = start_relay(tmp, cfg, env={"NOTIFY_SOCKET": str(notify_path)})
        try:
            assert notify.recv(4096) == b"READY=1\nSTATUS=serving"
            for path in (admin_path, metrics_path):
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.connect(str(path))  # listening by the time READY=1 was sent
            assert "serving /admin on" in relay.log()
            relay.process.send_signal(signal.SIGHUP)
            assert notify.recv(4096).startswith(b"RELOADING=1\nMONOTONIC_USEC=")
            assert notify.recv(4096) == b"READY=1\nSTATUS=serving"
            relay.process.send_signal(signal.SIGTERM)
            assert notify.recv(4096) == b"STOPPING=1\nSTATUS=draining"
        finally:
            relay.stop()
