# -*- test-case-name: tests.test_service -*-
"""
Builds the running relay from its configuration: backends, stages (found as plugins), the
pipeline, the site and its listeners, plus graceful drain and systemd readiness.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from typing import Any, cast

import attrs
from cattrs.errors import ClassValidationError
from twisted.application import strports
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.plugin import getPlugins

import txrelay.plugins
from txrelay.catalog import ModelCatalog
from txrelay.config import ConfigError, ProviderConfig, RelayConfig, key_digests
from txrelay.interfaces import BackendContext, IBackendFactory, IStageFactory, StageServices
from txrelay.logs import RelayLogger
from txrelay.metrics import Metrics
from txrelay.pipeline import Proceed, Stage, compose
from txrelay.protocol.events import Event
from txrelay.protocol.structure import error_lines, make_converter
from txrelay.server.resource import Lifecycle, RelayResource, catalog_terminal
from txrelay.server.site import RelaySite

log = RelayLogger()
_options_converter = make_converter(forbid_extra_keys=True)


def stage_factories() -> dict[str, Any]:
    """Every stage factory plugin on ``sys.path``, by type name."""
    found: dict[str, Any] = {}
    for factory in getPlugins(IStageFactory, txrelay.plugins):
        found.setdefault(factory.type_name, factory)
    return found


def _structure_options(
    raw: Mapping[str, Any], options_type: Any, where: str, problems: list[str],
    none_taken: str = "this stage takes no options",
) -> Any:
    if options_type is None:
        if raw:
            problems.append(f"{where}: {none_taken}")
        return None
    try:
        return _options_converter.structure(dict(raw), options_type)
    except (ClassValidationError, TypeError, ValueError) as e:
        for path, msg in error_lines(e):
            problems.append(f"{where}.{path}: {msg}" if path else f"{where}: {msg}")
        return None


def backend_factories() -> dict[str, Any]:
    """Every backend factory plugin on ``sys.path``, by kind."""
    found: dict[str, Any] = {}
    for factory in getPlugins(IBackendFactory, txrelay.plugins):
        found.setdefault(factory.kind, factory)
    return found


def build_backend(provider: ProviderConfig, where: str, reactor: Any,
                  problems: list[str], cfg: RelayConfig | None = None) -> Any:
    """The backend object for one provider, from its kind's plugin; problems are appended."""
    factories = backend_factories()
    factory = factories.get(provider.kind)
    if factory is None:
        known = ", ".join(sorted(factories)) or "none"
        problems.append(f"{where}.kind: unknown provider kind {provider.kind!r} "
                        f"(available: {known})")
        return None
    before = len(problems)
    opts = _structure_options(provider.options, factory.options_type, f"{where}.options",
                              problems, "this provider kind takes no options")
    model_options: dict[str, Any] = {}
    model_where: dict[str, str] = {}
    for i, m in enumerate(cfg.models if cfg is not None else ()):
        if m.provider != provider.name:
            continue
        model_where[m.id] = f"models[{i}]"
        if m.options:
            mopts = _structure_options(m.options, factory.model_options_type,
                                       f"models[{i}].options", problems,
                                       f"provider kind {provider.kind!r} takes no model options")
            if mopts is not None:
                model_options[m.id] = mopts
    if len(problems) > before:
        return None
    if opts is None and factory.options_type is not None:
        opts = factory.options_type()
    context = BackendContext(provider, reactor, where, cfg, model_options, model_where)
    try:
        backend = factory.build(opts, context)
    except (ValueError, TypeError) as e:
        problems.append(f"{where}: {e}")
        return None
    problems.extend(context.problems)
    return None if context.problems else backend


@attrs.frozen
class App:
    """The assembled relay, before it listens anywhere."""

    config: RelayConfig
    pipeline: Proceed
    catalog: ModelCatalog
    backends: Mapping[str, Any]


def build_app(cfg: RelayConfig, reactor: Any, source: str = "config") -> App:
    """Assemble the relay; raise :class:`ConfigError` listing every problem."""
    problems: list[str] = []
    catalog = ModelCatalog.from_config(cfg)
    backends: dict[str, Any] = {}
    for i, p in enumerate(cfg.providers):
        try:
            backend = build_backend(p, f"providers[{i}]", reactor, problems, cfg)
        except Exception as e:  # a half-valid provider must not hide the other problems
            problems.append(f"providers[{i}]: {e}")
            continue
        if backend is not None:
            backends[p.name] = backend
    digests, _ = key_digests(cfg)  # key problems were reported by load_config
    services = StageServices(cfg, catalog, backends, digests, reactor)
    factories = stage_factories()
    stages: list[Stage] = []
    for i, st in enumerate(cfg.pipeline):
        where = f"pipeline[{i}]"
        factory = factories.get(st.type)
        if factory is None:
            known = ", ".join(sorted(factories)) or "none"
            problems.append(f"{where}.type: unknown stage type {st.type!r} (available: {known})")
            continue
        opts = _structure_options(st.options, factory.options_type, f"{where}.options",
                                  problems)
        if opts is None and factory.options_type is not None:
            continue
        try:
            stages.append(factory.build(opts, services))
        except (ValueError, TypeError) as e:
            problems.append(f"{where}.options: {e}")
    if problems:
        raise ConfigError(source, problems)
    return App(cfg, compose(stages, catalog_terminal(catalog)), catalog, backends)


async def _nothing() -> None:
    return None


def _sd_notify(message: bytes) -> None:
    """Send ``message`` to systemd's notify socket, if there is one (twisted-notes §2.4)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.connect(address)
            s.sendall(message)
        except OSError as e:
            log.warn("cannot notify systemd: {error}", error=e)


class RelayService(MultiService):
    """The relay's listeners, with a drain on stop and systemd notifications."""

    def __init__(self, app: App, reactor: Any,
                 on_event: Callable[[list[Event]], None] | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.app = app
        self.reactor = reactor
        self.lifecycle = Lifecycle()
        server = app.config.server
        self.resource = RelayResource(
            app.pipeline, app.catalog, reactor, server.ping_interval, server.access_log,
            self.lifecycle, on_event, Metrics() if server.metrics else None,
        )
        self.site = RelaySite(self.resource, max_request_bytes=server.max_request_bytes,
                              timeout=server.idle_timeout, reactor=reactor)
        self.listeners = []
        for description in server.listen:
            svc = strports.service(description, self.site, reactor=reactor)
            svc._raiseSynchronously = True
            svc.setServiceParent(self)
            self.listeners.append(svc)

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        Deferred.fromCoroutine(self._announce()).addErrback(
            lambda f: log.failure("start-up failed", f)
        )

    async def _announce(self) -> None:
        for svc in self.listeners:
            port = await cast("Deferred[Any]", svc._waitingForPort)
            host = port.getHost()
            where = (f"{host.host}:{host.port}" if hasattr(host, "port")
                     else getattr(host, "name", str(host)))
            log.info("txrelay listening on {address}", address=where)
        _sd_notify(b"READY=1\nSTATUS=serving")

    def stopService(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._drain()).addErrback(
            lambda f: log.failure("drain failed", f)
        )

    async def _within(self, d: Deferred[Any], seconds: float) -> bool:
        """Wait for ``d`` at most ``seconds``; whether it fired in time."""
        timer = self.reactor.callLater(seconds, d.cancel)
        try:
            await d
        except Exception:
            return False
        finally:
            if timer.active():
                timer.cancel()
        return True

    async def _drain(self) -> None:
        self.lifecycle.draining = True
        _sd_notify(b"STOPPING=1\nSTATUS=draining")
        live = list(self.lifecycle.live)
        log.info("draining: {count} live request(s), up to {timeout}s",
                 count=len(live), timeout=self.app.config.server.drain_timeout)
        await DeferredList([svc.stopService() for svc in self.listeners], consumeErrors=True)
        self.site.start_draining()
        waiting = DeferredList(live, consumeErrors=True)
        if not await self._within(waiting, self.app.config.server.drain_timeout):
            log.warn("drain timeout: closing {count} request(s)",
                     count=len(self.lifecycle.live))
        for d in list(self.lifecycle.live):
            d.cancel()
        # Let finished responses flush before the reactor drops every connection.
        if not await self._within(self.site.all_closed(), 5):
            log.warn("closing {count} connection(s) that did not finish",
                     count=len(self.site.channels))
        for backend in self.app.backends.values():
            close = getattr(backend, "close", None)
            if close is not None:
                await DeferredList([close() or Deferred.fromCoroutine(_nothing())],
                                   consumeErrors=True)
        Service.stopService(self)
