# -*- test-case-name: tests.server.test_drain,tests.test_backends -*-
"""
Builds the running relay from its configuration: backends, stages (found as plugins), the
pipeline, the site and its listeners, plus graceful drain and systemd readiness.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from cattrs.errors import ClassValidationError
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.plugin import getPlugins
from twisted.python.failure import Failure

import txrelay.plugins
from txrelay.catalog import ModelCatalog
from txrelay.config import (
    ConfigError,
    ProviderConfig,
    RelayConfig,
    admin_key_digests,
    key_digests,
)
from txrelay.interfaces import (
    BackendContext,
    IBackendFactory,
    IHeaderCheck,
    IStageFactory,
    StageServices,
)
from txrelay.logs import RelayLogger
from txrelay.metrics import Metrics
from txrelay.pipeline import Proceed, Stage, compose
from txrelay.protocol.errors import RelayError
from txrelay.protocol.structure import error_lines, make_converter
from txrelay.server.frontdoor import FrontDoorPolicy
from txrelay.server.metrics_access import MetricsAccess, MetricsSite
from txrelay.server.models import catalog_terminal
from txrelay.server.resource import CEILING_ERROR, Lifecycle, RelayResource
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
    #: The pipeline's stages that also check request headers before the body is read.
    header_checks: tuple[Any, ...] = ()


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
    names: list[str] = []
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
            names.append(st.label)
        except (ValueError, TypeError) as e:
            problems.append(f"{where}.options: {e}")
    if problems:
        raise ConfigError(source, problems)
    checks = tuple(s for s in stages if IHeaderCheck.providedBy(s))
    return App(cfg, compose(stages, catalog_terminal(catalog), names), catalog, backends,
               checks)


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


#: After the drain ceiling, how long the final writes may take to flush before the
#: remaining connections are aborted.
FLUSH_GRACE = 2.0


def _address(port: Any) -> str:
    host = port.getHost()
    if hasattr(host, "port"):
        return f"{host.host}:{host.port}"
    return str(getattr(host, "name", host))


def _metrics_observer(metrics: Metrics) -> Callable[[str, RelayError], None]:
    """Counts the front door's own answers like the resource's."""

    def observe(operation: str, error: RelayError) -> None:
        metrics.observe(operation=operation, status=error.status, route=None, client=None,
                        seconds=0.0, stream=False, usage=None, error_type=error.type)

    return observe


class RelayService(Service):
    """The relay's listeners, with a drain on stop and systemd notifications."""

    def __init__(self, app: App, reactor: Any) -> None:
        self.app = app
        self.reactor = reactor
        self.lifecycle = Lifecycle()
        server = app.config.server
        metrics = Metrics() if server.metrics else None
        self.resource = RelayResource(
            app.pipeline, app.catalog, reactor, server.ping_interval, server.access_log,
            self.lifecycle, metrics,
            MetricsAccess(admin_key_digests(app.config)[0], loopback=not server.metrics_listen),
        )
        front_door = FrontDoorPolicy(
            max_request_bytes=server.max_request_bytes,
            max_buffered_bytes=server.max_buffered_bytes,
            header_timeout=server.header_timeout, min_body_rate=server.min_body_rate,
            body_grace=server.body_grace, header_checks=app.header_checks,
            on_reject=_metrics_observer(metrics) if metrics is not None else None)
        self.site = RelaySite(self.resource, max_request_bytes=server.max_request_bytes,
                              timeout=server.idle_timeout, reactor=reactor,
                              front_door=front_door)
        #: The listening ports, once :meth:`privilegedStartService` bound them.
        self.ports: list[Any] = []
        self._listening = False
        #: ``server.metrics_listen``: a site serving ``/metrics`` alone, and its ports.
        self.metrics_site = (MetricsSite(metrics, reactor)
                             if metrics is not None and server.metrics_listen else None)
        self.metrics_ports: list[Any] = []

    def privilegedStartService(self) -> None:
        """Bind every ``server.listen`` endpoint (before twistd drops privileges)."""
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        self._listen()

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._listen()

    def _listen(self) -> None:
        if self._listening:
            return
        self._listening = True
        starting = True
        waiting = 0
        failures: list[tuple[str, object]] = []

        def settled(result: Any, description: str, factory: Any) -> None:
            nonlocal waiting
            waiting -= 1
            if isinstance(result, Failure):
                if starting:
                    failures.append((description, result.value))
                    return
                # An endpoint that failed after start-up returned: stop the relay.
                log.critical("txrelay: cannot listen on {description!r}: {error}; stopping",
                             description=description, error=result.value)
                self.reactor.stop()
                return
            self.ports.append(result)
            if factory is self.metrics_site:
                self.metrics_ports.append(result)
            if not starting and waiting == 0:
                self._announce()

        server = self.app.config.server
        endpoints: list[tuple[str, Any]] = [(d, self.site) for d in server.listen]
        if self.metrics_site is not None:
            endpoints += [(d, self.metrics_site) for d in server.metrics_listen]
        for description, factory in endpoints:
            try:
                d = serverFromString(self.reactor, description).listen(factory)
            except Exception as e:
                failures.append((description, e))
                break
            waiting += 1
            d.addBoth(settled, description, factory)
            if failures:
                break
        starting = False
        # TCP, unix and systemd endpoints listen at once: a busy port fails start-up here.
        if failures:
            for port in self.ports:
                port.stopListening()
            self.ports = []
            description, error = failures[0]
            # SystemExit itself (Twisted's Failure.check does not match subclasses of it):
            # twistd and ``txrelay serve`` both stop with this message and status 1.
            raise SystemExit(f"txrelay: cannot listen on {description!r}: {error}")
        if waiting == 0:
            self._announce()

    def _announce(self) -> None:
        for port in self.ports:
            if port in self.metrics_ports:
                log.info("serving /metrics on {address}", address=_address(port))
            else:
                log.info("txrelay listening on {address}", address=_address(port))
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
        """
        Stop accepting, let live requests finish up to ``server.drain_timeout``, then
        answer what is left with ``overloaded_error`` and return once those answers are
        flushed (bounded by :data:`FLUSH_GRACE`).
        """
        self.lifecycle.draining = True
        _sd_notify(b"STOPPING=1\nSTATUS=draining")
        ceiling = self.app.config.server.drain_timeout
        log.info("draining: {count} live request(s), up to {timeout}s",
                 count=len(self.lifecycle.live), timeout=ceiling)
        ports, self.ports, self.metrics_ports = self.ports, [], []
        for port, result in zip(ports, await DeferredList(
                [maybeDeferred(p.stopListening) for p in ports], consumeErrors=True),
                strict=True):
            if not result[0]:
                log.failure("cannot stop listening on {address}", result[1],
                            address=_address(port))
        self.site.start_draining()
        if not await self._within(self.lifecycle.idle(), ceiling):
            count = self.lifecycle.abort_all(CEILING_ERROR)
            log.warn("drain ceiling of {timeout}s reached: answered {count} live "
                     "request(s) with overloaded_error", timeout=ceiling, count=count)
        if not await self._within(self.site.all_closed(), FLUSH_GRACE):
            log.warn("aborting {count} connection(s) that did not flush within {grace}s",
                     count=len(self.site.channels), grace=FLUSH_GRACE)
            self.site.abort_all()
        for name, backend in self.app.backends.items():
            close = getattr(backend, "close", None)
            if close is None:
                continue
            try:
                await maybeDeferred(close)
            except Exception:
                log.failure("closing provider {name} failed", name=name)
        super().stopService()  # type: ignore[no-untyped-call]
