"""The commands: twistd with good and bad configs, check-config, hash-key, custom stages."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import anthropic
import pytest

from tests.relayproc import DEMO_KEY, config_text, start_relay, twistd_command
from txrelay.config import hash_key

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

BAD_CONFIG = """
[server]
listen = "tcp:8080"
max_request_bytes = "big"

[[providers]]
name = "up"
kind = "openai-chat"
base_url = "not a url"
"""

SEMANTIC_BAD = """
[server]
listen = ["tcp:0:interface=127.0.0.1"]

[[keys]]
name = "k"
sha256 = "short"

[[providers]]
name = "demo"
kind = "demo"

[[providers]]
name = "up"
kind = "openai-chat"
base_url = "ftp://example"
api_key = { env = "TXRELAY_TEST_UNSET_VARIABLE" }

[[models]]
id = "m"
provider = "nowhere"

[[pipeline]]
type = "no-such-stage"

[[pipeline]]
type = "model-map"
options = { defualt = "m" }

[[pipeline]]
type = "translate"
"""


def run(args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False, **kw)  # type: ignore[call-overload, no-any-return]


def test_check_config_accepts_the_example() -> None:
    result = run([sys.executable, "-m", "txrelay", "check-config",
                  str(REPO / "config.example.toml")])
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_check_config_lists_type_errors_with_paths(tmp: Path) -> None:
    path = tmp / "bad.toml"
    path.write_text(BAD_CONFIG)
    result = run([sys.executable, "-m", "txrelay", "check-config", str(path)])
    assert result.returncode == 1
    err = result.stderr
    assert "server.listen: expected an array, got a string" in err
    assert "server.max_request_bytes: expected an integer, got a string" in err
    assert "models: field required" in err
    assert "Traceback" not in err


def test_check_config_lists_every_semantic_problem(tmp: Path) -> None:
    path = tmp / "bad.toml"
    path.write_text(SEMANTIC_BAD)
    result = run([sys.executable, "-m", "txrelay", "check-config", str(path)],
                 env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 1
    err = result.stderr
    for expected in (
        "providers[1].base_url: not a URL",
        "providers[1].api_key.env: environment variable TXRELAY_TEST_UNSET_VARIABLE is not set",
        "models[0].provider: no provider named 'nowhere'",
        "keys[0].sha256: not a SHA-256 hex digest",
        "pipeline[0].type: unknown stage type 'no-such-stage'",
        "pipeline[1].options: unknown key(s): defualt",
    ):
        assert expected in err, err
    assert "Traceback" not in err


def test_twistd_refuses_a_bad_config_without_traceback(tmp: Path) -> None:
    path = tmp / "bad.toml"
    path.write_text(SEMANTIC_BAD)
    result = run(twistd_command(path), cwd=tmp)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "pipeline[0].type: unknown stage type 'no-such-stage'" in output
    assert "Traceback" not in output


def test_twistd_reports_a_missing_file(tmp: Path) -> None:
    result = run(twistd_command(tmp / "missing.toml"), cwd=tmp)
    assert result.returncode != 0
    assert "cannot read the file" in result.stdout + result.stderr


def test_hash_key_matches_the_config_format() -> None:
    result = run([sys.executable, "-m", "txrelay", "hash-key"], input="secret\n")
    assert result.returncode == 0
    assert result.stdout.strip() == hash_key("secret")


def test_keys_from_env_and_file(tmp: Path) -> None:
    (tmp / "key.txt").write_text("from-a-file\n")
    cfg = config_text(keys=[{"name": "envkey", "env": "TXRELAY_TEST_KEY"},
                            {"name": "filekey", "file": str(tmp / "key.txt")}])
    relay = start_relay(tmp, cfg, env={"TXRELAY_TEST_KEY": "from-the-env"})
    try:
        for key in ("from-the-env", "from-a-file"):
            c = anthropic.Anthropic(base_url=relay.url, api_key=key, max_retries=0)
            assert c.messages.create(model="sonnet", max_tokens=5,
                                     messages=[{"role": "user", "content": "x"}]).content
        with pytest.raises(anthropic.AuthenticationError):
            anthropic.Anthropic(base_url=relay.url, api_key=DEMO_KEY, max_retries=0) \
                .messages.create(model="sonnet", max_tokens=5,
                                 messages=[{"role": "user", "content": "x"}])
        assert "from-the-env" not in relay.log() and "from-a-file" not in relay.log()
    finally:
        relay.stop()


def test_sigterm_exits_cleanly(tmp: Path) -> None:
    relay = start_relay(tmp, config_text())
    with urllib.request.urlopen(relay.url + "/health/ready", timeout=10) as resp:
        assert json.load(resp)["status"] == "ok"
    code = relay.stop()
    assert code == 0  # the drain clears the SIGTERM twistd would re-raise (143)
    assert "Traceback" not in relay.log()


SHOUT_PLUGIN = '''
"""An operator's own stage: upper-cases every text delta and tags the reply."""
import attrs
from twisted.plugin import IPlugin
from zope.interface import implementer
from txrelay.interfaces import IStageFactory


@attrs.frozen
class ShoutOptions:
    suffix: str = "!"


class Shout:
    def __init__(self, suffix):
        self.suffix = suffix

    def feed(self, event):
        if event["type"] == "content_block_delta" and event["delta"]["type"] == "text_delta":
            delta = dict(event["delta"], text=event["delta"]["text"].upper())
            return [dict(event, delta=delta)]
        if event["type"] == "content_block_stop" and event["index"] == 0:
            return [{"type": "content_block_delta", "index": 0,
                     "delta": {"type": "text_delta", "text": self.suffix}}, event]
        return [event]

    def finish(self):
        return []


class ShoutStage:
    def __init__(self, suffix):
        self.suffix = suffix

    async def __call__(self, exchange, proceed):
        reply = await proceed(exchange)
        reply.headers.append(("x-shout", "yes"))
        if reply.stream is not None:
            reply.stream = reply.stream.through(Shout(self.suffix))
        return reply


@implementer(IPlugin, IStageFactory)
@attrs.frozen
class ShoutFactory:
    type_name: str = "shout"
    options_type: type = ShoutOptions

    def build(self, options, services):
        return ShoutStage(options.suffix)


shout = ShoutFactory()
'''


def test_custom_stage_plugin_from_config_alone(tmp: Path) -> None:
    site = tmp / "site" / "txrelay" / "plugins"
    site.mkdir(parents=True)
    (site / "shout_stage.py").write_text(textwrap.dedent(SHOUT_PLUGIN))
    cfg = config_text(pipeline=[{"type": "auth"}, {"type": "shout", "options": {"suffix": "!!"}},
                                {"type": "model-map"}, {"type": "translate"}])
    relay = start_relay(tmp, cfg, env={"PYTHONPATH": str(tmp / "site")})
    try:
        c = anthropic.Anthropic(base_url=relay.url, api_key=DEMO_KEY, max_retries=0)
        raw = c.messages.with_raw_response.create(
            model="sonnet", max_tokens=100, messages=[{"role": "user", "content": "quiet"}])
        assert raw.headers["x-shout"] == "yes"
        text = raw.parse().content[0].text  # type: ignore[union-attr]
        assert text == text.upper() and text.endswith("!!")
        with c.messages.stream(model="sonnet", max_tokens=100,
                               messages=[{"role": "user", "content": "quiet"}]) as s:
            assert s.get_final_message().content[0].text == text  # type: ignore[union-attr]
    finally:
        relay.stop()


def test_sigterm_drains_live_streams(tmp: Path) -> None:
    """A stream in flight at SIGTERM still ends with message_stop; new requests are refused."""
    import http.client
    import signal
    import time

    cfg = config_text(
        server={"drain_timeout": 20},
        providers=[{"name": "demo", "kind": "demo", "options": {"event_delay": 0.1}}],
    )
    relay = start_relay(tmp, cfg)
    conn = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=30)
    conn.request("POST", "/v1/messages", body=json.dumps({
        "model": "sonnet", "max_tokens": 500, "stream": True,
        "messages": [{"role": "user", "content": "a slow answer please"}]}),
        headers={"x-api-key": DEMO_KEY, "content-type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    first = resp.read1(100)
    assert b"message_start" in first
    relay.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(OSError):
        urllib.request.urlopen(relay.url + "/health", timeout=5)
    rest = resp.read()
    assert b"event: message_stop" in first + rest
    assert relay.process.wait(30) == 0
    assert "draining: 1 live request(s)" in relay.log()


def test_listens_on_several_endpoints_including_a_unix_socket(tmp: Path) -> None:
    import http.client
    import socket

    sock_path = tmp / "relay.sock"
    cfg = config_text(server={"listen": ["tcp:0:interface=127.0.0.1",
                                         f"unix:{sock_path}:mode=600"]})
    relay = start_relay(tmp, cfg)
    try:
        class UnixConnection(http.client.HTTPConnection):
            def connect(self) -> None:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(str(sock_path))

        conn = UnixConnection("localhost", timeout=10)
        conn.request("POST", "/v1/messages", body=json.dumps({
            "model": "sonnet", "max_tokens": 20,
            "messages": [{"role": "user", "content": "over a unix socket"}]}),
            headers={"x-api-key": DEMO_KEY, "content-type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200
        assert "over a unix socket" in json.load(resp)["content"][0]["text"]
        assert oct(sock_path.stat().st_mode & 0o777) == "0o600"
    finally:
        relay.stop()
    assert not sock_path.exists()  # a clean stop removes the socket file


def test_txrelay_serve_runs_the_same_relay_with_json_logs(tmp: Path) -> None:
    cfg = config_text(server={"metrics": False}) + '\n[log]\nlevel = "info"\nformat = "json"\n'
    relay = start_relay(tmp, cfg, serve=True)
    try:
        c = anthropic.Anthropic(base_url=relay.url, api_key=DEMO_KEY, max_retries=0)
        assert c.messages.create(model="sonnet", max_tokens=5,
                                 messages=[{"role": "user", "content": "x"}]).content
        with pytest.raises(urllib.error.HTTPError) as info:  # metrics turned off
            urllib.request.urlopen(relay.url + "/metrics", timeout=10)
        assert info.value.code == 404
    finally:
        code = relay.stop()
    assert code == 0
    lines = [json.loads(line) for line in relay.log().splitlines() if line.startswith("{")]
    access = [e for e in lines if e.get("request_id", "").startswith("req_")]
    assert access and access[0]["status"] == 200 and access[0]["client"] == "tester"
