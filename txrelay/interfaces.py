"""
The interfaces operators and backend authors implement.

A pipeline stage comes from an :class:`IStageFactory` plugin, a backend kind from an
:class:`IBackendFactory` plugin: a module in any ``txrelay/plugins/`` directory on
``sys.path`` (with no ``__init__.py``) that holds an object providing ``IPlugin`` and the
factory interface. Built-in stages and backends are found the same way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any

import attrs
from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from txrelay.catalog import ModelCatalog
    from txrelay.config import ProviderConfig, RelayConfig
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
    """A provider's backend: serves routed exchanges (what the ``translate`` stage calls)."""

    def messages(exchange: Exchange) -> Awaitable[Reply]:
        """
        ``async``: serve ``POST /v1/messages`` for a routed exchange.

        Returns once the response may be committed, with a ``stream`` of events; raises
        :class:`~txrelay.protocol.errors.RelayError` before that, and lets
        ``CancelledError`` through when the client leaves.
        """

    def count_tokens(exchange: Exchange) -> Awaitable[int]:
        """``async``: the input tokens of the exchange's request."""

    def close() -> Deferred[None] | None:
        """Release pooled connections (at shutdown); ``None`` when there is nothing to do."""


class IBackendFactory(Interface):
    """
    What a backend plugin module provides: one ``[[providers]] kind``.

    Found like stages (any ``txrelay/plugins/`` directory on ``sys.path``). The provider's
    ``options`` table is structured strictly into :attr:`options_type` and each of its
    models' ``options`` into :attr:`model_options_type` before :meth:`build` runs; problems
    are reported with their config path.
    """

    kind = Attribute("str: the name used as ``[[providers]] kind = '...'``")
    options_type = Attribute(
        "An attrs class the provider's ``options`` table is structured into, or None for a "
        "kind without options."
    )
    model_options_type = Attribute(
        "An attrs class each ``[[models]] options`` table of this provider's models is "
        "structured into, or None when models take no options."
    )

    def build(options: Any, context: BackendContext) -> IBackend | None:
        """
        Make the backend from its structured options.

        Report problems with ``context.problem(path, message)`` (and return None), or raise
        ``ValueError``. With ``context.reactor`` None the configuration is only being
        checked: build, but send nothing.
        """


@attrs.frozen
class BackendContext:
    """What a backend factory may use to build its backend."""

    provider: ProviderConfig
    reactor: Any
    #: Config path of the provider (``providers[2]``), for problems.
    where: str
    #: The whole configuration, when there is one (``server.ping_interval`` and such).
    config: RelayConfig | None = None
    #: Model id → its structured ``options``, for this provider's models that have some.
    model_options: Mapping[str, Any] = attrs.Factory(dict)
    #: Model id → its config path (``models[3]``).
    model_where: Mapping[str, str] = attrs.Factory(dict)
    problems: list[str] = attrs.Factory(list)

    def problem(self, path: str, message: str) -> None:
        """Record a problem at ``path`` (absolute like ``models[3].options.x``, or relative
        to the provider like ``options.dialect``)."""
        absolute = path.startswith(("models[", "providers["))
        self.problems.append(f"{path if absolute else f'{self.where}.{path}'}: {message}")


def _health() -> Any:
    from txrelay.health import Health

    return Health()


def _memory_store() -> Any:
    from txrelay.state.memory import MemoryStore

    return MemoryStore()


@attrs.frozen
class StageServices:
    """What a stage factory may use to build its stage."""

    config: RelayConfig
    catalog: ModelCatalog
    backends: Mapping[str, Any]
    #: Client key name → SHA-256 digest.
    key_digests: Mapping[str, bytes]
    reactor: Any
    #: The shared state store (:class:`~txrelay.state.interfaces.IStateStore`): in-process
    #: unless configured otherwise; it outlives configuration reloads.
    state: Any = attrs.Factory(_memory_store)
    #: Readiness reports (:class:`~txrelay.health.Health`) shown by ``GET /health/ready``;
    #: it outlives configuration reloads.
    health: Any = attrs.Factory(_health)
