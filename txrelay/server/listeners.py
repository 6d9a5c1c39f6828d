# -*- test-case-name: tests.server.test_listeners -*-
"""
Listening sockets with ``SO_REUSEPORT`` (``server.reuse_port``), so a second relay
process can bind the port while the first one still serves: the zero-downtime swap
without systemd. Twisted's endpoint strings have no such option; the socket is made
here and handed to ``reactor.adoptStreamPort``, which works on every Twisted version.
"""

from __future__ import annotations

import socket
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from zope.interface import implementer

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
    try:
        port = int(positional[0] if positional else named["port"])
        backlog = int(named.get("backlog", "50"))
    except (KeyError, ValueError):
        raise ValueError(f"{description!r}: the port and backlog must be numbers") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{description!r}: port {port} is out of range")
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
