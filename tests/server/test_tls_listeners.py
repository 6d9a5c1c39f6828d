"""
``ssl:`` listeners in process: parsing the endpoint string (and ``check-config`` naming its
mistakes), loading and checking a certificate and key, the reload that swaps the identity
only when the new one is good. The handshakes are in tests.integration.test_tls_listener.
"""

from __future__ import annotations

import datetime
import socket
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.relayproc import config_text
from tests.tlsfixtures import Issued, issue, make_ca
from txrelay.cli import main
from txrelay.config import ConfigError, parse_config
from txrelay.server.listeners import (
    CertificateProblem,
    ReloadableTLS,
    TCPListenSpec,
    TLSListenSpec,
    load_identity,
    parse_ssl,
)


def test_ssl_strings_parse_with_absolute_paths_and_certkey_defaulting_to_the_key() -> None:
    spec = parse_ssl("ssl:8443:privateKey=k.pem:interface=127.0.0.1", base="/etc/tls")
    assert spec == TLSListenSpec(TCPListenSpec(socket.AF_INET, 8443, "127.0.0.1", 50),
                                 private_key="/etc/tls/k.pem", cert_key="/etc/tls/k.pem")
    spec = parse_ssl(r"ssl:port=443:interface=\:\:1:privateKey=/a/k:certKey=/a/c"
                     ":extraCertChain=/a/chain:backlog=10:tlsMinimum=1.3")
    assert spec is not None and spec.tcp == TCPListenSpec(socket.AF_INET6, 443, "::1", 10)
    assert (spec.cert_key, spec.extra_cert_chain, spec.minimum) == ("/a/c", "/a/chain", "1.3")
    assert parse_ssl("tcp:8080") is None and parse_ssl("systemd:domain=INET:name=x") is None


@pytest.mark.parametrize("bad, words", [
    ("ssl:8443:certKey=c.pem", "privateKey= .* is required"),
    ("ssl:8443:privateKey=k:sslmethod=TLSv1_2_METHOD", "not sslmethod .*TLS 1.2 or newer"),
    ("ssl:8443:privateKey=k:tlsMinimum=1.1", "tlsMinimum must be 1.2 or 1.3"),
    ("ssl:https:privateKey=k", "must be numbers"),
    ("ssl:1:2:privateKey=k", "give the port once"),
    ("ssl:99999:privateKey=k", "out of range"),
])
def test_bad_ssl_strings_are_named(bad: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_ssl(bad)


def test_check_config_names_the_listener_with_a_bad_ssl_string() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({
            "server": {"listen": ["tcp:8080", "ssl:8443:certKey=c.pem"]},
            "providers": [{"name": "demo", "kind": "demo"}],
            "models": [{"id": "m", "provider": "demo"}],
            "pipeline": [{"type": "model-map"}, {"type": "translate"}],
        }, env={})
    assert any(p.startswith("server.listen[1]: ") and "privateKey" in p
               for p in info.value.problems)


@pytest.fixture
def ca(tmp_path: Path) -> Issued:
    return make_ca(tmp_path)


def spec_for(leaf: Issued, **kw: Any) -> TLSListenSpec:
    return TLSListenSpec(TCPListenSpec(socket.AF_INET, 0, "127.0.0.1"),
                         private_key=str(leaf.key), cert_key=str(leaf.cert), **kw)


def test_a_good_identity_is_described_for_the_log(tmp_path: Path, ca: Issued) -> None:
    leaf = issue(tmp_path, "leaf", ca, cn="relay.example", dns=("relay.example",))
    identity = load_identity(spec_for(leaf))
    assert identity.serial == leaf.certificate.serial_number
    assert identity.subject == "CN=relay.example"
    text = identity.describe()
    assert f"serial {leaf.certificate.serial_number:x}" in text and "valid until" in text


def write_key(path: Path, key: ec.EllipticCurvePrivateKey, password: bytes | None) -> None:
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8, encryption))


def test_every_bad_renewal_is_refused_with_its_reason(tmp_path: Path, ca: Issued) -> None:
    leaf = issue(tmp_path, "leaf", ca, dns=("localhost",))
    other = issue(tmp_path, "other", ca, dns=("localhost",))
    expired = issue(tmp_path, "expired", ca, dns=("localhost",), expired=True)
    encrypted = tmp_path / "encrypted.key"
    write_key(encrypted, leaf.private_key, b"hunter2")
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"not a certificate\n")
    cases = {
        "does not belong to the certificate": TLSListenSpec(
            spec_for(leaf).tcp, private_key=str(other.key), cert_key=str(leaf.cert)),
        "expired on": spec_for(expired),
        "is encrypted": TLSListenSpec(spec_for(leaf).tcp, private_key=str(encrypted),
                                      cert_key=str(leaf.cert)),
        "holds no PEM certificate": TLSListenSpec(spec_for(leaf).tcp,
                                                  private_key=str(leaf.key),
                                                  cert_key=str(garbage)),
        "holds no PEM private key": TLSListenSpec(spec_for(leaf).tcp,
                                                  private_key=str(garbage),
                                                  cert_key=str(leaf.cert)),
        "cannot read the private key": TLSListenSpec(spec_for(leaf).tcp,
                                                     private_key=str(tmp_path / "gone"),
                                                     cert_key=str(leaf.cert)),
        "certificate chain .* holds no PEM": spec_for(leaf, extra_cert_chain=str(garbage)),
    }
    for words, spec in cases.items():
        with pytest.raises(CertificateProblem, match=words):
            load_identity(spec)


def test_a_certificate_not_valid_yet_is_refused(tmp_path: Path, ca: Issued) -> None:
    leaf = issue(tmp_path, "leaf", ca, dns=("localhost",))
    before = leaf.certificate.not_valid_before_utc - datetime.timedelta(hours=1)
    with pytest.raises(CertificateProblem, match="is not valid before"):
        load_identity(spec_for(leaf), now=before)


def test_one_file_holding_key_and_certificate_works(tmp_path: Path, ca: Issued) -> None:
    leaf = issue(tmp_path, "leaf", ca, dns=("localhost",))
    both = tmp_path / "both.pem"
    both.write_bytes(leaf.key.read_bytes() + leaf.cert.read_bytes())
    spec = parse_ssl(f"ssl:0:privateKey={both}")
    assert spec is not None
    assert load_identity(spec).serial == leaf.certificate.serial_number


def test_reload_swaps_only_a_good_identity(tmp_path: Path, ca: Issued) -> None:
    first = issue(tmp_path, "first", ca, dns=("localhost",))
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(first.cert.read_bytes())
    key.write_bytes(first.key.read_bytes())
    tls = ReloadableTLS(TLSListenSpec(TCPListenSpec(socket.AF_INET, 0, "127.0.0.1"),
                                      private_key=str(key), cert_key=str(cert)))
    assert tls.identity.serial == first.certificate.serial_number
    second = issue(tmp_path, "second", ca, dns=("localhost",))
    cert.write_bytes(second.cert.read_bytes())  # certificate renewed, key not yet
    with pytest.raises(CertificateProblem, match="does not belong"):
        tls.reload()
    assert tls.identity.serial == first.certificate.serial_number
    key.write_bytes(second.key.read_bytes())
    assert tls.reload().serial == second.certificate.serial_number
    assert tls.identity.serial == second.certificate.serial_number


def test_check_config_loads_the_certificates_as_the_relay_would(
        tmp_path: Path, ca: Issued, capsys: pytest.CaptureFixture[str]) -> None:
    leaf = issue(tmp_path, "leaf", ca, dns=("localhost",))
    other = issue(tmp_path, "other", ca, dns=("localhost",))
    path = tmp_path / "relay.toml"

    def check(key: Path) -> tuple[int, str, str]:
        server = {"listen": ["tcp:0:interface=127.0.0.1",
                             f"ssl:0:privateKey={key}:certKey={leaf.cert}"]}
        path.write_text(config_text(server=server))
        code = main(["check-config", str(path)])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = check(leaf.key)
    assert code == 0, err
    assert f"server.listen[1]: certificate serial {leaf.certificate.serial_number:x}" in out
    code, out, err = check(other.key)
    assert code == 1 and "OK" not in out
    assert err.startswith("server.listen[1]: the private key ") and "does not belong" in err
