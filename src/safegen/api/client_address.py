"""The client's IP address, honouring ``X-Forwarded-For`` only from trusted proxies.

Anyone can send an ``X-Forwarded-For`` header, so it is believed only when the direct peer is a
configured proxy. The list is then walked from the right (the entry the nearest proxy appended)
towards the left, skipping hops that are themselves trusted proxies; the first untrusted hop is
the client. Entries further left were written by the client and are never used.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any, cast

from safegen.setting_values import IPNetwork, parse_trusted_proxies

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

UNKNOWN = "unknown"


_cached_networks = lru_cache(maxsize=32)(parse_trusted_proxies)


def _parse_ip(text: str) -> IPAddress | None:
    """An address from a peer or a forwarded hop; tolerates ``1.2.3.4:80`` and ``[::1]:80``."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # IPv4 with a port; bare IPv6 has two or more colons
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    # An IPv4 peer seen through a dual-stack socket: compare it as IPv4.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_trusted(address: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    return any(address in network for network in networks)


def _scope_of(scope_or_request: Any) -> Mapping[str, Any]:
    scope = getattr(scope_or_request, "scope", scope_or_request)
    if not isinstance(scope, Mapping):
        raise TypeError("client_ip() needs an ASGI scope or a Starlette request")
    return scope


def _forwarded_for(scope: Mapping[str, Any]) -> list[str]:
    """Every X-Forwarded-For hop, in order, across repeated header lines."""
    hops: list[str] = []
    for name, value in scope.get("headers") or ():
        if name.lower() == b"x-forwarded-for":
            hops.extend(part.strip() for part in value.decode("latin-1").split(","))
    return [hop for hop in hops if hop]


def client_ip(
    scope_or_request: Any, trusted_proxies: Sequence[str] | Sequence[IPNetwork] = ()
) -> str:
    """The client's address for ``scope_or_request`` (an ASGI scope or a Starlette request).

    ``trusted_proxies`` holds IPs/CIDRs as strings (parsed once and cached) or parsed networks.
    Returns ``"unknown"`` when the server knows no peer address (e.g. a Unix socket).
    """
    scope = _scope_of(scope_or_request)
    client = scope.get("client")
    peer = _parse_ip(str(client[0])) if client else None
    if peer is None:
        return UNKNOWN
    if not trusted_proxies:
        return str(peer)
    networks: Sequence[IPNetwork]
    if all(isinstance(entry, str) for entry in trusted_proxies):
        networks = _cached_networks(tuple(cast("Sequence[str]", trusted_proxies)))
    else:
        networks = tuple(cast("Sequence[IPNetwork]", trusted_proxies))
    if not _is_trusted(peer, networks):
        return str(peer)
    nearest_trusted = peer
    for hop in reversed(_forwarded_for(scope)):
        address = _parse_ip(hop)
        if address is None:
            # A trusted proxy wrote something unparsable: believe nothing further left.
            break
        if not _is_trusted(address, networks):
            return str(address)
        nearest_trusted = address
    # Every hop is a trusted proxy (or the header is absent or broken): the leftmost trusted
    # address we reached is the best answer we can give honestly.
    return str(nearest_trusted)
