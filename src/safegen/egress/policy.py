"""Which URLs the service may send bytes to or fetch from: the egress policy (SSRF defence).

A client chooses where the server connects (an upload URL, an image URL, a webhook), so a URL is
accepted only if its scheme, host and port are allowed and every address its host resolves to is
public, or of a class the policy allows. This module checks what can be checked without DNS;
``resolver`` adds the addresses and ``client`` connects to the checked one only.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from safegen.errors import TargetRejected

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_LENGTH = 8192
DEFAULT_PORTS = {"http": 80, "https": 443}
# Characters httpx would re-encode (changing what was signed) or that hide what the URL means.
_FORBIDDEN_CHARS = re.compile(r'[\x00-\x20\x7f-\U0010ffff"<>`{}\\]')
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")  # Linux connects 0.0.0.0 to the local host


@dataclass(frozen=True)
class EgressPolicy:
    """What outbound URLs are acceptable for one purpose (``upload``, ``fetch``, ``webhook``).

    ``purpose`` names the URL in messages ("upload URL scheme must be ...") and in error codes
    (``upload_target_rejected``). ``allowed_hosts`` holds exact host names (or IP literals) and
    ``*.example.com`` patterns, which match any subdomain of ``example.com`` but not
    ``example.com`` itself; empty means any host whose addresses are public. ``allowed_ports``
    empty means any port. ``allow_private`` admits private and other non-global unicast ranges
    (RFC 1918, CGNAT, ULA); ``allow_loopback`` admits 127.0.0.0/8 and ::1. Link-local (cloud
    metadata at 169.254.169.254), multicast, reserved and unspecified addresses are never allowed.
    """

    purpose: str = "upload"
    allowed_schemes: tuple[str, ...] = ("https",)
    allowed_hosts: tuple[str, ...] = ()
    allowed_ports: tuple[int, ...] = ()
    allow_private: bool = False
    allow_loopback: bool = False

    @classmethod
    def from_settings(cls, settings: Any, purpose: str) -> EgressPolicy:
        """The policy the ``SAFEGEN_{PURPOSE}_ALLOWED_*`` / ``_ALLOW_*`` settings describe (a
        purpose without an ``allowed_ports`` setting allows any port)."""
        return cls(
            purpose=purpose,
            allowed_schemes=tuple(getattr(settings, f"{purpose}_allowed_schemes")),
            allowed_hosts=tuple(getattr(settings, f"{purpose}_allowed_hosts")),
            allowed_ports=tuple(getattr(settings, f"{purpose}_allowed_ports", ())),
            allow_private=getattr(settings, f"{purpose}_allow_private"),
            allow_loopback=getattr(settings, f"{purpose}_allow_loopback"),
        )

    def host_allowed(self, host: str) -> bool:
        """Whether ``host`` (lower case, no trailing dot) matches ``allowed_hosts``."""
        if not self.allowed_hosts:
            return True
        for pattern in self.allowed_hosts:
            pattern = pattern.lower().rstrip(".")
            if pattern.startswith("*."):
                if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                    return True
            elif host == pattern.strip("[]"):
                return True
        return False

    def address_allowed(self, address: IPAddress) -> bool:
        kind = address_class(address)
        return (
            kind is None
            or (kind == "loopback" and self.allow_loopback)
            or (kind == "private" and self.allow_private)
        )

    def rejected(self, message: str) -> TargetRejected:
        """The error for a URL this policy refuses, worded and coded for its purpose."""
        return TargetRejected(
            f"{self.purpose} {message}", code=f"{self.purpose}_target_rejected"
        )


@dataclass(frozen=True)
class UrlTarget:
    """What the policy read from a URL before DNS: where to connect and what ``Host`` says."""

    url: str
    scheme: str
    host: str  # lower case, no trailing dot; IPv6 without brackets
    port: int
    host_header: str  # the URL's authority, default port omitted

    @property
    def ip_literal(self) -> IPAddress | None:
        """The address when the URL names one rather than a host name."""
        return _ip_literal(self.host)


def address_class(address: IPAddress) -> str | None:
    """The reason ``address`` is not public (``"loopback"``, ``"private"`` ...) or ``None``."""
    if isinstance(address, ipaddress.IPv6Address):
        # Addresses that carry an IPv4 address inside are judged by that address.
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return address_class(embedded)
    # Order matters: Python also calls loopback, link-local and reserved ranges "private".
    checks = (
        ("unspecified", address.is_unspecified or address in _THIS_NETWORK),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("private", address.is_private or not address.is_global),
    )
    return next((name for name, hit in checks if hit), None)


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _is_legacy_ipv4(host: str) -> bool:
    """Whether the C library would read ``host`` as IPv4 (``2130706433``, ``0x7f.1``, ``127.1``)."""
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    return True


def admit_url(url: str, policy: EgressPolicy) -> UrlTarget:
    """Check all of ``url`` that needs no DNS; raise :class:`TargetRejected` if it is refused."""
    if not isinstance(url, str) or not url:
        raise policy.rejected("URL is missing")
    if len(url) > MAX_URL_LENGTH:
        raise policy.rejected(f"URL is longer than {MAX_URL_LENGTH} characters")
    if _FORBIDDEN_CHARS.search(url):
        raise policy.rejected("URL contains spaces, control, non-ASCII or unsafe characters")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise policy.rejected("URL is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in {s.lower() for s in policy.allowed_schemes}:
        raise policy.rejected(f"URL scheme must be one of: {', '.join(policy.allowed_schemes)}")
    if scheme not in DEFAULT_PORTS:
        raise policy.rejected("URL scheme must be http or https")
    if parts.fragment or "#" in url:
        raise policy.rejected("URL must not contain a fragment ('#')")
    if "@" in parts.netloc:
        raise policy.rejected("URL must not contain a user name or password")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise policy.rejected("URL has no host")
    try:
        port = DEFAULT_PORTS[scheme] if parts.port is None else parts.port
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise policy.rejected("URL port is not a number from 1 to 65535")
    if policy.allowed_ports and port not in policy.allowed_ports:
        raise policy.rejected(f"URL port {port} is not allowed")
    if _ip_literal(host) is None and _is_legacy_ipv4(host):
        raise policy.rejected("URL host is an IPv4 address in a non-standard form")
    if not policy.host_allowed(host):
        raise policy.rejected(f"host '{host}' is not in the allowed hosts")
    netloc_host = f"[{host}]" if ":" in host else host
    host_header = netloc_host if port == DEFAULT_PORTS[scheme] else f"{netloc_host}:{port}"
    return UrlTarget(url, scheme, host, port, host_header)
