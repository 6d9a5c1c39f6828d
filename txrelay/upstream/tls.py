# -*- test-case-name: tests.integration.test_upstream_tls -*-
"""
The HTTPS policy for upstreams: certificate verification that fails closed.

Twisted's own policy checks the host name with ``service_identity`` but only treats its
``VerificationError`` as a failure; a certificate without subjectAltName makes
``service_identity`` raise ``CertificateError`` instead, which Twisted logs and then accepts —
for any host name, with the API key sent to it. This policy rejects the handshake on *any*
problem: an untrusted, self-signed, expired or not-yet-valid chain, a host name or IP address
the certificate does not name in its subjectAltName (a matching common name is not enough, as
RFC 6125 and every browser require), or an error while checking. The verdict is taken inside
the handshake, so not one byte of the HTTP request (nor the API key in it) is sent to a server
that failed, and the request fails with a message naming the problem in plain words.

Per provider (``[providers.tls]``): ``ca_file``, a PEM bundle of private CAs that *replaces*
the system trust store (``system_trust = true`` keeps the system's CAs as well), and
``client_cert`` + ``client_key`` for mutual TLS. ``[state.tls]`` applies the same to a
``rediss://`` state store (:func:`strict_creator`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from OpenSSL import SSL
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.python.failure import Failure
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from txrelay.config import TLSConfig


class UpstreamTLSError(Exception):
    """The upstream's certificate was rejected; the message says why, in plain words."""


#: OpenSSL's chain verification errors (``X509_V_ERR_*``) in words.
_CHAIN_ERRORS = {
    2: "is signed by an unknown certificate authority",
    7: "has an invalid signature",
    9: "is not valid yet",
    10: "has expired",
    18: "is self-signed (not issued by a trusted certificate authority)",
    19: "chains to a self-signed certificate authority that is not trusted",
    20: "is signed by an unknown certificate authority",
    21: "cannot be verified: its issuer is unknown",
    23: "has been revoked",
    24: "was issued by a certificate that is not a certificate authority",
    26: "is not meant for a TLS server",
}


def _names(cert: x509.Certificate) -> str:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "no names"
    names = [*san.get_values_for_type(x509.DNSName),
             *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]
    return ", ".join(names[:5]) + (" …" if len(names) > 5 else "") if names else "no names"


def identity_problem(cert: x509.Certificate, host: str) -> str | None:
    """Why ``cert`` does not identify ``host`` (a DNS name or an IP address), or ``None``."""
    is_ip = isIPAddress(host) or isIPv6Address(host)
    try:
        if is_ip:
            verify_certificate_ip_address(cert, host)
        else:
            verify_certificate_hostname(cert, host)
    except CertificateError:
        return (f"the certificate of {host} has no subjectAltName, so it names no host "
                "(a matching common name is not accepted)")
    except VerificationError:
        kind = "IP address" if is_ip else "host name"
        return f"the certificate is not valid for the {kind} {host} (it names {_names(cert)})"
    except Exception as e:  # fail closed on anything service_identity did not foresee
        return f"the certificate of {host} could not be checked ({type(e).__name__})"
    return None


def _chain_problem(errno: int, depth: int, host: str) -> str:
    what = f"the certificate of {host}" if depth == 0 else (
        f"a certificate authority in the chain of {host}")
    return f"{what} {_CHAIN_ERRORS.get(errno, f'failed verification (OpenSSL error {errno})')}"


@implementer(IOpenSSLClientConnectionCreator)
@attrs.frozen
class _StrictCreator:
    """Makes the TLS connection to one host: SNI, and the fail-closed verify callback."""

    context: SSL.Context
    host: str
    #: Told each reason a handshake was refused (for a client that would otherwise lose it).
    on_problem: Callable[[str], None] | None = None

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        connection.set_app_data(tlsProtocol)
        if not (isIPAddress(self.host) or isIPv6Address(self.host)):
            connection.set_tlsext_host_name(self.host.encode("idna"))
        connection.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verify)
        return connection

    def _verify(self, connection: SSL.Connection, cert: Any, errno: int, depth: int,
                ok: int) -> bool:
        try:
            if not ok:
                problem: str | None = _chain_problem(errno, depth, self.host)
            elif depth != 0:
                return True  # the chain is checked by OpenSSL; the identity on the leaf
            else:
                problem = identity_problem(cert.to_cryptography(), self.host)
            if problem is None:
                return True
        except Exception as e:  # an exception must never let a handshake through
            problem = f"the certificate of {self.host} could not be checked ({type(e).__name__})"
        # The reason the request fails with (Twisted reports it to the HTTP client); the
        # handshake stops here, before any application data is sent.
        if self.on_problem is not None:
            self.on_problem(f"TLS: {problem}")
        tls = connection.get_app_data()
        if tls is not None:
            tls.failVerification(Failure(UpstreamTLSError(f"TLS: {problem}")))
        return False


@implementer(IPolicyForHTTPS)
@attrs.define(eq=False)
class StrictPolicyForHTTPS:
    """
    The relay's :class:`IPolicyForHTTPS` for one provider: TLS 1.2 or later, the provider's
    trust (its ``ca_file``, or the system's), its client certificate, and a verification
    that rejects every failure. The OpenSSL context is built on the first HTTPS connection
    (so ``http://`` upstreams never load a trust store) and shared by all of them.
    """

    tls: TLSConfig = attrs.Factory(TLSConfig)
    _context: SSL.Context | None = attrs.field(default=None, init=False)

    def context(self) -> SSL.Context:
        """The shared OpenSSL context (built once)."""
        if self._context is None:
            self._context = make_context(self.tls)
        return self._context

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        return _StrictCreator(self.context(), hostname.decode("ascii"))


def strict_creator(tls: TLSConfig, host: str,
                   on_problem: Callable[[str], None] | None = None,
                   ) -> IOpenSSLClientConnectionCreator:
    """
    The same fail-closed verification for a TLS client that is not an HTTP upstream (the
    ``rediss://`` state store): its own context for ``tls``, the name checked against
    ``host``; ``on_problem`` hears why a handshake was refused.
    """
    return _StrictCreator(make_context(tls), host, on_problem)


def make_context(tls: TLSConfig) -> SSL.Context:
    """An OpenSSL client context for ``tls`` (the files were checked by :func:`tls_problems`)."""
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_COMPRESSION)
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    if tls.ca_file is not None:
        ctx.load_verify_locations(tls.ca_file)
        if tls.system_trust:
            ctx.set_default_verify_paths()
    else:
        ctx.set_default_verify_paths()
    if tls.client_cert is not None and tls.client_key is not None:
        ctx.use_certificate_chain_file(tls.client_cert)
        ctx.use_privatekey_file(tls.client_key)
        ctx.check_privatekey()
    # Replaced per connection by the verify callback that knows the host.
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *_: False)
    return ctx


#: What an OpenSSL handshake error from the peer's side means (the alert's text → words).
#: What :func:`describe_tls_failure` says of a TLS failure it cannot name more precisely.
HANDSHAKE_FAILED = "TLS: the handshake with the upstream failed"

_PEER_ALERTS = (
    ("certificate required", "the upstream requires a client certificate "
                             "(set tls.client_cert and tls.client_key)"),
    ("unknown ca", "the upstream does not trust the relay's client certificate"),
    ("bad certificate", "the upstream rejected the relay's client certificate"),
    ("certificate expired", "the upstream says the relay's client certificate has expired"),
    ("wrong version number", "the upstream does not speak TLS on this port"),
    ("packet length too long", "the upstream does not speak TLS on this port"),
    ("protocol version", "no TLS version in common with the upstream (TLS 1.2 or later)"),
    ("handshake failure", "no TLS parameters in common with the upstream"),
)


def describe_tls_failure(value: BaseException) -> str | None:
    """
    A TLS failure in plain words (``TLS: …``), or ``None`` when ``value`` is not one: for
    the transport error a client sees instead of OpenSSL's error tuples.
    """
    if isinstance(value, UpstreamTLSError):
        return str(value)
    if not isinstance(value, SSL.Error):
        return None
    text = repr(value.args).lower()
    for needle, words in _PEER_ALERTS:
        if needle in text:
            return f"TLS: {words}"
    return HANDSHAKE_FAILED


def _read(path: str, where: str, problems: list[str]) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        problems.append(f"{where}: cannot read {path}: {e.strerror or e}")
        return None


def _public(key: Any) -> bytes:
    return bytes(key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo))


def tls_problems(tls: TLSConfig, base_url: str | None, where: str) -> list[str]:
    """Every problem with a provider's ``tls`` table, each naming the key and the file."""
    problems: list[str] = []
    if base_url is not None and not base_url.startswith("https://"):
        problems.append(f"{where}: set, but base_url is not an https:// URL")
    if tls.system_trust and tls.ca_file is None:
        problems.append(f"{where}.system_trust: only applies together with ca_file")
    if tls.ca_file is not None:
        data = _read(tls.ca_file, f"{where}.ca_file", problems)
        if data is not None:
            try:
                x509.load_pem_x509_certificates(data)
            except ValueError:
                problems.append(f"{where}.ca_file: {tls.ca_file} holds no valid PEM certificate")
    if (tls.client_cert is None) != (tls.client_key is None):
        problems.append(f"{where}: give both client_cert and client_key, or neither")
        return problems
    if tls.client_cert is None or tls.client_key is None:
        return problems
    cert_data = _read(tls.client_cert, f"{where}.client_cert", problems)
    key_data = _read(tls.client_key, f"{where}.client_key", problems)
    cert = key = None
    if cert_data is not None:
        try:
            cert = x509.load_pem_x509_certificates(cert_data)[0]
        except ValueError:
            problems.append(
                f"{where}.client_cert: {tls.client_cert} holds no valid PEM certificate")
    if key_data is not None:
        try:
            key = load_pem_private_key(key_data, password=None)
        except TypeError:
            problems.append(f"{where}.client_key: {tls.client_key} is encrypted "
                            "(give an unencrypted key, readable only by the relay)")
        except (ValueError, x509.UnsupportedGeneralNameType):
            problems.append(f"{where}.client_key: {tls.client_key} holds no valid PEM "
                            "private key")
    if cert is not None and key is not None and (
            _public(cert.public_key()) != _public(key.public_key())):
        problems.append(f"{where}.client_key: {tls.client_key} is not the key of the "
                        f"certificate in {tls.client_cert}")
    return problems
