"""
The interfaces operators and backend authors implement.

A pipeline stage comes from an :class:`IStageFactory` plugin: a module in any
``txrelay/plugins/`` directory on ``sys.path`` (with no ``__init__.py``) that holds an object
providing ``IPlugin`` and ``IStageFactory``. Built-in stages are found the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs
from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from txrelay.catalog import ModelCatalog
    from txrelay.config import RelayConfig
    from txrelay.pipeline import Exchange, Proceed, Reply
    from txrelay.protocol.errors import RelayError


class IStage(Interface):
    """One step of the pipeline."""

    def __call__(exchange: Exchange, proceed: Proceed) -> Reply:
        """
        Handle ``exchange``: an ``async`` callable returning a :class:`~txrelay.pipeline.Reply`.

        Call ``await proceed(exchange)`` to run the rest of the chain; return
        ``reply.with_filter(filter)`` to transform events (more in :mod:`txrelay.toolkit`);
        raise :class:`~txrelay.protocol.errors.RelayError` to answer with an error.
        """


class IHeaderCheck(Interface):
    """
    Optionally provided by a stage: a check of the request headers alone.

    The site runs the checks of the configured pipeline's stages when a ``/v1/`` request's
    headers are complete, before reading its body (and before ``100 Continue``), and answers
    the first error at once. The stage itself still runs on the whole exchange later.
    """

    def check_headers(headers: Mapping[str, str]) -> RelayError | None:
        """
        The error to answer for these headers (lower-case names), or None to go on.

        Called on the reactor thread for every request: it must be quick and not block.
        """


class IStageFactory(Interface):
    """What a stage plugin module provides."""

    type_name = Attribute("str: the name used as ``[[pipeline]] type = '...'``")
    options_type = Attribute(
        "An attrs class the stage's ``options`` table is structured into (strictly: unknown "
        "keys are errors), or None for a stage without options."
    )

    def build(options: Any, services: StageServices) -> IStage:
        """Make the stage from its structured options."""


class IBackend(Interface):
    """A kind of upstream: turns exchanges into Anthropic replies."""

    def messages(exchange: Exchange) -> Reply:
        """
        ``async``: serve ``POST /v1/messages`` for a routed exchange.

        Returns once the response may be committed (the upstream answered 2xx), with a
        ``stream`` of events; raises :class:`~txrelay.protocol.errors.RelayError` before that.
        """

    def count_tokens(exchange: Exchange) -> int:
        """``async``: the input tokens of the exchange's request."""


@attrs.frozen
class StageServices:
    """What a stage factory may use to build its stage."""

    config: RelayConfig
    catalog: ModelCatalog
    backends: Mapping[str, Any]
    #: Client key name → SHA-256 digest.
    key_digests: Mapping[str, bytes]
    reactor: Any
