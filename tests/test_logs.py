"""The bridge from stdlib logging (used by the sans-IO protocol package) to twisted.logger."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from twisted.logger import LogEvent, LogLevel, formatEvent, globalLogPublisher

from txrelay.logs import TwistedLogHandler, bridge_stdlib_logging, set_level


@pytest.fixture()
def captured() -> Iterator[list[LogEvent]]:
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    txrelay_logger = logging.getLogger("txrelay")
    level = txrelay_logger.level
    yield events
    globalLogPublisher.removeObserver(events.append)
    root = logging.getLogger()
    for h in [h for h in root.handlers if isinstance(h, TwistedLogHandler)]:
        root.removeHandler(h)
    txrelay_logger.setLevel(level)
    set_level("info")


def test_records_arrive_with_namespace_level_and_text(captured: list[LogEvent]) -> None:
    bridge_stdlib_logging("debug")
    set_level("debug")
    log = logging.getLogger("txrelay.protocol.openai.stream")
    log.debug("ignoring %s {braces}", "x")
    log.info("dropping %d call(s)", 2)
    log.warning("w")
    log.error("e")
    mine = [e for e in captured if e.get("log_namespace") == "txrelay.protocol.openai.stream"]
    assert [(e["log_level"], formatEvent(e)) for e in mine] == [
        (LogLevel.debug, "ignoring x {braces}"), (LogLevel.info, "dropping 2 call(s)"),
        (LogLevel.warn, "w"), (LogLevel.error, "e")]


def test_exc_info_becomes_the_events_failure(captured: list[LogEvent]) -> None:
    bridge_stdlib_logging("debug")
    set_level("debug")
    try:
        raise ValueError("bad json")
    except ValueError:
        logging.getLogger("txrelay.protocol.jsonprefix").debug("repair failed", exc_info=True)
    (event,) = [e for e in captured if e.get("log_namespace") == "txrelay.protocol.jsonprefix"]
    assert isinstance(event["log_failure"].value, ValueError)
    assert formatEvent(event) == "repair failed"


def test_log_level_is_honoured_and_installing_twice_does_not_double(
        captured: list[LogEvent]) -> None:
    bridge_stdlib_logging("info")
    bridge_stdlib_logging("warn")
    set_level("warn")
    log = logging.getLogger("txrelay.protocol.openai.request")
    log.info("dropping tool")
    log.warning("dropping mcp_servers")
    mine = [formatEvent(e) for e in captured
            if e.get("log_namespace") == "txrelay.protocol.openai.request"]
    assert mine == ["dropping mcp_servers"]
    # other libraries: warnings and above only
    logging.getLogger("somelib").info("chatter")
    logging.getLogger("somelib").warning("trouble")
    assert [formatEvent(e) for e in captured if e.get("log_namespace") == "somelib"] == [
        "trouble"]


def test_an_observer_that_logs_back_through_stdlib_does_not_loop(
        captured: list[LogEvent]) -> None:
    bridge_stdlib_logging("info")
    echo = logging.getLogger("txrelay.echo")

    def observer(event: LogEvent) -> None:
        if event.get("log_namespace") == "txrelay.loop":
            echo.info("echo")

    globalLogPublisher.addObserver(observer)
    try:
        logging.getLogger("txrelay.loop").info("once")
    finally:
        globalLogPublisher.removeObserver(observer)
    assert [formatEvent(e) for e in captured if e.get("log_namespace") == "txrelay.loop"] == [
        "once"]
