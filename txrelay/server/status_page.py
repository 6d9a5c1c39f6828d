# -*- test-case-name: tests.integration.test_status_page_browser -*-
"""
The operator's status page (issue 11.9): ``GET /admin`` is one HTML page, no build step and
no external asset, that polls ``GET /admin/status`` (JSON) every few seconds.

A browser cannot send a Bearer header, so the page takes the admin key once through a form
(``POST /admin/login``) and answers with an ``HttpOnly; SameSite=Strict`` cookie holding a
session token ``name:expiry:mac`` where ``mac`` is an HMAC-SHA256, under a secret drawn at
start-up, of the name, the expiry and that admin key's digest. The key itself is never
stored in the browser; a restart, or a reload that drops or changes the key, ends every
session. The cookie opens the page and ``/admin/status`` only (reads); drain and reload
still need the key in a header. ``POST /admin/logout`` clears it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs

import attrs
from twisted.web.server import Request

from txrelay import __version__
from txrelay.catalog import Route

COOKIE = b"txrelay_admin"
SESSION_SECONDS = 12 * 3600
#: Requests remembered per provider (the latency and error window).
WINDOW = 200
#: Providers and key names tracked; they are configured names, this only bounds a mistake.
MAX_NAMES = 256
_OTHER = "(other)"


@attrs.define
class _Sample:
    at: float
    seconds: float
    error: str | None


@attrs.define
class _Usage:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0


def _local_day(now: float) -> tuple[int, int, int]:
    t = time.localtime(now)
    return (t.tm_year, t.tm_mon, t.tm_mday)


@attrs.define(eq=False)
class StatusRecorder:
    """Bounded, in-memory: each provider's recent requests, each key's usage today."""

    providers: dict[str, deque[_Sample]] = attrs.Factory(dict)
    usage: dict[str, _Usage] = attrs.Factory(dict)
    day: tuple[int, int, int] | None = None

    def observe(self, *, route: Route | None, client: str | None, status: int,
                seconds: float, usage: Mapping[str, Any] | None, error_type: str | None,
                now: float) -> None:
        """Record one finished request (``now`` is wall-clock seconds)."""
        if route is not None:
            name = route.provider if (route.provider in self.providers
                                      or len(self.providers) < MAX_NAMES) else _OTHER
            window = self.providers.setdefault(name, deque(maxlen=WINDOW))
            # Upstream health: a 5xx/529 is the provider's (or the relay's) failure; a 4xx
            # is the client's and says nothing about the provider.
            failed = status >= 500 and status != 499
            window.append(_Sample(now, seconds, (error_type or str(status)) if failed
                                  else None))
        if client is None:
            return
        today = _local_day(now)
        if today != self.day:
            self.day, self.usage = today, {}
        who = client if client in self.usage or len(self.usage) < MAX_NAMES else _OTHER
        entry = self.usage.setdefault(who, _Usage())
        entry.requests += 1
        for field in ("input_tokens", "output_tokens", "cache_read_input_tokens",
                      "cache_creation_input_tokens"):
            value = (usage or {}).get(field)
            if isinstance(value, int) and value > 0:
                setattr(entry, field, getattr(entry, field) + value)

    def snapshot(self, now: float) -> dict[str, Any]:
        """The ``providers`` and ``keys`` parts of ``/admin/status``."""
        providers = []
        for name, window in sorted(self.providers.items()):
            samples = list(window)
            errors = [s for s in samples if s.error is not None]
            durations = sorted(s.seconds for s in samples if s.error is None)
            recent = samples[-5:]
            if recent and all(s.error is not None for s in recent):
                health = "failing"
            elif any(s.error is not None and now - s.at < 300 for s in samples):
                health = "degraded"
            else:
                health = "ok"
            last = errors[-1] if errors else None
            providers.append({
                "provider": name, "health": health, "requests": len(samples),
                "errors": len(errors),
                "p50_ms": _quantile_ms(durations, 0.5), "p95_ms": _quantile_ms(durations, 0.95),
                "last_error": None if last is None else {
                    "type": last.error, "age_seconds": round(now - last.at, 1)},
            })
        if self.day is not None and self.day != _local_day(now):
            self.day, self.usage = _local_day(now), {}
        keys = [{"key": name, **attrs.asdict(u)} for name, u in sorted(self.usage.items())]
        return {"providers": providers, "window": WINDOW, "keys_today": keys}


def _quantile_ms(sorted_seconds: list[float], q: float) -> float | None:
    if not sorted_seconds:
        return None
    index = min(len(sorted_seconds) - 1, int(q * len(sorted_seconds)))
    return round(sorted_seconds[index] * 1000, 1)


#: Logged-out tokens remembered until they expire; past it the secret is renewed instead.
MAX_REVOKED = 4096
#: A hex session secret shared by processes that must accept each other's cookies (the
#: workers of ``server.workers``: their supervisor sets it); unset, each process draws one.
SECRET_ENV = "TXRELAY_ADMIN_SESSION_SECRET"


def _secret() -> bytes:
    try:
        shared = bytes.fromhex(os.environ.get(SECRET_ENV, ""))
    except ValueError:
        shared = b""
    return shared if len(shared) >= 32 else os.urandom(32)


@attrs.define(eq=False)
class Sessions:
    """
    HMAC session tokens standing for an admin key (never the key itself). Logging out
    revokes the token in this process (a copy of the cookie stops working too) until it
    would have expired anyway.
    """

    secret: bytes = attrs.Factory(_secret)
    #: Revoked tokens' MACs and their expiry.
    revoked: dict[str, int] = attrs.Factory(dict)

    def revoke(self, token: str, digests: Mapping[str, bytes], now: float) -> None:
        """End ``token``'s session (logout) if it is a valid one; memory stays bounded by
        :data:`MAX_REVOKED` (forged tokens are not remembered)."""
        if not self.valid(token, digests, now):
            return
        parts = token.rsplit(":", 2)
        if len(self.revoked) >= MAX_REVOKED:  # forget what expired anyway
            self.revoked = {mac: exp for mac, exp in self.revoked.items() if exp >= now}
        if len(self.revoked) >= MAX_REVOKED:  # a flood of logouts: end every session
            self.secret, self.revoked = os.urandom(32), {}
            return
        self.revoked[parts[2]] = int(parts[1])

    def issue(self, name: str, digest: bytes, now: float) -> str:
        expiry = int(now) + SESSION_SECONDS
        return f"{name}:{expiry}:{self._mac(name, expiry, digest)}"

    def valid(self, token: str, digests: Mapping[str, bytes], now: float) -> bool:
        """Whether ``token`` is unexpired and minted for a currently configured key."""
        parts = token.rsplit(":", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            return False
        name, expiry_text, mac = parts
        expiry = int(expiry_text)
        digest = digests.get(name)
        if digest is None or expiry < now or mac in self.revoked:
            return False
        return hmac.compare_digest(mac, self._mac(name, expiry, digest))

    def _mac(self, name: str, expiry: int, digest: bytes) -> str:
        message = f"{name}\0{expiry}\0".encode("utf-8", "surrogatepass") + digest
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()


@attrs.define(eq=False)
class StatusPage:
    """The page, its login, and ``/admin/status``; shared by every admin listener."""

    recorder: StatusRecorder = attrs.Factory(StatusRecorder)
    sessions: Sessions = attrs.Factory(Sessions)
    #: The configuration generation serving new requests.
    generation: Callable[[], int] = lambda: 0

    def session_ok(self, request: Request, digests: Mapping[str, bytes]) -> bool:
        """Whether ``request`` carries a valid session cookie."""
        token = request.getCookie(COOKIE)
        if not token:
            return False
        return self.sessions.valid(token.decode("latin-1"), digests, time.time())

    def login(self, request: Request, digests: Mapping[str, bytes]) -> bytes:
        """``POST /admin/login``: a valid key sets the cookie and goes to the page."""
        body = request.content.read() if request.content is not None else b""
        form = parse_qs(body.decode("utf-8", "replace"))
        key = (form.get("key") or [""])[0]
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        found: str | None = None
        for name, expected in digests.items():  # compare all: constant time
            if hmac.compare_digest(digest, expected):
                found = name
        if not key or found is None:
            request.setResponseCode(401)
            return self.login_form(request, "That is not an admin key.")
        token = self.sessions.issue(found, digests[found], time.time())
        cookie = (f"{COOKIE.decode()}={token}; Path=/admin; Max-Age={SESSION_SECONDS}; "
                  "HttpOnly; SameSite=Strict")
        if request.isSecure():
            cookie += "; Secure"
        request.setHeader(b"set-cookie", cookie.encode("latin-1"))
        request.setResponseCode(303)
        request.setHeader(b"location", b"/admin")
        return b""

    def logout(self, request: Request, digests: Mapping[str, bytes] | None = None) -> bytes:
        """``POST /admin/logout``: end the session and clear the cookie."""
        token = request.getCookie(COOKIE)
        if token and digests is not None:
            self.sessions.revoke(token.decode("latin-1"), digests, time.time())
        request.setHeader(b"set-cookie", COOKIE + b"=; Path=/admin; Max-Age=0; HttpOnly; "
                          b"SameSite=Strict")
        request.setResponseCode(303)
        request.setHeader(b"location", b"/admin")
        return b""

    def login_form(self, request: Request, message: str = "") -> bytes:
        """The login form (HTML)."""
        return self._html(request, _LOGIN.replace("{message}", _escape(message)))

    def page(self, request: Request) -> bytes:
        """The status page (HTML)."""
        return self._html(request, _PAGE)

    def status(self, lifecycle: Any, streams: list[dict[str, Any]],
               now: float) -> dict[str, Any]:
        """``GET /admin/status``."""
        return {
            "version": __version__, "config_generation": self.generation(),
            "draining": lifecycle.draining, "stopping": lifecycle.stopping,
            "live": len(streams), "streams": streams,
            **self.recorder.snapshot(now),
        }

    def _html(self, request: Request, text: str) -> bytes:
        data = text.encode("utf-8")
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"content-length", str(len(data)).encode("ascii"))
        # Inline script and style only: nothing may load from elsewhere.
        request.setHeader(b"content-security-policy",
                          b"default-src 'none'; script-src 'unsafe-inline'; "
                          b"style-src 'unsafe-inline'; connect-src 'self'; "
                          b"form-action 'self'; frame-ancestors 'none'")
        request.setHeader(b"x-frame-options", b"DENY")
        return b"" if request.method == b"HEAD" else data


def _escape(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))


_STYLE = """<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em}h2{font-size:1.05em;margin-top:1.5em}
table{border-collapse:collapse;min-width:40em}td,th{border-bottom:1px solid #ddd;
padding:.25em .6em;text-align:left}th{background:#f4f4f4}
.ok{color:#185c18}.degraded{color:#9a6700}.failing,.draining{color:#b00020;font-weight:bold}
#meta span{margin-right:1.5em}.muted{color:#777}
</style>"""

_LOGIN = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>txrelay admin: log in</title>""" + _STYLE + """</head><body>
<h1>txrelay status</h1><p class="failing">{message}</p>
<form method="post" action="/admin/login">
<label>Admin key <input type="password" name="key" id="key" autocomplete="off"></label>
<button type="submit" id="login">Log in</button></form>
<p class="muted">The key is checked once; the browser keeps a session cookie, not the key.</p>
</body></html>"""

_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>txrelay status</title>""" + _STYLE + """</head><body>
<h1>txrelay status</h1>
<div id="meta"><span>State: <b id="drain-state">loading…</b></span>
<span>Config generation: <b id="generation">?</b></span>
<span>Version: <b id="version">?</b></span>
<span class="muted">Updated: <span id="updated">never</span></span></div>
<h2>Live streams (<span id="live-count">0</span>)</h2>
<table><thead><tr><th>Request id</th><th>Key</th><th>Model</th><th>Provider</th>
<th>Age s</th><th>Bytes</th><th>Last event</th></tr></thead><tbody id="streams"></tbody></table>
<h2>Providers (last <span id="window">?</span> requests each)</h2>
<table><thead><tr><th>Provider</th><th>Health</th><th>Requests</th><th>Errors</th>
<th>p50 ms</th><th>p95 ms</th><th>Last error</th></tr></thead><tbody id="providers"></tbody>
</table>
<h2>Usage today (since local midnight)</h2>
<table><thead><tr><th>Key</th><th>Requests</th><th>Input tokens</th><th>Output tokens</th>
<th>Cache read</th><th>Cache write</th></tr></thead><tbody id="keys"></tbody></table>
<form method="post" action="/admin/logout"><p><button type="submit">Log out</button></p></form>
<script>
"use strict";
function cell(row, value) {
  const td = document.createElement("td");
  td.textContent = value === null || value === undefined ? "-" : String(value);
  row.appendChild(td);
  return td;
}
function fill(id, items, columns, decorate) {
  const body = document.getElementById(id);
  body.replaceChildren();
  for (const item of items) {
    const row = document.createElement("tr");
    columns.forEach((c) => cell(row, typeof c === "function" ? c(item) : item[c]));
    if (decorate) decorate(row, item);
    body.appendChild(row);
  }
}
async function refresh() {
  let status;
  try {
    const response = await fetch("/admin/status", {credentials: "same-origin",
                                                   cache: "no-store"});
    if (response.status === 401 || response.status === 403) { location.reload(); return; }
    status = await response.json();
  } catch (e) {
    document.getElementById("updated").textContent = "failed: " + e;
    return;
  }
  const state = document.getElementById("drain-state");
  state.textContent = status.stopping ? "stopping (draining)"
                    : status.draining ? "draining" : "serving";
  state.className = status.draining ? "draining" : "ok";
  document.getElementById("generation").textContent = status.config_generation;
  document.getElementById("version").textContent = status.version;
  document.getElementById("live-count").textContent = status.live;
  document.getElementById("window").textContent = status.window;
  fill("streams", status.streams, ["request_id", "key",
       (s) => s.model_requested + (s.model_served && s.model_served !== s.model_requested
                                   ? " → " + s.model_served : ""),
       "provider", "age_seconds", "bytes_written", "last_event"],
       (row, s) => { row.dataset.requestId = s.request_id; });
  fill("providers", status.providers, ["provider", "health", "requests", "errors",
       "p50_ms", "p95_ms",
       (p) => p.last_error ? p.last_error.type + " (" + p.last_error.age_seconds + " s ago)"
                           : null],
       (row, p) => { row.children[1].className = p.health; });
  fill("keys", status.keys_today, ["key", "requests", "input_tokens", "output_tokens",
       "cache_read_input_tokens", "cache_creation_input_tokens"]);
  document.getElementById("updated").textContent = new Date().toLocaleTimeString();
}
refresh();
setInterval(refresh, 2000);
</script></body></html>"""
