"""Client address: X-Forwarded-For believed only from trusted proxies, walked from the right."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.requests import Request

from safegen.api.client_address import client_ip
from safegen.setting_values import parse_trusted_proxies

PROXIES = ["10.0.0.0/8", "192.168.1.7", "fd00::/8"]


def scope(peer: str | None, *forwarded: str) -> dict[str, Any]:
    headers = [(b"x-forwarded-for", value.encode()) for value in forwarded]
    headers.append((b"host", b"example.com"))
    return {
        "type": "http",
        "client": (peer, 51234) if peer is not None else None,
        "headers": headers,
    }


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "expected"),
    [
        # No trusted proxies: the header is never believed.
        ("203.0.113.9", ["1.2.3.4"], [], "203.0.113.9"),
        # The peer is not a proxy we trust: a client forging the header gains nothing.
        ("203.0.113.9", ["1.2.3.4"], PROXIES, "203.0.113.9"),
        # Through one trusted proxy.
        ("10.0.0.1", ["1.2.3.4"], PROXIES, "1.2.3.4"),
        # The client prepended a forged hop: the rightmost untrusted hop wins.
        ("10.0.0.1", ["6.6.6.6, 1.2.3.4"], PROXIES, "1.2.3.4"),
        # Two trusted hops in front of the client.
        ("10.0.0.1", ["6.6.6.6, 1.2.3.4, 192.168.1.7, 10.9.9.9"], PROXIES, "1.2.3.4"),
        # Several header lines are one list, in order.
        ("10.0.0.1", ["6.6.6.6, 1.2.3.4", "10.2.2.2"], PROXIES, "1.2.3.4"),
        # Every hop trusted: the leftmost one reached.
        ("10.0.0.1", ["10.3.3.3, 10.2.2.2"], PROXIES, "10.3.3.3"),
        # Trusted proxy but no header: the proxy itself.
        ("10.0.0.1", [], PROXIES, "10.0.0.1"),
        # A garbage hop stops the walk: nothing further left is believed.
        ("10.0.0.1", ["1.2.3.4, not-an-ip"], PROXIES, "10.0.0.1"),
        ("10.0.0.1", ["1.2.3.4, not-an-ip, 10.2.2.2"], PROXIES, "10.2.2.2"),
        # Ports and brackets as some proxies write them.
        ("10.0.0.1", ["1.2.3.4:5678"], PROXIES, "1.2.3.4"),
        ("10.0.0.1", ["[2001:db8::1]:443"], PROXIES, "2001:db8::1"),
        # IPv6 proxies and clients.
        ("fd00::5", ["2001:db8::7"], PROXIES, "2001:db8::7"),
        ("2001:db8::5", ["1.2.3.4"], PROXIES, "2001:db8::5"),
        # An IPv4 peer seen through a dual-stack socket is matched as IPv4.
        ("::ffff:10.0.0.1", ["1.2.3.4"], PROXIES, "1.2.3.4"),
        ("::ffff:203.0.113.9", ["1.2.3.4"], PROXIES, "203.0.113.9"),
    ],
)
def test_client_ip(peer: str, forwarded: list[str], trusted: list[str], expected: str) -> None:
    assert client_ip(scope(peer, *forwarded), trusted) == expected


def test_no_peer_is_unknown() -> None:
    assert client_ip(scope(None, "1.2.3.4"), PROXIES) == "unknown"


def test_accepts_a_starlette_request_and_parsed_networks() -> None:
    request = Request(scope("10.0.0.1", "6.6.6.6, 1.2.3.4"))
    assert client_ip(request, PROXIES) == "1.2.3.4"
    assert client_ip(request, parse_trusted_proxies(PROXIES)) == "1.2.3.4"
    assert client_ip(request, []) == "10.0.0.1"


def test_parse_trusted_proxies() -> None:
    networks = parse_trusted_proxies([" 10.0.0.0/8 ", "", "::1", "192.168.1.1/24"])
    assert [str(n) for n in networks] == ["10.0.0.0/8", "::1/128", "192.168.1.0/24"]
    with pytest.raises(ValueError, match="'example.com'"):
        parse_trusted_proxies(["example.com"])


def test_rejects_other_objects() -> None:
    with pytest.raises(TypeError):
        client_ip(object(), PROXIES)


@pytest.mark.parametrize(
    ("address", "identity"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("::ffff:203.0.113.7", "203.0.113.7"),  # an IPv4 client on a dual-stack socket
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),  # same /64, same budget
        ("unknown", "unknown"),
    ],
)
def test_rate_limit_identity_of_an_address(address: str, identity: str) -> None:
    from safegen.api.ratelimit_charges import address_identity

    assert address_identity(address, 64) == identity
