"""Log observers for the relay: human text or JSON lines, filtered by level."""

from __future__ import annotations

import sys
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEventAsClassicLogText,
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


def format_plain(event: dict[str, Any]) -> str | None:
    """One event as classic log text (used by tests)."""
    return formatEventAsClassicLogText(event)
