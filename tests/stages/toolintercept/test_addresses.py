"""Which addresses a relay-run fetch may reach."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from txrelay.stages.toolintercept.addresses import parse_networks, refusal

REFUSED = [
    "127.0.0.1", "127.255.255.254", "10.1.2.3", "172.16.0.1", "192.168.1.1", "0.0.0.0",
    "169.254.169.254", "169.254.170.2", "169.254.1.1", "100.64.0.1", "100.100.100.200",
    "224.0.0.1", "239.255.255.250", "255.255.255.255", "240.0.0.1", "192.0.2.1",
    "198.18.0.1", "::1", "::", "fe80::1", "fc00::1", "fd00:ec2::254", "ff02::1",
    "2001:db8::1",
    # IPv6 forms that carry a refused IPv4 address
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1", "::127.0.0.1",
    "::10.0.0.1", "2002:7f00:1::1", "2002:a9fe:a9fe::", "64:ff9b::7f00:1",
    "64:ff9b::a9fe:a9fe", "64:ff9b:1::a00:1", "2001:0:4136:e378:8000:63bf:80ff:fffe",
]
ALLOWED = ["8.8.8.8", "93.184.216.34", "1.1.1.1", "2606:4700:4700::1111",
           "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"]


@pytest.mark.parametrize("address", REFUSED)
def test_refused(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ALLOWED)
def test_allowed(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None


def test_allow_networks_open_a_named_range_only() -> None:
    allow = parse_networks(["127.0.0.2/32"])
    assert refusal(ipaddress.ip_address("127.0.0.2"), allow) is None
    assert refusal(ipaddress.ip_address("::ffff:127.0.0.2"), allow) is None
    assert refusal(ipaddress.ip_address("127.0.0.1"), allow) == "127.0.0.1 is a loopback address"


def test_bad_networks_are_named() -> None:
    with pytest.raises(ValueError, match=r"'10\.0\.0\.0/33' is not an IP network"):
        parse_networks(["10.0.0.0/33"])


@given(st.integers(0, 2**32 - 1))
def test_mapped_forms_agree_with_ipv4(value: int) -> None:
    """An IPv4 address and its mapped and NAT64 forms are judged alike."""
    v4 = ipaddress.IPv4Address(value)
    mapped = ipaddress.IPv6Address(0xFFFF << 32 | value)
    nat64 = ipaddress.IPv6Address(0x64FF9B << 96 | value)
    verdict = refusal(v4) is None
    assert (refusal(mapped) is None) == verdict
    assert (refusal(nat64) is None) == verdict
