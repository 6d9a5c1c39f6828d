"""
Upstream TLS fails closed (issue 8.6): the real relay in front of TLS servers on loopback
whose certificates come from a CA made at test time.

Every broken certificate — wrong host, no subjectAltName (common name matching or not; DNS
and IP URLs), unknown CA, self-signed, expired — is rejected during the handshake: the server
never receives one byte of application data (so never the API key), and the client gets a
502 naming the problem in plain words. A configured private CA is accepted, and a client
certificate is presented to a server that requires one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.relayproc import DEMO_KEY, Relay, config_text, start_relay
from tests.tlsfixtures import Issued, TLSUpstream, issue, make_ca

pytestmark = pytest.mark.integration

UPSTREAM_KEY = "tls-test-upstream-key-4f1e"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d)
    other_ca = make_ca(d, "other-ca", "another CA")
    here = {"dns": ("localhost",), "ips": ("127.0.0.1",)}
    return {
        "dir": d, "ca": ca,
        "good": issue(d, "good", ca, **here),  # type: ignore[arg-type]
        "wrong_host": issue(d, "wrong", ca, cn="other.example", dns=("other.example",),
                            ips=("10.9.9.9",)),
        "nosan_localhost": issue(d, "nosan-cn-localhost", ca, cn="localhost"),
        "nosan_ip": issue(d, "nosan-cn-ip", ca, cn="127.0.0.1"),
        "nosan_other": issue(d, "nosan-cn-other", ca, cn="other.example"),
        "unknown_ca": issue(d, "unknown", other_ca, **here),  # type: ignore[arg-type]
        "self_signed": issue(d, "self", None, **here),  # type: ignore[arg-type]
        "expired": issue(d, "expired", ca, expired=True, **here),  # type: ignore[arg-type]
        "client": issue(d, "client", ca, cn="txrelay", client=True),
    }


#: provider name → (server certificate, URL host, what the 502 must say)
REJECTED = {
    "wrong-host": ("wrong_host", "localhost",
                   "not valid for the host name localhost (it names other.example, 10.9.9.9)"),
    "wrong-ip": ("wrong_host", "127.0.0.1", "not valid for the IP address 127.0.0.1"),
    "nosan-cn-match-dns": ("nosan_localhost", "localhost", "has no subjectAltName"),
    "nosan-cn-match-ip": ("nosan_ip", "127.0.0.1", "has no subjectAltName"),
    "nosan-cn-other-dns": ("nosan_other", "localhost", "has no subjectAltName"),
    "nosan-cn-other-ip": ("nosan_other", "127.0.0.1", "has no subjectAltName"),
    "unknown-ca": ("unknown_ca", "localhost", "signed by an unknown certificate authority"),
    "self-signed": ("self_signed", "127.0.0.1", "is self-signed"),
    "expired": ("expired", "localhost", "has expired"),
}


@pytest.fixture(scope="module")
def servers(pki: dict[str, Any]) -> Iterator[dict[str, TLSUpstream]]:
    names = {cert for cert, _, _ in REJECTED.values()} | {"good"}
    out = {name: TLSUpstream(pki[name]).start() for name in names}
    out["mtls"] = TLSUpstream(pki["good"], client_ca=pki["ca"].cert).start()
    yield out
    for s in out.values():
        s.stop()


def _provider(name: str, url: str, tls: dict[str, Any] | None) -> dict[str, Any]:
    p: dict[str, Any] = {"name": name, "kind": "openai-chat", "base_url": url,
                         "api_key": {"env": "TXRELAY_TLS_UPSTREAM_KEY"},
                         "timeouts": {"connect": 5, "first_byte": 10, "idle": 10}}
    if tls is not None:
        p["tls"] = tls
    return p


@pytest.fixture(scope="module")
def relay(pki: dict[str, Any], servers: dict[str, TLSUpstream],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    ca_file = str(pki["ca"].cert)
    trust = {"ca_file": ca_file}
    providers = [_provider(name, f"https://{host}:{servers[cert].port}/v1", trust)
                 for name, (cert, host, _) in REJECTED.items()]
    good = servers["good"].port
    client: Issued = pki["client"]
    providers += [
        _provider("good-dns", f"https://localhost:{good}/v1", trust),
        _provider("good-ip", f"https://127.0.0.1:{good}/v1", trust),
        _provider("good-with-system", f"https://localhost:{good}/v1",
                  {"ca_file": ca_file, "system_trust": True}),
        _provider("system-only", f"https://localhost:{good}/v1", None),
        _provider("mtls", f"https://localhost:{servers['mtls'].port}/v1",
                  {"ca_file": ca_file, "client_cert": str(client.cert),
                   "client_key": str(client.key)}),
        _provider("mtls-without-cert", f"https://localhost:{servers['mtls'].port}/v1", trust),
    ]
    models = [{"id": p["name"], "provider": p["name"]} for p in providers]
    text = config_text(providers=providers, models=models)
    r = start_relay(tmp_path_factory.mktemp("tls"), text,
                    env={"TXRELAY_TLS_UPSTREAM_KEY": UPSTREAM_KEY})
    yield r
    r.stop()


@pytest.fixture()
def client(relay: Relay) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=relay.url, api_key=DEMO_KEY, max_retries=0,
                             timeout=30) as c:
        yield c


def ask(client: anthropic.Anthropic, model: str, stream: bool = False) -> str:
    messages: Any = [{"role": "user", "content": "hi"}]
    if stream:
        with client.messages.stream(model=model, max_tokens=20, messages=messages) as s:
            return "".join(s.text_stream)
    reply = client.messages.create(model=model, max_tokens=20, messages=messages)
    return "".join(b.text for b in reply.content if b.type == "text")


@pytest.mark.parametrize("provider", sorted(REJECTED))
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_broken_certificates_are_rejected_before_the_request_is_sent(
    client: anthropic.Anthropic, servers: dict[str, TLSUpstream], provider: str, stream: bool,
) -> None:
    cert, _, words = REJECTED[provider]
    server = servers[cert]
    errors_before = len(server.handshake_errors)
    with pytest.raises(anthropic.APIStatusError) as raised:
        ask(client, provider, stream)
    assert raised.value.status_code == 502
    message = raised.value.body["error"]["message"]  # type: ignore[index]
    assert message.startswith(f"{provider}: upstream connection failed: TLS: ")
    assert words in message
    for internal in ("Failure", "SSL routines", "<", "Error("):
        assert internal not in message
    # The server saw the handshake fail, and never one byte of the HTTP request.
    deadline = time.monotonic() + 10
    while len(server.handshake_errors) <= errors_before and time.monotonic() < deadline:
        time.sleep(0.01)  # the server's thread notices the aborted handshake on its own time
    assert len(server.handshake_errors) > errors_before
    assert server.app_bytes == 0
    assert server.handshakes == 0


@pytest.mark.parametrize("provider", ["good-dns", "good-ip", "good-with-system"])
def test_a_configured_private_ca_is_accepted(
    client: anthropic.Anthropic, servers: dict[str, TLSUpstream], provider: str
) -> None:
    before = len(servers["good"].requests)
    assert ask(client, provider) == "Hello over TLS."
    assert len(servers["good"].requests) == before + 1
    request = servers["good"].requests[-1]
    assert f"authorization: Bearer {UPSTREAM_KEY}".encode() in request.lower().replace(
        b"bearer", b"Bearer").replace(UPSTREAM_KEY.lower().encode(), UPSTREAM_KEY.encode())


def test_without_ca_file_the_system_trust_store_applies(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.APIStatusError) as raised:
        ask(client, "system-only")
    assert raised.value.status_code == 502
    assert "unknown certificate authority" in str(raised.value)


def test_mutual_tls(client: anthropic.Anthropic, servers: dict[str, TLSUpstream]) -> None:
    assert ask(client, "mtls") == "Hello over TLS."
    assert ask(client, "mtls", stream=True) == "Hello over TLS."
    assert servers["mtls"].requests
    with pytest.raises(anthropic.APIStatusError) as raised:
        ask(client, "mtls-without-cert")
    assert raised.value.status_code == 502


def test_relay_log_names_no_key(relay: Relay) -> None:
    assert UPSTREAM_KEY not in relay.log()


def _check(tmp: Path, tls: dict[str, Any], url: str = "https://h.example/v1") -> list[str]:
    from txrelay.config import ConfigError, parse_config

    raw = {"providers": [{"name": "p", "kind": "openai-chat", "base_url": url, "tls": tls}],
           "models": [{"id": "m", "provider": "p"}], "pipeline": [{"type": "translate"}]}
    try:
        parse_config(raw)
    except ConfigError as e:
        return e.problems
    return []


def test_configuration_errors_name_the_key_and_the_file(
    tmp_path: Path, pki: dict[str, Any]
) -> None:
    missing = str(tmp_path / "nope.pem")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    client: Issued = pki["client"]
    good: Issued = pki["good"]
    assert _check(tmp_path, {"ca_file": missing}) == [
        f"providers[0].tls.ca_file: cannot read {missing}: No such file or directory"]
    assert _check(tmp_path, {"ca_file": str(garbage)}) == [
        f"providers[0].tls.ca_file: {garbage} holds no valid PEM certificate"]
    assert _check(tmp_path, {"client_cert": str(client.cert)}) == [
        "providers[0].tls: give both client_cert and client_key, or neither"]
    assert _check(tmp_path, {"client_cert": str(client.cert), "client_key": str(garbage)}) == [
        f"providers[0].tls.client_key: {garbage} holds no valid PEM private key"]
    assert _check(tmp_path, {"client_cert": str(garbage), "client_key": str(client.key)}) == [
        f"providers[0].tls.client_cert: {garbage} holds no valid PEM certificate"]
    assert _check(tmp_path, {"client_cert": str(client.cert), "client_key": str(good.key)}) == [
        f"providers[0].tls.client_key: {good.key} is not the key of the certificate in "
        f"{client.cert}"]
    assert _check(tmp_path, {"ca_file": str(pki["ca"].cert)}, "http://h.example/v1") == [
        "providers[0].tls: set, but base_url is not an https:// URL"]
    assert _check(tmp_path, {"system_trust": True}) == [
        "providers[0].tls.system_trust: only applies together with ca_file"]
    assert _check(tmp_path, {"ca_file": str(pki["ca"].cert), "client_cert": str(client.cert),
                             "client_key": str(client.key)}) == []
