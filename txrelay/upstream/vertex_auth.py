# -*- test-case-name: tests.test_vertex_auth -*-
"""
OAuth access tokens for Vertex AI, through google-auth: an async auth hook.

A service-account JSON file (``credentials_file``) or Application Default Credentials give
google-auth's credentials object; :class:`VertexTokens` keeps one access token and refreshes
it a margin before it expires. google-auth's refresh is blocking I/O (its ``requests``
transport), so it runs in the reactor's thread pool, and concurrent requests that find the
token stale wait for the one refresh in flight rather than starting their own. Each new
token is registered with the redactor (:func:`txrelay.redact.register_secret`) and the one it
replaces is forgotten.

:class:`VertexAuth` is the :class:`~txrelay.upstream.codec.UpstreamAuth` hook of the
``gemini`` kind on Vertex AI, written to be reused by any other transport that talks to
Vertex (Claude on Vertex).
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

from txrelay.logs import RelayLogger
from txrelay.protocol.errors import RelayError
from txrelay.redact import default_redactor, register_secret

log = RelayLogger()

T = TypeVar("T")

#: The scope Vertex AI wants.
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
#: Refresh this many seconds before the token expires.
DEFAULT_MARGIN = 300.0
#: What a token without a known expiry is taken to last (Google's are issued for an hour).
_ASSUMED_LIFETIME = 3000.0
#: Fields a service-account file must have for the JWT-bearer exchange.
_SERVICE_ACCOUNT_FIELDS = ("client_email", "private_key", "token_uri")
#: The environment variable Application Default Credentials read a file from first.
ADC_ENV = "GOOGLE_APPLICATION_CREDENTIALS"


class CredentialFileError(ValueError):
    """A credentials file that cannot be used; the message names the file and the reason."""


def _read_json(path: str, what: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        reason = (e.strerror or "cannot be read").lower()
        raise CredentialFileError(f"{what} {path}: cannot be read ({reason})") from None
    except UnicodeDecodeError:
        raise CredentialFileError(f"{what} {path}: not a JSON file (not UTF-8 text)") from None
    try:
        info = json.loads(text)
    except ValueError as e:
        line = getattr(e, "lineno", None)
        at = f" (line {line})" if line else ""
        raise CredentialFileError(f"{what} {path}: not valid JSON{at}") from None
    if not isinstance(info, dict):
        raise CredentialFileError(f"{what} {path}: not a JSON object")
    return info


def load_service_account(path: str, scopes: tuple[str, ...] = (CLOUD_PLATFORM_SCOPE,)) -> Any:
    """
    google-auth service-account credentials from the JSON key file at ``path``.

    :raises CredentialFileError: the file is unreadable, not JSON, not a service account key,
        lacks a field the token exchange needs, or holds a private key that does not load.
        The message names the file; it never quotes the key.
    """
    from google.oauth2 import service_account

    what = "service account file"
    info = _read_json(path, what)
    kind = info.get("type")
    if kind != "service_account":
        shown = f"type {kind!r}" if isinstance(kind, str) else "no \"type\""
        raise CredentialFileError(
            f"{what} {path}: not a service account key ({shown}; expected "
            "\"service_account\", as downloaded from IAM → Service accounts → Keys)")
    missing = [f for f in _SERVICE_ACCOUNT_FIELDS
               if not isinstance(info.get(f), str) or not info.get(f)]
    if missing:
        raise CredentialFileError(f"{what} {path}: missing field(s) {', '.join(missing)}")
    try:
        return service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            info, scopes=list(scopes))
    except (ValueError, TypeError, KeyError):
        raise CredentialFileError(f"{what} {path}: its private_key is not a valid PEM "
                                  "private key") from None


def check_adc_file(env: Mapping[str, str]) -> str | None:
    """
    The problem with the file ``GOOGLE_APPLICATION_CREDENTIALS`` names, if it is set and
    cannot be an Application Default Credentials file (None when fine or unset).
    """
    path = env.get(ADC_ENV)
    if not path:
        return None
    try:
        info = _read_json(path, f"{ADC_ENV} file")
    except CredentialFileError as e:
        return str(e)
    if not isinstance(info.get("type"), str):
        return f"{ADC_ENV} file {path}: no \"type\" field (not a Google credentials file)"
    if info["type"] == "service_account":
        try:
            load_service_account(path)
        except CredentialFileError as e:
            return f"{ADC_ENV}: {e}"
    return None


def application_default_credentials(
        scopes: tuple[str, ...] = (CLOUD_PLATFORM_SCOPE,)) -> Any:
    """Application Default Credentials (blocking: may probe the metadata server)."""
    import google.auth

    credentials, _project = google.auth.default(scopes=list(scopes))
    return credentials


def _requests_transport(timeout: float) -> Any:
    """google-auth's ``requests`` transport with one session and a bounded timeout."""
    import google.auth.transport.requests as transport
    import requests

    class _Request(transport.Request):
        def __call__(self, url: str, method: str = "GET", body: Any = None,
                     headers: Any = None, timeout: Any = None, **kwargs: Any) -> Any:
            return super().__call__(  # type: ignore[no-untyped-call]
                url, method=method, body=body, headers=headers,
                timeout=limit if timeout is None else min(timeout, limit), **kwargs)

    limit = timeout
    return _Request(session=requests.Session())


def _describe_refresh_failure(error: BaseException) -> RelayError:
    """A failed token refresh as the client's error: plain words, no secrets."""
    from google.auth import exceptions

    detail = error.args[0] if error.args and isinstance(error.args[0], str) else ""
    detail = " ".join(detail.split())[:200]
    if isinstance(error, exceptions.TransportError):
        return RelayError("api_error", "could not reach the Google OAuth token endpoint to "
                          f"refresh the Vertex AI access token{': ' + detail if detail else ''}",
                          status=502)
    if isinstance(error, exceptions.DefaultCredentialsError):
        return RelayError("authentication_error", "no Google credentials for Vertex AI: set "
                          "options.credentials_file or configure Application Default "
                          "Credentials (GOOGLE_APPLICATION_CREDENTIALS)")
    if isinstance(error, exceptions.RefreshError):
        return RelayError("authentication_error", "Google refused to issue a Vertex AI access "
                          "token for the relay's credentials"
                          f"{' (' + detail + ')' if detail else ''}")
    return RelayError("api_error", "refreshing the Vertex AI access token failed", status=502)


@attrs.frozen
class Token:
    """An access token and when (reactor time) it should be replaced."""

    value: str = attrs.field(repr=False)
    refresh_at: float


def _refresh_blocking(credentials: Any, request: Any) -> tuple[str, float | None]:
    """Run in a worker thread: refresh ``credentials``; the token and its lifetime."""
    credentials.refresh(request)
    token = credentials.token
    if not isinstance(token, str) or not token:
        raise RuntimeError("google-auth returned no access token")
    expiry = getattr(credentials, "expiry", None)
    lifetime: float | None = None
    if isinstance(expiry, datetime.datetime):
        now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        if expiry.tzinfo is not None:
            expiry = expiry.astimezone(datetime.UTC).replace(tzinfo=None)
        lifetime = (expiry - now).total_seconds()
    return token, lifetime


@attrs.define(eq=False)
class VertexTokens:
    """
    One access token, refreshed ``margin`` seconds before it expires, one refresh at a time.

    :param credentials: google-auth credentials, or None with ``make_credentials``.
    :param make_credentials: makes the credentials, in the worker thread on first use
        (Application Default Credentials may probe the metadata server).
    :param run_in_thread: runs a blocking callable off the reactor thread (default: the
        reactor's thread pool).
    """

    reactor: Any
    credentials: Any = None
    make_credentials: Callable[[], Any] | None = None
    margin: float = DEFAULT_MARGIN
    #: Seconds the token endpoint may take (google-auth's own default is 120).
    timeout: float = 30.0
    run_in_thread: Callable[[Callable[[], Any]], Deferred[Any]] | None = None
    #: Names the token source in logs (the provider's name).
    label: str = "vertex"
    request_factory: Callable[[float], Any] = _requests_transport
    #: How many refreshes have been started (for logs and tests).
    refreshes: int = 0
    _token: Token | None = None
    _refreshing: bool = False
    _waiters: list[Deferred[str]] = attrs.Factory(list)
    _request: Any = None

    def _in_thread(self, f: Callable[[], T]) -> Deferred[T]:
        if self.run_in_thread is not None:
            return self.run_in_thread(f)
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), f)

    def _fresh(self) -> Token | None:
        token = self._token
        if token is not None and self.reactor.seconds() < token.refresh_at:
            return token
        return None

    def get(self) -> Deferred[str]:
        """The current token; refreshes first (sharing one refresh) when it is due."""
        token = self._fresh()
        if token is not None:
            d: Deferred[str] = Deferred()
            d.callback(token.value)
            return d

        def forget(waiter: Deferred[str]) -> None:
            # Only this waiter goes; the refresh goes on for the others and the next request.
            if waiter in self._waiters:
                self._waiters.remove(waiter)

        waiter: Deferred[str] = Deferred(forget)
        self._waiters.append(waiter)
        if not self._refreshing:
            self._refreshing = True
            Deferred.fromCoroutine(self._refresh())
        return waiter

    def invalidate(self, value: str) -> None:
        """The upstream rejected ``value``: the next :meth:`get` refreshes (if still current)."""
        if self._token is not None and self._token.value == value:
            self._token = attrs.evolve(self._token, refresh_at=float("-inf"))

    async def _refresh(self) -> None:
        self.refreshes += 1
        try:
            token, lifetime = await self._in_thread(self._blocking_refresh)
        except Exception as e:
            error = e if isinstance(e, RelayError) else _describe_refresh_failure(e)
            if not isinstance(e, RelayError):
                log.warn("{label}: refreshing the Vertex AI access token failed: {reason}",
                         label=self.label, reason=error.message)
            self._settle(error)
            return
        if lifetime is None:
            lifetime = _ASSUMED_LIFETIME
        margin = min(self.margin, max(lifetime, 0.0) / 2)
        old = self._token
        register_secret(token)
        self._token = Token(token, self.reactor.seconds() + lifetime - margin)
        if old is not None and old.value != token:
            default_redactor.discard(old.value)
        log.info("{label}: Vertex AI access token refreshed (valid for {lifetime:.0f} s)",
                 label=self.label, lifetime=lifetime)
        self._settle(token)

    def _blocking_refresh(self) -> tuple[str, float | None]:
        """In the worker thread: credentials (made on first use), a transport, the refresh."""
        if self.credentials is None:
            assert self.make_credentials is not None
            self.credentials = self.make_credentials()
        if self._request is None:
            self._request = self.request_factory(self.timeout)
        return _refresh_blocking(self.credentials, self._request)

    def close(self) -> None:
        """Close the token endpoint's pooled connections (at shutdown)."""
        session = getattr(self._request, "session", None)
        if session is not None and not self._refreshing:
            session.close()

    def _settle(self, outcome: str | RelayError) -> None:
        self._refreshing = False
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if waiter.called:
                continue
            if isinstance(outcome, str):
                waiter.callback(outcome)
            else:
                waiter.errback(outcome)


@attrs.define(eq=False)
class VertexAuth:
    """
    The auth hook for Vertex AI: ``Authorization: Bearer <access token>``.

    :meth:`rejected` is for the transport: Vertex answered 401 to these headers, so the next
    :meth:`headers` fetches a new token (mapping.md §11.3: refresh and retry once).
    """

    tokens: VertexTokens
    #: Sent as ``x-goog-user-project`` (quota and billing project) when set.
    quota_project: str | None = None

    async def headers(self) -> Mapping[str, str]:
        """The credential headers; may wait for a token refresh."""
        token = await self.tokens.get()
        out = {"authorization": f"Bearer {token}"}
        if self.quota_project:
            out["x-goog-user-project"] = self.quota_project
        return out

    def close(self) -> None:
        """Release what the token source holds."""
        self.tokens.close()

    def rejected(self, headers: Mapping[str, str]) -> bool:
        """Forget the token in ``headers``; whether a retry with a new one makes sense."""
        value = headers.get("authorization", "")
        if value.startswith("Bearer "):
            self.tokens.invalidate(value[len("Bearer "):])
            return True
        return False


def vertex_auth(reactor: Any, *, credentials_file: str | None,
                margin: float = DEFAULT_MARGIN, timeout: float = 30.0,
                quota_project: str | None = None,
                env: Mapping[str, str] | None = None, label: str = "vertex") -> VertexAuth:
    """
    The Vertex auth hook for a service-account file, or Application Default Credentials.

    :raises CredentialFileError: the credentials file (or the file
        ``GOOGLE_APPLICATION_CREDENTIALS`` names) cannot be used; checked now, at start.
    """
    if credentials_file is not None:
        tokens = VertexTokens(reactor, load_service_account(credentials_file),
                              margin=margin, timeout=timeout, label=label)
    else:
        problem = check_adc_file(os.environ if env is None else env)
        if problem is not None:
            raise CredentialFileError(problem)
        tokens = VertexTokens(reactor, make_credentials=application_default_credentials,
                              margin=margin, timeout=timeout, label=label)
    return VertexAuth(tokens, quota_project=quota_project)
