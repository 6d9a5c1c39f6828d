# -*- test-case-name: tests.server.test_listeners -*-
"""
Listening sockets of our own making where Twisted's endpoint strings fall short.

* ``SO_REUSEPORT`` (``server.reuse_port``), so a second relay process can bind the port
  while the first one still serves: the zero-downtime swap without systemd. Twisted's
  endpoint strings have no such option; the socket is made here and handed to
  ``reactor.adoptStreamPort``, which works on every Twisted version.
* ``ssl:`` listeners whose certificate and key are read again on reload (SIGHUP,
  ``POST /admin/reload``) so a renewed certificate serves new connections without a
  restart; a bad one is refused and the old one kept. TLS 1.2 or newer, ALPN ``http/1.1``.
"""

from __future__ import annotations

import datetime
import os
import socket
import warnings
from typing import Any

import attrs
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import (
    IListeningPort,
    IOpenSSLServerConnectionCreator,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.internet.ssl import CertificateOptions, DiffieHellmanParameters, TLSVersion
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.filepath import FilePath
from zope.interface import implementer

log = Logger()

#: Endpoint kinds ``server.reuse_port`` applies to; others (``unix:``, ``systemd:``) are
#: left to Twisted: an inherited systemd socket is already shared across processes.
TCP_KINDS = {"tcp": socket.AF_INET, "tcp6": socket.AF_INET6}


def _split(description: str) -> list[str]:
    """Split an endpoint string on unescaped colons (``\\:`` escapes one)."""
    parts, current, escaped = [], [], False
    for ch in description:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


@attrs.frozen
class TCPListenSpec:
    """The parts of a ``tcp:``/``tcp6:`` endpoint string a listening socket needs."""

    family: int
    port: int
    interface: str
    backlog: int = 50


def _port_and_backlog(description: str, positional: list[str],
                      named: dict[str, str]) -> tuple[int, int]:
    """The port (positional or ``port=``) and ``backlog`` of an endpoint string, checked."""
    try:
        port = int(positional[0] if positional else named["port"])
        backlog = int(named.get("backlog", "50"))
    except (KeyError, ValueError):
        raise ValueError(f"{description!r}: the port and backlog must be numbers") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{description!r}: port {port} is out of range")
    return port, backlog


def parse_tcp(description: str) -> TCPListenSpec | None:
    """
    ``tcp:8080:interface=127.0.0.1:backlog=128`` (or ``port=8080``) as a spec; ``None``
    for other endpoint kinds. Raises :class:`ValueError` naming what is wrong.
    """
    kind, *args = _split(description)
    family = TCP_KINDS.get(kind.strip().lower())
    if family is None:
        return None
    positional = [a for a in args if "=" not in a]
    named = dict(a.split("=", 1) for a in args if "=" in a)
    unknown = set(named) - {"port", "interface", "backlog"}
    if unknown:
        raise ValueError(f"{description!r}: with reuse_port, a tcp listener takes only "
                         f"port, interface and backlog, not {', '.join(sorted(unknown))}")
    if (positional and "port" in named) or len(positional) > 1:
        raise ValueError(f"{description!r}: give the port once")
    port, backlog = _port_and_backlog(description, positional, named)
    default = "::" if family == socket.AF_INET6 else ""
    return TCPListenSpec(family, port, named.get("interface", default), backlog)


def reuse_port_socket(spec: TCPListenSpec) -> socket.socket:
    """A bound, listening, non-blocking socket with ``SO_REUSEADDR`` + ``SO_REUSEPORT``."""
    sock = socket.socket(spec.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((spec.interface, spec.port))
        sock.listen(spec.backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


@implementer(IStreamServerEndpoint)
@attrs.frozen
class ReusePortEndpoint:
    """A TCP server endpoint whose socket other processes may bind too."""

    reactor: Any
    spec: TCPListenSpec

    def listen(self, protocolFactory: Any) -> Deferred[IListeningPort]:
        """Bind and listen now; the port stops like any Twisted listening port."""
        try:
            sock = reuse_port_socket(self.spec)
        except OSError as e:
            return fail(e)
        try:
            port: IListeningPort = self.reactor.adoptStreamPort(
                sock.fileno(), self.spec.family, protocolFactory)
        finally:
            sock.close()  # adoptStreamPort holds its own copy of the descriptor
        return succeed(port)


def reuse_port_endpoint(reactor: Any, description: str) -> ReusePortEndpoint | None:
    """A :class:`ReusePortEndpoint` for a ``tcp:``/``tcp6:`` string; ``None`` for other
    kinds (left to Twisted's ``serverFromString``)."""
    spec = parse_tcp(description)
    return None if spec is None else ReusePortEndpoint(reactor, spec)


# -- ``ssl:`` listeners whose certificate reloads -----------------------------------------

#: Options of an ``ssl:`` endpoint string (Twisted's, plus ``tlsMinimum``).
SSL_OPTIONS = {"port", "interface", "backlog", "privateKey", "certKey", "extraCertChain",
               "dhParameters", "tlsMinimum"}
_MINIMUM = {"1.2": TLSVersion.TLSv1_2, "1.3": TLSVersion.TLSv1_3}


@attrs.frozen
class TLSListenSpec:
    """An ``ssl:`` endpoint string: where to listen and the files of its identity."""

    tcp: TCPListenSpec
    private_key: str
    cert_key: str
    extra_cert_chain: str | None = None
    dh_parameters: str | None = None
    minimum: str = "1.2"


def parse_ssl(description: str, base: str = ".") -> TLSListenSpec | None:
    """
    ``ssl:8443:privateKey=key.pem:certKey=fullchain.pem`` as a spec; ``None`` for other
    endpoint kinds. Relative paths are taken from ``base`` and kept absolute, so a reload
    reads the same files. Raises :class:`ValueError` naming what is wrong.
    """
    kind, *args = _split(description)
    if kind.strip().lower() != "ssl":
        return None
    positional = [a for a in args if "=" not in a]
    named = dict(a.split("=", 1) for a in args if "=" in a)
    unknown = set(named) - SSL_OPTIONS
    if unknown:
        hint = (" (txrelay always negotiates TLS 1.2 or newer; tlsMinimum=1.3 raises it)"
                if "sslmethod" in unknown else "")
        raise ValueError(f"{description!r}: an ssl listener takes {', '.join(sorted(SSL_OPTIONS))},"
                         f" not {', '.join(sorted(unknown))}{hint}")
    if (positional and "port" in named) or len(positional) > 1:
        raise ValueError(f"{description!r}: give the port once")
    if "privateKey" not in named:
        raise ValueError(f"{description!r}: privateKey= (the PEM key file) is required")
    minimum = named.get("tlsMinimum", "1.2")
    if minimum not in _MINIMUM:
        raise ValueError(f"{description!r}: tlsMinimum must be 1.2 or 1.3, not {minimum!r}")
    port, backlog = _port_and_backlog(description, positional, named)

    def path(name: str) -> str | None:
        value = named.get(name)
        return None if value is None else os.path.abspath(os.path.join(base, value))

    key = path("privateKey")
    assert key is not None
    interface = named.get("interface", "")
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    return TLSListenSpec(
        TCPListenSpec(family, port, interface, backlog),
        private_key=key, cert_key=path("certKey") or key,
        extra_cert_chain=path("extraCertChain"), dh_parameters=path("dhParameters"),
        minimum=minimum)


class CertificateProblem(Exception):
    """A certificate, chain or key that cannot serve; the message says why."""


@attrs.frozen
class Identity:
    """A loaded certificate and key, ready to hand out to new connections."""

    context: SSL.Context
    serial: int
    subject: str
    not_after: datetime.datetime

    def describe(self) -> str:
        """The certificate in one line, for the log."""
        return (f"certificate serial {self.serial:x} for {self.subject}, valid until "
                f"{self.not_after:%Y-%m-%d %H:%M} UTC")


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CertificateProblem(f"cannot read the {what} {path}: {e.strerror}") from None


def load_identity(spec: TLSListenSpec, now: datetime.datetime | None = None) -> Identity:
    """
    Read the certificate (with the chain after it, as certbot's ``fullchain.pem`` has it,
    and ``extraCertChain``) and the key, check them, and build a TLS 1.2+ context that
    offers ALPN ``http/1.1``. Raises :class:`CertificateProblem` naming the file and the
    problem: unreadable, no certificate, an encrypted key, a key that does not belong to
    the certificate, a certificate that is expired or not valid yet.
    """
    now = now or datetime.datetime.now(datetime.UTC)
    cert_pem = _read(spec.cert_key, "certificate")
    try:
        certs = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        if spec.cert_key != spec.private_key:
            raise CertificateProblem(f"{spec.cert_key} holds no PEM certificate") from None
        certs = []
    if not certs:
        raise CertificateProblem(f"{spec.cert_key} holds no PEM certificate")
    chain = certs[1:]
    if spec.extra_cert_chain is not None:
        try:
            chain += x509.load_pem_x509_certificates(
                _read(spec.extra_cert_chain, "certificate chain"))
        except ValueError:
            raise CertificateProblem(f"the certificate chain {spec.extra_cert_chain} holds "
                                     "no PEM certificate") from None
    key_pem = _read(spec.private_key, "private key")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise CertificateProblem(f"the private key {spec.private_key} is encrypted; txrelay "
                                 "needs it unencrypted (readable by the relay alone)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise CertificateProblem(f"{spec.private_key} holds no PEM private key") from None
    leaf = certs[0]
    if leaf.public_key().public_bytes(*_SPKI) != key.public_key().public_bytes(*_SPKI):
        raise CertificateProblem(f"the private key {spec.private_key} does not belong to the "
                                 f"certificate in {spec.cert_key}")
    start, end = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    if now >= end:
        raise CertificateProblem(f"the certificate in {spec.cert_key} expired on "
                                 f"{end:%Y-%m-%d %H:%M} UTC")
    if now < start:
        raise CertificateProblem(f"the certificate in {spec.cert_key} is not valid before "
                                 f"{start:%Y-%m-%d %H:%M} UTC")
    try:
        with warnings.catch_warnings():
            # Twisted hands pyOpenSSL objects to pyOpenSSL, which now prefers cryptography's.
            warnings.simplefilter("ignore", DeprecationWarning)
            options = CertificateOptions(
                privateKey=crypto.PKey.from_cryptography_key(key),  # type: ignore[arg-type]
                certificate=crypto.X509.from_cryptography(leaf),
                extraCertChain=[crypto.X509.from_cryptography(c) for c in chain],
                raiseMinimumTo=_MINIMUM[spec.minimum], acceptableProtocols=[b"http/1.1"],
                dhParameters=(DiffieHellmanParameters.fromFile(FilePath(spec.dh_parameters))
                              if spec.dh_parameters else None))
            context = options.getContext()
    except (SSL.Error, crypto.Error, ValueError, TypeError) as e:
        raise CertificateProblem(f"OpenSSL refused {spec.cert_key} with "
                                 f"{spec.private_key}: {e}") from None
    subject = ", ".join(a.rfc4514_string() for a in leaf.subject) or "(no subject)"
    return Identity(context, leaf.serial_number, subject, end)


_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableTLS:
    """
    The TLS side of an ``ssl:`` listener: every new connection gets the identity loaded
    last; :meth:`reload` reads the files again and swaps it in only if it is good. A
    connection keeps the context it started with, so live ones are not touched.
    """

    def __init__(self, spec: TLSListenSpec) -> None:
        self.spec = spec
        self.identity = load_identity(spec)

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """A connection object for one accepted TCP connection (Twisted calls it)."""
        return SSL.Connection(self.identity.context, None)

    def reload(self) -> Identity:
        """Load the files again; raises :class:`CertificateProblem` and keeps the old."""
        self.identity = load_identity(self.spec)
        return self.identity


class _Unnegotiated(Factory):
    """
    The site behind a TLS listener, without its ALPN list: the context already offers
    ``http/1.1`` alone, and some Twisted versions would set the site's list on the shared
    context for every connection, which pyOpenSSL refuses once a connection used it.
    """

    def __init__(self, factory: Any) -> None:
        self.factory = factory

    def buildProtocol(self, addr: Any) -> Any:
        return self.factory.buildProtocol(addr)

    def doStart(self) -> None:
        self.factory.doStart()

    def doStop(self) -> None:
        self.factory.doStop()

    def logPrefix(self) -> str:
        prefix: str = self.factory.logPrefix() if hasattr(self.factory, "logPrefix") \
            else type(self.factory).__name__
        return prefix


@implementer(IStreamServerEndpoint)
@attrs.define(eq=False)
class TLSEndpoint:
    """An ``ssl:`` server endpoint built on :class:`ReloadableTLS`, with ``reuse_port``."""

    reactor: Any
    description: str
    tls: ReloadableTLS
    reuse_port: bool = False
    #: Whether the last reload was refused (the listener kept its certificate).
    refused: bool = attrs.field(default=False, init=False)

    def listen(self, protocolFactory: Any) -> Deferred[IListeningPort]:
        """Listen on TCP and speak TLS on every connection before the factory's protocol."""
        wrapped = TLSMemoryBIOFactory(self.tls, False, _Unnegotiated(protocolFactory))
        tcp = self.tls.spec.tcp
        inner: IStreamServerEndpoint = (
            ReusePortEndpoint(self.reactor, tcp) if self.reuse_port
            else (TCP6ServerEndpoint if tcp.family == socket.AF_INET6 else TCP4ServerEndpoint)(
                self.reactor, tcp.port, tcp.backlog, tcp.interface))
        return inner.listen(wrapped)

    def reload(self) -> str | None:
        """Reload the certificate, log the outcome; the problem when it was refused."""
        try:
            identity = self.tls.reload()
        except CertificateProblem as e:
            self.refused = True
            log.error("TLS reload refused for {description!r}: {problem}; new connections "
                      "keep {current}", description=self.description, problem=str(e),
                      current=self.tls.identity.describe())
            return str(e)
        self.refused = False
        log.info("TLS reloaded for {description!r}: new connections get {identity}",
                 description=self.description, identity=identity.describe())
        return None


def tls_endpoint(reactor: Any, description: str, reuse_port: bool = False,
                 base: str = ".") -> TLSEndpoint | None:
    """A :class:`TLSEndpoint` for an ``ssl:`` string, its certificate loaded (raises
    :class:`ValueError` or :class:`CertificateProblem`); ``None`` for other kinds."""
    spec = parse_ssl(description, base)
    return None if spec is None else TLSEndpoint(reactor, description, ReloadableTLS(spec),
                                                 reuse_port)


def certificates_detail(endpoints: list[TLSEndpoint]) -> list[dict[str, Any]]:
    """What ``/health/ready`` shows under ``detail.tls``: the certificate each ``ssl:``
    listener gives new connections, and whether its last reload was refused (no paths)."""
    return [{
        "port": e.tls.spec.tcp.port, "serial": f"{e.tls.identity.serial:x}",
        "subject": e.tls.identity.subject,
        "not_after": e.tls.identity.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "last_reload_refused": e.refused,
    } for e in endpoints]


def check_certificates(server: Any) -> tuple[list[str], list[str]]:
    """
    For ``txrelay check-config``: load every ``ssl:`` listener's files as the relay would
    (as the user running the check). Lines describing the good ones, and the problems, each
    naming the key path.
    """
    good: list[str] = []
    problems: list[str] = []
    for key in ("listen", "metrics_listen", "admin_listen"):
        for j, description in enumerate(getattr(server, key)):
            spec = parse_ssl(description)
            if spec is None:
                continue
            try:
                good.append(f"server.{key}[{j}]: {load_identity(spec).describe()}")
            except CertificateProblem as e:
                problems.append(f"server.{key}[{j}]: {e}")
    return good, problems
