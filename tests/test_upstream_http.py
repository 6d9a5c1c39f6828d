"""The upstream HTTP client in memory: cancellable body reads, plain-words failures."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from OpenSSL import SSL
from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import (
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)

from txrelay.protocol.errors import RelayError
from txrelay.upstream.http import read_body, transport_error


@attrs.define
class BodyTransport:
    stopped: bool = False

    def stopProducing(self) -> None:
        self.stopped = True


@attrs.define
class Response:
    transport: BodyTransport = attrs.Factory(BodyTransport)
    protocol: Any = None

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)


def reading(clock: Clock) -> tuple[Response, Deferred[bytes]]:
    response = Response()
    d = Deferred.fromCoroutine(read_body(response, idle=5, reactor=clock))
    return response, d


def test_cancelling_a_body_read_closes_the_upstream_and_its_timer() -> None:
    clock = Clock()
    response, d = reading(clock)
    response.protocol.dataReceived(b'{"partial": ')
    failures: list[Failure] = []
    d.addErrback(failures.append)
    d.cancel()
    assert response.transport.stopped
    assert failures and failures[0].check(CancelledError)
    assert clock.getDelayedCalls() == []
    # The connection's end afterwards changes nothing.
    response.protocol.connectionLost(Failure(ierror.ConnectionDone()))
    assert len(failures) == 1


def test_a_body_read_completes_and_times_out() -> None:
    clock = Clock()
    response, d = reading(clock)
    response.protocol.dataReceived(b"ok")
    response.protocol.connectionLost(Failure(ResponseDone()))
    assert d.result == b"ok"
    response, d = reading(clock)
    clock.advance(5)
    failures: list[Failure] = []
    d.addErrback(failures.append)
    assert failures[0].check(RelayError) and failures[0].value.type == "timeout_error"
    assert response.transport.stopped


def _wrapped(kind: type, *reasons: BaseException) -> Failure:
    return Failure(kind([Failure(r) for r in reasons]))


@pytest.mark.parametrize(("failure", "message"), [
    (Failure(ierror.ConnectionRefusedError()), "connection refused"),
    (Failure(ierror.DNSLookupError("nowhere.invalid")), "the host name could not be resolved"),
    (_wrapped(ResponseNeverReceived, ierror.ConnectionDone()),
     "the upstream closed the connection before answering"),
    (_wrapped(ResponseNeverReceived, ierror.ConnectionLost()),
     "the connection was reset before the upstream answered"),
    (_wrapped(ResponseNeverReceived,
              SSL.Error([("SSL routines", "", "certificate verify failed")])),
     "TLS failure (certificate verify failed)"),
    (_wrapped(RequestTransmissionFailed, ierror.ConnectionLost()),
     "sending the request failed: the connection was reset"),
    (_wrapped(ResponseFailed, ierror.ConnectionDone()),
     "the answer broke off in its response headers: the upstream closed the connection"),
])
def test_transport_failures_in_plain_words(failure: Failure, message: str) -> None:
    error = transport_error(failure, "up")
    assert error.status == 502
    assert error.message == f"up: upstream connection failed: {message}"


def test_an_unexpected_failure_names_no_internals() -> None:
    error = transport_error(Failure(KeyError("boom")), "up")
    assert error.message == "up: the upstream request failed"
