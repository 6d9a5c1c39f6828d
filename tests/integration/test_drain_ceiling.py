"""
The drain ceiling and start-up failures against the real relay (7.6, 7.16): streams that
outlive SIGTERM end with an ``overloaded_error`` event and complete HTTP framing, and the
process exits right after the ceiling; a busy port stops start-up with a plain message.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import anthropic
import pytest

from tests.relayproc import DEMO_KEY, config_text, serve_command, start_relay, twistd_command

pytestmark = pytest.mark.integration

CEILING = 1.0
SLOW_DEMO = [{"name": "demo", "kind": "demo", "options": {"event_delay": 0.8}}]
STREAM_BODY = {"model": "sonnet", "max_tokens": 500, "stream": True,
               "messages": [{"role": "user", "content": "a slow answer that outlives "
                                                        "the drain ceiling, please"}]}


def open_raw_stream(port: int) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/v1/messages", body=json.dumps(STREAM_BODY),
                 headers={"x-api-key": DEMO_KEY, "content-type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    assert b"message_start" in resp.read1(200)
    return conn, resp


@pytest.mark.parametrize("serve", [False, True], ids=["twistd", "txrelay-serve"])
def test_streams_past_the_ceiling_get_overloaded_error_and_the_process_exits(
    tmp: Path, serve: bool,
) -> None:
    cfg = config_text(server={"drain_timeout": CEILING, "ping_interval": 0.5},
                      providers=SLOW_DEMO)
    relay = start_relay(tmp, cfg, serve=serve)
    try:
        client = anthropic.Anthropic(base_url=relay.url, api_key=DEMO_KEY, max_retries=0)
        with client.messages.stream(**{k: v for k, v in STREAM_BODY.items()
                                       if k != "stream"}) as sdk_stream:
            events = iter(sdk_stream)
            assert next(events).type == "message_start"
            _, raw = open_raw_stream(relay.port)
            signalled = time.monotonic()
            relay.process.send_signal(signal.SIGTERM)
            with pytest.raises(anthropic.APIStatusError) as info:
                for _ in events:
                    pass
        assert isinstance(info.value.body, dict)
        assert info.value.body["error"]["type"] == "overloaded_error"
        rest = raw.read()  # http.client raises IncompleteRead without the chunked terminator
        assert rest.rstrip().endswith(b'"type":"overloaded_error","message":'
                                      + json.dumps(info.value.body["error"]["message"])
                                      .encode() + b"}}")
        assert b"event: ping" in rest  # pings went on while draining
        assert raw.will_close or raw.getheader("connection") is None
        code = relay.process.wait(15)
        elapsed = time.monotonic() - signalled
    finally:
        relay.stop()
    # The old drain waited 5 s on sockets after the ceiling; now only for the flush.
    assert elapsed < CEILING + 3, elapsed
    # Both twistd and serve exit 0 once the drain (ceiling included) has run its course.
    assert code == 0
    log = relay.log()
    assert "drain ceiling of 1.0s reached: answered 2 live request(s)" in log
    assert "Traceback" not in log


@pytest.mark.parametrize("command", [twistd_command, serve_command], ids=["twistd", "serve"])
def test_a_busy_port_stops_start_up_with_a_clear_message(tmp: Path, command: object) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = tmp / "relay.toml"
        path.write_text(config_text(server={"listen": [f"tcp:{port}:interface=127.0.0.1"]}))
        result = subprocess.run(command(path), capture_output=True, text=True,  # type: ignore[operator]
                                timeout=60, cwd=tmp, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"cannot listen on 'tcp:{port}:interface=127.0.0.1'" in output
    assert "Address already in use" in output
    assert "Traceback" not in output
