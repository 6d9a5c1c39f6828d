"""
Zero-downtime swaps (issue 11.2), both ways, under sustained streaming load: no request
fails (with the SDKs' default retries of a 529 or of a connection closed before any byte of
the answer), no stream is torn and no connection is refused.

- Without systemd, ``server.reuse_port``: a second relay binds the port the first one
  serves; SIGTERM drains the first (it stops listening, its live streams finish) while the
  second takes the new connections.
- systemd socket activation (the ``systemd:`` endpoint): the listening socket is inherited
  and outlives the process, so in a stop-then-start swap the kernel queues new connections
  until the next relay accepts them.
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.relayproc import DEMO_KEY, config_text, start_relay

pytestmark = pytest.mark.integration

SLOW_DEMO = [{"name": "demo", "kind": "demo", "options": {"event_delay": 0.05}},
             {"name": "slower", "kind": "demo", "options": {"event_delay": 0.25}}]
MODELS = [{"id": "sonnet", "provider": "demo"}, {"id": "slow-sonnet", "provider": "slower"}]
BODY = json.dumps({"model": "sonnet", "max_tokens": 200, "stream": True,
                   "messages": [{"role": "user", "content": "a short streamed answer"}]})
SLOW_BODY = json.dumps({"model": "slow-sonnet", "max_tokens": 200, "stream": True,
                        "messages": [{"role": "user", "content": "a short streamed answer"}]})
CLIENTS = 6
ACCESS = "POST /v1/messages 200"
#: Each client loop stops after this many requests at the latest (bounded load).
MAX_ROUNDS = 400


def migrate_requests() -> bool:
    """Whether ``net.ipv4.tcp_migrate_req`` is on here (README, "Zero-downtime swaps")."""
    try:
        return Path("/proc/sys/net/ipv4/tcp_migrate_req").read_text().strip() == "1"
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Load:
    """Client loops, each streaming one request per fresh connection until stopped."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.done = 0
        self.refused: list[str] = []
        self.failed: list[str] = []
        self.torn: list[str] = []
        self.retried: list[str] = []
        self.threads = [threading.Thread(target=self.loop, daemon=True)
                        for _ in range(CLIENTS)]

    def one(self) -> None:
        # Like the SDKs' default retries (two, with a short backoff): a 529 from a draining
        # relay, or a connection closed before any byte of the answer, is tried again
        # (counted in ``retried``); it fails only when the last try does too.
        for attempt in (1, 2, 3):
            outcome = self.attempt()
            if outcome is None:
                return
            if attempt < 3:
                with self.lock:
                    self.retried.append(outcome)
                time.sleep(0.25 * attempt)
                continue
            with self.lock:
                self.failed.append(outcome)

    def attempt(self) -> str | None:
        """One request: ``None`` once it is settled, else why it may be retried."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            conn.request("POST", "/v1/messages", body=BODY,
                         headers={"x-api-key": DEMO_KEY, "content-type": "application/json"})
            resp = conn.getresponse()
            if resp.status == 529:
                return f"status 529: {resp.read()[:200]!r}"
            if resp.status != 200:
                with self.lock:
                    self.failed.append(f"status {resp.status}: {resp.read()[:200]!r}")
                return None
            try:
                # http.client raises IncompleteRead without the chunked terminator.
                body = resp.read()
            except (http.client.HTTPException, OSError) as e:
                with self.lock:
                    self.torn.append(repr(e))
                return None
            with self.lock:
                if b"event: message_stop" not in body:
                    self.torn.append(body[-200:].decode("utf-8", "replace"))
                else:
                    self.done += 1
            return None
        except ConnectionRefusedError as e:
            with self.lock:
                self.refused.append(repr(e))
            return None
        except (http.client.RemoteDisconnected, ConnectionResetError) as e:
            return repr(e)  # closed before any byte of the answer
        except (http.client.HTTPException, OSError) as e:
            with self.lock:
                self.failed.append(repr(e))
            return None
        finally:
            conn.close()

    def loop(self) -> None:
        for _ in range(MAX_ROUNDS):
            if self.stop.is_set():
                return
            self.one()

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def count(self) -> int:
        with self.lock:
            return self.done

    def report(self, record_property: Any, name: str) -> str:
        """
        The outcome in one line, recorded as test properties (``--junitxml``) and printed
        (``pytest -rP``): retries are what a client with the SDKs' default retries did, so
        they are not hidden behind the zero counts.
        """
        with self.lock:
            counts = {
                "streams": self.done, "failed": len(self.failed), "torn": len(self.torn),
                "refused": len(self.refused),
                "retried_529": sum(r.startswith("status 529") for r in self.retried),
                "retried_closed_before_answer": sum(not r.startswith("status 529")
                                                    for r in self.retried),
            }
        for key, value in counts.items():
            record_property(f"{name}_{key}", value)
        line = f"{name}: " + ", ".join(f"{k} {v}" for k, v in counts.items())
        print(line)
        return line


def slow_stream(port: int) -> bytes:
    """A stream of the slow model (about 3 s), read to its end."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/v1/messages", body=SLOW_BODY,
                     headers={"x-api-key": DEMO_KEY, "content-type": "application/json"})
        return conn.getresponse().read()
    finally:
        conn.close()


def wait_for_more(load: Load, more: int, timeout: float = 20) -> None:
    goal, deadline = load.count() + more, time.monotonic() + timeout
    while load.count() < goal and time.monotonic() < deadline:
        time.sleep(0.05)
    assert load.count() >= goal, (load.count(), goal)


def test_a_second_relay_takes_over_the_port_with_nothing_failed_torn_or_refused(
    tmp: Path, record_property: Any,
) -> None:
    port = free_port()
    cfg = config_text(server={"listen": [f"tcp:{port}:interface=127.0.0.1"],
                              "reuse_port": True, "drain_timeout": 20},
                      providers=SLOW_DEMO, models=MODELS)
    (tmp / "a").mkdir()
    (tmp / "b").mkdir()
    old = start_relay(tmp / "a", cfg)
    new = None
    pinned: list[bytes] = []
    try:
        with Load(port) as load:
            wait_for_more(load, 2 * CLIENTS)
            # One slow stream opened while only the old relay listens: it is live when the
            # signal comes, whatever the kernel does with the load's connections.
            holder = threading.Thread(target=lambda: pinned.append(slow_stream(port)),
                                      daemon=True)
            holder.start()
            new = start_relay(tmp / "b", cfg)  # binds while the old one serves
            wait_for_more(load, CLIENTS)
            # The kernel spreads new connections over both: wait until the new one has
            # served one (bounded), rather than hoping a few requests reached it.
            served_new = time.monotonic() + 20
            while new.log().count(ACCESS) == 0 and time.monotonic() < served_new:
                time.sleep(0.05)
            old.process.send_signal(signal.SIGTERM)
            code = old.process.wait(30)
            holder.join(30)
            served_by_old = old.log().count(ACCESS)
            before = new.log().count(ACCESS)
            wait_for_more(load, 2 * CLIENTS)  # the new one alone serves on
        after = new.log().count(ACCESS)
        summary = load.report(record_property, "reuse_port_swap")
        assert (load.refused, load.failed, load.torn) == ([], [], []), (summary, load.retried)
        if migrate_requests():
            # The kernel moves the old socket's queue to the new one: nothing is reset.
            assert not [r for r in load.retried if not r.startswith("status 529")], summary
        assert code == 0  # a completed drain is a clean exit, under twistd too
        # The old relay had live streams when the signal came, and they all finished.
        live = re.search(r"draining: (\d+) live request", old.log())
        assert live is not None and int(live.group(1)) > 0, old.log()
        assert "drain ceiling" not in old.log()
        assert pinned and b"event: message_stop" in pinned[0]  # it outlived the signal
        assert served_by_old > 0 and after > before > 0, (served_by_old, before, after)
        assert "Traceback" not in old.log() + new.log()
    finally:
        old.stop()
        if new is not None:
            new.stop()


def test_without_reuse_port_the_second_relay_cannot_bind(tmp: Path) -> None:
    port = free_port()
    cfg = config_text(server={"listen": [f"tcp:{port}:interface=127.0.0.1"]})
    (tmp / "a").mkdir()
    (tmp / "b").mkdir()
    old = start_relay(tmp / "a", cfg)
    try:
        with pytest.raises(RuntimeError, match="cannot listen on"):
            start_relay(tmp / "b", cfg)
    finally:
        old.stop()


ACTIVATE = ("import os, sys; fd = int(sys.argv[1]); fd == 3 or (os.dup2(fd, 3), os.close(fd)); "
            "os.environ['LISTEN_PID'] = str(os.getpid()); os.execv(sys.argv[2], sys.argv[2:])")


def socket_activated(sock: socket.socket) -> dict[str, object]:
    """start_relay arguments passing ``sock`` as systemd does: fd 3, named ``http``."""
    fd = sock.fileno()
    # LISTEN_PID must be the relay's own pid: set it in a process that then execs the relay.
    return {"prefix": [sys.executable, "-c", ACTIVATE, str(fd)], "pass_fds": [fd],
            "env": {"LISTEN_FDS": "1", "LISTEN_FDNAMES": "http"}}


def test_socket_activation_stop_then_start_refuses_nothing(
        tmp: Path, record_property: Any) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    port = sock.getsockname()[1]
    cfg = config_text(server={"listen": ["systemd:domain=INET:name=http"],
                              "drain_timeout": 20}, providers=SLOW_DEMO, models=MODELS)
    (tmp / "a").mkdir()
    (tmp / "b").mkdir()
    old = start_relay(tmp / "a", cfg, **socket_activated(sock))  # type: ignore[arg-type]
    new = None
    try:
        assert old.port == port
        with Load(port) as load:
            wait_for_more(load, 2 * CLIENTS)
            old.process.send_signal(signal.SIGTERM)
            code = old.process.wait(30)  # the gap: connections queue on the socket
            new = start_relay(tmp / "b", cfg, **socket_activated(sock))  # type: ignore[arg-type]
            wait_for_more(load, 2 * CLIENTS)
        summary = load.report(record_property, "socket_activation_swap")
        assert (load.refused, load.failed, load.torn) == ([], [], []), (summary, load.retried)
        assert code == 0
        live = re.search(r"draining: (\d+) live request", old.log())
        assert live is not None and int(live.group(1)) > 0, old.log()
        assert old.log().count(ACCESS) > 0 and new.log().count(ACCESS) > 0
        assert "Traceback" not in old.log() + new.log()
    finally:
        old.stop()
        if new is not None:
            new.stop()
        sock.close()
