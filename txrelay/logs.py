"""Log observers for the relay: human text or JSON lines, filtered by level."""

from __future__ import annotations

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
