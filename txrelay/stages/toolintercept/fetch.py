# -*- test-case-name: tests.stages.toolintercept.test_fetch -*-
"""
A web fetch that cannot be turned against the operator's network.

For every hop (the URL, then each redirect, at most ``max_redirects``): the scheme must be
http or https, the domain rules must allow the URL, the host name is resolved once and
*every* address it resolves to must pass :func:`~.addresses.refusal`; the connection then
goes to the address that was checked (never a second resolution), with the ``Host`` header
and TLS server name (SNI, certificate check) of the name. Bodies are capped in size, the
whole fetch in time.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast
from urllib.parse import urljoin, urlsplit

import attrs
from treq.client import HTTPClient
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.threads import deferToThreadPool
from twisted.web.client import Agent
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from txrelay.stages.toolintercept.addresses import IPAddress, IPNetwork, refusal
from txrelay.stages.toolintercept.httpio import (
    BodyFailed,
    BodyTooLarge,
    NoCookies,
    QuietPool,
    bounded,
    discard,
    header,
    read_limited,
)

#: Resolves a host name to its addresses (``host``, ``port``) → address strings.
Resolver = Callable[[str, int], Awaitable[list[str]]]

_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class FetchError(Exception):
    """A fetch that failed; ``code`` is a ``web_fetch_tool_result_error`` code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@attrs.frozen
class FetchPolicy:
    """The limits of one fetch."""

    timeout: float = 20.0
    connect_timeout: float = 10.0
    max_bytes: int = 10 * 1024 * 1024
    max_redirects: int = 5
    allow_networks: tuple[IPNetwork, ...] = ()
    user_agent: str = "txrelay-web-fetch/0.1"


@attrs.frozen
class Fetched:
    """A fetched document."""

    url: str
    status: int
    content_type: str
    body: bytes


def system_resolver(reactor: Any) -> Resolver:
    """``getaddrinfo`` in the reactor's thread pool (honours ``/etc/hosts``)."""

    async def resolve(host: str, port: int) -> list[str]:
        def lookup() -> list[str]:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            return list(dict.fromkeys(str(info[4][0]) for info in infos))

        result: list[str] = await deferToThreadPool(reactor, reactor.getThreadPool(), lookup)
        return result

    return resolve


@implementer(IAgentEndpointFactory)
@attrs.frozen
class PinnedEndpoints:
    """Endpoints that connect to one checked address, whatever the URI's host is."""

    reactor: Any
    address: IPAddress
    timeout: float

    def endpointForURI(self, uri: Any) -> Any:
        host = uri.host.decode("idna") if isinstance(uri.host, bytes) else str(uri.host)
        endpoint_type = TCP6ClientEndpoint if self.address.version == 6 else TCP4ClientEndpoint
        endpoint = endpoint_type(self.reactor, str(self.address), uri.port,
                                 timeout=self.timeout)
        if uri.scheme == b"https":
            return wrapClientTLS(optionsForClientTLS(host), endpoint)
        return endpoint


@attrs.define(eq=False)
class SafeFetcher:
    """Fetches URLs under a :class:`FetchPolicy`; see the module docstring."""

    reactor: Any
    policy: FetchPolicy = FetchPolicy()
    resolve: Resolver | None = None

    async def fetch(self, url: str, allowed: Callable[[str], bool] = lambda _: True
                    ) -> Fetched:
        """
        ``url``'s document; raises :class:`FetchError` with a ``web_fetch`` error code.

        :param allowed: the request's domain rules, applied to every hop.
        """
        try:
            return await bounded(self.reactor, self.policy.timeout,
                                 lambda: self._fetch(url, allowed))
        except defer.TimeoutError:
            raise FetchError("url_not_accessible",
                             f"no complete answer within {self.policy.timeout:g} s") from None

    async def _fetch(self, url: str, allowed: Callable[[str], bool]) -> Fetched:
        for hop in range(self.policy.max_redirects + 1):
            if not allowed(url):
                raise FetchError("url_not_allowed", f"{url} is not allowed by the domain rules")
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                code = "invalid_tool_input" if hop == 0 else "url_not_accessible"
                raise FetchError(code, f"{url!r} is not an http(s) URL")
            try:
                port = parts.port or (443 if parts.scheme == "https" else 80)
            except ValueError:
                raise FetchError("invalid_tool_input", f"{url!r} has a bad port") from None
            address = await self._checked_address(parts.hostname, port)
            response = await self._get(url, address)
            location = header(response, "location")
            if response.code in _REDIRECTS and location:
                discard(response)
                url = urljoin(url, location.strip())
                continue
            return await self._document(url, response)
        raise FetchError("url_not_accessible",
                         f"more than {self.policy.max_redirects} redirects")

    async def _checked_address(self, host: str, port: int) -> IPAddress:
        try:
            literal: IPAddress | None = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            literal = None
        if literal is not None:
            candidates: Sequence[IPAddress] = [literal]
        else:
            resolve = self.resolve or system_resolver(self.reactor)
            try:
                found = await resolve(host, port)
            except (OSError, UnicodeError) as e:
                raise FetchError("url_not_accessible", f"cannot resolve {host}: {e}") from None
            candidates = [ipaddress.ip_address(a.split("%")[0]) for a in found]
            if not candidates:
                raise FetchError("url_not_accessible", f"{host} has no address")
        for candidate in candidates:  # one refused address refuses the name
            reason = refusal(candidate, self.policy.allow_networks)
            if reason is not None:
                raise FetchError("url_not_allowed", f"{host}: {reason}")
        return candidates[0]

    async def _get(self, url: str, address: IPAddress) -> Any:
        pool = QuietPool(self.reactor, persistent=False)
        agent = Agent.usingEndpointFactory(
            self.reactor, PinnedEndpoints(self.reactor, address, self.policy.connect_timeout),
            pool=pool)
        http = HTTPClient(agent, cookiejar=cast("Any", NoCookies()))
        headers: dict[str | bytes, list[str | bytes]] = {
            "user-agent": [self.policy.user_agent],
            "accept": ["text/html, application/xhtml+xml, application/pdf, text/plain;q=0.9, "
                       "*/*;q=0.5"]}
        try:
            return await http.request("GET", url, headers=headers, allow_redirects=False,
                                      unbuffered=True)
        except defer.CancelledError:
            raise
        except Exception as e:
            raise FetchError("url_not_accessible",
                             f"cannot connect to {urlsplit(url).hostname}: {e}") from None

    async def _document(self, url: str, response: Any) -> Fetched:
        if response.code == 429:
            discard(response)
            raise FetchError("too_many_requests", f"{url}: HTTP 429")
        if response.code >= 400 or response.code < 200:
            discard(response)
            raise FetchError("url_not_accessible", f"{url}: HTTP {response.code}")
        length = header(response, "content-length")
        if length is not None and length.isdigit() and int(length) > self.policy.max_bytes:
            discard(response)
            raise FetchError("content_too_large", f"{url}: {length} bytes")
        try:
            body = await read_limited(response, self.policy.max_bytes)
        except BodyTooLarge:
            raise FetchError("content_too_large",
                             f"{url}: more than {self.policy.max_bytes} bytes") from None
        except BodyFailed as e:
            raise FetchError("url_not_accessible", f"{url}: {e}") from None
        return Fetched(url, response.code, header(response, "content-type") or "", body)
