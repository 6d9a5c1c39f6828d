"""
The global Twisted reactor running in a background thread, so a synchronous test can drive
coroutines that wait on real network I/O (a real Redis server) with :func:`call`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Coroutine
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import blockingCallFromThread

_started = threading.Lock()
_thread: threading.Thread | None = None


def reactor() -> Any:
    """The global reactor, started in a daemon thread the first time (it never stops: the
    thread ends with the test process)."""
    global _thread
    from twisted.internet import reactor as r

    with _started:
        if _thread is None:
            _thread = threading.Thread(target=r.run, kwargs={"installSignalHandlers": False},
                                       name="reactor", daemon=True)
            _thread.start()
    return r


def call(make: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run the coroutine ``make()`` in the reactor thread and return its result (or raise)."""
    r = reactor()
    return blockingCallFromThread(r, lambda: Deferred.fromCoroutine(make()))


def call_in_reactor(f: Callable[..., Any], *args: Any) -> Any:
    """Call ``f(*args)`` in the reactor thread (synchronously from the caller's view)."""
    return blockingCallFromThread(reactor(), f, *args)
