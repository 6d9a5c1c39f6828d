"""The SSRF-safe fetcher in memory: checked addresses, pinning, redirects, caps, time."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from txrelay.stages.toolintercept.addresses import parse_networks
from txrelay.stages.toolintercept.fetch import (
    Fetched,
    FetchError,
    FetchPolicy,
    PinnedEndpoints,
    SafeFetcher,
)


def resolver(table: dict[str, list[str]], seen: list[str] | None = None) -> Any:
    async def resolve(host: str, port: int) -> list[str]:
        if seen is not None:
            seen.append(host)
        return table[host]
    return resolve


class Run:
    """One fetch on a memory reactor; ``serve`` answers the latest connection."""

    def __init__(self, url: str, table: dict[str, list[str]], **policy: Any) -> None:
        self.reactor = MemoryReactorClock()
        self.lookups: list[str] = []
        fetcher = SafeFetcher(self.reactor, FetchPolicy(**policy),
                              resolver(table, self.lookups))
        self.result: list[Fetched | Failure] = []
        Deferred.fromCoroutine(fetcher.fetch(url)).addBoth(self.result.append)
        self.transports: list[StringTransport] = []

    def connected_to(self) -> list[tuple[str, int]]:
        return [(c[0], c[1]) for c in self.reactor.tcpClients]

    def serve(self, response: bytes) -> bytes:
        """Answer the newest connection attempt with ``response``; returns the request."""
        factory = self.reactor.tcpClients[len(self.transports)][2]
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        self.transports.append(transport)
        protocol.makeConnection(transport)
        request = transport.value()
        protocol.dataReceived(response)
        return request

    def error(self) -> FetchError:
        assert self.result and isinstance(self.result[0], Failure), self.result
        value = self.result[0].value
        assert isinstance(value, FetchError)
        return value

    def fetched(self) -> Fetched:
        assert self.result and isinstance(self.result[0], Fetched), self.result
        return self.result[0]


OK = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
      b"Connection: close\r\n\r\nhello")


def test_connects_to_the_checked_address_with_the_names_host_header() -> None:
    run = Run("http://example.test:8080/page", {"example.test": ["93.184.216.34"]})
    assert run.connected_to() == [("93.184.216.34", 8080)]
    request = run.serve(OK)
    assert request.startswith(b"GET /page HTTP/1.1\r\n")
    assert b"\r\nHost: example.test:8080\r\n" in request
    assert run.fetched().body == b"hello" and run.lookups == ["example.test"]


@pytest.mark.parametrize("addresses", [["10.0.0.5"], ["93.184.216.34", "127.0.0.1"],
                                       ["169.254.169.254"], ["::ffff:127.0.0.1"]])
def test_a_name_with_any_refused_address_is_never_contacted(addresses: list[str]) -> None:
    run = Run("http://inside.test/", {"inside.test": addresses})
    assert run.error().code == "url_not_allowed"
    assert run.connected_to() == []


def test_literal_addresses_are_checked_without_resolving() -> None:
    run = Run("http://[::1]:80/", {})
    assert run.error().code == "url_not_allowed" and run.lookups == []


def test_every_redirect_is_checked_again() -> None:
    run = Run("http://example.test/", {"example.test": ["93.184.216.34"],
                                       "metadata.test": ["169.254.169.254"]})
    run.serve(b"HTTP/1.1 302 Found\r\nLocation: http://metadata.test/latest\r\n"
              b"Content-Length: 0\r\n\r\n")
    assert run.error().code == "url_not_allowed"
    assert run.lookups == ["example.test", "metadata.test"]
    assert len(run.connected_to()) == 1


def test_redirects_are_bounded() -> None:
    run = Run("http://example.test/0", {"example.test": ["93.184.216.34"]}, max_redirects=2)
    for n in range(3):
        run.serve(f"HTTP/1.1 301 Moved\r\nLocation: /{n + 1}\r\nContent-Length: 0\r\n\r\n"
                  .encode())
    assert run.error().code == "url_not_accessible"
    assert "more than 2 redirects" in str(run.error())


def test_allow_networks_open_a_range() -> None:
    run = Run("http://intranet.test/", {"intranet.test": ["10.1.2.3"]},
              allow_networks=parse_networks(["10.0.0.0/8"]))
    assert run.connected_to() == [("10.1.2.3", 80)]
    run.serve(OK)
    assert run.fetched().status == 200


def test_size_is_capped_by_length_and_while_reading() -> None:
    run = Run("http://example.test/", {"example.test": ["93.184.216.34"]}, max_bytes=4)
    run.serve(OK)  # Content-Length: 5
    assert run.error().code == "content_too_large"
    run = Run("http://example.test/", {"example.test": ["93.184.216.34"]}, max_bytes=4)
    run.serve(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    assert run.error().code == "content_too_large"
    assert run.transports[0].producerState == "stopped"  # a TCP transport closes here


def test_http_errors_and_rate_limits() -> None:
    for status, code in ((404, "url_not_accessible"), (429, "too_many_requests")):
        run = Run("http://example.test/", {"example.test": ["93.184.216.34"]})
        run.serve(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode())
        assert run.error().code == code


def test_the_whole_fetch_is_bounded_in_time() -> None:
    run = Run("http://example.test/", {"example.test": ["93.184.216.34"]}, timeout=5)
    run.reactor.advance(5)
    assert run.error().code == "url_not_accessible"
    assert not [c for c in run.reactor.getDelayedCalls() if c.active()]


@pytest.mark.parametrize("url", ["ftp://example.test/x", "file:///etc/passwd", "http:///x"])
def test_only_http_urls(url: str) -> None:
    assert Run(url, {}).error().code == "invalid_tool_input"


def test_https_is_pinned_too_and_verifies_the_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from txrelay.stages.toolintercept import fetch

    names: list[str] = []
    real = fetch.optionsForClientTLS

    def options(hostname: str) -> Any:
        names.append(hostname)
        return real(hostname)

    monkeypatch.setattr(fetch, "optionsForClientTLS", options)
    reactor = MemoryReactorClock()
    endpoint = PinnedEndpoints(reactor, parse_networks(["93.184.216.34/32"])[0][0], 3)

    class URI:
        scheme, host, port = b"https", b"example.test", 443

    endpoint.endpointForURI(URI()).connect(_Factory())
    host, port = reactor.tcpClients[0][:2]
    assert (host, port) == ("93.184.216.34", 443)
    assert names == ["example.test"]  # SNI and the certificate check use the name


class _Factory:
    def buildProtocol(self, addr: Any) -> Any:
        return None

    def doStart(self) -> None:
        pass

    def doStop(self) -> None:
        pass
