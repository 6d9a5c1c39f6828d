"""Fixtures of the server-layer tests."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from twisted.logger import globalLogPublisher


@pytest.fixture()
def failures() -> Iterator[list[dict[str, Any]]]:
    """Every logged failure (traceback) while the test runs."""
    found: list[dict[str, Any]] = []

    def observe(event: Mapping[str, Any]) -> None:
        if "log_failure" in event:
            found.append(dict(event))

    globalLogPublisher.addObserver(observe)
    yield found
    globalLogPublisher.removeObserver(observe)
