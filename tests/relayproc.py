"""Start the real relay (``twistd -n relay``) on loopback for integration tests."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from txrelay.config import hash_key

DEMO_KEY = "txrelay-test-key"
SECOND_KEY = "txrelay-second-key"
_LISTENING = re.compile(r'txrelay listening on [\d.]+:(\d+)|"address": "[\d.]+:(\d+)"')


def toml_value(value: Any) -> str:
    """A Python value as TOML (enough for the configs tests write)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f'"{k}" = {toml_value(v)}' for k, v in value.items()) + " }"
    raise TypeError(value)


def config_text(
    *,
    providers: list[dict[str, Any]] | None = None,
    models: list[dict[str, Any]] | None = None,
    pipeline: list[dict[str, Any]] | None = None,
    server: Mapping[str, Any] | None = None,
    keys: list[dict[str, Any]] | None = None,
) -> str:
    """A relay config listening on a free loopback port, demo backend by default."""
    server = {"listen": ["tcp:0:interface=127.0.0.1"], "access_log": True, **(server or {})}
    providers = providers or [{"name": "demo", "kind": "demo"}]
    models = models or [{
        "id": "claude-sonnet-4-6", "provider": "demo", "aliases": ["sonnet"],
        "patterns": ["claude-*"], "display_name": "Demo Sonnet", "max_tokens": 64000,
        "max_input_tokens": 200000,
    }, {"id": "demo-small", "provider": "demo", "max_tokens": 8192},
        {"id": "demo-third", "provider": "demo"}]
    pipeline = pipeline or [{"type": "auth"}, {"type": "model-map"}, {"type": "translate"}]
    keys = keys if keys is not None else [
        {"name": "tester", "sha256": hash_key(DEMO_KEY)},
        {"name": "second", "sha256": hash_key(SECOND_KEY)},
    ]
    lines = ["[server]"] + [f"{k} = {toml_value(v)}" for k, v in server.items()]
    for table, items in (("keys", keys), ("providers", providers), ("models", models),
                         ("pipeline", pipeline)):
        for item in items:
            lines.append(f"\n[[{table}]]")
            lines += [f"{k} = {toml_value(v)}" for k, v in item.items()]
    return "\n".join(lines) + "\n"


def twistd_command(config: Path) -> list[str]:
    """The twistd command line, run with this interpreter."""
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", "relay", "--config", str(config)]


@attrs.define
class Relay:
    """A running relay process."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text("utf-8", "replace")

    def wait_for_log(self, text: str, timeout: float = 15) -> str:
        """The log once it holds ``text``: lines written after an answer left come later."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log()
            if text in log or time.monotonic() > deadline:
                return log
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]


def serve_command(config: Path) -> list[str]:
    """The ``txrelay serve`` command line, run with this interpreter."""
    return [sys.executable, "-m", "txrelay", "serve", "--config", str(config)]


def start_relay(tmp: Path, config: str, *, env: Mapping[str, str] | None = None,
                timeout: float = 30, serve: bool = False, prefix: Sequence[str] = (),
                pass_fds: Sequence[int] = ()) -> Relay:
    """
    Write ``config`` under ``tmp``, start twistd on it and wait until it listens;
    ``prefix`` goes before the command line, ``pass_fds`` are inherited.
    """
    path = tmp / "relay.toml"
    path.write_text(config)
    log_path = tmp / "relay.log"
    out = log_path.open("wb")
    full_env = {**os.environ, **(env or {})}
    command = [*prefix, *(serve_command(path) if serve else twistd_command(path))]
    proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                            cwd=tmp, env=full_env, pass_fds=tuple(pass_fds))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log_path.read_text("utf-8", "replace")
        m = _LISTENING.search(text)
        if m:
            return Relay(proc, int(m.group(1) or m.group(2)), log_path)
        if proc.poll() is not None:
            raise RuntimeError(f"relay exited with {proc.returncode}:\n{text}")
        select.select([], [], [], 0.05)
    proc.kill()
    raise RuntimeError(f"relay did not start in {timeout}s:\n{log_path.read_text()}")
