# -*- test-case-name: tests.test_logs -*-
"""
Logging for the relay: observers for human text or JSON lines, filtered by level, a logger
that drops events below the level at the source, and the bridge from stdlib ``logging``.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    jsonFileLogObserver,
    textFileLogObserver,
)
from twisted.python.failure import Failure

from txrelay.config import LogConfig

_LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn,
           "error": LogLevel.error}


def make_observer(cfg: LogConfig, out: IO[Any] | None = None) -> ILogObserver:
    """An observer writing to ``out`` (stdout) in the configured format and level."""
    out = out or sys.stdout
    base = jsonFileLogObserver(out) if cfg.format == "json" else textFileLogObserver(out)
    return FilteringLogObserver(
        base, [LogLevelFilterPredicate(defaultLogLevel=_LEVELS[cfg.level])]
    )


_PRIORITY = {LogLevel.debug: 0, LogLevel.info: 1, LogLevel.warn: 2, LogLevel.error: 3,
             LogLevel.critical: 4}
_threshold = 1


def set_level(level: str) -> None:
    """Drop events below ``level`` (``debug``, ``info``, ``warn``, ``error``) at the source."""
    global _threshold
    _threshold = _PRIORITY[_LEVELS[level]]


class RelayLogger(Logger):
    """
    A :class:`~twisted.logger.Logger` that drops events below the configured level before
    formatting anything, so ``log.debug`` on a hot path costs one comparison, and under twistd
    (whose observers this process does not choose) ``log.level`` still applies.
    """

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: object) -> None:
        if _PRIORITY.get(level, 4) >= _threshold:
            super().emit(level, format, **kwargs)


_FROM_STDLIB = ((logging.CRITICAL, LogLevel.critical), (logging.ERROR, LogLevel.error),
                (logging.WARNING, LogLevel.warn), (logging.INFO, LogLevel.info))
_TO_STDLIB = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
              "error": logging.ERROR}


class TwistedLogHandler(logging.Handler):
    """
    A stdlib :class:`logging.Handler` that re-emits records into ``twisted.logger``: the
    sans-IO protocol package logs through stdlib ``logging`` (it imports nothing from
    Twisted), and without this its lines would be lost. The namespace is the stdlib
    logger's name and the level maps to the nearest Twisted level; an ``exc_info`` becomes
    the event's failure, so the traceback is kept.
    """

    def __init__(self, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self._emitting = False

    def emit(self, record: logging.LogRecord) -> None:
        if self._emitting:  # an observer that logs back through stdlib: do not loop
            return
        self._emitting = True
        try:
            level = next((tw for std, tw in _FROM_STDLIB if record.levelno >= std),
                         LogLevel.debug)
            logger = RelayLogger(namespace=record.name)
            message = record.getMessage()
            exc = record.exc_info
            if exc is not None and exc[1] is not None:
                logger.failure("{message}", Failure(exc[1], exc[0], exc[2]), level,
                               message=message)
            else:
                logger.emit(level, "{message}", message=message)
        except Exception:
            self.handleError(record)
        finally:
            self._emitting = False


def bridge_stdlib_logging(level: str) -> TwistedLogHandler:
    """
    Send stdlib ``logging`` records into ``twisted.logger`` (installed once, at start-up):
    the ``txrelay`` loggers at ``level`` (the config's ``log.level``), other libraries'
    at warnings and above. Calling it again replaces the previous bridge.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, TwistedLogHandler)]:
        root.removeHandler(old)
    handler = TwistedLogHandler(_TO_STDLIB[level])
    root.addHandler(handler)
    logging.getLogger("txrelay").setLevel(_TO_STDLIB[level])
    return handler


# Credential shapes a pasted body may carry even when the relay was not told of them:
# Anthropic/OpenAI ``sk-…``, Google ``AIza…``, bearer tokens, AWS access key ids.
_KEY_SHAPES = re.compile(
    r"sk-[A-Za-z0-9_-]{16,}|AIza[0-9A-Za-z_-]{30,}|(?i:bearer)\s+[A-Za-z0-9._~+/-]{16,}=*"
    r"|AKIA[0-9A-Z]{16}")


def body_excerpt(raw: bytes, limit: int) -> str:
    """
    At most ``limit`` bytes of a request body for the opt-in body log, with every configured
    secret and anything shaped like an API key replaced by ``[REDACTED]``.
    """
    from txrelay.redact import default_redactor

    cut = raw[:limit].decode("utf-8", "replace")
    text = _KEY_SHAPES.sub("[REDACTED]", default_redactor.redact(cut))
    if len(raw) > limit:
        text += f"… ({len(raw) - limit} more bytes)"
    return text
