"""The front door's configuration keys, and how the service wires header checks to the site."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.web.resource import Resource

from tests.relayproc import SECOND_KEY, config_text
from txrelay.config import ConfigError, parse_config
from txrelay.protocol.errors import RelayError
from txrelay.server.frontdoor import FrontDoorPolicy
from txrelay.server.site import RelaySite
from txrelay.service import RelayService, build_app
from txrelay.stages.auth import AuthStage


def service(**kw: Any) -> RelayService:
    cfg = parse_config(tomllib.loads(config_text(**kw)), env={})
    clock = MemoryReactorClock()
    return RelayService(build_app(cfg, clock), clock)


def test_defaults_reach_the_site() -> None:
    policy = service().site.front_door
    assert policy.max_buffered_bytes == 256 * 1024 * 1024
    assert (policy.header_timeout, policy.min_body_rate, policy.body_grace) == (10, 4096, 10)
    assert policy.max_request_bytes == 32 * 1024 * 1024
    [check] = policy.header_checks
    assert isinstance(check, AuthStage)


def test_configured_values_reach_the_site() -> None:
    svc = service(server={"max_request_bytes": 2048, "max_buffered_bytes": 8192,
                          "header_timeout": 2.5, "min_body_rate": 0, "body_grace": 1})
    policy = svc.site.front_door
    assert (policy.max_request_bytes, policy.max_buffered_bytes) == (2048, 8192)
    assert (policy.header_timeout, policy.min_body_rate, policy.body_grace) == (2.5, 0, 1)
    assert svc.site.buffer_budget.capacity == 8192


def test_a_pipeline_without_auth_has_no_header_checks() -> None:
    svc = service(pipeline=[{"type": "model-map"}, {"type": "translate"}])
    assert svc.site.front_door.header_checks == ()


def test_the_auth_allow_list_applies_at_header_time() -> None:
    svc = service(pipeline=[{"type": "auth", "options": {"allow": ["tester"]}},
                            {"type": "translate"}])
    channel = svc.site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(b"POST /v1/messages HTTP/1.1\r\nx-api-key: " + SECOND_KEY.encode()
                         + b"\r\nContent-Length: 10\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 401 ")
    assert b"authentication_error" in transport.value()


@pytest.mark.parametrize(("server", "problem"), [
    ({"max_buffered_bytes": 1024}, "server.max_buffered_bytes: must be at least"),
    ({"header_timeout": 0}, "server.header_timeout: must be between"),
    ({"min_body_rate": -1}, "server.min_body_rate: must not be negative"),
    ({"body_grace": -1}, "server.body_grace: must not be negative"),
])
def test_bad_values_are_reported(server: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(tomllib.loads(config_text(server=server)), env={})
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems


def test_front_door_answers_are_counted_in_metrics() -> None:
    svc = service()
    for data in (b"POST /v1/messages HTTP/1.1\r\nContent-Length: 10\r\n\r\n", b"GARBAGE\r\n\r\n"):
        channel = svc.site.buildProtocol(None)
        channel.makeConnection(StringTransport())
        channel.dataReceived(data)
    assert svc.resource.metrics is not None
    text = svc.resource.metrics.render().decode()
    assert ('txrelay_requests_total{client="-",model="-",operation="messages",provider="-",'
            'status="401"} 1.0') in text
    assert ('txrelay_requests_total{client="-",model="-",operation="http",provider="-",'
            'status="400"} 1.0') in text
    assert 'txrelay_errors_total{provider="-",type="authentication_error"} 1.0' in text


def test_a_failing_reject_observer_is_logged_not_raised(
    logged_failures: list[dict[str, Any]],
) -> None:
    def broken(operation: str, error: RelayError) -> None:
        raise RuntimeError("metrics down")

    site = RelaySite(Resource(), max_request_bytes=4096, timeout=75,
                     reactor=MemoryReactorClock(),
                     front_door=FrontDoorPolicy(on_reject=broken))
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(b"GARBAGE\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 400 ")
    assert len(logged_failures) == 1
