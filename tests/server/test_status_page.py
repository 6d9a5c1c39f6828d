"""
The status page's parts in memory (issue 11.9), on fake clocks: session tokens (issue,
expiry, tampering, a key removed or changed, a restart), the cookie flow through the admin
resource (login, the page and ``/admin/status`` with the cookie, logout, forged and expired
cookies), and the recorder (per-provider health and latency, per-key usage today with the
local-midnight rollover, bounded memory).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.server.memory import connect
from tests.server.test_admin import ADMIN_KEY, relay
from txrelay.catalog import Route
from txrelay.server.status_page import (
    MAX_NAMES,
    MAX_REVOKED,
    SECRET_ENV,
    SESSION_SECONDS,
    WINDOW,
    Sessions,
    StatusRecorder,
)

DIGEST = hashlib.sha256(b"the-admin-key").digest()
DIGESTS = {"ops": DIGEST}
T0 = 1_800_000_000.0


# -- Sessions -------------------------------------------------------------------------------

def test_a_session_is_valid_until_its_expiry_and_not_a_second_after() -> None:
    s = Sessions()
    token = s.issue("ops", DIGEST, T0)
    assert s.valid(token, DIGESTS, T0)
    assert s.valid(token, DIGESTS, T0 + SESSION_SECONDS)
    assert not s.valid(token, DIGESTS, T0 + SESSION_SECONDS + 1)


def test_the_token_names_the_key_but_never_holds_it() -> None:
    token = Sessions().issue("ops", DIGEST, T0)
    name, expiry, mac = token.rsplit(":", 2)
    assert name == "ops" and int(expiry) == int(T0) + SESSION_SECONDS
    assert "the-admin-key" not in token and DIGEST.hex() not in token and len(mac) == 64


def test_every_tampered_part_is_refused() -> None:
    s = Sessions()
    token = s.issue("ops", DIGEST, T0)
    name, expiry, mac = token.rsplit(":", 2)
    assert not s.valid(f"other:{expiry}:{mac}", {**DIGESTS, "other": DIGEST}, T0)
    assert not s.valid(f"{name}:{int(expiry) + 3600}:{mac}", DIGESTS, T0)  # a longer life
    for i in range(len(mac)):
        flipped = mac[:i] + ("0" if mac[i] != "0" else "1") + mac[i + 1:]
        assert not s.valid(f"{name}:{expiry}:{flipped}", DIGESTS, T0)
    assert not s.valid(f"{name}:{expiry}:{mac.upper()}", DIGESTS, T0)


def test_a_removed_or_changed_key_and_a_restart_end_the_session() -> None:
    s = Sessions()
    token = s.issue("ops", DIGEST, T0)
    assert not s.valid(token, {}, T0)  # a reload dropped the key
    assert not s.valid(token, {"ops": hashlib.sha256(b"rotated").digest()}, T0)
    assert not Sessions().valid(token, DIGESTS, T0)  # a new secret: the process restarted


def test_key_names_with_colons_and_non_ascii_work() -> None:
    s = Sessions()
    digests = {"ops:eu:1": DIGEST, "opérateur": DIGEST}
    for name in digests:
        assert s.valid(s.issue(name, DIGEST, T0), digests, T0)
    assert not s.valid(s.issue("ops:eu:1", DIGEST, T0).replace("ops:eu:1", "ops:eu:2"),
                       {**digests, "ops:eu:2": DIGEST}, T0)


def test_a_revoked_session_stays_refused_and_forged_ones_are_not_remembered() -> None:
    s = Sessions()
    token, other = s.issue("ops", DIGEST, T0), s.issue("ops", DIGEST, T0 + 1)
    s.revoke(token, DIGESTS, T0 + 5)
    assert not s.valid(token, DIGESTS, T0 + 6) and s.valid(other, DIGESTS, T0 + 6)
    s.revoke("ops:99999999999:" + "0" * 64, DIGESTS, T0)  # forged: nothing to remember
    assert list(s.revoked) == [token.rsplit(":", 1)[1]]


def test_revoked_entries_that_expired_make_room_before_the_secret_is_renewed() -> None:
    s = Sessions()
    for i in range(MAX_REVOKED):
        s.revoke(s.issue("ops", DIGEST, T0 + i), DIGESTS, T0 + i)
    assert len(s.revoked) == MAX_REVOKED
    later = T0 + MAX_REVOKED + SESSION_SECONDS + 1  # every one of them has expired
    late = s.issue("ops", DIGEST, later)
    s.revoke(late, DIGESTS, later)
    assert list(s.revoked) == [late.rsplit(":", 1)[1]]


def test_a_flood_of_logouts_renews_the_secret_instead_of_growing() -> None:
    s = Sessions()
    tokens = [s.issue("ops", DIGEST, T0 + i) for i in range(MAX_REVOKED + 1)]
    for t in tokens[:MAX_REVOKED]:
        s.revoke(t, DIGESTS, T0)
    assert len(s.revoked) == MAX_REVOKED
    survivor = tokens[MAX_REVOKED]
    assert s.valid(survivor, DIGESTS, T0)
    s.revoke(survivor, DIGESTS, T0)  # one more: every session ends, memory is freed
    assert s.revoked == {} and not s.valid(survivor, DIGESTS, T0)
    assert not s.valid(tokens[0], DIGESTS, T0)


@given(st.text(max_size=120))
def test_arbitrary_cookie_values_are_refused_without_raising(token: str) -> None:
    assert not Sessions(secret=b"k" * 32).valid(token, {"ops": DIGEST, "": DIGEST}, T0)


# -- the cookie flow through the admin resource ---------------------------------------------

def send(r: Any, method: str, path: str, *, body: bytes = b"",
         headers: tuple[str, ...] = ()) -> Any:
    conn = connect(r.service.site, closing_on=r.reactor)
    lines = [f"{method} {path} HTTP/1.1", "host: relay", f"content-length: {len(body)}",
             *headers]
    conn.send(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    return conn.response()


def login(r: Any, key: str) -> Any:
    body = f"key={key}".encode()
    return send(r, "POST", "/admin/login", body=body,
                headers=("content-type: application/x-www-form-urlencoded",))


def test_login_sets_a_strict_http_only_cookie_that_opens_the_page_and_status() -> None:
    r = relay()
    resp = login(r, ADMIN_KEY)
    assert resp.status == 303 and resp.headers["location"] == "/admin"
    cookie = resp.headers["set-cookie"]
    assert cookie.startswith("txrelay_admin=ops:") and ADMIN_KEY not in cookie
    for attribute in ("Path=/admin", f"Max-Age={SESSION_SECONDS}", "HttpOnly",
                      "SameSite=Strict"):
        assert attribute in cookie
    assert "Secure" not in cookie  # plain HTTP here; set over TLS
    jar = "cookie: " + cookie.split(";", 1)[0]
    page = send(r, "GET", "/admin", headers=(jar,))
    assert page.status == 200 and b'id="streams"' in page.body
    assert "default-src 'none'" in page.headers["content-security-policy"]
    status = send(r, "GET", "/admin/status", headers=(jar,))
    assert status.status == 200
    data = status.json()
    assert data["draining"] is False and data["live"] == 0 and data["window"] == WINDOW
    # The cookie reads; it does not act: drain and reload still need the key.
    assert send(r, "POST", "/admin/drain", headers=(jar,)).status == 401
    assert not r.service.lifecycle.draining


def test_a_wrong_key_a_forged_and_an_expired_cookie_get_the_login_form() -> None:
    r = relay()
    wrong = login(r, "not-the-key")
    assert wrong.status == 401 and "set-cookie" not in wrong.headers
    assert b"That is not an admin key." in wrong.body
    page = r.service.status_page
    digest = hashlib.sha256(ADMIN_KEY.encode()).digest()
    expired = page.sessions.issue("ops", digest, time.time() - SESSION_SECONDS - 60)
    forged = Sessions().issue("ops", digest, time.time())  # another secret
    for token in (expired, forged, "ops:99999999999:" + "0" * 64, "garbage"):
        jar = f"cookie: txrelay_admin={token}"
        form = send(r, "GET", "/admin", headers=(jar,))
        assert form.status == 200 and b'action="/admin/login"' in form.body
        assert b'id="streams"' not in form.body
        assert send(r, "GET", "/admin/status", headers=(jar,)).status == 401


def test_logout_clears_the_cookie_and_ends_the_session_on_the_server() -> None:
    r = relay()
    jar = "cookie: " + login(r, ADMIN_KEY).headers["set-cookie"].split(";", 1)[0]
    assert send(r, "GET", "/admin/status", headers=(jar,)).status == 200
    resp = send(r, "POST", "/admin/logout", headers=(jar,))
    assert resp.status == 303
    cookie = resp.headers["set-cookie"]
    assert cookie.startswith("txrelay_admin=;") and "Max-Age=0" in cookie
    # A copy of the old cookie (kept by an attacker, another tab) no longer opens anything.
    assert send(r, "GET", "/admin/status", headers=(jar,)).status == 401
    assert b'action="/admin/login"' in send(r, "GET", "/admin", headers=(jar,)).body
    # Logging out without a cookie is harmless.
    assert send(r, "POST", "/admin/logout").status == 303


# -- StatusRecorder -------------------------------------------------------------------------

def observe(rec: StatusRecorder, now: float, *, status: int = 200, seconds: float = 0.1,
            provider: str = "openai", client: str | None = "tester",
            usage: dict[str, Any] | None = None, error: str | None = None) -> None:
    rec.observe(route=Route("sonnet", provider, "gpt-x", None), client=client,
                status=status, seconds=seconds, usage=usage, error_type=error, now=now)


def only_provider(rec: StatusRecorder, now: float) -> dict[str, Any]:
    (p,) = rec.snapshot(now)["providers"]
    return p  # type: ignore[no-any-return]


def test_latency_quantiles_count_successes_only() -> None:
    rec = StatusRecorder()
    for i in range(1, 101):
        observe(rec, T0 + i, seconds=i / 100)
    observe(rec, T0 + 200, status=502, seconds=60, error="api_error")
    p = only_provider(rec, T0 + 201)
    assert p["requests"] == 101 and p["errors"] == 1
    assert p["p50_ms"] == 510.0 and p["p95_ms"] == 960.0  # the 60 s failure is left out
    assert p["last_error"] == {"type": "api_error", "age_seconds": 1.0}


def test_health_ok_degraded_failing_and_back() -> None:
    rec = StatusRecorder()
    observe(rec, T0)
    assert only_provider(rec, T0)["health"] == "ok"
    observe(rec, T0 + 1, status=529, error="overloaded_error")
    assert only_provider(rec, T0 + 2)["health"] == "degraded"
    for i in range(5):
        observe(rec, T0 + 3 + i, status=504, error="timeout_error")
    assert only_provider(rec, T0 + 9)["health"] == "failing"
    for i in range(5):
        observe(rec, T0 + 10 + i)
    assert only_provider(rec, T0 + 20)["health"] == "degraded"  # errors in the last 5 min
    assert only_provider(rec, T0 + 8 + 300)["health"] == "ok"


def test_client_errors_and_cancellations_are_not_the_providers_fault() -> None:
    rec = StatusRecorder()
    for status in (400, 401, 404, 413, 429, 499):
        observe(rec, T0, status=status, error="invalid_request_error")
    p = only_provider(rec, T0)
    assert p["errors"] == 0 and p["health"] == "ok" and p["last_error"] is None
    observe(rec, T0, status=500)  # no error type: the status stands for it
    assert only_provider(rec, T0)["last_error"]["type"] == "500"


def test_a_request_without_a_route_counts_for_its_key_only() -> None:
    rec = StatusRecorder()
    rec.observe(route=None, client="tester", status=401, seconds=0.0, usage=None,
                error_type="authentication_error", now=T0)
    snap = rec.snapshot(T0)
    assert snap["providers"] == [] and snap["keys_today"][0]["requests"] == 1


def test_usage_today_sums_tokens_per_key_and_ignores_junk() -> None:
    rec = StatusRecorder()
    observe(rec, T0, usage={"input_tokens": 10, "output_tokens": 5,
                            "cache_read_input_tokens": 100,
                            "cache_creation_input_tokens": 7})
    observe(rec, T0 + 1, usage={"input_tokens": 3, "output_tokens": -4,
                                "cache_read_input_tokens": "lots", "other": 9})
    observe(rec, T0 + 2, client="second")
    observe(rec, T0 + 3, client=None, usage={"input_tokens": 1000})  # no key: not counted
    keys = rec.snapshot(T0 + 4)["keys_today"]
    assert keys == [
        {"key": "second", "requests": 1, "input_tokens": 0, "output_tokens": 0,
         "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0},
        {"key": "tester", "requests": 2, "input_tokens": 13, "output_tokens": 5,
         "cache_read_input_tokens": 100, "cache_creation_input_tokens": 7},
    ]


def local_midnight() -> float:
    """A local midnight (the process's time zone), well inside a day of 24 hours."""
    return time.mktime((2026, 3, 10, 0, 0, 0, 0, 0, -1))


def test_usage_restarts_at_local_midnight_on_the_next_request_or_snapshot() -> None:
    midnight = local_midnight()
    rec = StatusRecorder()
    observe(rec, midnight - 5, usage={"input_tokens": 10})
    assert rec.snapshot(midnight - 1)["keys_today"][0]["input_tokens"] == 10
    observe(rec, midnight + 1, usage={"input_tokens": 2})  # the new day starts from zero
    (entry,) = rec.snapshot(midnight + 2)["keys_today"]
    assert entry["requests"] == 1 and entry["input_tokens"] == 2
    # With no request after midnight, the snapshot alone turns the day.
    assert rec.snapshot(midnight + 86400 + 10)["keys_today"] == []
    # Provider windows are recent requests, not a day: they survive midnight.
    assert only_provider(rec, midnight + 86400 + 10)["requests"] == 2


def test_memory_is_bounded_per_provider_and_in_names() -> None:
    rec = StatusRecorder()
    for i in range(WINDOW * 3):
        observe(rec, T0 + i, status=502 if i < WINDOW * 2 else 200, error="api_error")
    p = only_provider(rec, T0 + WINDOW * 3)
    assert p["requests"] == WINDOW and p["errors"] == 0  # the old failures rolled out
    for i in range(MAX_NAMES + 50):
        observe(rec, T0, provider=f"p{i}", client=f"k{i}")
    snap = rec.snapshot(T0)
    names = {p["provider"] for p in snap["providers"]}
    keys = {k["key"]: k["requests"] for k in snap["keys_today"]}
    assert len(names) == MAX_NAMES + 1 and "(other)" in names
    # "openai" and "tester" came first: 255 more names fit, the last 51 share "(other)".
    assert len(keys) == MAX_NAMES + 1 and keys["(other)"] == 51
    # A name seen before the cap keeps its own row.
    observe(rec, T0, provider="openai", client="tester")
    assert only_named(rec.snapshot(T0)["providers"], "openai")["requests"] == WINDOW


def only_named(providers: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (p,) = [p for p in providers if p["provider"] == name]
    return p


@pytest.mark.parametrize("status", [200, 529])
def test_snapshot_on_an_empty_recorder_and_single_samples(status: int) -> None:
    rec = StatusRecorder()
    assert rec.snapshot(T0) == {"providers": [], "window": WINDOW, "keys_today": []}
    observe(rec, T0, status=status, seconds=0.25, error="overloaded_error")
    p = only_provider(rec, T0)
    if status == 200:
        assert p["p50_ms"] == p["p95_ms"] == 250.0 and p["health"] == "ok"
    else:
        assert p["p50_ms"] is None and p["health"] == "failing"  # all it has seen failed


def test_processes_given_one_secret_accept_each_others_cookies(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, "ab" * 32)
    token = Sessions().issue("ops", DIGEST, T0)
    assert Sessions().valid(token, DIGESTS, T0)  # another worker, the same secret
    for junk in ("", "not hex", "ab" * 8):  # unset, malformed, too short: one's own secret
        monkeypatch.setenv(SECRET_ENV, junk)
        assert not Sessions().valid(token, DIGESTS, T0)
