"""
``ssl:`` listeners (issue 11.10, the listening half): the real relay serves HTTPS with a
certificate from a CA made at test time, to the anthropic SDK (streaming and not) trusting
that CA; TLS 1.2 or newer, ALPN ``http/1.1``. A renewed certificate (certbot's way: the
``live/`` symlinks move to new files) is picked up on SIGHUP or ``POST /admin/reload`` for
new connections while an open keep-alive connection and a live stream carry on; a bad one is
refused with a logged reason and the old one kept.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import ssl
import time
import warnings
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest
from cryptography import x509
from OpenSSL import SSL

from tests.relayproc import DEMO_KEY, Relay, config_text, start_relay
from tests.tlsfixtures import Issued, issue, make_ca
from txrelay.config import hash_key

pytestmark = pytest.mark.integration

ADMIN_KEY = "txrelay-admin-key-for-tls-tests"
SLOW_DEMO = [{"name": "demo", "kind": "demo", "options": {"event_delay": 0.15}}]
STREAM_BODY = {"model": "sonnet", "max_tokens": 500, "stream": True,
               "messages": [{"role": "user", "content": "a slow answer that outlives the "
                                                        "certificate reload, please"}]}


def client_context(ca: Issued) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca.cert))
    ctx.set_alpn_protocols(["h2", "http/1.1"])  # as a browser offers; the relay picks 1.1
    return ctx


def wait_for(relay: Relay, text: str, count: int = 1, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = relay.log()
        if log.count(text) >= count:
            return log
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not logged {count} time(s):\n{relay.log()}")


def handshake(port: int, ctx: ssl.SSLContext) -> tuple[int, str | None, str | None]:
    """Connect, and return the server certificate's serial, the TLS version and ALPN."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return (x509.load_der_x509_certificate(der).serial_number, tls.version(),
                tls.selected_alpn_protocol())


def chain_sent(port: int) -> int:
    """How many certificates the server sends in its handshake."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.setblocking(True)  # pyOpenSSL needs a blocking socket (no timeout) here
        conn = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), raw)
        conn.set_tlsext_host_name(b"localhost")
        conn.set_connect_state()
        conn.do_handshake()
        return len(conn.get_peer_cert_chain() or [])


def certbot_layout(root: Path, ca: Issued, n: int) -> Issued:
    """Issue certificate number ``n`` into ``archive/`` and point ``live/`` at it."""
    archive, live = root / "archive", root / "live"
    archive.mkdir(exist_ok=True)
    live.mkdir(exist_ok=True)
    leaf = issue(archive, f"cert{n}", ca, dns=("localhost",), ips=("127.0.0.1",))
    full = archive / f"fullchain{n}.pem"
    full.write_bytes(leaf.cert.read_bytes() + ca.cert.read_bytes())
    for name, target in (("fullchain.pem", full), ("privkey.pem", leaf.key)):
        link = live / name
        tmp_link = live / f".{name}.new"
        tmp_link.symlink_to(target)
        tmp_link.replace(link)  # atomic, as certbot does it
    return leaf


def listen(root: Path) -> str:
    live = root / "live"
    return (f"ssl:0:interface=127.0.0.1:privateKey={live / 'privkey.pem'}"
            f":certKey={live / 'fullchain.pem'}")


def start(tmp: Path, root: Path) -> Relay:
    server = {"listen": [listen(root)], "ping_interval": 0.5,
              "admin_keys": [{"name": "ops", "sha256": hash_key(ADMIN_KEY)}]}
    return start_relay(tmp, config_text(server=server, providers=SLOW_DEMO))


def certificates(port: int, ctx: ssl.SSLContext) -> list[dict[str, Any]]:
    """``detail.tls`` of ``GET /health/ready``."""
    conn = http.client.HTTPSConnection("localhost", port, timeout=30, context=ctx)
    try:
        conn.request("GET", "/health/ready")
        found: list[dict[str, Any]] = json.loads(conn.getresponse().read())["detail"]["tls"]
        return found
    finally:
        conn.close()


def admin_reload(port: int, ctx: ssl.SSLContext) -> tuple[int, Any]:
    conn = http.client.HTTPSConnection("localhost", port, timeout=30, context=ctx)
    try:
        conn.request("POST", "/admin/reload", headers={"authorization": f"Bearer {ADMIN_KEY}"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_the_sdk_talks_to_the_relay_over_tls_streaming_and_not(tmp: Path) -> None:
    ca = make_ca(tmp)
    first = certbot_layout(tmp, ca, 1)
    relay = start(tmp, tmp)
    try:
        ctx = client_context(ca)
        serial, version, alpn = handshake(relay.port, ctx)
        assert serial == first.certificate.serial_number
        assert version in ("TLSv1.2", "TLSv1.3") and alpn == "http/1.1"
        assert chain_sent(relay.port) == 2  # all of fullchain.pem: the leaf, then the CA
        with httpx2.Client(verify=ctx) as http_client:
            client = anthropic.Anthropic(base_url=f"https://localhost:{relay.port}",
                                         api_key=DEMO_KEY, max_retries=0,
                                         http_client=http_client)
            answer = client.messages.create(
                model="sonnet", max_tokens=50,
                messages=[{"role": "user", "content": "hello over TLS"}])
            assert answer.content and answer.stop_reason == "end_turn"
            with client.messages.stream(
                    model="sonnet", max_tokens=50,
                    messages=[{"role": "user", "content": "stream over TLS"}]) as stream:
                text = "".join(stream.text_stream)
                final = stream.get_final_message()
            assert text and final.stop_reason == "end_turn"
        # A client that does not trust the private CA is refused by its own verification.
        with httpx2.Client() as untrusting:
            stranger = anthropic.Anthropic(base_url=f"https://localhost:{relay.port}",
                                           api_key=DEMO_KEY, max_retries=0,
                                           http_client=untrusting)
            with pytest.raises(anthropic.APIConnectionError):
                stranger.messages.create(model="sonnet", max_tokens=5,
                                         messages=[{"role": "user", "content": "hi"}])
        # TLS 1.2 is the floor: a client capped at 1.2 connects, one capped at 1.1 does not.
        tls12 = client_context(ca)
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        assert handshake(relay.port, tls12)[1] == "TLSv1.2"
        old = client_context(ca)
        with warnings.catch_warnings():  # deprecated in ssl, which is the point
            warnings.simplefilter("ignore", DeprecationWarning)
            old.minimum_version = ssl.TLSVersion.TLSv1
            old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("DEFAULT:@SECLEVEL=0")
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            handshake(relay.port, old)
        # The status page's session cookie is Secure over TLS.
        conn = http.client.HTTPSConnection("localhost", relay.port, timeout=30, context=ctx)
        conn.request("POST", "/admin/login", body=f"key={ADMIN_KEY}",
                     headers={"content-type": "application/x-www-form-urlencoded"})
        login = conn.getresponse()
        assert login.status == 303
        assert "; Secure" in (login.getheader("set-cookie") or "")
        conn.close()
        # Plain HTTP on the TLS port gets no answer of the relay's own.
        with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as plain:
            plain.sendall(b"GET /health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
            assert b"HTTP/1.1 200" not in plain.recv(4096)
    finally:
        code = relay.stop()
    assert code == 0, relay.log()
    assert "Traceback" not in relay.log()


def test_a_renewed_certificate_serves_new_connections_and_old_ones_carry_on(
        tmp: Path) -> None:
    ca = make_ca(tmp)
    first = certbot_layout(tmp, ca, 1)
    relay = start(tmp, tmp)
    try:
        ctx = client_context(ca)
        assert handshake(relay.port, ctx)[0] == first.certificate.serial_number
        # A keep-alive connection and a slow stream, both opened on the first certificate.
        keep = http.client.HTTPSConnection("localhost", relay.port, timeout=30, context=ctx)
        keep.request("GET", "/v1/models", headers={"x-api-key": DEMO_KEY})
        assert keep.getresponse().read() and keep.sock is not None
        kept_sock = keep.sock
        streaming = http.client.HTTPSConnection("localhost", relay.port, timeout=30,
                                                context=ctx)
        streaming.request("POST", "/v1/messages", body=json.dumps(STREAM_BODY),
                          headers={"x-api-key": DEMO_KEY, "content-type": "application/json"})
        raw = streaming.getresponse()
        assert raw.status == 200 and b"message_start" in raw.read1(200)

        # certbot renews: the live/ links now point at certificate 2; SIGHUP.
        second = certbot_layout(tmp, ca, 2)
        relay.process.send_signal(signal.SIGHUP)
        log = wait_for(relay, "TLS reloaded for")
        assert f"certificate serial {second.certificate.serial_number:x}" in log
        assert handshake(relay.port, ctx)[0] == second.certificate.serial_number
        (shown,) = certificates(relay.port, ctx)
        assert shown["serial"] == f"{second.certificate.serial_number:x}"
        assert shown["subject"] == "CN=localhost" and not shown["last_reload_refused"]
        assert shown["not_after"] == \
            second.certificate.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")

        # The keep-alive connection still answers, on the same socket and certificate.
        keep.request("GET", "/v1/models", headers={"x-api-key": DEMO_KEY})
        assert keep.getresponse().status == 200 and keep.sock is kept_sock
        der = kept_sock.getpeercert(binary_form=True)
        assert der is not None
        assert x509.load_der_x509_certificate(der).serial_number == \
            first.certificate.serial_number
        keep.close()
        # The stream that began on the old certificate ends properly.
        rest = raw.read()  # http.client raises IncompleteRead without a chunked terminator
        assert rest.rstrip().endswith(b'data: {"type":"message_stop"}')
        streaming.close()

        # A bad renewal: a fresh key that does not belong to the certificate. Refused,
        # logged with the reason, and certificate 2 keeps serving.
        stray = issue(tmp, "stray", ca, dns=("localhost",))
        (tmp / "live" / "privkey.pem").unlink()
        (tmp / "live" / "privkey.pem").symlink_to(stray.key)
        status, body = admin_reload(relay.port, ctx)
        assert status == 200, body
        assert len(body["certificates_refused"]) == 1
        assert "does not belong to the certificate" in body["certificates_refused"][0]
        log = wait_for(relay, "TLS reload refused for")
        assert f"keep certificate serial {second.certificate.serial_number:x}" in log
        assert handshake(relay.port, ctx)[0] == second.certificate.serial_number
        (shown,) = certificates(relay.port, ctx)
        assert shown["last_reload_refused"] and \
            shown["serial"] == f"{second.certificate.serial_number:x}"

        # An unreadable file (certbot half way): refused too, still certificate 2.
        (tmp / "live" / "fullchain.pem").unlink()
        status, body = admin_reload(relay.port, ctx)
        assert status == 200 and "cannot read the certificate" in \
            body["certificates_refused"][0]
        assert handshake(relay.port, ctx)[0] == second.certificate.serial_number

        # Put right, POST /admin/reload picks up certificate 3.
        third = certbot_layout(tmp, ca, 3)
        status, body = admin_reload(relay.port, ctx)
        assert status == 200 and body["certificates_refused"] == []
        assert handshake(relay.port, ctx)[0] == third.certificate.serial_number
        assert not certificates(relay.port, ctx)[0]["last_reload_refused"]
    finally:
        code = relay.stop()
    assert code == 0, relay.log()
    log = relay.log()
    assert "Traceback" not in log and "without message_stop" not in log


def test_a_bad_certificate_at_start_up_stops_the_relay_with_one_line(tmp: Path) -> None:
    ca = make_ca(tmp)
    certbot_layout(tmp, ca, 1)
    stray = issue(tmp, "stray", ca, dns=("localhost",))
    (tmp / "live" / "privkey.pem").unlink()
    (tmp / "live" / "privkey.pem").symlink_to(stray.key)
    with pytest.raises(RuntimeError, match="exited with 1") as info:
        start(tmp, tmp)
    assert "txrelay: cannot listen on 'ssl:0:" in str(info.value)
    assert "does not belong to the certificate" in str(info.value)
