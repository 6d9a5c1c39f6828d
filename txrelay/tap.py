# -*- test-case-name: tests.integration.test_twistd_and_config -*-
"""The ``relay`` twistd plugin's options and service maker: ``twistd -n relay --config FILE``."""

from __future__ import annotations

import sys
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from txrelay.config import ConfigError, RelayConfig, load_config


class Options(usage.Options):
    """Command-line options of ``twistd relay``."""

    optParameters = [
        ["config", "c", "relay.toml", "Path to the TOML configuration file."],
    ]

    longdesc = (
        "Serve the Anthropic Messages API from the backends in the configuration file. "
        "See config.example.toml for every key."
    )

    relay_config: RelayConfig

    def postOptions(self) -> None:
        # A bad configuration stops twistd here with the problems listed, not a traceback,
        # and with a non-zero status: twistd itself exits 0 on a usage error before 26.4,
        # which systemd would read as a clean stop.
        try:
            cfg = load_checked(self["config"])
        except ConfigError as e:
            sys.stderr.write(f"{e}\n")
            sys.stderr.flush()
            raise SystemExit(1) from None
        self.relay_config = cfg


def load_checked(path: str) -> RelayConfig:
    """
    Load ``path`` and assemble everything once without a reactor, so that every problem
    (types, references, secrets, stage plugins and their options) is reported at once.
    """
    from txrelay.service import build_app

    try:
        cfg = load_config(path)
        problems: list[str] = []
    except ConfigError as e:
        if e.config is None:
            raise
        cfg, problems = e.config, list(e.problems)
    try:
        build_app(cfg, None, path)
    except ConfigError as e:
        problems += [p for p in e.problems if p not in problems]
    if problems:
        raise ConfigError(path, problems)
    return cfg


def makeService(options: Options) -> IService:
    """The relay service for twistd."""
    from twisted.internet import reactor

    from txrelay.config import secret_values
    from txrelay.logs import bridge_stdlib_logging, set_level
    from txrelay.redact import install_log_redaction, register_secret
    from txrelay.service import RelayService, build_app

    cfg = options.relay_config
    set_level(cfg.log.level)
    bridge_stdlib_logging(cfg.log.level)
    # twistd chooses the log observers: redact each event before they see it.
    register_secret(*secret_values(cfg))
    install_log_redaction()
    from txrelay.leanreactor import install

    install(reactor, cfg.server.lean_reactor)  # twistd installed the reactor; not yet running
    from txrelay.workers import Supervisor, is_worker

    if cfg.server.workers > 1 and not is_worker():
        return Supervisor(reactor, options["config"], cfg.server.workers)
    from txrelay.health import Health
    from txrelay.state.build import build_state

    health = Health()  # the store reports to it from the start, across reloads
    app = build_app(cfg, reactor, options["config"], build_state(cfg.state, reactor, health),
                    health)
    service: Any = RelayService(app, reactor, options["config"])
    if cfg.log.format == "json":
        parent = getattr(options, "parent", None)
        logfile = parent.get("logfile") if parent is not None else None
        service = _with_log_observer(service, json_observer(cfg.log, logfile))
    return service  # type: ignore[no-any-return]


def json_observer(cfg: Any, logfile: str | None) -> Any:
    """The configured observer, writing to twistd's ``--logfile`` when one is given."""
    from twisted.python.logfile import LogFile

    from txrelay.logs import make_observer

    if logfile and logfile != "-":
        return make_observer(cfg, LogFile.fromFullPath(logfile))
    return make_observer(cfg)


def _with_log_observer(service: Any, observer: Any) -> Any:
    """
    ``service``, made to hand ``observer`` to twistd: twistd builds its ``Application``
    after ``makeService`` and, unless ``--logger`` is given, logs to the application's
    ``ILogObserver`` component when it has one (the documented ``.tac`` mechanism), so the
    service sets that component when twistd attaches it to the application.
    """
    from twisted.logger import ILogObserver
    from twisted.python.components import Componentized

    attach = service.setServiceParent

    def set_service_parent(parent: Any) -> Any:
        if isinstance(parent, Componentized) and parent.getComponent(ILogObserver) is None:
            parent.setComponent(ILogObserver, observer)
        return attach(parent)

    service.setServiceParent = set_service_parent
    return service
