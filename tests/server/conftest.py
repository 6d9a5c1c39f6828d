"""Fixtures of the in-memory server tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from twisted.logger import LogLevel, globalLogPublisher


@pytest.fixture()
def logged() -> Iterator[list[dict[str, Any]]]:
    """Every log event emitted during the test."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def failures(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The logged events that carry a traceback or are critical."""
    return [e for e in events if "log_failure" in e or e.get("log_level") is LogLevel.critical]


@pytest.fixture()
def logged_failures() -> Iterator[list[dict[str, Any]]]:
    """Every logged failure (traceback) while the test runs."""
    found: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if "log_failure" in event:
            found.append(dict(event))

    globalLogPublisher.addObserver(observe)
    yield found
    globalLogPublisher.removeObserver(observe)
