"""Fixtures of the ledger's unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from twisted.logger import globalLogPublisher


@pytest.fixture()
def capture_logs() -> Iterator[list[dict[str, Any]]]:
    """The log events emitted during the test."""
    events: list[dict[str, Any]] = []

    def observe(event: Any) -> None:
        events.append(dict(event))

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)
