"""
Vertex AI access tokens: refreshed a margin before expiry, one refresh shared by concurrent
requests, off the reactor thread, registered with the redactor; bad credential files named.
"""

from __future__ import annotations

import datetime
import json
import queue
import threading
from pathlib import Path
from typing import Any

import attrs
import pytest
from google.auth import exceptions as gexc
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from tests.fakegemini import FakeGemini, service_account_file
from txrelay.protocol.errors import RelayError
from txrelay.redact import default_redactor
from txrelay.upstream.vertex_auth import (
    ADC_ENV,
    CredentialFileError,
    VertexAuth,
    VertexTokens,
    check_adc_file,
    load_service_account,
    vertex_auth,
)


@attrs.define
class FakeCredentials:
    """google-auth credentials whose refresh hands out numbered tokens."""

    lifetime: float = 3600.0
    refreshed: int = 0
    fail_with: BaseException | None = None
    token: str | None = None
    expiry: datetime.datetime | None = None
    threads: list[str] = attrs.Factory(list)

    def refresh(self, request: Any) -> None:
        self.threads.append(threading.current_thread().name)
        if self.fail_with is not None:
            raise self.fail_with
        self.refreshed += 1
        self.token = f"ya29.unit-token-{self.refreshed}"
        now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        self.expiry = now + datetime.timedelta(seconds=self.lifetime)


@attrs.define
class ManualThreads:
    """Runs "thread" work only when the test says so: concurrency made deterministic."""

    pending: list[tuple[Any, Deferred[Any]]] = attrs.Factory(list)

    def __call__(self, f: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append((f, d))
        return d

    def run_all(self) -> None:
        work, self.pending = self.pending, []
        for f, d in work:
            try:
                d.callback(f())
            except Exception:
                d.errback(Failure())


def tokens(clock: Clock, creds: FakeCredentials, threads: ManualThreads,
           margin: float = 300) -> VertexTokens:
    return VertexTokens(clock, creds, margin=margin, run_in_thread=threads,
                        request_factory=lambda timeout: object())


def results(ds: list[Deferred[str]]) -> list[Any]:
    out: list[Any] = []
    for d in ds:
        d.addBoth(out.append)
    return out


def test_concurrent_requests_share_one_refresh() -> None:
    clock, creds, threads = Clock(), FakeCredentials(), ManualThreads()
    source = tokens(clock, creds, threads)
    waiting = [source.get() for _ in range(20)]
    assert len(threads.pending) == 1 and source.refreshes == 1
    threads.run_all()
    assert results(waiting) == ["ya29.unit-token-1"] * 20
    assert creds.refreshed == 1
    # While it is fresh, no refresh at all.
    assert results([source.get()]) == ["ya29.unit-token-1"]
    assert threads.pending == []


def test_refresh_a_margin_before_expiry_and_discard_the_old_token() -> None:
    clock, creds, threads = Clock(), FakeCredentials(lifetime=3600), ManualThreads()
    source = tokens(clock, creds, threads, margin=300)
    d = source.get()
    threads.run_all()
    assert results([d]) == ["ya29.unit-token-1"]
    assert default_redactor.found_in("x ya29.unit-token-1 y")
    clock.advance(3600 - 300 - 2)
    assert results([source.get()]) == ["ya29.unit-token-1"]
    assert threads.pending == []
    clock.advance(3)  # inside the margin: refresh before it expires
    d = source.get()
    assert len(threads.pending) == 1
    threads.run_all()
    assert results([d]) == ["ya29.unit-token-2"]
    assert default_redactor.found_in("ya29.unit-token-2")
    assert not default_redactor.found_in("ya29.unit-token-1")  # the old one is forgotten


def test_a_short_lived_token_is_not_refreshed_on_every_request() -> None:
    clock, creds, threads = Clock(), FakeCredentials(lifetime=120), ManualThreads()
    source = tokens(clock, creds, threads, margin=300)
    source.get()
    threads.run_all()
    clock.advance(50)  # margin is capped at half the lifetime
    assert results([source.get()]) == ["ya29.unit-token-1"] and threads.pending == []


def test_a_failed_refresh_fails_every_waiter_and_the_next_request_tries_again() -> None:
    clock, threads = Clock(), ManualThreads()
    creds = FakeCredentials(fail_with=gexc.RefreshError(
        "invalid_grant: Invalid JWT Signature.", {"error": "invalid_grant"}))
    source = tokens(clock, creds, threads)
    out = results([source.get(), source.get()])
    threads.run_all()
    assert len(out) == 2 and all(isinstance(f, Failure) and f.check(RelayError) for f in out)
    error = out[0].value
    assert error.type == "authentication_error" and error.status == 401
    assert "Invalid JWT Signature" in error.message and "Traceback" not in error.message
    creds.fail_with = gexc.TransportError("Connection refused")
    out = results([source.get()])
    assert len(threads.pending) == 1
    threads.run_all()
    assert out[0].value.type == "api_error" and out[0].value.status == 502
    assert "token endpoint" in out[0].value.message
    creds.fail_with = None
    out = results([source.get()])
    threads.run_all()
    assert out == ["ya29.unit-token-1"]


def test_a_waiter_that_leaves_does_not_cancel_the_shared_refresh() -> None:
    clock, creds, threads = Clock(), FakeCredentials(), ManualThreads()
    source = tokens(clock, creds, threads)
    leaving, staying = source.get(), source.get()
    leaving.cancel()
    assert results([leaving])[0].check(CancelledError)
    threads.run_all()
    assert results([staying]) == ["ya29.unit-token-1"]


def test_a_rejected_token_is_refreshed_on_the_next_request() -> None:
    clock, creds, threads = Clock(), FakeCredentials(), ManualThreads()
    auth = VertexAuth(tokens(clock, creds, threads), quota_project="billing-proj")
    d = Deferred.fromCoroutine(auth.headers())
    threads.run_all()
    headers = results([d])[0]
    assert headers == {"authorization": "Bearer ya29.unit-token-1",
                       "x-goog-user-project": "billing-proj"}
    assert auth.rejected(headers)
    d = Deferred.fromCoroutine(auth.headers())
    threads.run_all()
    assert results([d])[0]["authorization"] == "Bearer ya29.unit-token-2"
    # A rejection of an older token does not throw away the new one.
    auth.rejected(headers)
    assert results([Deferred.fromCoroutine(auth.headers())])[0]["authorization"] == \
        "Bearer ya29.unit-token-2"


@attrs.define
class ThreadReactor:
    """Enough of a reactor for deferToThreadPool: callFromThread queues to the test thread."""

    pool: ThreadPool
    calls: queue.Queue[Any] = attrs.Factory(queue.Queue)
    clock: Clock = attrs.Factory(Clock)

    def getThreadPool(self) -> ThreadPool:
        return self.pool

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:
        self.calls.put((f, args, kwargs))

    def seconds(self) -> float:
        return self.clock.seconds()


def test_the_refresh_runs_in_the_reactor_thread_pool() -> None:
    pool = ThreadPool(1, 1, name="vertex-test-pool")
    pool.start()
    try:
        reactor = ThreadReactor(pool)
        creds = FakeCredentials()
        source = VertexTokens(reactor, creds, request_factory=lambda timeout: object())
        out = results([source.get()])
        f, args, kwargs = reactor.calls.get(timeout=10)
        f(*args, **kwargs)
        assert out == ["ya29.unit-token-1"]
        assert creds.threads == ["PoolThread-vertex-test-pool-0"]
        assert threading.current_thread().name not in creds.threads
    finally:
        pool.stop()


def test_real_google_auth_against_the_fake_token_endpoint(tmp_path: Path) -> None:
    """The google-auth service-account code path, its requests transport, our fake endpoint."""
    fake = FakeGemini().start()
    try:
        path = fake.add_service_account(tmp_path / "sa.json")
        creds = load_service_account(str(path))
        threads = ManualThreads()
        source = VertexTokens(Clock(), creds, run_in_thread=threads)
        out = results([source.get()])
        threads.run_all()
        assert isinstance(out[0], str) and out[0].startswith("ya29.fake-access-token-")
        (request,) = fake.token_requests
        assert request.rejected is None
        assert type(source._request).__module__ == "txrelay.upstream.vertex_auth"
        assert "requests" in type(source._request).__mro__[1].__module__
    finally:
        fake.stop()


# --- bad credential files --------------------------------------------------------------------


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_bad_credential_files_are_named_with_the_reason(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    service_account_file(good, "http://127.0.0.1:9/token")
    info = json.loads(good.read_text())
    cases = {
        str(tmp_path / "missing.json"): "cannot be read (no such file or directory)",
        _write(tmp_path / "garbage.json", "not json {"): "not valid JSON (line 1)",
        _write(tmp_path / "list.json", "[1, 2]"): "not a JSON object",
        _write(tmp_path / "user.json", json.dumps({"type": "authorized_user",
                                                   "client_id": "x"})):
            "not a service account key (type 'authorized_user'",
        _write(tmp_path / "partial.json", json.dumps(
            {k: v for k, v in info.items() if k not in ("private_key", "token_uri")})):
            "missing field(s) private_key, token_uri",
        _write(tmp_path / "badkey.json", json.dumps({**info, "private_key": "-----BEGIN "
                                                     "PRIVATE KEY-----\nAAAA\n-----END "
                                                     "PRIVATE KEY-----\n"})):
            "its private_key is not a valid PEM private key",
    }
    for path, reason in cases.items():
        with pytest.raises(CredentialFileError) as caught:
            load_service_account(path)
        assert str(caught.value).startswith(f"service account file {path}: ")
        assert reason in str(caught.value)
        assert "BEGIN" not in str(caught.value)
    assert load_service_account(str(good)).service_account_email == info["client_email"]


def test_application_default_credentials_file_is_checked_at_start(tmp_path: Path) -> None:
    assert check_adc_file({}) is None
    bad = _write(tmp_path / "adc.json", "{")
    problem = check_adc_file({ADC_ENV: bad})
    assert problem is not None and bad in problem and ADC_ENV in problem
    with pytest.raises(CredentialFileError, match="not valid JSON"):
        vertex_auth(None, credentials_file=None, env={ADC_ENV: bad})
    user = _write(tmp_path / "user.json", json.dumps({"type": "authorized_user"}))
    assert check_adc_file({ADC_ENV: user}) is None  # gcloud's user credentials are fine
    auth = vertex_auth(None, credentials_file=None, env={})
    assert auth.tokens.credentials is None and auth.tokens.make_credentials is not None


def test_close_releases_the_token_endpoint_session(tmp_path: Path) -> None:
    fake = FakeGemini().start()
    try:
        path = fake.add_service_account(tmp_path / "sa.json")
        threads = ManualThreads()
        auth = VertexAuth(VertexTokens(Clock(), load_service_account(str(path)),
                                       run_in_thread=threads))
        d = Deferred.fromCoroutine(auth.headers())
        threads.run_all()
        assert results([d])[0]["authorization"].startswith("Bearer ya29.")
        session = auth.tokens._request.session
        assert any(a.poolmanager.pools for a in session.adapters.values())  # a kept connection
        auth.close()
        assert all(not a.poolmanager.pools for a in session.adapters.values())
    finally:
        fake.stop()
