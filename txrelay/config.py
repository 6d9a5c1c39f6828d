# -*- test-case-name: tests.integration.test_twistd_and_config,tests.test_catalog_and_stages -*-
"""
The relay's configuration: TOML structured with cattrs into frozen attrs classes.

Every problem is reported with its key path (``providers[1].base_url: not a URL``), all of
them at once, and unknown keys are errors. Secrets are never inline: client keys are given as
SHA-256 hashes or read from an environment variable or a file, provider credentials from an
environment variable or a file.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
from cattrs.errors import ClassValidationError

from txrelay.capabilities import CapabilityTable, table_problems
from txrelay.ledger.prices import Price, price_problems
from txrelay.protocol.structure import error_lines, make_converter
from txrelay.tracing import TracingConfig, tracing_problems

DEFAULT_MAX_REQUEST_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_BUFFERED_BYTES = 256 * 1024 * 1024

_converter = make_converter(forbid_extra_keys=True)


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` lists each one as ``path: message``."""

    def __init__(self, source: str, problems: list[str],
                 config: RelayConfig | None = None) -> None:
        super().__init__(source, problems)
        self.source = source
        self.problems = problems
        #: The structured configuration, when only the checks after structuring failed.
        self.config = config

    def __str__(self) -> str:
        lines = "\n".join(f"  {p}" for p in self.problems)
        return f"{self.source}: invalid configuration:\n{lines}"


@attrs.frozen
class Secret:
    """
    A credential read at start-up from an environment variable, a file, or a systemd
    credential (``credential = "name"``: the file ``$CREDENTIALS_DIRECTORY/name`` that
    ``LoadCredential=`` provides).

    The value never appears in ``repr`` or logs.
    """

    env: str | None = None
    file: str | None = None
    credential: str | None = None
    value: str = attrs.field(default="", repr=False, eq=False)
    #: A name for logs and metrics (``api_keys`` entries; ``key0``, ``key1``… by default).
    name: str | None = None


@attrs.frozen
class ClientKey:
    """
    A named client key: its SHA-256 hex digest, or an env var, a file or a systemd
    credential holding the key.
    """

    name: str
    sha256: str | None = None
    env: str | None = None
    file: str | None = None
    credential: str | None = None


@attrs.frozen
class Timeouts:
    """Upstream timeouts in seconds."""

    connect: float = 10.0
    #: From sending the request to the upstream's response headers.
    first_byte: float = 600.0
    #: Longest silence between two reads of a response body.
    idle: float = 300.0


@attrs.frozen
class TLSConfig:
    """
    TLS for an ``https://`` upstream. The certificate is always verified, and its host name
    (or IP address) must be in its subjectAltName.
    """

    #: PEM file of the CA certificates to trust for this upstream. It replaces the system
    #: trust store unless ``system_trust`` is also set.
    ca_file: str | None = None
    #: With ``ca_file``: trust the system's CAs as well.
    system_trust: bool = False
    #: PEM client certificate (with any intermediates) for mutual TLS; needs ``client_key``.
    client_cert: str | None = None
    #: PEM private key of ``client_cert`` (unencrypted).
    client_key: str | None = None


@attrs.frozen
class ProviderConfig:
    """One backend the relay can send requests to."""

    name: str
    #: A backend plugin's kind (``demo``, ``openai-chat``, or a third-party kind).
    kind: str
    base_url: str | None = None
    api_key: Secret | None = None
    #: A pool of upstream keys used in turn (README "Routes, fallbacks and key pools");
    #: instead of ``api_key``.
    api_keys: tuple[Secret, ...] = ()
    #: Extra headers sent with every upstream request.
    headers: dict[str, str] = attrs.field(factory=dict)
    timeouts: Timeouts = Timeouts()
    #: Idle pooled connections kept per upstream host.
    max_idle_connections: int = 32
    #: Seconds an idle pooled connection is kept: below the upstream's keep-alive limit
    #: (uvicorn closes idle connections after 5 s).
    idle_connection_timeout: float = 4.0
    #: Kind-specific options (for ``openai-chat``: a dialect preset and overrides).
    options: dict[str, Any] = attrs.field(factory=dict)
    tls: TLSConfig = TLSConfig()

    def api_key_names(self) -> tuple[str, ...]:
        """The names of the ``api_keys`` pool (empty without one)."""
        return tuple(k.name or f"key{i}" for i, k in enumerate(self.api_keys))


@attrs.frozen
class TargetConfig:
    """One place a model with ``targets`` is served (README "Routes, fallbacks and key
    pools")."""

    provider: str
    #: Defaults to the model's ``upstream_model``, else its id (for a pattern, the asked name).
    upstream_model: str | None = None
    #: The name breakers, metrics and logs use; ``provider/upstream_model`` by default.
    name: str | None = None
    #: Lower priorities are tried first; equal ones share the load by ``weight``.
    priority: int = 0
    weight: float = 1.0


@attrs.frozen
class RoutingConfig:
    """How a model's requests retry, fall back and stick to a target."""

    #: Upstream attempts per request at most; 1 for one target, else one more than targets.
    attempts: int | None = None
    #: Jittered exponential backoff before retrying a target already tried: seconds.
    backoff: float = 0.25
    max_backoff: float = 4.0
    #: A ``retry-after`` up to this is waited for; a longer one is not retried on that target.
    max_retry_after: float = 30.0
    #: Circuit breakers; on by default for a model with several targets.
    breaker: bool | None = None
    breaker_failures: int = 5
    breaker_window: float = 30.0
    breaker_cooldown: float = 30.0
    #: Keep a conversation on one target and key while it is healthy (prompt caches).
    affinity: bool = True
    affinity_ttl: float = 3600.0


@attrs.frozen
class ModelConfig:
    """A model clients may ask for, and where it is served."""

    id: str
    #: The provider serving it (or give ``targets``).
    provider: str | None = None
    #: The model id sent upstream; defaults to ``id`` (for a pattern match, the asked name).
    upstream_model: str | None = None
    aliases: tuple[str, ...] = ()
    #: Glob patterns (``claude-*-haiku-*``) of requested names that route here.
    patterns: tuple[str, ...] = ()
    display_name: str | None = None
    #: Largest ``max_tokens`` forwarded; larger requests are clamped (the same limit as
    #: ``capabilities.max_output_tokens``).
    max_tokens: int | None = None
    #: The context window (the same limit as ``capabilities.context_window``).
    max_input_tokens: int | None = None
    created_at: str = "2025-01-01T00:00:00Z"
    #: Whether ``GET /v1/models`` lists it.
    listed: bool = True
    #: Kind-specific per-model options (merged over the provider's).
    options: dict[str, Any] = attrs.field(factory=dict)
    #: What the model can take (:mod:`txrelay.capabilities`).
    capabilities: CapabilityTable = attrs.field(factory=CapabilityTable)
    #: Several places it is served, tried by priority and weight (instead of ``provider``).
    targets: tuple[TargetConfig, ...] = ()
    routing: RoutingConfig = RoutingConfig()

    def provider_names(self) -> tuple[str, ...]:
        """The providers serving this model: ``provider``, or those of its targets."""
        if self.provider is not None:
            return (self.provider,)
        return tuple(dict.fromkeys(t.provider for t in self.targets))


@attrs.frozen
class StageConfig:
    """One pipeline stage: its plugin ``type`` and its options table."""

    type: str
    name: str | None = None
    options: dict[str, Any] = attrs.field(factory=dict)

    @property
    def label(self) -> str:
        """The name used in logs: ``name`` or the type."""
        return self.name or self.type


@attrs.frozen
class ServerConfig:
    """The HTTP front end."""

    #: Twisted endpoint strings: ``tcp:8080:interface=127.0.0.1``, ``unix:/run/x.sock``,
    #: ``systemd:domain=INET:index=0``.
    listen: tuple[str, ...] = ("tcp:8080:interface=127.0.0.1",)
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    #: Seconds without a write after which a stream gets a ``ping`` (R-S17).
    ping_interval: float = 10.0
    #: How long a drain waits for live requests before closing them.
    drain_timeout: float = 30.0
    access_log: bool = True
    #: Seconds an idle keep-alive client connection is kept.
    idle_timeout: float = 75.0
    #: Serve Prometheus metrics at ``GET /metrics`` (see ``metrics_listen``, ``admin_keys``).
    metrics: bool = True
    #: Request bodies buffered at once across all connections; past it uploads get 529.
    max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES
    #: Seconds a client has to send a request's head (request line and headers).
    header_timeout: float = 10.0
    #: Bytes/s a request body must average after ``body_grace`` seconds (0: no minimum).
    min_body_rate: int = 4096
    body_grace: float = 10.0
    #: Endpoints serving ``/metrics`` alone, to whoever can connect. When set, the main
    #: listeners serve ``/metrics`` only with an admin key; otherwise to loopback peers (and
    #: Unix sockets) or with an admin key.
    metrics_listen: tuple[str, ...] = ()
    #: Keys (``Authorization: Bearer`` or ``x-api-key``) that unlock ``/metrics`` on the main
    #: listeners from any peer; given like client keys.
    admin_keys: tuple[ClientKey, ...] = ()
    #: Endpoints serving the ``/admin/`` endpoints alone; when set, the main listeners do
    #: not serve them. Either way every admin request needs an admin key.
    admin_listen: tuple[str, ...] = ()
    #: Bind every ``tcp:``/``tcp6:`` listener with ``SO_REUSEPORT``, so a new relay process
    #: can listen on the same ports while this one serves and then drains (README "Swaps").
    reuse_port: bool = False
    #: Relay processes sharing the listeners (``reuse_port`` needed past 1), run and
    #: restarted by the main process (``txrelay.workers``).
    workers: int = 1
    #: Run Twisted's epoll reactor with a cheaper main loop and event dispatch
    #: (:mod:`txrelay.leanreactor`); false keeps Twisted's own. Changes only with a restart.
    lean_reactor: bool = True


@attrs.frozen
class StateConfig:
    """
    ``[state]``: where the shared state (limits, quotas, breakers, affinity, managed keys)
    lives: ``memory`` (this process) or ``redis`` (shared by a fleet). Restart-only.
    """

    kind: Literal["memory", "redis"] = "memory"
    #: ``redis://host:port/db`` (``rediss://`` for TLS); or host/port/db below.
    url: str | None = None
    host: str | None = None
    port: int | None = None
    db: int | None = None
    password: Secret | None = None
    #: Prepended to every key, so several deployments can share one server.
    prefix: str = "txrelay:"
    #: Seconds one operation may take before it counts as a failure.
    timeout: float = 0.25
    #: While Redis is unreachable: ``open`` serves under in-process state, ``closed``
    #: fails the operations (stages that need them refuse requests).
    on_unavailable: Literal["open", "closed"] = "open"
    #: Seconds between probes of an unreachable Redis.
    probe_interval: float = 2.0
    #: For a ``rediss://`` url: a private CA (``ca_file``) and a client certificate, as for
    #: a provider's ``tls``. The certificate is always verified.
    tls: TLSConfig = TLSConfig()


def _check_state(st: StateConfig, env: Mapping[str, str], problems: list[str]) -> StateConfig:
    if st.url is not None and (st.host, st.port, st.db) != (None, None, None):
        problems.append("state.url: give either url or host/port/db, not both")
    if st.url is not None:
        from txrelay.state.redis import RedisAddress

        try:
            RedisAddress.from_url(st.url)
        except ValueError as e:
            problems.append(f"state.url: {e}")
    if st.port is not None and not 0 < st.port < 65536:
        problems.append("state.port: must be between 1 and 65535")
    if st.db is not None and st.db < 0:
        problems.append("state.db: must not be negative")
    if not 0 < st.timeout <= 30:
        problems.append("state.timeout: must be between 0 and 30 seconds")
    if not 0 < st.probe_interval <= 300:
        problems.append("state.probe_interval: must be between 0 and 300 seconds")
    if st.tls != TLSConfig():
        if not (st.url or "").startswith("rediss://"):
            problems.append("state.tls: set, but state.url is not a rediss:// URL")
        from txrelay.upstream.tls import tls_problems

        problems.extend(tls_problems(st.tls, None, "state.tls"))
    if st.kind == "memory" and (st.url or st.host or st.password):
        problems.append("state.kind: is \"memory\", but a Redis server is configured "
                        "(set kind = \"redis\")")
    if st.password is not None:
        return attrs.evolve(st, password=_resolve_secret(st.password, "state.password", env,
                                                         problems))
    return st


@attrs.frozen
class LogConfig:
    """Logging."""

    level: Literal["debug", "info", "warn", "error"] = "info"
    format: Literal["text", "json"] = "text"
    #: Log each request's body after its access line, redacted and cut to this many bytes
    #: (0: never, the default; bodies hold users' conversations).
    body_bytes: int = 0


@attrs.frozen
class LedgerConfig:
    """``[ledger]``: the usage ledger (:mod:`txrelay.ledger`), one record per request."""

    kind: Literal["off", "sqlite", "postgres"] = "sqlite"
    #: SQLite: the database file; a relative path is under ``$STATE_DIRECTORY`` when set
    #: (systemd's ``StateDirectory=``), else the working directory.
    path: str = "txrelay-usage.sqlite3"
    #: PostgreSQL: the libpq connection string or URI, read like any secret.
    dsn: Secret | None = None
    #: Records written per transaction; a full batch is written at once.
    batch_size: int = 200
    #: Seconds between two writes of what is queued.
    flush_interval: float = 1.0
    #: Records kept in memory while the database is slow or down; past it they are dropped.
    max_queue: int = 10_000
    #: Seconds a stop waits for the queued records to be written.
    close_timeout: float = 5.0
    #: Days records are kept (older ones are deleted once an hour); 0 keeps them all.
    retention_days: int = 0


def _check_ledger(cfg: RelayConfig, env: Mapping[str, str], problems: list[str]) -> Any:
    led = cfg.ledger
    if led is None:
        return None
    if not 1 <= led.batch_size <= 10_000:
        problems.append("ledger.batch_size: must be between 1 and 10000")
    if not 0 < led.flush_interval <= 3600:
        problems.append("ledger.flush_interval: must be between 0 and 3600 seconds")
    if led.max_queue < led.batch_size:
        problems.append("ledger.max_queue: must be at least ledger.batch_size")
    if led.close_timeout < 0:
        problems.append("ledger.close_timeout: must not be negative")
    if led.retention_days < 0:
        problems.append("ledger.retention_days: must not be negative (0 keeps every record)")
    if led.kind == "postgres":
        import importlib.util

        if importlib.util.find_spec("psycopg") is None:
            problems.append("ledger.kind: postgres needs psycopg, which is not installed "
                            "(pip install 'txrelay[postgres]')")
        if led.dsn is None:
            problems.append('ledger.dsn: kind = "postgres" needs a dsn (env, file or '
                            "credential)")
        else:
            led = attrs.evolve(led, dsn=_resolve_secret(led.dsn, "ledger.dsn", env, problems))
    elif led.kind == "sqlite":
        from txrelay.ledger.sinks import sqlite_path

        folder = os.path.dirname(sqlite_path(led.path, env))
        if not led.path or not os.path.isdir(folder):
            problems.append(f"ledger.path: the directory {folder!r} does not exist")
    return led


@attrs.frozen
class RelayConfig:
    """The whole configuration file."""

    providers: tuple[ProviderConfig, ...]
    models: tuple[ModelConfig, ...]
    pipeline: tuple[StageConfig, ...]
    server: ServerConfig = ServerConfig()
    keys: tuple[ClientKey, ...] = ()
    log: LogConfig = LogConfig()
    tracing: TracingConfig = attrs.Factory(TracingConfig)
    #: ``[ledger]``; without the table, no usage is recorded.
    ledger: LedgerConfig | None = None
    #: ``[[prices]]``: USD per million tokens by model glob (:mod:`txrelay.ledger.prices`).
    prices: tuple[Price, ...] = ()
    state: StateConfig = StateConfig()

    def provider(self, name: str) -> ProviderConfig | None:
        """The provider called ``name``."""
        for p in self.providers:
            if p.name == name:
                return p
        return None


_URL = re.compile(r"^https?://[^\s/?#]+(/[^\s?#]*)?$")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


def hash_key(key: str) -> str:
    """The SHA-256 hex digest of a client key, as ``keys[].sha256`` expects it."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _read_secret_file(path: str, where: str, problems: list[str]) -> str | None:
    try:
        value = Path(path).read_text("utf-8").strip()
    except OSError as e:
        problems.append(f"{where}: cannot read {path}: {e.strerror or e}")
        return None
    if not value:
        problems.append(f"{where}: {path} is empty")
        return None
    return value


def credential_path(name: str, where: str, env: Mapping[str, str],
                    problems: list[str]) -> str | None:
    """
    The file of systemd credential ``name`` (``$CREDENTIALS_DIRECTORY/name``), or ``None``
    after appending the problem.
    """
    if not name or "/" in name or name in (".", ".."):
        problems.append(f"{where}: {name!r} is not a credential name")
        return None
    directory = env.get("CREDENTIALS_DIRECTORY", "")
    if not directory:
        problems.append(f"{where}: credential {name!r} needs $CREDENTIALS_DIRECTORY, which "
                        "is not set (systemd sets it for a unit with LoadCredential=)")
        return None
    return os.path.join(directory, name)


def _resolve_secret(
    secret: Secret, where: str, env: Mapping[str, str], problems: list[str]
) -> Secret:
    given = [k for k in ("env", "file", "credential") if getattr(secret, k) is not None]
    if len(given) != 1:
        problems.append(f"{where}: give exactly one of env, file or credential")
        return secret
    if secret.credential is not None:
        path = credential_path(secret.credential, f"{where}.credential", env, problems)
        if path is None:
            return secret
        value = _read_secret_file(path, f"{where}.credential", problems)
        return attrs.evolve(secret, value=value or "")
    if secret.env is not None:
        value = env.get(secret.env, "")
        if not value:
            problems.append(f"{where}.env: environment variable {secret.env} is not set")
            return secret
        return attrs.evolve(secret, value=value)
    assert secret.file is not None
    value_or_none = _read_secret_file(secret.file, f"{where}.file", problems)
    return attrs.evolve(secret, value=value_or_none or "")


def key_digests(
    cfg: RelayConfig, env: Mapping[str, str] | None = None
) -> tuple[dict[str, bytes], list[str]]:
    """Each client key's name → SHA-256 digest, and the problems found resolving them."""
    return _digests(cfg.keys, "keys", os.environ if env is None else env)


def admin_key_digests(
    cfg: RelayConfig, env: Mapping[str, str] | None = None
) -> tuple[dict[str, bytes], list[str]]:
    """Each ``server.admin_keys`` name → SHA-256 digest, and the problems resolving them."""
    return _digests(cfg.server.admin_keys, "server.admin_keys",
                    os.environ if env is None else env)


def _key_value(key: ClientKey, env: Mapping[str, str]) -> str | None:
    if key.env is not None:
        return env.get(key.env) or None
    path = key.file
    if key.credential is not None:
        path = credential_path(key.credential, "", env, [])
    if path is not None:
        try:
            return Path(path).read_text("utf-8").strip() or None
        except OSError:
            return None
    return None


#: Words in a provider header's name that make its value a credential.
_CREDENTIAL_WORDS = ("auth", "key", "token", "secret", "password", "cookie")


def secret_values(cfg: RelayConfig, env: Mapping[str, str] | None = None) -> list[str]:
    """
    Every secret value the configuration gives the relay: client and admin keys given by
    environment variable or file, upstream API keys, credential-like provider headers (and
    the token of an ``Authorization`` value), and passwords in ``base_url``. These are what
    :mod:`txrelay.redact` removes from client responses and logs.
    """
    env = os.environ if env is None else env
    out: list[str] = []
    for key in (*cfg.keys, *cfg.server.admin_keys):
        value = _key_value(key, env)
        if value:
            out.append(value)
    for p in cfg.providers:
        if p.api_key is not None and p.api_key.value:
            out.append(p.api_key.value)
        out.extend(k.value for k in p.api_keys if k.value)
        for name, value in p.headers.items():
            if any(word in name.lower() for word in _CREDENTIAL_WORDS) and value:
                out.append(value)
                scheme, _, token = value.partition(" ")
                if token.strip() and scheme.isalpha():
                    out.append(token.strip())
        if p.base_url and "@" in p.base_url.split("/", 3)[2]:
            userinfo = p.base_url.split("/", 3)[2].rsplit("@", 1)[0]
            out.append(userinfo)
            if ":" in userinfo:
                out.append(userinfo.split(":", 1)[1])
    if cfg.ledger is not None and cfg.ledger.dsn is not None and cfg.ledger.dsn.value:
        from txrelay.ledger.report import dsn_secrets

        out.extend(dsn_secrets(cfg.ledger.dsn.value))
    if cfg.state.password is not None:
        out.append(cfg.state.password.value)
    return [v for v in out if v]


def _digests(
    keys: tuple[ClientKey, ...], prefix: str, env: Mapping[str, str]
) -> tuple[dict[str, bytes], list[str]]:
    problems: list[str] = []
    digests: dict[str, bytes] = {}
    for i, key in enumerate(keys):
        where = f"{prefix}[{i}]"
        given = [k for k in ("sha256", "env", "file", "credential")
                 if getattr(key, k) is not None]
        if len(given) != 1:
            problems.append(f"{where}: give exactly one of sha256, env, file or credential")
            continue
        if key.name in digests:
            problems.append(f"{where}.name: duplicate key name {key.name!r}")
        if key.sha256 is not None:
            if not _HEX64.match(key.sha256):
                problems.append(f"{where}.sha256: not a SHA-256 hex digest (64 hex characters)")
                continue
            digests[key.name] = bytes.fromhex(key.sha256)
        elif key.env is not None:
            value = env.get(key.env, "")
            if not value:
                problems.append(f"{where}.env: environment variable {key.env} is not set")
                continue
            digests[key.name] = hashlib.sha256(value.encode()).digest()
        else:
            field, path = "file", key.file
            if key.credential is not None:
                field = "credential"
                path = credential_path(key.credential, f"{where}.credential", env, problems)
                if path is None:
                    continue
            assert path is not None
            file_value = _read_secret_file(path, f"{where}.{field}", problems)
            if file_value is not None:
                digests[key.name] = hashlib.sha256(file_value.encode()).digest()
    return digests, problems


def parse_config(
    raw: Mapping[str, Any], source: str = "config", env: Mapping[str, str] | None = None
) -> RelayConfig:
    """Structure and check a decoded TOML document; raise :class:`ConfigError`."""
    env = os.environ if env is None else env
    try:
        cfg = _converter.structure(dict(raw), RelayConfig)
    except (ClassValidationError, TypeError, ValueError) as e:
        raise ConfigError(
            source, [f"{path}: {msg}" if path else msg for path, msg in error_lines(e)]
        ) from None
    problems: list[str] = []
    cfg = _check(cfg, env, problems)
    if problems:
        raise ConfigError(source, problems, cfg)
    return cfg


def _check(cfg: RelayConfig, env: Mapping[str, str], problems: list[str]) -> RelayConfig:
    s = cfg.server
    if not s.listen:
        problems.append("server.listen: at least one endpoint is required")
    if s.max_request_bytes < 1024:
        problems.append("server.max_request_bytes: must be at least 1024")
    if not 0.5 <= s.ping_interval <= 60:
        problems.append("server.ping_interval: must be between 0.5 and 60 seconds")
    if s.drain_timeout < 0:
        problems.append("server.drain_timeout: must not be negative")
    if s.max_buffered_bytes < s.max_request_bytes:
        problems.append("server.max_buffered_bytes: must be at least server.max_request_bytes")
    if not 0 < s.header_timeout <= 3600:
        problems.append("server.header_timeout: must be between 0 and 3600 seconds")
    if s.min_body_rate < 0:
        problems.append("server.min_body_rate: must not be negative (0 turns it off)")
    if s.body_grace < 0:
        problems.append("server.body_grace: must not be negative")
    problems.extend(admin_key_digests(cfg, env)[1])
    if s.metrics_listen and not s.metrics:
        problems.append("server.metrics_listen: set, but server.metrics is false")
    if s.admin_listen and not s.admin_keys:
        problems.append("server.admin_listen: set, but no server.admin_keys to use it with")
    if not 1 <= s.workers <= 64:
        problems.append("server.workers: must be between 1 and 64")
    elif s.workers > 1 and not s.reuse_port and not all(
            d.startswith("systemd:") for d in (*s.listen, *s.metrics_listen, *s.admin_listen)):
        problems.append("server.workers: more than 1 needs server.reuse_port = true (or "
                        "systemd: listeners only, which the workers inherit)")
    if s.reuse_port:
        from txrelay.server.listeners import parse_tcp

        for key in ("listen", "metrics_listen", "admin_listen"):
            for j, description in enumerate(getattr(s, key)):
                try:
                    spec = parse_tcp(description)
                except ValueError as e:
                    problems.append(f"server.{key}[{j}]: {e}")
                    continue
                if spec is None and s.workers > 1 and not description.startswith(
                        ("systemd:", "ssl:")):
                    problems.append(f"server.{key}[{j}]: with server.workers, every "
                                    f"listener must be tcp:, tcp6:, ssl: or systemd: "
                                    f"({description!r})")

    from txrelay.server.listeners import parse_ssl

    for key in ("listen", "metrics_listen", "admin_listen"):  # ssl: strings, read by txrelay
        for j, description in enumerate(getattr(s, key)):
            try:
                parse_ssl(description)
            except ValueError as e:
                problems.append(f"server.{key}[{j}]: {e}")

    providers: list[ProviderConfig] = []
    names: set[str] = set()
    for i, p in enumerate(cfg.providers):
        where = f"providers[{i}]"
        if p.name in names:
            problems.append(f"{where}.name: duplicate provider name {p.name!r}")
        names.add(p.name)
        # Whether a kind needs a base_url is the backend plugin's call (service.build_backend).
        if p.base_url is not None and not _URL.match(p.base_url):
            problems.append(f"{where}.base_url: not a URL (expected http:// or https://…)")
        for field, value in attrs.asdict(p.timeouts).items():
            if value <= 0:
                problems.append(f"{where}.timeouts.{field}: must be greater than 0")
        if p.max_idle_connections < 0:
            problems.append(f"{where}.max_idle_connections: must not be negative")
        if p.tls != TLSConfig():
            from txrelay.upstream.tls import tls_problems

            problems.extend(tls_problems(p.tls, p.base_url, f"{where}.tls"))
        if p.idle_connection_timeout <= 0:
            problems.append(f"{where}.idle_connection_timeout: must be greater than 0")
        if p.api_keys:
            providers.append(_resolve_pool(p, where, env, problems))
        elif p.api_key is not None:
            secret = _resolve_secret(p.api_key, f"{where}.api_key", env, problems)
            providers.append(attrs.evolve(p, api_key=secret))
        else:
            providers.append(p)
    if not providers:
        problems.append("providers: at least one provider is required")

    seen: dict[str, str] = {}
    fleet: dict[str, tuple[str, str, str]] = {}
    for i, m in enumerate(cfg.models):
        where = f"models[{i}]"
        problems.extend(routing_problems(m, where, names, fleet))
        for label, name in [("id", m.id), *(("aliases", a) for a in m.aliases)]:
            if name in seen:
                problems.append(f"{where}.{label}: {name!r} is already {seen[name]}")
            seen[name] = f"used by {where}"
        for pattern in m.patterns:
            if not pattern or pattern.count("[") != pattern.count("]"):
                problems.append(f"{where}.patterns: {pattern!r} is not a valid glob")
        if m.max_tokens is not None and m.max_tokens < 1:
            problems.append(f"{where}.max_tokens: must be at least 1")
        problems.extend(table_problems(m.capabilities, f"{where}.capabilities",
                                       max_tokens=m.max_tokens,
                                       max_input_tokens=m.max_input_tokens))

    _, key_problems = key_digests(cfg, env)
    problems.extend(key_problems)

    problems.extend(tracing_problems(cfg.tracing))
    ledger = _check_ledger(cfg, env, problems)
    problems.extend(price_problems(cfg.prices))
    state = _check_state(cfg.state, env, problems)

    types = [st.type for st in cfg.pipeline]
    if "translate" not in types:
        problems.append("pipeline: the last stage must be 'translate' (none found)")
    elif types[-1] != "translate":
        problems.append("pipeline: 'translate' must be the last stage")
    return attrs.evolve(cfg, providers=tuple(providers), ledger=ledger, state=state)


def _resolve_pool(p: ProviderConfig, where: str, env: Mapping[str, str],
                  problems: list[str]) -> ProviderConfig:
    """``p`` with its ``api_keys`` read; the first key also becomes ``api_key`` (for kinds
    that check one is given)."""
    if p.api_key is not None:
        problems.append(f"{where}.api_keys: give either api_key or api_keys, not both")
    resolved: list[Secret] = []
    seen: set[str] = set()
    for j, (key, name) in enumerate(zip(p.api_keys, p.api_key_names(), strict=True)):
        if name in seen:
            problems.append(f"{where}.api_keys[{j}].name: duplicate key name {name!r}")
        elif not name or not name.isprintable() or len(name) > 64:
            problems.append(f"{where}.api_keys[{j}].name: must be 1 to 64 printable "
                            "characters")
        seen.add(name)
        resolved.append(_resolve_secret(key, f"{where}.api_keys[{j}]", env, problems))
    return attrs.evolve(p, api_keys=tuple(resolved), api_key=resolved[0])


def target_name(model: ModelConfig, target: TargetConfig) -> str:
    """The bounded name of one of ``model``'s targets (breakers, metrics, logs)."""
    return target.name or f"{target.provider}/{target_model(model, target)}"


def target_model(model: ModelConfig, target: TargetConfig) -> str:
    """The upstream model a target is configured with (a pattern route may use the asked
    name instead when neither the target nor the model gives one)."""
    return target.upstream_model or model.upstream_model or model.id


def model_targets(model: ModelConfig) -> tuple[TargetConfig, ...]:
    """``model``'s targets: its ``targets``, or one made of ``provider``."""
    if model.targets:
        return model.targets
    return (TargetConfig(model.provider or "", model.upstream_model),)


def routing_problems(m: ModelConfig, where: str, providers: set[str],
                     fleet: dict[str, tuple[str, str, str]] | None = None) -> list[str]:
    """
    The problems of a model's ``provider``/``targets`` and ``routing`` tables; ``fleet``
    (target name → (provider, model, where), filled in) catches one name given to two
    different targets, which would share a breaker.
    """
    out: list[str] = []
    fleet = {} if fleet is None else fleet
    if m.provider is not None and m.targets:
        out.append(f"{where}.targets: give either provider or targets, not both")
    elif m.provider is None and not m.targets:
        out.append(f"{where}.provider: required (or give targets)")
    elif m.provider is not None and m.provider not in providers:
        out.append(f"{where}.provider: no provider named {m.provider!r}")
    names: set[str] = set()
    for j, t in enumerate(m.targets):
        tw = f"{where}.targets[{j}]"
        if t.provider not in providers:
            out.append(f"{tw}.provider: no provider named {t.provider!r}")
        if not t.weight > 0 or t.weight != t.weight or t.weight == float("inf"):
            out.append(f"{tw}.weight: must be a finite number greater than 0")
        name = target_name(m, t)
        if name in names:
            out.append(f"{tw}.name: duplicate target {name!r} (give each target a name)")
        names.add(name)
        same = fleet.setdefault(name, (t.provider, target_model(m, t), tw))
        if same[:2] != (t.provider, target_model(m, t)):
            out.append(f"{tw}.name: {name!r} already names another target ({same[2]})")
    r = m.routing
    rw = f"{where}.routing"
    if r.attempts is not None and not 1 <= r.attempts <= 10:
        out.append(f"{rw}.attempts: must be between 1 and 10")
    for field in ("backoff", "max_retry_after"):
        if getattr(r, field) < 0:
            out.append(f"{rw}.{field}: must not be negative")
    if r.max_backoff < r.backoff:
        out.append(f"{rw}.max_backoff: must be at least routing.backoff")
    if r.breaker_failures < 1:
        out.append(f"{rw}.breaker_failures: must be at least 1")
    for field in ("breaker_window", "breaker_cooldown", "affinity_ttl"):
        if not getattr(r, field) > 0:
            out.append(f"{rw}.{field}: must be greater than 0")
    return out


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> RelayConfig:
    """Read, structure and check the TOML file at ``path``; raise :class:`ConfigError`."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            raw = tomllib.load(f)
    except OSError as e:
        raise ConfigError(source, [f"cannot read the file: {e.strerror or e}"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(source, [f"not valid TOML: {e}"]) from None
    return parse_config(raw, source, env)


def glob_matches(pattern: str, name: str) -> bool:
    """Whether ``name`` matches the model glob ``pattern`` (case-sensitive)."""
    return fnmatch.fnmatchcase(name, pattern)
