"""``server.reuse_port`` listeners: endpoint-string parsing and two ports on one address."""

from __future__ import annotations

import socket
import tomllib

import pytest
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor

from tests.relayproc import config_text
from txrelay.config import ConfigError, parse_config
from txrelay.server.listeners import (
    ReusePortEndpoint,
    TCPListenSpec,
    parse_tcp,
    reuse_port_endpoint,
    reuse_port_socket,
)


def test_tcp_strings_parse_and_other_kinds_are_left_to_twisted() -> None:
    assert parse_tcp("tcp:8080:interface=127.0.0.1") == TCPListenSpec(
        socket.AF_INET, 8080, "127.0.0.1", 50)
    assert parse_tcp("tcp:port=9:backlog=128") == TCPListenSpec(socket.AF_INET, 9, "", 128)
    assert parse_tcp(r"tcp6:8080:interface=\:\:1") == TCPListenSpec(
        socket.AF_INET6, 8080, "::1", 50)
    assert parse_tcp("unix:/run/x.sock") is None
    assert parse_tcp("systemd:domain=INET:name=http") is None


@pytest.mark.parametrize("bad, words", [
    ("tcp:8080:reuse=1", "not reuse"),
    ("tcp:eighty", "must be numbers"),
    ("tcp:8080:port=8080", "give the port once"),
    ("tcp:70000", "out of range"),
])
def test_bad_tcp_strings_are_named(bad: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_tcp(bad)


def test_two_reuse_port_sockets_share_one_address_and_a_plain_one_cannot() -> None:
    first = reuse_port_socket(TCPListenSpec(socket.AF_INET, 0, "127.0.0.1"))
    try:
        port = first.getsockname()[1]
        second = reuse_port_socket(TCPListenSpec(socket.AF_INET, port, "127.0.0.1"))
        second.close()
        plain = socket.socket()
        try:
            with pytest.raises(OSError):
                plain.bind(("127.0.0.1", port))
        finally:
            plain.close()
    finally:
        first.close()


def test_the_endpoint_hands_its_socket_to_adopt_stream_port() -> None:
    reactor = MemoryReactor()
    assert reuse_port_endpoint(reactor, "unix:/run/x.sock") is None
    endpoint = reuse_port_endpoint(reactor, "tcp:0:interface=127.0.0.1")
    assert isinstance(endpoint, ReusePortEndpoint)
    factory = Factory.forProtocol(Protocol)
    ports: list[object] = []
    endpoint.listen(factory).addCallback(ports.append)
    assert len(ports) == 1
    [(fd, family, adopted)] = reactor.adoptedPorts
    assert family == socket.AF_INET and adopted is factory
    with pytest.raises(OSError):  # our copy of the descriptor is closed
        socket.socket(fileno=fd).close()


def test_a_failed_bind_fails_the_listen() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        endpoint = ReusePortEndpoint(MemoryReactor(), TCPListenSpec(socket.AF_INET, port,
                                                                    "127.0.0.1"))
        failures: list[object] = []
        endpoint.listen(Factory()).addErrback(failures.append)
        assert len(failures) == 1


def test_config_names_a_tcp_listener_reuse_port_cannot_bind() -> None:
    raw = tomllib.loads(config_text(server={
        "reuse_port": True, "listen": ["tcp:8080:interface=127.0.0.1", "tcp:80:ssl=1"]}))
    with pytest.raises(ConfigError) as info:
        parse_config(raw, "relay.toml", {})
    assert [p for p in info.value.problems if "listen" in p] == [
        "server.listen[1]: 'tcp:80:ssl=1': with reuse_port, a tcp listener takes only "
        "port, interface and backlog, not ssl"]


@pytest.mark.parametrize("server, problem", [
    ({"workers": 2}, "server.workers: more than 1 needs server.reuse_port = true (or "
                     "systemd: listeners only, which the workers inherit)"),
    ({"workers": 2, "listen": ["systemd:domain=INET:name=http", "tcp:8080"]},
     "server.workers: more than 1 needs server.reuse_port = true (or systemd: listeners "
     "only, which the workers inherit)"),
    ({"workers": 0}, "server.workers: must be between 1 and 64"),
    ({"workers": 2, "reuse_port": True, "listen": ["unix:/tmp/x.sock"]},
     "server.listen[0]: with server.workers, every listener must be tcp:, tcp6:, ssl: "
     "or systemd: ('unix:/tmp/x.sock')"),
])
def test_config_names_what_workers_need(server: dict[str, object], problem: str) -> None:
    raw = tomllib.loads(config_text(server=server))
    with pytest.raises(ConfigError) as info:
        parse_config(raw, "relay.toml", {})
    assert problem in info.value.problems


@pytest.mark.parametrize("server", [
    {"workers": 2, "listen": ["systemd:domain=INET:name=http"]},
    {"workers": 2, "reuse_port": True,
     "listen": ["systemd:domain=INET:name=http", "tcp:8080:interface=127.0.0.1"]},
])
def test_workers_inherit_systemd_listeners(server: dict[str, object]) -> None:
    raw = tomllib.loads(config_text(server=server))
    cfg = parse_config(raw, "relay.toml", {})
    assert cfg.server.workers == 2
