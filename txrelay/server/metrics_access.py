# -*- test-case-name: tests.test_metrics_access -*-
"""
Who may read ``GET /metrics`` (issue 8.7): it shows every client key's name and its token
counts, so it is not served to whoever can reach the API port.

* By default the main listeners serve it to peers on loopback (and over Unix sockets) only.
* ``server.metrics_listen`` adds endpoints that serve ``/metrics`` alone, to whoever can
  connect (the endpoint is the access control: bind it to loopback or an internal network);
  the main listeners then serve it to nobody without an admin key.
* An admin key (``server.admin_keys``, given like client keys) sent as
  ``Authorization: Bearer`` or ``x-api-key`` unlocks it on the main listeners from anywhere.

A reverse proxy on the same host makes every client a loopback peer: set ``metrics_listen``
there (or ``metrics = false``).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Mapping
from typing import Any

import attrs
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from txrelay.metrics import CONTENT_TYPE, Metrics
from txrelay.protocol.errors import RelayError, not_found
from txrelay.protocol.ids import request_id
from txrelay.protocol.jsoncodec import dumps
from txrelay.stages.auth import presented_key


def is_local_peer(address: object) -> bool:
    """Whether a connection comes from this host: a loopback address or a Unix socket."""
    if isinstance(address, UNIXAddress):
        return True
    if not isinstance(address, IPv4Address | IPv6Address):
        return False
    try:
        ip = ipaddress.ip_address(address.host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


@attrs.frozen
class MetricsAccess:
    """The rule for ``/metrics`` on the main listeners."""

    #: Admin key name → SHA-256 digest.
    admin_digests: Mapping[str, bytes] = attrs.field(factory=dict)
    #: Whether loopback peers need no key (false once ``metrics_listen`` is set).
    loopback: bool = True

    def denied(self, request: Request) -> RelayError | None:
        """``None`` when ``request`` may read the metrics, else the error to answer."""
        if self.loopback and is_local_peer(request.getClientAddress()):
            return None
        headers = {k.decode("latin-1").lower(): b", ".join(v).decode("latin-1")
                   for k, v in request.requestHeaders.getAllRawHeaders()}
        key = presented_key(headers)
        if key is not None and self.admin_digests:
            digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
            matched = False
            for expected in self.admin_digests.values():  # compare all: constant time
                matched |= hmac.compare_digest(digest, expected)
            if matched:
                return None
            return RelayError("authentication_error", "invalid admin key for /metrics")
        where = ("on the metrics listener (server.metrics_listen)" if not self.loopback
                 else "to loopback peers")
        return RelayError(
            "permission_error",
            f"/metrics is served {where}, or with an admin key (server.admin_keys)")


def write_error(request: Request, error: RelayError, rid: str) -> bytes:
    """Set up ``request`` for an Anthropic-shaped error; the body to return."""
    body = dumps(error.body(rid))
    request.setResponseCode(error.status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"content-length", str(len(body)).encode("ascii"))
    return b"" if request.method == b"HEAD" else body


@attrs.define(eq=False)
class MetricsResource(Resource):
    """Serves ``GET /metrics`` alone (the ``metrics_listen`` endpoints)."""

    metrics: Metrics
    isLeaf = True

    def __attrs_post_init__(self) -> None:
        Resource.__init__(self)

    def render(self, request: Request) -> bytes:
        rid = request_id()
        request.setHeader(b"request-id", rid.encode("ascii"))
        path = (request.path or b"").rstrip(b"/")
        if path != b"/metrics":
            return write_error(request, not_found("this listener serves /metrics only"), rid)
        if request.method not in (b"GET", b"HEAD"):
            return write_error(request, RelayError(
                "invalid_request_error", "method not allowed here; use GET", status=405), rid)
        request.setHeader(b"content-type", CONTENT_TYPE)
        body = self.metrics.render()
        return b"" if request.method == b"HEAD" else body


class MetricsSite(Site):
    """The site of a metrics listener (no access log: scrapes every few seconds are noise)."""

    def __init__(self, metrics: Metrics, reactor: Any, timeout: float = 30) -> None:
        super().__init__(MetricsResource(metrics), timeout=timeout,  # type: ignore[no-untyped-call]
                         reactor=reactor)

    def log(self, request: Any) -> None:
        pass
