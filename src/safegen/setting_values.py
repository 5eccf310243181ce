"""Parsing of setting values that the settings validate and the components then use.

Kept below both :mod:`safegen.settings` and the web edge so that validating a setting never
imports the layer that serves requests.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from limits import RateLimitItem, parse_many

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_limit(text: str) -> RateLimitItem:
    """Parse one limit such as ``600/minute`` or ``10 per second``; ``ValueError`` if invalid."""
    try:
        items = parse_many(text)
    except ValueError:
        raise ValueError(f"rate limit {text!r} is not like '600/minute'") from None
    if len(items) != 1:
        raise ValueError(f"rate limit {text!r}: give exactly one limit per route")
    if items[0].amount < 1:
        raise ValueError(f"rate limit {text!r}: the amount must be at least 1")
    return items[0]


def parse_route_limits(spec: str | Mapping[str, str]) -> dict[str, str]:
    """``"/v1/classify=600/minute,/generate=30/minute"`` (or a mapping) -> validated dict."""
    if isinstance(spec, Mapping):
        pairs = [(str(route), str(limit)) for route, limit in spec.items()]
    else:
        pairs = []
        for entry in filter(str.strip, spec.split(",")):
            route, sep, limit = entry.partition("=")
            if not sep:
                raise ValueError(f"route rate limit {entry.strip()!r} is not 'route=limit'")
            pairs.append((route, limit))
    routes = {}
    for route, limit in pairs:
        if not route.strip():
            raise ValueError("route rate limits: each entry needs a route before '='")
        parse_limit(limit.strip())
        routes[route.strip()] = limit.strip()
    return routes


def parse_trusted_proxies(entries: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Parse IPs and CIDRs (``10.0.0.0/8``, ``::1``); raise ``ValueError`` naming a bad entry."""
    networks = []
    for entry in entries:
        text = entry.strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError(f"trusted proxy {text!r} is not an IP address or CIDR") from None
    return tuple(networks)
