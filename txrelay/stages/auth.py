# -*- test-case-name: tests.test_catalog_and_stages,tests.state.test_keys -*-
"""
The ``auth`` stage: named client keys from the file, checked in constant time, and the
keys managed in the shared store (:mod:`txrelay.keys`), checked against this relay's copy.

The authenticated key is left in ``exchange.client`` (its name) and in
``exchange.state["key"]`` (a :class:`~txrelay.keys.KeyInfo`: name, source, groups,
allowed models) for the stages after this one.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

import attrs
from zope.interface import implementer

from txrelay.interfaces import IHeaderCheck
from txrelay.keys import KeyInfo, ManagedKey, ManagedKeys, shared_managed_keys
from txrelay.pipeline import Exchange, Proceed, Reply
from txrelay.protocol.errors import RelayError
from txrelay.redact import register_secret


@attrs.frozen
class AuthOptions:
    """Options of the ``auth`` stage."""

    #: Names of the keys this stage admits; empty admits every configured key.
    allow: tuple[str, ...] = ()
    #: Admit the keys managed with ``txrelay keys`` (with ``[state] kind = "redis"``).
    managed: bool = True
    #: Seconds between refreshes of this relay's copy of the managed keys: a disabled or
    #: rotated key stops working within this long.
    refresh: float = 5.0


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The client's key: ``x-api-key``, else ``Authorization: Bearer`` (R-X1)."""
    key = headers.get("x-api-key")
    if key:
        return key.strip()
    auth = headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


@implementer(IHeaderCheck)
@attrs.frozen
class AuthStage:
    """
    Rejects requests without a valid key; records the key on the exchange.

    As an :class:`~txrelay.interfaces.IHeaderCheck` it also rejects them when their headers
    arrive, before the body is read. That check is synchronous, so for a managed key it
    answers from the local copy; a key the copy does not know while the copy is older than
    ``miss_refresh`` is let through to the stage itself, which reads the store once and
    decides (a key added a moment ago works within a second).
    """

    digests: Mapping[str, bytes]
    #: Names of the config keys each carries (``groups`` on a ``[[keys]]`` entry, if any).
    groups: Mapping[str, tuple[str, ...]] = attrs.Factory(dict)
    managed: ManagedKeys | None = None
    #: Names admitted (empty: every key).
    allow: tuple[str, ...] = ()

    def _check(self, headers: Mapping[str, str]) -> KeyInfo | RelayError | bytes:
        """The key, the 401, or (a managed key to look up) its digest."""
        key = presented_key(headers)
        if key is None:
            return RelayError(
                "authentication_error",
                "missing API key: send it in the x-api-key header or as Authorization: Bearer",
            )
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        found: str | None = None
        # Compare against every key, so timing does not reveal which one nearly matched.
        for name, expected in self.digests.items():
            if hmac.compare_digest(digest, expected) and found is None:
                found = name
        if found is not None:
            register_secret(key)  # a key configured by its hash is known once used (8.5)
            return KeyInfo(found, "config", self.groups.get(found, ()))
        if self.managed is not None:
            # A dict lookup by SHA-256 reveals nothing useful through its timing.
            record = self.managed.lookup(digest)
            if record is not None or not self.managed.fresh:
                return self._managed(record, key, headers) if record is not None else digest
        return _invalid(headers)

    def _managed(self, record: ManagedKey | None, key: str,
                 headers: Mapping[str, str]) -> KeyInfo | RelayError:
        if record is None or (self.allow and record.name not in self.allow):
            return _invalid(headers)
        register_secret(key)
        if record.state != "active":
            return _invalid(headers, ": this key is disabled")
        return KeyInfo(record.name, "managed", record.groups, record.models)

    def identify(self, headers: Mapping[str, str]) -> str:
        """The name of the key presented in ``headers`` (as known without I/O); raise the
        401 if there is none."""
        result = self._check(headers)
        if isinstance(result, bytes):
            result = _invalid(headers)
        if isinstance(result, RelayError):
            raise result
        return result.name

    def check_headers(self, headers: Mapping[str, str]) -> RelayError | None:
        """The 401 for headers without a valid key, else None."""
        result = self._check(headers)
        return result if isinstance(result, RelayError) else None

    async def __call__(self, exchange: Exchange, proceed: Proceed) -> Reply:
        result = self._check(exchange.headers)
        if isinstance(result, bytes):
            assert self.managed is not None
            record = await self.managed.resolve(result)
            result = self._managed(record, presented_key(exchange.headers) or "",
                                   exchange.headers)
        if isinstance(result, RelayError):
            raise result
        exchange.client = result.name
        exchange.state["key"] = result
        return await proceed(exchange)


def _invalid(headers: Mapping[str, str], why: str = "") -> RelayError:
    # Name the header the key came from (x-api-key wins when both are sent, R-X1).
    where = "x-api-key" if headers.get("x-api-key") else "Authorization: Bearer token"
    return RelayError("authentication_error", f"invalid {where}{why}")


def build_auth(options: AuthOptions, services: Any) -> AuthStage:
    """The ``auth`` stage for ``options`` (:class:`~txrelay.interfaces.StageServices`)."""
    digests = dict(services.key_digests)
    cfg = services.config
    managed = None
    if options.refresh <= 0:
        raise ValueError("refresh: must be greater than 0")
    if options.managed and cfg.state.kind == "redis" and services.reactor is not None:
        managed = shared_managed_keys(services.state, services.reactor, options.refresh,
                                      frozenset(digests))
    if options.allow:
        unknown = set(options.allow) - set(digests)
        if unknown and not (options.managed and cfg.state.kind == "redis"):
            raise ValueError(f"allow: no key named {', '.join(sorted(unknown))}")
        digests = {n: d for n, d in digests.items() if n in options.allow}
    groups = {k.name: tuple(getattr(k, "groups", ()) or ()) for k in cfg.keys}
    return AuthStage(digests, groups, managed, options.allow)
