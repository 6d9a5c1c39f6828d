# -*- test-case-name: tests.server.test_drain,tests.test_backends -*-
"""
Builds the running relay from its configuration: backends, stages (found as plugins), the
pipeline, the site and its listeners, plus graceful drain and systemd readiness.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from cattrs.errors import ClassValidationError
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.threads import deferToThreadPool
from twisted.plugin import getPlugins
from twisted.python.failure import Failure

import txrelay.plugins
from txrelay import tracing
from txrelay.catalog import ModelCatalog
from txrelay.config import (
    ConfigError,
    ProviderConfig,
    RelayConfig,
    admin_key_digests,
    key_digests,
)
from txrelay.health import Health
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
from txrelay.server.admin import AdminAccess, AdminResource, AdminSite, ReloadOutcome
from txrelay.server.frontdoor import FrontDoorPolicy
from txrelay.server.listeners import (
    TLSEndpoint,
    certificates_detail,
    reuse_port_endpoint,
    tls_endpoint,
)
from txrelay.server.metrics_access import MetricsAccess, MetricsSite
from txrelay.server.models import catalog_terminal
from txrelay.server.resource import CEILING_ERROR, Lifecycle, RelayResource
from txrelay.server.site import RelaySite
from txrelay.server.status_page import StatusPage

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
        if provider.name not in m.provider_names():
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
    #: The shared state store (:class:`~txrelay.state.interfaces.IStateStore`).
    state: Any = None
    #: Readiness reports of the components (:class:`~txrelay.health.Health`).
    health: Any = None


def build_app(cfg: RelayConfig, reactor: Any, source: str = "config",
              state: Any = None, health: Any = None) -> App:
    """
    Assemble the relay; raise :class:`ConfigError` listing every problem.

    :param state: the shared state store the stages use; a new in-process one when None
        (a reload passes the running one, so counters and slots survive it).
    :param health: the readiness reports; likewise kept across reloads.
    """
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
    if state is None:
        from txrelay.state.memory import MemoryStore

        state = MemoryStore()
    if health is None:
        health = Health()
    services = StageServices(cfg, catalog, backends, digests, reactor, state, health)
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
    # At start-up (and reload) only: validating a config needs no tracing extra.
    if reactor is not None and (missing := tracing.missing_problem(cfg.tracing)) is not None:
        problems.append(missing)
    if problems:
        raise ConfigError(source, problems)
    checks = tuple(s for s in stages if IHeaderCheck.providedBy(s))
    if reactor is not None:  # before compose: it decides whether stages make spans
        tracing.configure(cfg.tracing)
    return App(cfg, compose(stages, catalog_terminal(catalog), names), catalog, backends,
               checks, state, health)


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


#: Settings a reload cannot change: they are logged as ignored and keep their running value.
RESTART_ONLY = ("server.listen", "server.metrics_listen", "server.admin_listen",
                "server.metrics", "server.max_buffered_bytes", "server.workers",
                "server.reuse_port", "server.lean_reactor",
                "log.format", "ledger",
                # The state store is built once at start (txrelay.state.build).
                "state.kind", "state.url", "state.host", "state.port", "state.db",
                "state.prefix", "state.timeout", "state.on_unavailable",
                "state.probe_interval")


def _setting(cfg: RelayConfig, dotted: str) -> Any:
    section, _, name = dotted.partition(".")
    if not name:  # a whole table ("ledger")
        return getattr(cfg, section)
    return getattr(getattr(cfg, section), name, None)


def restart_only_changes(old: RelayConfig, new: RelayConfig) -> tuple[str, ...]:
    """The :data:`RESTART_ONLY` settings that differ between ``old`` and ``new``."""
    return tuple(k for k in RESTART_ONLY if _setting(old, k) != _setting(new, k))


def _keep_running(old: RelayConfig, new: RelayConfig) -> RelayConfig:
    """``new`` with the restart-only settings ``old`` runs with."""
    server = attrs.evolve(new.server, **{
        k.split(".", 1)[1]: _setting(old, k) for k in RESTART_ONLY
        if k.startswith("server.") and hasattr(new.server, k.split(".", 1)[1])})
    return attrs.evolve(new, server=server, log=attrs.evolve(new.log, format=old.log.format),
                        ledger=old.ledger, state=old.state)


def _front_door(app: App, metrics: Metrics | None) -> FrontDoorPolicy:
    server = app.config.server
    return FrontDoorPolicy(
        max_request_bytes=server.max_request_bytes,
        max_buffered_bytes=server.max_buffered_bytes,
        header_timeout=server.header_timeout, min_body_rate=server.min_body_rate,
        body_grace=server.body_grace, header_checks=app.header_checks,
        on_reject=_metrics_observer(metrics) if metrics is not None else None)


class RelayService(Service):
    """
    The relay's listeners, with a drain on stop, systemd notifications, the admin
    endpoints, and configuration reload (SIGHUP, ``POST /admin/reload``) when it knows the
    file it was built from (``config_path``).
    """

    def __init__(self, app: App, reactor: Any, config_path: str | None = None) -> None:
        self.app = app
        self.reactor = reactor
        self.config_path = os.path.abspath(config_path) if config_path else None
        self.lifecycle = Lifecycle()
        server = app.config.server
        metrics = self.metrics = Metrics() if server.metrics else None
        if metrics is not None and app.state is not None:
            from txrelay.state.failover import register_metrics

            register_metrics(metrics.registry, app.state)
        admin_digests = admin_key_digests(app.config)[0]
        self.status_page = StatusPage(generation=lambda: self.resource.generation)
        from txrelay.ledger.writer import open_ledger

        #: The usage ledger (``[ledger]``), built once: it outlives reloads.
        self.ledger = open_ledger(app.config, reactor, metrics, app.health)
        self.admin = AdminResource(self, self.lifecycle, reactor,
                                   AdminAccess(admin_digests, not server.admin_listen),
                                   self.status_page)
        self.resource = RelayResource(
            app.pipeline, app.catalog, reactor, server.ping_interval, server.access_log,
            self.lifecycle, metrics,
            MetricsAccess(admin_digests, loopback=not server.metrics_listen),
            self.admin, body_log_bytes=app.config.log.body_bytes,
            status=self.status_page.recorder, health=app.health,
            observers=() if self.ledger is None else (self.ledger.record,),
        )
        self.site = RelaySite(self.resource, max_request_bytes=server.max_request_bytes,
                              timeout=server.idle_timeout, reactor=reactor,
                              front_door=_front_door(app, metrics))
        #: The listening ports, once :meth:`privilegedStartService` bound them.
        self.ports: list[Any] = []
        self._listening = False
        #: ``server.metrics_listen``: a site serving ``/metrics`` alone, and its ports.
        self.metrics_site = (MetricsSite(metrics, reactor)
                             if metrics is not None and server.metrics_listen else None)
        self.metrics_ports: list[Any] = []
        #: Ports a successor can take over (``reuse_port``, ``systemd:``): closed first.
        self._handover_ports: list[Any] = []
        #: ``server.admin_listen``: a site serving ``/admin/…`` alone, and its ports.
        self.admin_listener = (AdminResource(self, self.lifecycle, reactor,
                                             AdminAccess(admin_digests), self.status_page)
                               if server.admin_listen else None)
        self.admin_site = (AdminSite(self.admin_listener, reactor)
                           if self.admin_listener is not None else None)
        self.admin_ports: list[Any] = []
        #: The ``ssl:`` listeners, whose certificates a reload reads again.
        self.tls_endpoints: list[TLSEndpoint] = []
        #: Backends of replaced configurations, closing once their last request ends.
        self._retiring: set[Deferred[None]] = set()
        self._previous_sighup: Any = None

    def privilegedStartService(self) -> None:
        """Bind every ``server.listen`` endpoint (before twistd drops privileges)."""
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        self._listen()

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        if self.ledger is not None:
            self.ledger.start()
        self._listen()
        self._install_sighup()

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
            if description.startswith("systemd:") or self.app.config.server.reuse_port:
                self._handover_ports.append(result)
            if factory is self.metrics_site:
                self.metrics_ports.append(result)
            if factory is self.admin_site:
                self.admin_ports.append(result)
            if not starting and waiting == 0:
                self._announce()

        server = self.app.config.server
        endpoints: list[tuple[str, Any]] = [(d, self.site) for d in server.listen]
        if self.metrics_site is not None:
            endpoints += [(d, self.metrics_site) for d in server.metrics_listen]
        if self.admin_site is not None:
            endpoints += [(d, self.admin_site) for d in server.admin_listen]
        for description, factory in endpoints:
            try:
                endpoint: Any = tls_endpoint(self.reactor, description, server.reuse_port)
                if endpoint is not None:  # ssl: a certificate that reloads (SIGHUP)
                    self.tls_endpoints.append(endpoint)
                elif server.reuse_port:
                    endpoint = reuse_port_endpoint(self.reactor, description)
                if endpoint is None:
                    endpoint = serverFromString(self.reactor, description)
                d = endpoint.listen(factory)
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
        self._report_certificates()
        if waiting == 0:
            self._announce()

    def _report_certificates(self) -> None:
        if self.tls_endpoints and self.app.health is not None:
            self.app.health.report("tls", certificates_detail(self.tls_endpoints))

    def _announce(self) -> None:
        for port in self.ports:
            if port in self.metrics_ports:
                log.info("serving /metrics on {address}", address=_address(port))
            elif port in self.admin_ports:
                log.info("serving /admin on {address}", address=_address(port))
            else:
                log.info("txrelay listening on {address}", address=_address(port))
        _sd_notify(b"READY=1\nSTATUS=serving")

    def _install_sighup(self) -> None:
        if self.config_path is None or threading.current_thread() is not threading.main_thread():
            return
        self._previous_sighup = signal.signal(signal.SIGHUP, self._on_sighup)

    def _on_sighup(self, signum: int, frame: object) -> None:
        # A signal handler may run between any two bytecodes: only wake the reactor.
        self.reactor.callFromThread(self._reload_from_signal)

    def _reload_from_signal(self) -> None:
        log.info("SIGHUP: reloading {path}", path=self.config_path)
        self.reload()

    def stopService(self) -> Deferred[None]:
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None
        return Deferred.fromCoroutine(self._drain()).addErrback(
            lambda f: log.failure("drain failed", f)
        )

    # -- the admin endpoints' control (txrelay.server.admin.AdminControl) -----------------

    def start_admin_drain(self) -> None:
        """Drain without exiting: readiness 503, new requests 529, live ones finish."""
        if self.lifecycle.draining:
            return
        self.lifecycle.draining = True
        log.info("draining on request of an operator: {count} live request(s); "
                 "DELETE /admin/drain serves again", count=len(self.lifecycle.live))
        _sd_notify(b"STATUS=draining (POST /admin/drain)")
        self._drain_changed()

    def _drain_changed(self) -> None:
        # Workers publish their drain state to the other workers' scrapes (txrelay.metrics).
        if self.metrics is not None:
            self.metrics.drain_changed()

    def end_admin_drain(self) -> RelayError | None:
        """Serve again after :meth:`start_admin_drain`; refused once the process stops."""
        if self.lifecycle.stopping:
            return RelayError("invalid_request_error", "the relay is shutting down; its "
                              "drain cannot be undone", status=409)
        if self.lifecycle.draining:
            self.lifecycle.draining = False
            log.info("drain ended by an operator: serving again")
            _sd_notify(b"STATUS=serving")
            self._drain_changed()
        return None

    def reload(self) -> ReloadOutcome:
        """
        Load ``config_path`` again. A valid file replaces the pipeline, catalog, backends,
        keys and limits for new requests at once, while live requests finish on what they
        started with (their backends are closed after the last of them); an invalid one is
        refused with every problem logged, and the running configuration is kept.
        """
        from txrelay.tap import load_checked

        # Certificates first, and whatever the file says: a renewal must not wait for a
        # configuration edit to be fixed. Each listener keeps its old one if the new is bad.
        certificates = tuple(problem for tls in self.tls_endpoints
                             if (problem := tls.reload()) is not None)
        self._report_certificates()
        source = self.config_path
        if source is None:
            return self._refuse("(no file)", ["the relay was not started from a file"])
        if self.lifecycle.stopping:
            return self._refuse(source, ["the relay is shutting down"])
        _sd_notify(b"RELOADING=1\nMONOTONIC_USEC=%d" % (time.monotonic_ns() // 1000))
        try:
            try:
                cfg = load_checked(source)
                app = build_app(cfg, self.reactor, source, self.app.state,
                                self.app.health)
            except ConfigError as e:
                return self._refuse(source, list(e.problems))
            except Exception:
                log.failure("reloading {source} failed", source=source)
                return self._refuse(source, ["the relay failed while building it (see the "
                                             "log)"])
            ignored = restart_only_changes(self.app.config, cfg)
            for key in ignored:
                log.warn("reload: {key} changed in {source}; it needs a restart, the running "
                         "value is kept", key=key, source=source)
            app = attrs.evolve(app, config=_keep_running(self.app.config, cfg))
            self._apply(app)
        finally:
            _sd_notify(b"READY=1\nSTATUS=" + (b"draining" if self.lifecycle.draining
                                               else b"serving"))
        log.info("reloaded {source}: configuration generation {generation} serves new "
                 "requests; {live} live request(s) finish on the previous one",
                 source=source, generation=self.resource.generation,
                 live=len(self.lifecycle.live))
        return ReloadOutcome(True, (), ignored, self.resource.generation, certificates)

    def _refuse(self, source: str, problems: list[str]) -> ReloadOutcome:
        for problem in problems:
            log.error("reload refused: {source}: {problem}", source=source, problem=problem)
        log.error("reload refused: {count} problem(s) in {source}; the running configuration "
                  "is kept", count=len(problems), source=source)
        return ReloadOutcome(False, tuple(problems), (), self.resource.generation)

    def _apply(self, app: App) -> None:
        """Swap ``app`` in for new requests, in one reactor turn."""
        from txrelay.config import secret_values
        from txrelay.logs import set_level
        from txrelay.redact import register_secret

        old, server = self.app, app.config.server
        register_secret(*secret_values(app.config))
        set_level(app.config.log.level)
        admin_digests = admin_key_digests(app.config)[0]
        r = self.resource
        r.pipeline, r.catalog = app.pipeline, app.catalog
        r.ping_interval, r.access_log = server.ping_interval, server.access_log
        r.body_log_bytes = app.config.log.body_bytes
        if self.ledger is not None:  # [ledger] itself needs a restart; the prices do not
            from txrelay.ledger.prices import PriceTable

            self.ledger.prices = PriceTable(app.config.prices)
        r.metrics_access = MetricsAccess(admin_digests, loopback=not server.metrics_listen)
        self.admin.access = AdminAccess(admin_digests, not server.admin_listen)
        if self.admin_listener is not None:
            self.admin_listener.access = AdminAccess(admin_digests)
        self.site.front_door = _front_door(app, self.metrics)
        self.site.max_request_bytes = server.max_request_bytes
        self.site.timeOut = server.idle_timeout
        retired = r.generation
        r.generation += 1
        self.app = app
        done = Deferred.fromCoroutine(self._retire(old, retired))
        self._retiring.add(done)
        done.addErrback(lambda f: log.failure("retiring configuration generation {generation} "
                                              "failed", f, generation=retired))
        done.addBoth(lambda _: self._retiring.discard(done))

    async def _retire(self, old: App, generation: int) -> None:
        await self.lifecycle.settled(generation)
        await self._close_backends(old, f"of configuration generation {generation} ")

    async def _close_backends(self, app: App, which: str = "") -> None:
        for name, backend in app.backends.items():
            close = getattr(backend, "close", None)
            if close is None:
                continue
            try:
                await maybeDeferred(close)
            except Exception:
                log.failure("closing provider {name} {which}failed", name=name, which=which)

    async def _within(self, d: Deferred[Any], seconds: float) -> bool:
        """Wait for ``d`` at most ``seconds``; whether it fired in time."""
        timer = self.reactor.callLater(seconds, d.cancel)
        try:
            await d
        except CancelledError:
            return False
        except Exception:
            log.failure("waiting for the drain failed")
            return False
        finally:
            if timer.active():
                timer.cancel()
        return True

    async def _stop_listening(self, ports: list[Any]) -> None:
        """Close ``ports``; a failure is logged with its address."""
        results = await DeferredList([maybeDeferred(p.stopListening) for p in ports],
                                     consumeErrors=True)
        for port, result in zip(ports, results, strict=True):
            if not result[0]:
                log.failure("cannot stop listening on {address}", result[1],
                            address=_address(port))

    async def _drain(self) -> None:
        """
        Stop accepting, let live requests finish up to ``server.drain_timeout``, then
        answer what is left with ``overloaded_error`` and return once those answers are
        flushed (bounded by :data:`FLUSH_GRACE`).
        """
        self.lifecycle.draining = self.lifecycle.stopping = True
        _sd_notify(b"STOPPING=1\nSTATUS=draining")
        self._drain_changed()
        ceiling = self.app.config.server.drain_timeout
        log.info("draining: {count} live request(s), up to {timeout}s",
                 count=len(self.lifecycle.live), timeout=ceiling)
        ports, self.ports, self.metrics_ports, self.admin_ports = self.ports, [], [], []
        # A listener a successor can take over (a SO_REUSEPORT group, systemd's socket)
        # stops at once, so new connections go to the successor. Any other keeps
        # accepting until the live requests are over and answers them 529 with
        # retry-after: refusing would tell a client nothing.
        handover = [p for p in ports if p in self._handover_ports]
        kept = [p for p in ports if p not in handover]
        await self._stop_listening(handover)
        self.site.start_draining()
        if not await self._within(self.lifecycle.idle(), ceiling):
            count = self.lifecycle.abort_all(CEILING_ERROR)
            log.warn("drain ceiling of {timeout}s reached: answered {count} live "
                     "request(s) with overloaded_error", timeout=ceiling, count=count)
        await self._stop_listening(kept)
        if not await self._within(self.site.all_closed(), FLUSH_GRACE):
            log.warn("aborting {count} connection(s) that did not flush within {grace}s",
                     count=len(self.site.channels), grace=FLUSH_GRACE)
            self.site.abort_all()
        # Old configurations' backends: their requests are over, their closing under way.
        await DeferredList(list(self._retiring))
        await self._close_backends(self.app)
        if self.app.state is not None:
            try:
                await self.app.state.close()
            except Exception:
                log.failure("closing the state store failed")
        if self.ledger is not None:  # after the last request: its record is queued
            await self.ledger.close()
        traced = tracing.detach()
        if traced is not None:  # flush the last spans (the exporter may block: a thread)
            await deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                    traced.provider.shutdown)
        super().stopService()  # type: ignore[no-untyped-call]
        # twistd re-raises the SIGTERM it stopped on (status 143); a drain that ran to its
        # end is a clean stop, so it exits 0 like ``txrelay serve``.
        if getattr(self.reactor, "_exitSignal", None) == signal.SIGTERM:
            self.reactor._exitSignal = None
