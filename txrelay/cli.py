# -*- test-case-name: tests.integration.test_twistd_and_config -*-
"""
The ``txrelay`` command.

``txrelay serve --config FILE`` runs the relay in the foreground (as ``twistd -n relay`` does),
``txrelay check-config FILE`` validates a configuration and lists every problem with its key
path, ``txrelay hash-key`` prints the SHA-256 a ``[[keys]]`` entry expects, ``txrelay usage``
prints the usage ledger's totals per key and model, ``txrelay keys
add|disable|enable|rotate|remove|list`` manages client keys in the shared store.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Sequence
from typing import Any

from txrelay import __version__
from txrelay.config import ConfigError, RelayConfig, hash_key


def _load(path: str) -> RelayConfig | None:
    """The checked configuration, or ``None`` after printing every problem."""
    from txrelay.tap import load_checked

    try:
        return load_checked(path)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return None


def _check(path: str) -> int:
    cfg = _load(path)
    if cfg is None:
        return 1
    from txrelay.server.listeners import check_certificates

    good, problems = check_certificates(cfg.server)  # ssl: listeners' files, as at start
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    for line in good:
        print(line)
    print(f"{path}: OK ({len(cfg.providers)} provider(s), {len(cfg.models)} model(s), "
          f"pipeline: {' → '.join(s.label for s in cfg.pipeline)})")
    return 0


def _serve(path: str) -> int:
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.internet.task import react
    from twisted.logger import globalLogBeginner

    from txrelay.config import secret_values
    from txrelay.logs import bridge_stdlib_logging, make_observer, set_level
    from txrelay.redact import RedactingObserver, register_secret
    from txrelay.service import RelayService, build_app

    cfg = _load(path)
    if cfg is None:
        return 1
    set_level(cfg.log.level)
    bridge_stdlib_logging(cfg.log.level)
    register_secret(*secret_values(cfg))
    globalLogBeginner.beginLoggingTo([RedactingObserver(make_observer(cfg.log))],
                                     redirectStandardIO=False)

    async def run(r: Any) -> None:
        from txrelay.workers import Supervisor, is_worker

        service: Any
        if cfg.server.workers > 1 and not is_worker():
            service = Supervisor(r, path, cfg.server.workers, stop_on_failure=False)
        else:
            from txrelay.health import Health
            from txrelay.state.build import build_state

            health = Health()
            service = RelayService(build_app(cfg, r, path, build_state(cfg.state, r, health),
                                             health), r, path)
        service.startService()
        r.addSystemEventTrigger("before", "shutdown", service.stopService)
        if isinstance(service, Supervisor):  # a worker that cannot start: exit 1
            raise SystemExit(await service.failed)
        await Deferred()  # until SIGTERM/SIGINT stop the reactor

    from txrelay.leanreactor import install

    install(reactor, cfg.server.lean_reactor)  # workers are `txrelay serve` too
    react(lambda r: Deferred.fromCoroutine(run(r)))
    return 0  # pragma: no cover - react() exits


def _hash(key: str | None) -> int:
    if key is None:
        key = getpass.getpass("key: ") if sys.stdin.isatty() else sys.stdin.readline().strip()
    if not key:
        print("no key given", file=sys.stderr)
        return 2
    print(hash_key(key))
    return 0


def _usage(args: argparse.Namespace) -> int:
    """``txrelay usage``: the ledger's totals for a period (see :mod:`txrelay.ledger.report`)."""
    import json

    from txrelay.ledger import report, schema

    by = [b.strip() for b in args.by.split(",") if b.strip()]
    unknown = [b for b in by if b not in report.GROUPS]
    if unknown or len(set(by)) != len(by):
        print(f"--by: use a comma-separated list of {', '.join(report.GROUPS)}",
              file=sys.stderr)
        return 2
    try:
        when = report.period(since=args.since, until=args.until, today=args.today,
                             month=args.month)
    except ValueError as e:
        print(f"txrelay usage: {e}", file=sys.stderr)
        return 2
    path, dsn = args.sqlite, args.dsn
    if path is None and dsn is None:
        cfg = _load(args.config)
        if cfg is None:
            return 1
        if cfg.ledger is None or cfg.ledger.kind == "off":
            print(f"{args.config}: the usage ledger is off (no [ledger] table)", file=sys.stderr)
            return 1
        if cfg.ledger.kind == "postgres":
            assert cfg.ledger.dsn is not None
            dsn = cfg.ledger.dsn.value
        else:
            from txrelay.ledger.sinks import sqlite_path

            path = sqlite_path(cfg.ledger.path)
    try:
        if dsn is not None:
            import psycopg

            with psycopg.connect(dsn, connect_timeout=10) as conn, conn.cursor() as cur:
                rows = report.totals(cur, schema.POSTGRES, by, when)
        else:
            import sqlite3

            assert path is not None
            # Read-only: reading never creates a database or takes the writer's lock.
            conn3 = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
            try:
                rows = report.totals(conn3.cursor(), schema.SQLITE, by, when)
            finally:
                conn3.close()
    except ImportError:
        print("txrelay usage: PostgreSQL needs the postgres extra (pip install "
              "'txrelay[postgres]')", file=sys.stderr)
        return 1
    except Exception as e:
        from txrelay.redact import Redactor

        redactor = Redactor()
        if dsn:
            redactor.add(*report.dsn_secrets(dsn))
        print(f"txrelay usage: cannot read the ledger: {redactor.redact(str(e))}",
              file=sys.stderr)
        return 1
    if args.format == "json":
        print(json.dumps({**when.label(), "by": by, "rows": rows,
                          "total": report.grand_total(rows)}, indent=2))
    else:
        span = when.label()
        print(f"usage from {span['since'] or 'the start'} until {span['until'] or 'now'}")
        print(report.table(rows, by))
    return 0


def _keys(args: Any) -> int:
    from txrelay.keys import keys_command

    cfg = _load(args.config)
    return 1 if cfg is None else keys_command(cfg, args, sys.stdout, sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``txrelay`` console script."""
    parser = argparse.ArgumentParser(prog="txrelay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"txrelay {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the relay in the foreground")
    serve.add_argument("--config", "-c", default="relay.toml", help="TOML configuration file")
    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("config", help="TOML configuration file")
    hk = sub.add_parser("hash-key", help="print the SHA-256 of a client key for [[keys]]")
    hk.add_argument("key", nargs="?", help="the key (read from stdin when omitted)")
    usage = sub.add_parser("usage", help="print the usage ledger's totals for a period")
    usage.add_argument("--config", "-c", default="relay.toml",
                       help="TOML configuration file naming the ledger's database")
    usage.add_argument("--sqlite", metavar="PATH", help="read this SQLite ledger instead")
    usage.add_argument("--dsn", help="read this PostgreSQL ledger instead (libpq DSN or URI; "
                       "a password is better in PGPASSWORD or ~/.pgpass)")
    span = usage.add_mutually_exclusive_group()
    span.add_argument("--today", action="store_true", help="the current UTC day")
    span.add_argument("--month", action="store_true", help="the current UTC month")
    span.add_argument("--since", help="from this date or ISO 8601 time (UTC by default)")
    usage.add_argument("--until", help="up to (not including) this date or time")
    usage.add_argument("--by", default="key,model",
                       help="group by a comma-separated list of key, model, requested, "
                       "provider, session (default: key,model)")
    usage.add_argument("--format", choices=("table", "json"), default="table")
    from txrelay.keys import add_keys_parser

    add_keys_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "usage":
        if args.until is not None and (args.today or args.month):
            parser.error("--until goes with --since, not --today or --month")
        return _usage(args)
    if args.command == "check-config":
        return _check(args.config)
    if args.command == "hash-key":
        return _hash(args.key)
    if args.command == "keys":
        return _keys(args)
    return _serve(args.config)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
