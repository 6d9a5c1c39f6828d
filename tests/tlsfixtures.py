"""
Certificates made at test time (a private CA, leaves of every broken kind) and a TLS server
on loopback that records whether any application data reached it.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
import threading
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_NOW = datetime.datetime.now(datetime.UTC)


@attrs.frozen
class Issued:
    """A certificate and its key, as PEM files."""

    cert: Path
    key: Path
    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(directory: Path, stem: str, cert: x509.Certificate,
           key: ec.EllipticCurvePrivateKey) -> Issued:
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return Issued(cert_path, key_path, cert, key)


def make_ca(directory: Path, stem: str = "ca", cn: str = "txrelay test CA") -> Issued:
    """A self-signed certificate authority."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn)).issuer_name(_name(cn))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(_NOW - datetime.timedelta(days=1))
        .not_valid_after(_NOW + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True,
            content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return _write(directory, stem, cert, key)


def issue(directory: Path, stem: str, ca: Issued | None, *, cn: str = "localhost",
          dns: tuple[str, ...] = (), ips: tuple[str, ...] = (), expired: bool = False,
          client: bool = False) -> Issued:
    """A leaf certificate signed by ``ca`` (self-signed when ``ca`` is None)."""
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = (_NOW - datetime.timedelta(days=10), _NOW - datetime.timedelta(days=1)) \
        if expired else (_NOW - datetime.timedelta(days=1), _NOW + datetime.timedelta(days=30))
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.certificate.subject if ca is not None else _name(cn))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False)
    )
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if ca is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.private_key.public_key()),
            critical=False)
    cert = builder.sign(ca.private_key if ca is not None else key, hashes.SHA256())
    return _write(directory, stem, cert, key)


CHAT_ANSWER = {
    "id": "chatcmpl-tls", "object": "chat.completion", "created": 1700000000,
    "model": "fake-model",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "Hello over TLS."}}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
}

_CHUNK = {"id": "chatcmpl-tls", "object": "chat.completion.chunk", "created": 1700000000,
          "model": "fake-model"}
STREAM_ANSWER = b"".join(
    b"data: %s\n\n" % json.dumps({**_CHUNK, **part}).encode() for part in (
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hello over TLS."},
                      "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {"choices": [], "usage": CHAT_ANSWER["usage"]},
    )) + b"data: [DONE]\n\n"


@attrs.define(eq=False)
class TLSUpstream:
    """
    A TLS server on 127.0.0.1 that answers one Chat Completions request per connection.

    ``app_bytes`` counts the application data it received (decrypted, after a completed
    handshake), ``handshake_errors`` what went wrong in the handshakes that failed.
    """

    identity: Issued
    client_ca: Path | None = None
    app_bytes: int = 0
    handshakes: int = 0
    handshake_errors: list[str] = attrs.Factory(list)
    requests: list[bytes] = attrs.Factory(list)
    _sock: socket.socket | None = None
    _lock: threading.Lock = attrs.Factory(threading.Lock)

    def start(self) -> TLSUpstream:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.identity.cert, self.identity.key)
        if self.client_ca is not None:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(self.client_ca)
        self._sock = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._serve, args=(ctx,), daemon=True).start()
        return self

    @property
    def port(self) -> int:
        assert self._sock is not None
        return int(self._sock.getsockname()[1])

    def stop(self) -> None:
        if self._sock is not None:
            self._sock.close()

    def _serve(self, ctx: ssl.SSLContext) -> None:
        assert self._sock is not None
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(ctx, conn), daemon=True).start()

    def _one(self, ctx: ssl.SSLContext, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            tls = ctx.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError) as e:
            with self._lock:
                self.handshake_errors.append(str(e))
            conn.close()
            return
        with self._lock:
            self.handshakes += 1
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                piece = tls.recv(65536)
                if not piece:
                    break
                data += piece
                with self._lock:
                    self.app_bytes += len(piece)
            head, _, body = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(body) < length:
                piece = tls.recv(65536)
                if not piece:
                    break
                body += piece
                with self._lock:
                    self.app_bytes += len(piece)
            if not head:
                return
            self.requests.append(head + b"\r\n\r\n" + body)
            answer, ctype = json.dumps(CHAT_ANSWER).encode(), b"application/json"
            if json.loads(body or b"{}").get("stream"):
                answer, ctype = STREAM_ANSWER, b"text/event-stream"
            tls.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\n"
                        b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                        % (ctype, len(answer), answer))
        except (ssl.SSLError, OSError) as e:
            with self._lock:
                self.handshake_errors.append(f"after handshake: {e}")
        finally:
            tls.close()
