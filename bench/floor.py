"""
The floor: a bare Twisted pass-through relay, no parsing and no translation.

``python bench/floor.py PORT UPSTREAM_BASE --client treq|agent`` listens on 127.0.0.1:PORT and
relays every POST to ``UPSTREAM_BASE + path`` with the same body and headers it needs
(content-type, authorization), then relays the upstream's status, content-type and body
back as it arrives, with the upstream body transport registered as the client request's
streaming producer (backpressure, as bench/README.md and the Twisted notes §3.2 describe).

Any relay on this stack (twisted.web in front, Twisted's HTTP client behind) pays at least
this much per request and per chunk, so bench/instr.py reports txrelay's cost as a multiple
of it. ``--client treq`` uses treq with ``unbuffered=True`` (what txrelay uses); ``--client
agent`` uses a plain :class:`~twisted.web.client.Agent` with a pool. Neither sets
``TCP_NODELAY`` nor logs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

reactor: Any = _reactor


@implementer(IBodyProducer)
class _Body:
    """A request body in memory, written at once (headers and body in one send)."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        consumer.write(self.body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class _Pipe(Protocol):
    """The upstream body, written to the client as it arrives."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.gone = False
        request.notifyFinish().addErrback(self._gone)

    def _gone(self, _f: Failure) -> None:
        self.gone = True

    def connectionMade(self) -> None:
        self.request.registerProducer(self.transport, True)

    def dataReceived(self, data: bytes) -> None:
        self.request.write(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if not self.gone:
            self.request.unregisterProducer()
            self.request.finish()


class Forward(Resource):
    """POST anything: forwarded upstream, answer relayed."""

    isLeaf = True

    def __init__(self, base: str, client: str) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.base = base.rstrip("/")
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 256
        self.agent = Agent(reactor, pool=self.pool)
        self.treq: Any = None
        if client == "treq":
            from treq.client import HTTPClient
            self.treq = HTTPClient(self.agent)

    def render_GET(self, request: Request) -> bytes:
        return b"ok"

    def render_POST(self, request: Request) -> Any:
        body = request.content.read() if request.content is not None else b""
        url = self.base + request.uri.decode("ascii")
        auth = request.getHeader("authorization") or ""
        if self.treq is not None:
            d = self.treq.request("POST", url, data=_Body(body), unbuffered=True,
                                  headers={"content-type": "application/json",
                                           "authorization": auth})
        else:
            d = self.agent.request(b"POST", url.encode("ascii"), Headers({
                b"content-type": [b"application/json"],
                b"authorization": [auth.encode("latin-1")]}), _Body(body))

        def answer(response: Any) -> None:
            request.setResponseCode(response.code)
            for value in response.headers.getRawHeaders(b"content-type", []):
                request.setHeader(b"content-type", value)
            response.deliverBody(_Pipe(request))

        def failed(f: Failure) -> None:
            request.setResponseCode(502)
            request.write(f.getErrorMessage().encode())
            request.finish()

        d.addCallbacks(answer, failed)
        return NOT_DONE_YET


class _QuietSite(Site):
    def log(self, request: Any) -> None:
        pass


def main() -> int:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("port", type=int)
    p.add_argument("upstream", help="base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--client", choices=("treq", "agent"), default="treq")
    args = p.parse_args()
    site = _QuietSite(Forward(args.upstream, args.client))  # type: ignore[no-untyped-call]
    reactor.listenTCP(args.port, site,
                      backlog=4096, interface="127.0.0.1")
    print(f"floor ({args.client}) listening on 127.0.0.1:{args.port}", flush=True)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
