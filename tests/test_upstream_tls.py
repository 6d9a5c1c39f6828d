"""The TLS policy's pieces in memory: identity checks, error words, the policy object."""

from __future__ import annotations

from pathlib import Path

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.web.iweb import IPolicyForHTTPS

from tests.tlsfixtures import issue, make_ca
from txrelay.config import TLSConfig
from txrelay.upstream.tls import (
    StrictPolicyForHTTPS,
    UpstreamTLSError,
    describe_tls_failure,
    identity_problem,
)


def test_identity_rejects_what_twisted_accepts(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    nosan = issue(tmp_path, "nosan", ca, cn="localhost").certificate
    good = issue(tmp_path, "good", ca, dns=("localhost", "*.example.com"),
                 ips=("127.0.0.1", "::1")).certificate
    assert identity_problem(good, "localhost") is None
    assert identity_problem(good, "a.example.com") is None
    assert identity_problem(good, "127.0.0.1") is None
    assert identity_problem(good, "::1") is None
    assert "not valid for the host name evil.test" in str(identity_problem(good, "evil.test"))
    assert "not valid for the IP address 10.0.0.1" in str(identity_problem(good, "10.0.0.1"))
    for host in ("localhost", "127.0.0.1"):
        assert "has no subjectAltName" in str(identity_problem(nosan, host))


def test_peer_alerts_in_words() -> None:
    alert = SSL.Error([("SSL routines", "", "tlsv13 alert certificate required")])
    assert describe_tls_failure(alert) == (
        "TLS: the upstream requires a client certificate (set tls.client_cert and "
        "tls.client_key)")
    assert describe_tls_failure(SSL.Error([("SSL routines", "", "wrong version number")])) \
        == "TLS: the upstream does not speak TLS on this port"
    assert describe_tls_failure(SSL.Error([])) == "TLS: the handshake with the upstream failed"
    assert describe_tls_failure(UpstreamTLSError("TLS: x")) == "TLS: x"
    assert describe_tls_failure(ValueError("no")) is None


def test_policy_provides_the_interfaces_and_builds_its_context_once(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    client = issue(tmp_path, "client", ca, cn="relay", client=True)
    policy = StrictPolicyForHTTPS(TLSConfig(ca_file=str(ca.cert), client_cert=str(client.cert),
                                            client_key=str(client.key)))
    assert IPolicyForHTTPS.providedBy(policy)
    creator = policy.creatorForNetloc(b"localhost", 443)
    assert IOpenSSLClientConnectionCreator.providedBy(creator)
    assert policy.creatorForNetloc(b"127.0.0.1", 443).context is creator.context
    connection = creator.clientConnectionForTLS(None)
    assert connection.get_servername() == b"localhost"
    assert policy.creatorForNetloc(b"127.0.0.1", 1).clientConnectionForTLS(
        None).get_servername() is None
