# -*- test-case-name: tests.test_leanreactor -*-
"""
A cheaper main loop and event dispatch for Twisted's epoll reactor.

Per I/O event, ``EPollReactor.doPoll`` calls ``log.callWithLogger``: a ``logPrefix()`` call, a
copy of the legacy log context dict and a push/pop on the thread-local context stack, then
``_doReadOrWrite``, which asks the descriptor for its ``fileno()`` before ``doRead``. Per
loop turn, ``mainLoop`` calls ``runUntilCurrent`` and ``timeout``, which look at the thread
call queue, the new and pending timers and the clock twice, even when no timer is due. For a
paced stream (one upstream read and one client write per token) that bookkeeping is a
sizeable part of each chunk.

:func:`install` changes the class of a plain ``EPollReactor`` to :class:`LeanEPollReactor`,
whose loop

* calls ``doRead`` or ``doWrite`` directly for a plain ``EPOLLIN`` or ``EPOLLOUT`` event,
  with Twisted's handling around it: an exception is logged (with the descriptor's
  ``logPrefix()`` as ``system``, as before) and disconnects that descriptor, a disconnect
  reason returned is handed to ``_disconnectSelectable``, and the loop goes on;
* hands every other event (``EPOLLHUP``/``EPOLLERR``, both directions at once) to Twisted's
  own ``_doReadOrWrite`` inside ``log.callWithLogger``, unchanged;
* skips ``runUntilCurrent`` and ``timeout`` on a turn where no thread call is queued, no timer
  was added, none is due, none needs compacting and the reactor is not stopping, computing
  the poll timeout from the first pending timer itself.

What is given up: legacy ``twisted.python.log.msg`` calls made from inside a read or write
handler no longer carry the descriptor's ``logPrefix()`` as their ``system`` (the relay logs
through ``twisted.logger``, which never read it), and a descriptor whose ``fileno()`` is -1
while still registered is no longer disconnected silently before its handler runs (its
``doRead`` fails on the closed socket instead, which is logged and disconnects it).

Any other reactor (poll, select, asyncio, ``MemoryReactor`` in tests, a subclass) is left as
it is, said at debug level. It relies on these private attributes of
``twisted.internet.base.ReactorBase`` and ``twisted.internet.epollreactor.EPollReactor``
(checked by ``tests/test_leanreactor.py::test_twisted_private_contract``): ``_started``,
``_justStopped``, ``_newTimedCalls``, ``_pendingTimedCalls`` (a heap of ``DelayedCall`` with
``.time``), ``_cancellations``, ``threadCallQueue``, ``running``, ``_poller``,
``_selectables``, ``_doReadOrWrite`` and ``_disconnectSelectable``.
"""

from __future__ import annotations

import errno
import sys
from typing import Any

from twisted.internet.epollreactor import EPollReactor
from twisted.logger import Logger
from twisted.python import log as legacy_log

from txrelay.logs import RelayLogger

log = RelayLogger()
_twisted_log = Logger(namespace="twisted.internet.base")
#: As ``twisted.internet.base._topHandler``: an exception escaping a turn is logged and the
#: loop goes on.
_loop_failures = _twisted_log.failureHandler("Unexpected error in main loop")

#: ``epoll_wait`` takes its timeout as an int of milliseconds (as ``ReactorBase.timeout``).
_LONGEST = 2147483


def _prefix(selectable: Any) -> str:
    try:
        return str(selectable.logPrefix())
    except KeyboardInterrupt:
        raise
    except BaseException:
        legacy_log.err(system="(buggy logPrefix method)")
        return "(buggy logPrefix method)"


class LeanEPollReactor(EPollReactor):
    """``EPollReactor`` with the cheaper loop described in :mod:`txrelay.leanreactor`."""

    def mainLoop(self) -> None:
        """Run turns until the reactor stops; an exception in one is logged, not fatal."""
        while self._started:
            with _loop_failures:
                self._turns()
        _twisted_log.info("Main loop terminated.")

    def _turns(self) -> None:
        while self._started:
            pending = self._pendingTimedCalls
            timeout: float | None
            if (self.threadCallQueue or self._newTimedCalls or self._justStopped
                    or (self._cancellations > 50
                        and self._cancellations > len(pending) >> 1)):
                self.runUntilCurrent()
                timeout = self.timeout()
            elif pending:
                now = self.seconds()
                first = pending[0].time
                if first <= now:
                    self.runUntilCurrent()
                    timeout = self.timeout()
                else:
                    timeout = min(first - now, _LONGEST)
            else:
                timeout = None
            self.doIteration(self.running and timeout)

    def doPoll(self, timeout: float | None) -> None:
        """Wait for events (``timeout`` seconds, or forever if ``None``) and dispatch them."""
        selectables = self._selectables
        try:
            events = self._poller.poll(-1 if timeout is None else timeout, len(selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        read_event = self._POLL_IN
        write_event = self._POLL_OUT
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            if event == read_event:
                in_read = True
            elif event == write_event:
                in_read = False
            else:
                legacy_log.callWithLogger(selectable, self._doReadOrWrite, selectable, fd,
                                          event)
                continue
            try:
                why = selectable.doRead() if in_read else selectable.doWrite()
            except BaseException:
                why = sys.exc_info()[1]
                in_read = False  # as _doReadOrWrite: an exception is not a clean close
                legacy_log.err(system=_prefix(selectable))
            if why:
                try:
                    self._disconnectSelectable(  # type: ignore[no-untyped-call]
                        selectable, why, in_read)
                except KeyboardInterrupt:
                    raise
                except BaseException:
                    legacy_log.err(system=_prefix(selectable))

    doIteration = doPoll


def install(reactor: Any, enabled: bool = True) -> bool:
    """
    Give ``reactor`` the lean loop if it is a plain ``EPollReactor`` and ``enabled``; with
    ``enabled`` false, give a lean one Twisted's loop back. Call it before the reactor runs.

    :return: whether ``reactor`` now runs the lean loop.
    """
    kind = type(reactor)
    if not enabled:
        if kind is LeanEPollReactor:
            reactor.__class__ = EPollReactor
        log.debug("txrelay: lean reactor loop off (server.lean_reactor = false)")
        return False
    if kind is LeanEPollReactor:
        return True
    if kind is not EPollReactor:
        log.debug("txrelay: lean reactor loop not installed: {kind} is not EPollReactor",
                  kind=f"{kind.__module__}.{kind.__qualname__}")
        return False
    reactor.__class__ = LeanEPollReactor
    log.debug("txrelay: lean reactor loop installed on the epoll reactor")
    return True
