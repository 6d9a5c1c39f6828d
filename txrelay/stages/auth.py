# -*- test-case-name: tests.test_stages -*-
"""The ``auth`` stage: named client keys, checked in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

import attrs

from txrelay.pipeline import Exchange, Proceed, Reply
from txrelay.protocol.errors import RelayError


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


@attrs.frozen
class AuthStage:
    """Rejects requests without a configured key; records the key's name on the exchange."""

    digests: Mapping[str, bytes]

    async def __call__(self, exchange: Exchange, proceed: Proceed) -> Reply:
        key = presented_key(exchange.headers)
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
            where = ("x-api-key" if exchange.headers.get("x-api-key")
                     else "Authorization: Bearer token")
            raise RelayError("authentication_error", f"invalid {where}")
        exchange.client = found
        return await proceed(exchange)
