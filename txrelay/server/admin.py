# -*- test-case-name: tests.server.test_admin -*-
"""
The operator's endpoints (issue 11.1, 11.4), each behind an admin key (``server.admin_keys``,
sent as ``Authorization: Bearer`` or ``x-api-key``):

* ``POST /admin/drain`` starts a drain without exiting: ``/health/ready`` answers 503 and new
  API requests 529 ``overloaded_error`` with ``retry-after``, live ones finish;
  ``DELETE /admin/drain`` ends it (not once the process is shutting down); ``GET`` tells.
* ``GET /admin/streams`` lists the live requests: request id, key name, model requested and
  served, provider, age, bytes written and the last event sent.
* ``POST /admin/reload`` reloads the configuration file, as SIGHUP does.
* ``GET /admin`` is the status page, ``GET /admin/status`` its JSON, ``POST /admin/login``
  its login form (:mod:`txrelay.server.status_page`; a session cookie opens those two).

They are served on the main listeners, or, once ``server.admin_listen`` is set, on those
endpoints alone (the main listeners then answer 403). No admin key configured: 403.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import attrs
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from txrelay.protocol.errors import RelayError, not_found
from txrelay.protocol.ids import request_id
from txrelay.protocol.jsoncodec import dumps
from txrelay.server.metrics_access import write_error
from txrelay.server.resource import InFlight, Lifecycle
from txrelay.server.status_page import StatusPage
from txrelay.stages.auth import presented_key


@attrs.frozen
class ReloadOutcome:
    """What a configuration reload did."""

    applied: bool
    #: Why it was refused: every problem of the new file (``path: message``).
    problems: tuple[str, ...] = ()
    #: Changed settings that need a restart and were left as they run.
    ignored: tuple[str, ...] = ()
    #: The configuration generation now serving new requests.
    generation: int = 0
    #: ``ssl:`` listeners whose new certificate was refused (they keep the old one).
    certificates: tuple[str, ...] = ()


class AdminControl(Protocol):
    """What the admin endpoints act on (the :class:`~txrelay.service.RelayService`)."""

    def start_admin_drain(self) -> None:
        """Drain without exiting."""

    def end_admin_drain(self) -> RelayError | None:
        """Serve again; the error to answer when it cannot (the process is stopping)."""

    def reload(self) -> ReloadOutcome:
        """Reload the configuration file."""


@attrs.frozen
class AdminAccess:
    """Who may use the admin endpoints on one listener."""

    #: Admin key name → SHA-256 digest.
    admin_digests: Mapping[str, bytes] = attrs.field(factory=dict)
    #: False on the main listeners once ``server.admin_listen`` is set.
    served_here: bool = True

    def denied(self, request: Request) -> RelayError | None:
        """``None`` when ``request`` carries an admin key, else the error to answer."""
        if not self.served_here:
            return RelayError("permission_error", "the admin endpoints are served on the "
                              "admin listener (server.admin_listen), not here")
        if not self.admin_digests:
            return RelayError("permission_error", "the admin endpoints need an admin key, and "
                              "none is configured (server.admin_keys)")
        headers = {k.decode("latin-1").lower(): b", ".join(v).decode("latin-1")
                   for k, v in request.requestHeaders.getAllRawHeaders()}
        key = presented_key(headers)
        if key is None:
            return RelayError("authentication_error", "the admin endpoints need an admin key "
                              "(Authorization: Bearer or x-api-key)")
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        matched = False
        for expected in self.admin_digests.values():  # compare all: constant time
            matched |= hmac.compare_digest(digest, expected)
        return None if matched else RelayError("authentication_error", "invalid admin key")


def describe(call: InFlight, now: float) -> dict[str, Any]:
    """One live request as ``GET /admin/streams`` lists it."""
    facts = call.summary()
    route = facts.route if facts is not None else None
    return {
        "request_id": call.request_id,
        "operation": facts.operation if facts is not None else None,
        "stream": call.streaming,
        "key": facts.client if facts is not None else None,
        "model_requested": route.requested if route is not None else None,
        "model_served": route.upstream_model if route is not None else None,
        "provider": route.provider if route is not None else None,
        "age_seconds": round(now - call.started, 3),
        "bytes_written": call.stats.bytes_written,
        "last_event": call.stats.last_event,
        "config_generation": call.generation,
    }


def _methods(allowed: Sequence[bytes]) -> RelayError:
    names = " or ".join(m.decode() for m in allowed)
    return RelayError("invalid_request_error", f"method not allowed here; use {names}",
                      status=405)


@attrs.define(eq=False)
class AdminResource(Resource):
    """Answers ``/admin/…``: drain, streams, reload."""

    control: AdminControl
    lifecycle: Lifecycle
    reactor: Any
    access: AdminAccess = attrs.Factory(AdminAccess)
    #: The status page (``GET /admin``, ``/admin/status``, ``/admin/login``); 404 if unset.
    status_page: StatusPage | None = None
    isLeaf = True

    def __attrs_post_init__(self) -> None:
        Resource.__init__(self)

    def render(self, request: Request) -> bytes:
        rid = request_id()
        request.setHeader(b"request-id", rid.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        path = (request.path or b"").rstrip(b"/")
        method = request.method or b""
        if self.status_page is not None and (
                answer := self._page(request, path, method, rid)) is not None:
            return answer
        if (denied := self.access.denied(request)) is not None:
            return write_error(request, denied, rid)
        try:
            body = self._answer(path, method)
        except RelayError as e:
            return write_error(request, e, rid)
        data = dumps(body)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"content-length", str(len(data)).encode("ascii"))
        return b"" if method == b"HEAD" else data

    def _page(self, request: Request, path: bytes, method: bytes, rid: str) -> bytes | None:
        """The status page's answer, or ``None`` to go on as an API admin request."""
        page = self.status_page
        assert page is not None
        if path not in (b"/admin", b"/admin/status", b"/admin/login", b"/admin/logout"):
            return None
        if not self.access.served_here or not self.access.admin_digests:
            return None  # the API's 403 says why
        digests = self.access.admin_digests
        if path == b"/admin/login" and method == b"POST":
            return page.login(request, digests)
        if path == b"/admin/logout" and method == b"POST":
            return page.logout(request, digests)
        if method not in (b"GET", b"HEAD"):
            return write_error(request, _methods((b"GET",)), rid)
        with_session = page.session_ok(request, digests)
        if path == b"/admin/status":
            if not with_session and self.access.denied(request) is not None:
                return None  # the API's 401
            data = dumps(page.status(self.lifecycle, self._streams(), time.time()))
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"content-length", str(len(data)).encode("ascii"))
            return b"" if method == b"HEAD" else data
        if path == b"/admin/login" or not with_session:
            return page.login_form(request)
        return page.page(request)

    def _streams(self) -> list[dict[str, Any]]:
        now = self.reactor.seconds()
        return [describe(c, now) for c in sorted(self.lifecycle.live, key=lambda c: c.started)]

    def _answer(self, path: bytes, method: bytes) -> Any:
        if path == b"/admin/drain":
            if method == b"POST":
                self.control.start_admin_drain()
            elif method == b"DELETE":
                if (error := self.control.end_admin_drain()) is not None:
                    raise error
            elif method not in (b"GET", b"HEAD"):
                raise _methods((b"GET", b"POST", b"DELETE"))
            return self._drain_state()
        if path == b"/admin/streams":
            if method not in (b"GET", b"HEAD"):
                raise _methods((b"GET",))
            streams = self._streams()
            return {"draining": self.lifecycle.draining, "count": len(streams),
                    "streams": streams}
        if path == b"/admin/reload":
            if method != b"POST":
                raise _methods((b"POST",))
            outcome = self.control.reload()
            if not outcome.applied:
                raise RelayError(
                    "invalid_request_error",
                    "the configuration was not reloaded, the running one is kept: "
                    + "; ".join(outcome.problems))
            return {"reloaded": True, "config_generation": outcome.generation,
                    "ignored": list(outcome.ignored),
                    "certificates_refused": list(outcome.certificates)}
        raise not_found("no such admin endpoint; there are /admin/drain, /admin/streams and "
                        "/admin/reload")

    def _drain_state(self) -> dict[str, Any]:
        return {"draining": self.lifecycle.draining, "stopping": self.lifecycle.stopping,
                "live": len(self.lifecycle.live)}


class AdminSite(Site):
    """The site of an ``admin_listen`` endpoint: ``/admin/…`` alone."""

    def __init__(self, resource: AdminResource, reactor: Any, timeout: float = 30) -> None:
        super().__init__(_AdminOnly(resource), timeout=timeout,  # type: ignore[no-untyped-call]
                         reactor=reactor)

    def log(self, request: Any) -> None:
        pass


@attrs.define(eq=False)
class _AdminOnly(Resource):
    admin: AdminResource
    isLeaf = True

    def __attrs_post_init__(self) -> None:
        Resource.__init__(self)

    def render(self, request: Request) -> bytes:
        path = request.path or b""
        if path == b"/admin" or path.startswith(b"/admin/"):
            return self.admin.render(request)
        rid = request_id()
        request.setHeader(b"request-id", rid.encode("ascii"))
        return write_error(request, not_found("this listener serves /admin/… only"), rid)
