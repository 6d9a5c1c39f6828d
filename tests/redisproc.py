"""
A real ``redis-server`` on a free loopback port for tests (no persistence, a temp dir).

Debian's ``redis-server`` package provides it and ``.ci/run`` installs it; when it is missing
the tests that need it fail with a message saying so, they are never skipped.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import attrs


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_server_path() -> str:
    """The ``redis-server`` executable; raise (failing the test) when it is not installed."""
    path = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)
    if path is None:
        raise RuntimeError(
            "redis-server is not installed: these tests need a real Redis server "
            "(apt-get install redis-server; .ci/run installs it)")
    return path


def _answers(port: int, tls: bool = False, client_cert: tuple[Path, Path] | None = None,
             ) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as raw:
            s = raw
            if tls:  # only "is it up?": the tests check the certificates through the store
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
                if client_cert is not None:
                    ctx.load_cert_chain(*client_cert)
                s = ctx.wrap_socket(raw)
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@attrs.define
class RedisServer:
    """A ``redis-server`` process on ``127.0.0.1:port``; :meth:`stop` and :meth:`start`
    again on the same port (an outage and its end)."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None
    #: TLS only, on ``port``: the server's certificate and key (PEM files).
    tls: tuple[Path, Path] | None = None
    #: With ``tls``: require client certificates issued by this CA.
    client_ca: Path | None = None
    #: With ``client_ca``: the certificate the start-up PING presents.
    client_cert: tuple[Path, Path] | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20) -> None:
        """Start the server and return once it answers PING."""
        ports = ["--port", str(self.port)]
        if self.tls is not None:
            ports = ["--port", "0", "--tls-port", str(self.port),
                     "--tls-cert-file", str(self.tls[0]), "--tls-key-file", str(self.tls[1])]
            ports += (["--tls-ca-cert-file", str(self.client_ca), "--tls-auth-clients", "yes"]
                      if self.client_ca is not None else ["--tls-auth-clients", "no"])
        command = [redis_server_path(), *ports, "--bind", "127.0.0.1",
                   "--save", "", "--appendonly", "no", "--dir", str(self.directory),
                   "--protected-mode", "no", "--logfile", str(self.directory / "redis.log")]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: "
                                   f"{self.log()}")
            if _answers(self.port, self.tls is not None, self.client_cert):
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer within {timeout}s: {self.log()}")

    def stop(self) -> None:
        """Kill the server (an outage: no shutdown handshake) and wait for it to exit."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def flush(self) -> None:
        """Empty every database (between tests sharing one server)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(b"FLUSHALL\r\n")
            assert s.recv(64).startswith(b"+OK")

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text("utf-8", "replace")[-2000:] if path.exists() else ""


def start_redis() -> RedisServer:
    """A new server on a free port in a fresh temp dir, answering when this returns."""
    server = RedisServer(free_port(), Path(tempfile.mkdtemp(prefix="txrelay-redis-")))
    server.start()
    return server
