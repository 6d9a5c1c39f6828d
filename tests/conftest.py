"""Shared fixtures: the real relay on loopback and SDK clients pointed at it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.relayproc import DEMO_KEY, Relay, config_text, start_relay

settings.register_profile("ci", max_examples=200, deadline=None)
settings.register_profile("dev", max_examples=60, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(scope="session")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    """One relay on the demo backend for the whole session."""
    r = start_relay(tmp_path_factory.mktemp("relay"), config_text())
    yield r
    r.stop()


@pytest.fixture()
def client(relay: Relay):  # type: ignore[no-untyped-def]
    """The official anthropic SDK, authenticating with ``Authorization: Bearer`` (2.x)."""
    import anthropic

    with anthropic.Anthropic(base_url=relay.url, api_key=DEMO_KEY, max_retries=0) as c:
        yield c


@pytest.fixture()
def tmp(tmp_path: Path) -> Path:
    return tmp_path
