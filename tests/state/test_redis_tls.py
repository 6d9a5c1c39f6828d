"""
``rediss://``: the state store checks a Redis server's certificate as strictly as an HTTPS
upstream's (txrelay.upstream.tls), with ``[state.tls]`` for a private CA and mutual TLS.
Real ``redis-server`` processes with TLS on loopback, certificates made by the test.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import reactorthread
from tests.redisproc import RedisServer, free_port
from tests.state.test_store_contract import run_in_reactor
from tests.tlsfixtures import Issued, issue, make_ca
from txrelay.config import ConfigError, StateConfig, TLSConfig, parse_config
from txrelay.state.interfaces import StoreUnavailable
from txrelay.state.redis import RedisAddress, RedisStore


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Issued]:
    d = tmp_path_factory.mktemp("redis-pki")
    ca = make_ca(d)
    return {
        "ca": ca,
        "good": issue(d, "good", ca, dns=("localhost",), ips=("127.0.0.1",)),
        # The hole in Twisted's optionsForClientTLS: no subjectAltName, a matching CN.
        "nosan": issue(d, "nosan", ca, cn="127.0.0.1"),
        "client": issue(d, "client", ca, cn="txrelay", client=True),
    }


def _start(cert: Issued, **kwargs: Any) -> RedisServer:
    server = RedisServer(free_port(), Path(tempfile.mkdtemp(prefix="txrelay-redis-tls-")),
                         tls=(cert.cert, cert.key), **kwargs)
    server.start()
    return server


@pytest.fixture(scope="module")
def servers(pki: dict[str, Issued]) -> Iterator[dict[str, RedisServer]]:
    client = (pki["client"].cert, pki["client"].key)
    out = {"good": _start(pki["good"]), "nosan": _start(pki["nosan"]),
           "mtls": _start(pki["good"], client_ca=pki["ca"].cert, client_cert=client)}
    yield out
    for server in out.values():
        server.stop()


def _store(server: RedisServer, tls: TLSConfig, host: str = "127.0.0.1") -> RedisStore:
    store = RedisStore(RedisAddress.from_url(f"rediss://{host}:{server.port}/0"),
                       reactorthread.reactor(), timeout=2.0, tls=tls)
    return reactorthread.call_in_reactor(store.connect)  # type: ignore[no-any-return]


def _refusal(store: RedisStore, seconds: float = 20) -> str:
    """The message the store's operations fail with once the handshakes have failed."""
    deadline = time.monotonic() + seconds
    last = ""
    while time.monotonic() < deadline:
        try:
            run_in_reactor(store.ping())
        except StoreUnavailable as e:
            last = str(e)
            if "TLS:" in last:
                return last
        else:
            raise AssertionError("the store answered through a refused certificate")
        time.sleep(0.05)
    raise AssertionError(f"no TLS reason within {seconds}s; last error: {last!r}")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_private_ca_in_ca_file_is_trusted(servers: dict[str, RedisServer],
                                            pki: dict[str, Issued], host: str) -> None:
    store = _store(servers["good"], TLSConfig(ca_file=str(pki["ca"].cert)), host)
    try:
        assert run_in_reactor(store.increment(f"n-{host}", 2, 60)).value == 2
        run_in_reactor(store.set("k", b"v"))
        assert run_in_reactor(store.get("k")) == b"v"
    finally:
        run_in_reactor(store.close())


def test_without_ca_file_the_system_trust_store_applies(
        servers: dict[str, RedisServer]) -> None:
    store = _store(servers["good"], TLSConfig())
    try:
        message = _refusal(store)
        assert message == (f"rediss://127.0.0.1:{servers['good'].port}/0: TLS: the "
                           "certificate of 127.0.0.1 is signed by an unknown certificate "
                           "authority")
    finally:
        run_in_reactor(store.close())


def test_a_certificate_without_subject_alt_name_is_refused(
        servers: dict[str, RedisServer], pki: dict[str, Issued]) -> None:
    store = _store(servers["nosan"], TLSConfig(ca_file=str(pki["ca"].cert)))
    try:
        assert "the certificate of 127.0.0.1 has no subjectAltName" in _refusal(store)
    finally:
        run_in_reactor(store.close())


def test_mutual_tls(servers: dict[str, RedisServer], pki: dict[str, Issued]) -> None:
    ca = str(pki["ca"].cert)
    store = _store(servers["mtls"], TLSConfig(ca_file=ca, client_cert=str(pki["client"].cert),
                                              client_key=str(pki["client"].key)))
    try:
        assert run_in_reactor(store.increment("m", 1, 60)).value == 1
    finally:
        run_in_reactor(store.close())
    # Without a client certificate the server ends the handshake: nothing is served.
    bare = _store(servers["mtls"], TLSConfig(ca_file=ca))
    try:
        with pytest.raises(StoreUnavailable):
            run_in_reactor(bare.ping())
    finally:
        run_in_reactor(bare.close())


def _problems(**state: Any) -> list[str]:
    """The ``state.`` problems of a configuration with this ``[state]`` table."""
    try:
        parse_config({"providers": [{"name": "demo", "kind": "demo"}],
                      "models": [{"id": "m", "provider": "demo"}],
                      "pipeline": [{"type": "model-map"}, {"type": "translate"}],
                      "state": state}, env={})
    except ConfigError as e:
        return [p for p in e.problems if p.startswith("state.")]
    return []


def test_state_tls_is_checked_with_the_configuration(tmp_path: Path,
                                                     pki: dict[str, Issued]) -> None:
    ok = StateConfig(kind="redis", url="rediss://r.example:6380/0",
                     tls=TLSConfig(ca_file=str(pki["ca"].cert)))
    assert ok.tls.ca_file == str(pki["ca"].cert)
    assert _problems(kind="redis", url="rediss://r.example:6380/0",
                     tls={"ca_file": str(pki["ca"].cert)}) == []
    assert _problems(kind="redis", url="redis://r.example:6379/0",
                     tls={"ca_file": str(pki["ca"].cert)}) == [
        "state.tls: set, but state.url is not a rediss:// URL"]
    missing = tmp_path / "nope.pem"
    problems = _problems(kind="redis", url="rediss://r.example:6380/0",
                         tls={"ca_file": str(missing), "client_cert": str(pki["client"].cert)})
    assert any(p.startswith(f"state.tls.ca_file: cannot read {missing}") for p in problems)
    assert "state.tls: give both client_cert and client_key, or neither" in problems
