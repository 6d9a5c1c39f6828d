# -*- test-case-name: tests.integration.test_workers -*-
"""
``server.workers = N``: the main process runs N relay processes (``txrelay serve``) that
share the listening ports, restarts one that dies, forwards SIGHUP (each reloads its
configuration) and, on stop, SIGTERMs all of them and waits until each has drained.

Workers share ``tcp:`` listeners through ``SO_REUSEPORT`` (``server.reuse_port``: each binds
its own socket, the kernel spreads connections over them) and ``systemd:`` listeners by
inheritance: the supervisor passes the sockets systemd gave it (``LISTEN_FDS``) to every
worker on the same descriptors, and each worker claims them as its own (``LISTEN_PID``) before
Twisted reads them. Those sockets outlive every worker, so a restart refuses nothing.

The supervisor keeps a private directory (under ``$RUNTIME_DIRECTORY`` when systemd gives
one, else the temporary directory) for the workers' shared state, removed on stop:

* ``metrics/``: ``PROMETHEUS_MULTIPROC_DIR`` of every worker, so that a scrape of any of
  them shows the sum over all (``txrelay.metrics``); a dead worker's live gauges are
  dropped (``mark_process_dead``), its counters kept.
* ``notify-N``: worker N's ``NOTIFY_SOCKET``. Workers speak the sd_notify protocol to the
  supervisor as a single relay speaks it to systemd; the supervisor tells systemd
  ``READY=1`` once every worker has reported that it listens (and again once every worker
  has reloaded after a SIGHUP), and keeps ``STATUS=`` up to date with restarts.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.protocol import DatagramProtocol, ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from txrelay.metrics import MULTIPROC_ENV
from txrelay.server.status_page import SECRET_ENV
from txrelay.service import _sd_notify

log = Logger()

#: Set in a worker's environment (to its index): that process serves, it does not supervise.
WORKER_ENV = "TXRELAY_WORKER"
#: Seconds before a dead worker is started again; doubled (up to :data:`MAX_RESTART_DELAY`)
#: while workers die within :data:`STABLE_SECONDS` of their start, so a crash loop is slow.
RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 30.0
STABLE_SECONDS = 10.0


def is_worker() -> bool:
    """Whether this process is a worker of a supervisor."""
    return WORKER_ENV in os.environ


#: ``LISTEN_PID`` in a worker's environment when it inherits the supervisor's systemd
#: sockets: :data:`WORKER_BOOT` replaces it with the worker's own pid.
INHERITED = "txrelay-worker"
#: A worker's program: claim inherited sockets first (Twisted reads ``LISTEN_PID`` when
#: ``twisted.internet.endpoints`` is imported), then ``txrelay serve``.
WORKER_BOOT = (
    "import os, sys\n"
    f"if os.environ.get('LISTEN_PID') == {INHERITED!r}:\n"
    "    os.environ['LISTEN_PID'] = str(os.getpid())\n"
    "from txrelay.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def worker_command(config_path: str) -> list[str]:
    """A worker's command line: ``txrelay serve`` on the same file, this interpreter."""
    return [sys.executable, "-c", WORKER_BOOT, "serve", "--config", config_path]


def inherited_fds() -> list[int]:
    """
    The sockets systemd passed to this process (``sd_listen_fds``), to hand on. Twisted
    takes ``LISTEN_PID`` and ``LISTEN_FDS`` out of the environment when it parses them
    (on importing ``twisted.internet.endpoints``), so they are read from its parser.
    """
    from twisted.internet.endpoints import _SystemdParser

    return list(_SystemdParser._sddaemon.inheritedDescriptors())


def notify_fields(datagram: bytes) -> dict[str, str]:
    """The ``KEY=VALUE`` lines of an sd_notify datagram."""
    fields: dict[str, str] = {}
    for line in datagram.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key] = value
    return fields


@attrs.define(eq=False)
class _Worker:
    """What the supervisor knows of one running worker process."""

    index: int
    pid: int | None = None
    started: float = 0.0
    #: It said ``READY=1`` since its start or its last reload.
    ready: bool = False
    #: SIGHUP sent, its ``READY=1`` after the reload not yet received.
    reloading: bool = False
    #: A reload was asked for before it was ready: SIGHUP it once it is.
    reload_pending: bool = False
    status: str = "starting"


class _WorkerProtocol(ProcessProtocol):
    def __init__(self, supervisor: Supervisor, worker: _Worker) -> None:
        self.supervisor = supervisor
        self.worker = worker
        self.ended: Deferred[None] = Deferred()

    def processEnded(self, reason: Failure) -> None:
        self.supervisor._ended(self, reason)
        self.ended.callback(None)


class _NotifyProtocol(DatagramProtocol):
    """Worker ``index``'s ``NOTIFY_SOCKET``."""

    def __init__(self, supervisor: Supervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.supervisor._notified(self.index, notify_fields(datagram))


@attrs.define(eq=False)
class Supervisor(Service):
    """The main process of ``server.workers = N``: it runs and watches the workers."""

    reactor: Any
    config_path: str
    workers: int
    command: list[str] = attrs.Factory(list)
    _running: dict[int, _WorkerProtocol] = attrs.Factory(dict)
    _stopping: bool = False
    _previous_sighup: Any = None
    #: Worker starts, by index (a restart counts once more).
    starts: dict[int, int] = attrs.Factory(dict)
    #: The private directory (``metrics/``, ``notify-N``), while running.
    directory: str | None = None
    _notify_ports: list[Any] = attrs.Factory(list)
    _session_secret: str = ""
    _delays: dict[int, float] = attrs.Factory(dict)
    #: Whether systemd was told READY=1 since the start or the last reload.
    _ready_sent: bool = False
    #: Workers that ended unexpectedly (each is started again), and the last of them.
    restarts: int = 0
    _last_restart: str = ""
    #: systemd's sockets, passed on to every worker.
    _fds: list[int] = attrs.Factory(list)
    #: Whether every worker was serving at once, at least once.
    _was_ready: bool = False
    #: Stop the reactor when a worker cannot start (else only fire :attr:`failed`).
    stop_on_failure: bool = True
    #: Fires with exit status 1 when a worker fails before all ever served (a listener
    #: that cannot be set up fails in every worker): the supervisor then stops.
    failed: Deferred[int] = attrs.Factory(Deferred)

    @property
    def metrics_dir(self) -> str:
        """The workers' ``PROMETHEUS_MULTIPROC_DIR``."""
        assert self.directory is not None
        return os.path.join(self.directory, "metrics")

    def startService(self) -> None:
        Service.startService(self)
        if not self.command:
            self.command = worker_command(self.config_path)
        runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or None
        self.directory = tempfile.mkdtemp(prefix="txrelay-workers-", dir=runtime)
        self._session_secret = os.urandom(32).hex()
        os.mkdir(self.metrics_dir)
        self._fds = inherited_fds()
        for index in range(self.workers):
            self._notify_ports.append(self.reactor.listenUNIXDatagram(
                self._notify_path(index), _NotifyProtocol(self, index)))
            self._spawn(index)
        self._previous_sighup = signal.signal(signal.SIGHUP, self._on_sighup)
        log.info("txrelay supervisor: {count} worker(s) started", count=self.workers)
        _sd_notify(f"STATUS=starting {self.workers} worker(s)".encode())

    def _notify_path(self, index: int) -> str:
        assert self.directory is not None
        return os.path.join(self.directory, f"notify-{index}")

    def _spawn(self, index: int) -> None:
        if self._stopping:
            return
        env = {k: v for k, v in os.environ.items() if k != "prometheus_multiproc_dir"}
        env[WORKER_ENV] = str(index)
        env[MULTIPROC_ENV] = self.metrics_dir
        # Workers accept each other's status-page cookies (one secret per supervisor run).
        env.setdefault(SECRET_ENV, self._session_secret)
        env["NOTIFY_SOCKET"] = self._notify_path(index)
        if self._fds:
            env["LISTEN_PID"], env["LISTEN_FDS"] = INHERITED, str(len(self._fds))
        else:
            for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
                env.pop(name, None)
        fds: dict[int, Any] = {0: "w", 1: 1, 2: 2}
        fds.update({fd: fd for fd in self._fds})
        worker = _Worker(index, started=time.monotonic())
        protocol = _WorkerProtocol(self, worker)
        transport = self.reactor.spawnProcess(protocol, self.command[0], self.command,
                                              env=env, childFDs=fds)
        worker.pid = transport.pid
        self._running[index] = protocol
        self.starts[index] = self.starts.get(index, 0) + 1

    def _ended(self, protocol: _WorkerProtocol, reason: Failure) -> None:
        worker = protocol.worker
        if self._running.get(worker.index) is protocol:
            del self._running[worker.index]
        if worker.pid is not None and self.directory is not None:
            from prometheus_client.multiprocess import mark_process_dead

            mark_process_dead(worker.pid, self.metrics_dir)  # type: ignore[no-untyped-call]
        if self._stopping:
            return
        if not self._was_ready and not worker.ready:
            log.critical("worker {index} (pid {pid}) could not start ({reason}); stopping "
                         "(its messages are above)", index=worker.index, pid=worker.pid,
                         reason=reason.getErrorMessage())
            self._stopping = True
            self.failed.callback(1)
            if self.stop_on_failure:
                self.reactor.stop()
            return
        if time.monotonic() - worker.started < STABLE_SECONDS:
            delay = min(self._delays.get(worker.index, RESTART_DELAY / 2) * 2,
                        MAX_RESTART_DELAY)
        else:
            delay = RESTART_DELAY
        self._delays[worker.index] = delay
        self.restarts += 1
        self._last_restart = (f"worker {worker.index} (pid {worker.pid}) ended: "
                              f"{reason.getErrorMessage()}")
        log.error("worker {index} (pid {pid}) ended ({reason}); starting it again in "
                  "{delay}s", index=worker.index, pid=worker.pid,
                  reason=reason.getErrorMessage(), delay=delay)
        self._report()
        self.reactor.callLater(delay, self._spawn, worker.index)

    def _notified(self, index: int, fields: dict[str, str]) -> None:
        protocol = self._running.get(index)
        if protocol is None:
            return
        worker = protocol.worker
        if "STATUS" in fields:
            worker.status = fields["STATUS"]
        if fields.get("STOPPING") == "1":
            worker.ready = False
        if fields.get("READY") == "1":
            worker.ready = True
            worker.reloading = False
            if worker.reload_pending and not self._stopping:
                worker.reload_pending = False
                self._sighup(protocol)
        self._report()

    def _report(self) -> None:
        """Tell systemd how the workers are: READY=1 once all are, STATUS= always."""
        if self._stopping:
            return
        workers = [p.worker for p in self._running.values()]
        ready = sum(1 for w in workers if w.ready and not w.reloading)
        status = f"{ready}/{self.workers} worker(s) serving"
        if self.restarts:
            status += f"; {self.restarts} restart(s), last: {self._last_restart}"
        message = f"STATUS={status}"
        if ready == self.workers and not self._ready_sent:
            self._ready_sent = self._was_ready = True
            message = f"READY=1\n{message}"
            log.info("txrelay supervisor: {count} worker(s) serving", count=ready)
        _sd_notify(message.encode())

    def pids(self) -> list[int]:
        """The running workers' process ids."""
        return [p.worker.pid for p in self._running.values() if p.worker.pid is not None]

    def signal_all(self, signum: int) -> None:
        """Send ``signum`` to every running worker."""
        for protocol in list(self._running.values()):
            if protocol.transport is not None and protocol.transport.pid is not None:
                protocol.transport.signalProcess(signum)

    def _sighup(self, protocol: _WorkerProtocol) -> None:
        if protocol.transport is not None and protocol.transport.pid is not None:
            protocol.worker.reloading = True
            protocol.transport.signalProcess(signal.SIGHUP)

    def _on_sighup(self, signum: int, frame: object) -> None:
        self.reactor.callFromThread(self.reload)

    def reload(self) -> None:
        """Have every worker reload the file; READY=1 to systemd once all have."""
        if self._stopping:
            return
        log.info("SIGHUP: reloading {count} worker(s)", count=len(self._running))
        self._ready_sent = False
        _sd_notify(b"RELOADING=1\nMONOTONIC_USEC=%d" % (time.monotonic_ns() // 1000))
        for protocol in list(self._running.values()):
            if protocol.worker.ready:
                self._sighup(protocol)
            else:  # it may have read the file already, and SIGHUP could kill it yet
                protocol.worker.reload_pending = True
        self._report()

    def stopService(self) -> Deferred[Any]:
        """SIGTERM every worker; fires once all have drained and exited."""
        self._stopping = True
        _sd_notify(b"STOPPING=1\nSTATUS=draining the workers")
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None
        Service.stopService(self)
        ended = [p.ended for p in self._running.values()]
        log.info("draining {count} worker(s)", count=len(ended))
        self.signal_all(signal.SIGTERM)
        return DeferredList(ended).addBoth(self._clean_up)

    def _clean_up(self, result: object) -> object:
        for port in self._notify_ports:
            port.stopListening()
        self._notify_ports = []
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None
        # As RelayService does: twistd would re-raise the SIGTERM it stopped on (status
        # 143), but the workers drained, so the stop was clean.
        if getattr(self.reactor, "_exitSignal", None) == signal.SIGTERM:
            self.reactor._exitSignal = None
        return result
