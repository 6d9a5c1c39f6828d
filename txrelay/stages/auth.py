# -*- test-case-name: tests.test_catalog_and_stages -*-
"""The ``auth`` stage: named client keys, checked in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

import attrs
from zope.interface import implementer

from txrelay.interfaces import IHeaderCheck
from txrelay.pipeline import Exchange, Proceed, Reply
from txrelay.protocol.errors import RelayError
from txrelay.redact import register_secret


@attrs.frozen
class AuthOptions:
    """Options of the ``auth`` stage."""

    #: Names of the keys this stage admits; empty admits every configured key.
    allow: tuple[str, ...] = ()


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
    Rejects requests without a configured key; records the key's name on the exchange.

    As an :class:`~txrelay.interfaces.IHeaderCheck` it also rejects them when their headers
    arrive, before the body is read.
    """

    digests: Mapping[str, bytes]

    def identify(self, headers: Mapping[str, str]) -> str:
        """The name of the key presented in ``headers``; raise the 401 if there is none."""
        key = presented_key(headers)
        if key is None:
            raise RelayError(
                "authentication_error",
                "missing API key: send it in the x-api-key header or as Authorization: Bearer",
            )
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        found: str | None = None
        # Compare against every key, so timing does not reveal which one nearly matched.
        for name, expected in self.digests.items():
            if hmac.compare_digest(digest, expected) and found is None:
                found = name
        if found is None:
            # Name the header the key came from (x-api-key wins when both are sent, R-X1).
            where = ("x-api-key" if headers.get("x-api-key")
                     else "Authorization: Bearer token")
            raise RelayError("authentication_error", f"invalid {where}")
        register_secret(key)  # a key configured by its hash is known once used (issue 8.5)
        return found

    def check_headers(self, headers: Mapping[str, str]) -> RelayError | None:
        """The 401 for headers without a valid key, else None."""
        try:
            self.identify(headers)
        except RelayError as e:
            return e
        return None

    async def __call__(self, exchange: Exchange, proceed: Proceed) -> Reply:
        exchange.client = self.identify(exchange.headers)
        return await proceed(exchange)
