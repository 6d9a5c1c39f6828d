"""
``server.workers = 2`` (issue 11.3): two relay processes share the port; the main process
restarts a dead one, forwards SIGHUP (each reloads) and on SIGTERM drains both, letting a
live stream finish, then exits. A scrape of any worker shows the totals of all of them, and
systemd hears READY=1 only once every worker listens.

Which worker serves a connection is read from /proc: the worker process holding the
server side of that TCP connection.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_reuse_port_swap import free_port, socket_activated
from tests.relayproc import DEMO_KEY, config_text, serve_command, start_relay, twistd_command
from txrelay.config import hash_key

pytestmark = pytest.mark.integration

SLOW_DEMO = [{"name": "demo", "kind": "demo", "options": {"event_delay": 0.1}}]
BODY = json.dumps({"model": "sonnet", "max_tokens": 200, "stream": True,
                   "messages": [{"role": "user", "content": "a short streamed answer"}]})


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()]


def wait_until(check: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def stream(port: int) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("POST", "/v1/messages", body=BODY,
                     headers={"x-api-key": DEMO_KEY, "content-type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200
        return resp.read()
    finally:
        conn.close()


@pytest.mark.parametrize("serve", [False, True], ids=["twistd", "txrelay-serve"])
def test_two_workers_are_supervised_restarted_reloaded_and_drained(
    tmp: Path, serve: bool,
) -> None:
    port = free_port()
    cfg = config_text(server={"listen": [f"tcp:{port}:interface=127.0.0.1"],
                              "reuse_port": True, "workers": 2, "drain_timeout": 20},
                      providers=SLOW_DEMO)
    relay = start_relay(tmp, cfg, serve=serve)
    try:
        wait_until(lambda: relay.log().count("txrelay listening on") == 2)
        first = children(relay.process.pid)
        assert len(first) == 2
        assert b"event: message_stop" in stream(port)

        os.kill(first[0], signal.SIGKILL)
        wait_until(lambda: relay.log().count("txrelay listening on") == 3)
        second = children(relay.process.pid)
        assert len(second) == 2 and first[0] not in second and first[1] in second
        assert f"(pid {first[0]}) ended" in relay.log()

        relay.process.send_signal(signal.SIGHUP)
        wait_until(lambda: relay.log().count("reloaded ") == 2)

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        conn.request("POST", "/v1/messages", body=BODY,
                     headers={"x-api-key": DEMO_KEY, "content-type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200
        relay.process.send_signal(signal.SIGTERM)
        body = resp.read()  # the live stream finishes through the drain
        assert b"event: message_stop" in body
        assert relay.process.wait(30) == 0  # a drained stop is clean under twistd too
        for pid in second:
            assert not Path(f"/proc/{pid}").exists() or \
                "zombie" in Path(f"/proc/{pid}/status").read_text()
        assert "Traceback" not in relay.log()
    finally:
        relay.stop()


ADMIN_KEY = "txrelay-workers-admin-key"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
SMALL = json.dumps({"model": "sonnet", "max_tokens": 50,
                    "messages": [{"role": "user", "content": "hello"}]})


def _sockets(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _tcp_table() -> list[tuple[int, int, str, int]]:
    """(local port, remote port, state, inode) of every IPv4 TCP socket."""
    rows = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        rows.append((int(f[1].split(":")[1], 16), int(f[2].split(":")[1], 16), f[3],
                     int(f[9])))
    return rows


def serving_worker(conn: http.client.HTTPConnection, port: int, workers: list[int]) -> int:
    """The pid of the worker holding the server side of ``conn``."""
    assert conn.sock is not None
    client_port = conn.sock.getsockname()[1]
    inodes = {inode for local, remote, _, inode in _tcp_table()
              if local == port and remote == client_port}
    owners = [pid for pid in workers if _sockets(pid) & inodes]
    assert len(owners) == 1, (owners, inodes)
    return owners[0]


def listening_workers(port: int, workers: list[int]) -> list[int]:
    """The workers holding a socket listening on ``port`` (state 0A: LISTEN)."""
    inodes = {inode for local, _, state, inode in _tcp_table()
              if local == port and state == "0A"}
    return [pid for pid in workers if _sockets(pid) & inodes]


def scrape(conn: http.client.HTTPConnection) -> dict[str, list[tuple[dict[str, str], float]]]:
    """``GET /metrics`` on ``conn``: samples by name."""
    conn.request("GET", "/metrics", headers=ADMIN)
    resp = conn.getresponse()
    text = resp.read().decode()
    assert resp.status == 200, text
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def total(samples: dict[str, list[tuple[dict[str, str], float]]], name: str,
          **labels: str) -> float:
    return sum(v for got, v in samples.get(name, [])
               if all(got.get(k) == want for k, want in labels.items()))


def post(conn: http.client.HTTPConnection, body: str = SMALL) -> http.client.HTTPResponse:
    conn.request("POST", "/v1/messages", body=body,
                 headers={"x-api-key": DEMO_KEY, "content-type": "application/json"})
    return conn.getresponse()


class Notifications:
    """A stand-in for systemd's notify socket: the datagrams the relay sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.received: list[dict[str, str]] = []

    def wait_for(self, key: str, value: str | None = None, timeout: float = 30
                 ) -> dict[str, str]:
        """The next message holding ``key`` (``=value``); earlier ones are kept."""
        deadline = time.monotonic() + timeout
        while True:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                raise AssertionError(f"no {key} notification; got {self.received}") from None
            fields = dict(line.split("=", 1) for line in data.decode().splitlines()
                          if "=" in line)
            self.received.append(fields)
            if key in fields and (value is None or fields[key] == value):
                return fields


def small(conn: http.client.HTTPConnection) -> int:
    """One small request on ``conn``; its output tokens."""
    resp = post(conn)
    body = json.loads(resp.read())
    assert resp.status == 200, body
    return int(body["usage"]["output_tokens"])


def open_on_every_worker(port: int, workers: list[int], tokens: list[int], limit: int = 200,
                         ) -> dict[int, list[http.client.HTTPConnection]]:
    """
    Fresh keep-alive connections, one small request each (its output tokens appended to
    ``tokens``), until every worker served at least two; by worker pid. The kernel spreads
    connections over the workers by a hash of their addresses.
    """
    by_worker: dict[int, list[http.client.HTTPConnection]] = {pid: [] for pid in workers}
    for _ in range(limit):
        if all(len(c) >= 2 for c in by_worker.values()):
            return by_worker
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        tokens.append(small(conn))
        by_worker[serving_worker(conn, port, workers)].append(conn)
    raise AssertionError(f"{limit} connections did not reach every worker: "
                         f"{ {pid: len(c) for pid, c in by_worker.items()} }")


def generation(conn: http.client.HTTPConnection) -> int:
    conn.request("GET", "/admin/status", headers=ADMIN)
    resp = conn.getresponse()
    data = json.loads(resp.read())
    assert resp.status == 200, data
    return int(data["config_generation"])


def test_workers_share_metrics_and_readiness(tmp: Path) -> None:
    """
    Two ``txrelay serve`` workers under a supervisor: READY=1 only once both listen; a
    scrape of either worker and of the metrics listener shows every worker's requests,
    tokens and histograms; a killed worker's live stream leaves the gauge, its counts stay,
    and systemd's STATUS names the restart; after SIGHUP, READY=1 comes once both
    reloaded; SIGTERM drains both and the supervisor's private directory is removed.
    """
    port, metrics_port = free_port(), free_port()
    notify = Notifications(tmp / "notify")
    cfg = config_text(server={
        "listen": [f"tcp:{port}:interface=127.0.0.1"],
        "metrics_listen": [f"tcp:{metrics_port}:interface=127.0.0.1"],
        "admin_keys": [{"name": "ops", "sha256": hash_key(ADMIN_KEY)}],
        "reuse_port": True, "workers": 2, "drain_timeout": 20}, providers=SLOW_DEMO)
    relay = start_relay(tmp, cfg, serve=True, env={"NOTIFY_SOCKET": str(notify.path)})
    conns: list[http.client.HTTPConnection] = []
    try:
        ready = notify.wait_for("READY", "1")
        workers = children(relay.process.pid)
        assert len(workers) == 2
        # When the supervisor says READY=1, every worker holds a listening socket.
        assert sorted(listening_workers(port, workers)) == sorted(workers)
        assert sorted(listening_workers(metrics_port, workers)) == sorted(workers)
        assert ready["STATUS"] == "2/2 worker(s) serving"
        environ = Path(f"/proc/{workers[0]}/environ").read_bytes().split(b"\0")
        private = Path(next(e for e in environ if e.startswith(b"PROMETHEUS_MULTIPROC_DIR="))
                       .split(b"=", 1)[1].decode()).parent
        assert private.is_dir()

        tokens: list[int] = []
        by_worker = open_on_every_worker(port, workers, tokens)
        conns += [c for cs in by_worker.values() for c in cs]
        for conn in conns:  # two more requests on each connection, on both workers
            tokens += [small(conn), small(conn)]
        a, b = workers
        pinned = {pid: cs[0] for pid, cs in by_worker.items()}
        metrics_conn = http.client.HTTPConnection("127.0.0.1", metrics_port, timeout=20)
        conns.append(metrics_conn)
        # A request is counted just after its answer was written: wait for the last one.
        wait_until(lambda: total(scrape(metrics_conn), "txrelay_requests_total",
                                 client="tester", status="200") == len(tokens))
        for where in (pinned[a], pinned[b], metrics_conn):
            samples = scrape(where)
            assert total(samples, "txrelay_requests_total", client="tester",
                         status="200") == len(tokens)
            assert total(samples, "txrelay_request_duration_seconds_count",
                         stream="false") == len(tokens)
            assert total(samples, "txrelay_tokens_total", client="tester",
                         kind="output") == sum(tokens)
            assert total(samples, "txrelay_streams_active") == 0
            assert total(samples, "txrelay_draining") == 0

        # A live stream on worker a, seen from worker b; then worker a is killed.
        streamed_on_b = 0
        streaming = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        conns.append(streaming)
        while True:
            resp = post(streaming, BODY)
            assert resp.status == 200
            if serving_worker(streaming, port, workers) == a:
                break
            assert b"event: message_stop" in resp.read()
            streamed_on_b += 1
            streaming.close()
            streaming = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
            conns.append(streaming)
        assert total(scrape(pinned[b]), "txrelay_streams_active") == 1
        os.kill(a, signal.SIGKILL)
        status = notify.wait_for("STATUS")["STATUS"]
        assert status.startswith("1/2 worker(s) serving; 1 restart(s), last: worker ")
        assert f"(pid {a}) ended" in status
        samples = scrape(pinned[b])
        assert total(samples, "txrelay_streams_active") == 0  # the dead worker's is gone
        # Worker a's counts stay (its stream never finished: not counted).
        wait_until(lambda: total(scrape(pinned[b]), "txrelay_requests_total",
                                 client="tester", status="200")
                   == len(tokens) + streamed_on_b)
        wait_until(lambda: notify.wait_for("STATUS")["STATUS"].startswith("2/2 "))
        workers = children(relay.process.pid)
        (c,) = [pid for pid in workers if pid != b]
        assert c != a and sorted(listening_workers(port, workers)) == sorted(workers)
        fresh = open_on_every_worker(port, workers, tokens)
        conns += [conn for cs in fresh.values() for conn in cs]
        pinned = {pid: cs[0] for pid, cs in fresh.items()}
        assert generation(pinned[b]) == generation(pinned[c]) == 0

        relay.process.send_signal(signal.SIGHUP)
        notify.wait_for("RELOADING", "1")
        notify.wait_for("READY", "1")
        # READY=1 after the reload: both workers serve the new configuration.
        assert generation(pinned[b]) == generation(pinned[c]) == 1

        live = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        conns.append(live)
        resp = post(live, BODY)
        assert resp.status == 200
        relay.process.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING", "1")
        assert b"event: message_stop" in resp.read()  # the stream finishes in the drain
        assert relay.process.wait(30) == 0
        assert not private.exists()
        assert "Traceback" not in relay.log()
    finally:
        for conn in conns:
            conn.close()
        notify.sock.close()
        relay.stop()


def test_workers_inherit_systemd_sockets(tmp: Path) -> None:
    """
    Under socket activation the supervisor hands systemd's socket to both workers: they
    accept on the same socket (no SO_REUSEPORT), a killed worker's successor takes it up
    again, and the socket outlives them all.
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    port = sock.getsockname()[1]
    notify = Notifications(tmp / "notify")
    cfg = config_text(server={"listen": ["systemd:domain=INET:name=http"], "workers": 2,
                              "drain_timeout": 20}, providers=SLOW_DEMO)
    activated = socket_activated(sock)
    relay = start_relay(tmp, cfg, serve=True, prefix=activated["prefix"],  # type: ignore[arg-type]
                        pass_fds=activated["pass_fds"],  # type: ignore[arg-type]
                        env={**activated["env"], "NOTIFY_SOCKET": str(notify.path)})  # type: ignore[dict-item]
    conns: list[http.client.HTTPConnection] = []
    try:
        notify.wait_for("READY", "1")
        workers = children(relay.process.pid)
        listening = {inode for local, _, state, inode in _tcp_table()
                     if local == port and state == "0A"}
        assert len(listening) == 1  # one socket, the test's own, held by both workers
        assert all(_sockets(pid) & listening for pid in workers)
        tokens: list[int] = []
        by_worker = open_on_every_worker(port, workers, tokens)
        conns += [c for cs in by_worker.values() for c in cs]

        os.kill(workers[0], signal.SIGKILL)
        wait_until(lambda: notify.wait_for("STATUS")["STATUS"].startswith("2/2 "))
        workers = children(relay.process.pid)
        assert all(_sockets(pid) & listening for pid in workers)
        conns += [c for cs in open_on_every_worker(port, workers, tokens).values() for c in cs]

        live = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        conns.append(live)
        resp = post(live, BODY)
        assert resp.status == 200
        relay.process.send_signal(signal.SIGTERM)
        assert b"event: message_stop" in resp.read()
        assert relay.process.wait(30) == 0
        # The socket is still the test's: a new connection waits in its queue.
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        assert "Traceback" not in relay.log()
    finally:
        for conn in conns:
            conn.close()
        notify.sock.close()
        sock.close()
        relay.stop()


@pytest.mark.parametrize("serve", [False, True], ids=["twistd", "txrelay-serve"])
def test_a_worker_that_cannot_listen_stops_the_supervisor(tmp: Path, serve: bool) -> None:
    """A port taken without SO_REUSEPORT fails every worker: the supervisor stops, not loops."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        cfg = config_text(server={"listen": [f"tcp:{port}:interface=127.0.0.1"],
                                  "reuse_port": True, "workers": 2})
        (tmp / "relay.toml").write_text(cfg)
        command = (serve_command if serve else twistd_command)(tmp / "relay.toml")
        with (tmp / "relay.log").open("wb") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=tmp)
        try:
            code = proc.wait(90)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    log = (tmp / "relay.log").read_text()
    assert f"txrelay: cannot listen on 'tcp:{port}:interface=127.0.0.1'" in log
    assert "could not start" in log and "starting it again" not in log
    # twistd has no exit status of its own to give (it exits 0 once its reactor stops);
    # under systemd a supervisor that ends before READY=1 fails the start either way.
    if serve:
        assert code == 1, log
    assert "Traceback" not in log
