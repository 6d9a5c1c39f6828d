# -*- test-case-name: tests.stages.toolintercept.test_addresses -*-
"""
Which addresses a relay-run ``web_fetch`` may connect to (sans-IO, stdlib ``ipaddress``).

Only globally routable unicast addresses are allowed. Refused: private, loopback,
link-local (so cloud metadata at 169.254.169.254), shared (CGNAT, Alibaba's metadata
100.100.100.200), multicast, unspecified, reserved, documentation and benchmarking ranges,
and the IPv6 forms that embed an IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``,
IPv4-compatible ``::a.b.c.d``, 6to4 ``2002::/16``, NAT64 ``64:ff9b::/96`` and
``64:ff9b:1::/48``, Teredo), which are judged by the address they embed. An operator's
``allow_networks`` opens named ranges on purpose (tests, an intranet).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
_COMPATIBLE = ipaddress.IPv6Network("::/96")
#: Known metadata endpoints, refused even where a broader range would not be.
METADATA = (ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("169.254.170.2"),
            ipaddress.ip_address("100.100.100.200"), ipaddress.ip_address("fd00:ec2::254"))


def parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """``allow_networks`` entries as networks; a bad entry raises ``ValueError`` naming it."""
    out: list[IPNetwork] = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise ValueError(f"allow_networks: {value!r} is not an IP network") from None
    return tuple(out)


def embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address | None, bool]:
    """
    The IPv4 address an IPv6 address carries, and whether the IPv6 form is a mere
    translation of it (mapped, compatible, NAT64: judged by the IPv4 address alone) rather
    than a tunnel (6to4, Teredo: both must pass).
    """
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped, True
    if any(ip in net for net in _NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), True
    if ip in _COMPATIBLE and int(ip) > 1:  # ::a.b.c.d (not :: or ::1, judged as IPv6)
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), True
    if ip.sixtofour is not None:
        return ip.sixtofour, False
    if ip.teredo is not None:
        return ip.teredo[1], False
    return None, False


def _why_not(ip: IPAddress) -> str | None:
    if ip in METADATA:
        return "a cloud metadata address"
    checks = (("loopback", ip.is_loopback), ("unspecified", ip.is_unspecified),
              ("link-local", ip.is_link_local), ("multicast", ip.is_multicast),
              ("private", ip.is_private), ("reserved", ip.is_reserved))
    for name, hit in checks:
        if hit:
            return f"{'an' if name[0] in 'aeiou' else 'a'} {name} address"
    if not ip.is_global:
        return "not a public address"
    return None


def refusal(ip: IPAddress, allow: Sequence[IPNetwork] = ()) -> str | None:
    """
    Why the relay must not connect to ``ip`` (plain words), or ``None`` when it may.

    ``allow`` networks win over every rule; an IPv6 address that translates an IPv4 one
    (mapped, compatible, NAT64) is judged by that IPv4 address, a tunnel address (6to4,
    Teredo) by both.
    """
    candidates: list[IPAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        inner, translated = embedded_ipv4(ip)
        if inner is not None:
            candidates = [inner] if translated else [ip, inner]
    for candidate in candidates:
        if any(candidate.version == net.version and candidate in net for net in allow):
            continue
        reason = _why_not(candidate)
        if reason is not None:
            return f"{candidate} is {reason}"
    return None
