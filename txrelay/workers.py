# -*- test-case-name: tests.integration.test_workers -*-
"""
``server.workers = N``: the main process runs N relay processes (``txrelay serve``) that
share the listening ports through ``SO_REUSEPORT`` (``server.reuse_port``), restarts one
that dies, forwards SIGHUP (each reloads its configuration) and, on stop, SIGTERMs all of
them and waits until each has drained.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from txrelay.service import _sd_notify

log = Logger()

#: Set in a worker's environment (to its index): that process serves, it does not supervise.
WORKER_ENV = "TXRELAY_WORKER"
#: Seconds before a dead worker is started again (a crash loop costs a line a second).
RESTART_DELAY = 1.0


def is_worker() -> bool:
    """Whether this process is a worker of a supervisor."""
    return WORKER_ENV in os.environ


def worker_command(config_path: str) -> list[str]:
    """A worker's command line: ``txrelay serve`` on the same file, this interpreter."""
    return [sys.executable, "-m", "txrelay", "serve", "--config", config_path]


class _WorkerProtocol(ProcessProtocol):
    def __init__(self, supervisor: Supervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.ended: Deferred[None] = Deferred()

    def processEnded(self, reason: Failure) -> None:
        self.supervisor._ended(self, reason)
        self.ended.callback(None)


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

    def startService(self) -> None:
        Service.startService(self)
        if not self.command:
            self.command = worker_command(self.config_path)
        for index in range(self.workers):
            self._spawn(index)
        self._previous_sighup = signal.signal(signal.SIGHUP, self._on_sighup)
        log.info("txrelay supervisor: {count} worker(s) started", count=self.workers)
        # Sent once the workers are started, not once each listens (they cannot notify:
        # NOTIFY_SOCKET is kept from them, systemd's NotifyAccess=main would refuse them).
        _sd_notify(f"READY=1\nSTATUS={self.workers} worker(s)".encode())

    def _spawn(self, index: int) -> None:
        if self._stopping:
            return
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        env[WORKER_ENV] = str(index)
        protocol = _WorkerProtocol(self, index)
        self.reactor.spawnProcess(protocol, self.command[0], self.command, env=env,
                                  childFDs={0: "w", 1: 1, 2: 2})
        self._running[index] = protocol
        self.starts[index] = self.starts.get(index, 0) + 1

    def _ended(self, protocol: _WorkerProtocol, reason: Failure) -> None:
        if self._running.get(protocol.index) is protocol:
            del self._running[protocol.index]
        if self._stopping:
            return
        log.error("worker {index} ended ({reason}); starting it again in {delay}s",
                  index=protocol.index, reason=reason.getErrorMessage(), delay=RESTART_DELAY)
        self.reactor.callLater(RESTART_DELAY, self._spawn, protocol.index)

    def pids(self) -> list[int]:
        """The running workers' process ids."""
        return [p.transport.pid for p in self._running.values()
                if p.transport is not None and p.transport.pid is not None]

    def signal_all(self, signum: int) -> None:
        """Send ``signum`` to every running worker."""
        for protocol in list(self._running.values()):
            if protocol.transport is not None and protocol.transport.pid is not None:
                protocol.transport.signalProcess(signum)

    def _on_sighup(self, signum: int, frame: object) -> None:
        self.reactor.callFromThread(self._forward_sighup)

    def _forward_sighup(self) -> None:
        log.info("SIGHUP: reloading {count} worker(s)", count=len(self._running))
        self.signal_all(signal.SIGHUP)

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
        return DeferredList(ended)
