"""Where the server may send bytes: the upload-target policy and its checks (SSRF defence).

The client chooses the upload URL, so a URL is accepted only if its scheme and host are allowed
and every address its host resolves to is public (or of a class the policy allows). The checked
address is returned so that the uploader connects to it and not to whatever a second DNS answer
says (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from safegen.delivery.presigned import split_url
from safegen.errors import UploadTargetRejected

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# (host, port) -> addresses; the default asks the system resolver off the event loop.
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]

MAX_URL_LENGTH = 8192
DEFAULT_PORTS = {"http": 80, "https": 443}
# Characters httpx would re-encode (changing what was signed) or that hide what the URL means.
_FORBIDDEN_CHARS = re.compile(r'[\x00-\x20\x7f-\U0010ffff"<>`{}\\]')
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")  # Linux connects 0.0.0.0 to the local host


class HostUnresolvable(UploadTargetRejected):
    """The host has no address right now (DNS failure). Unlike other rejections, worth a retry."""

    code = "upload_host_unresolvable"


@dataclass(frozen=True)
class UploadTargetPolicy:
    """What upload URLs are acceptable.

    ``allowed_hosts`` holds exact host names (or IP literals) and ``*.example.com`` patterns, which
    match any subdomain of ``example.com`` but not ``example.com`` itself; empty means any host
    whose addresses are public. ``allowed_ports`` empty means any port. ``allow_private`` admits
    private and other non-global unicast ranges (RFC 1918, CGNAT, ULA); ``allow_loopback`` admits
    127.0.0.0/8 and ::1. Link-local (cloud metadata at 169.254.169.254), multicast, reserved and
    unspecified addresses are never allowed.
    """

    allowed_schemes: tuple[str, ...] = ("https",)
    allowed_hosts: tuple[str, ...] = ()
    allowed_ports: tuple[int, ...] = ()
    allow_private: bool = False
    allow_loopback: bool = False

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


@dataclass(frozen=True)
class ResolvedTarget:
    """An upload URL that passed the policy, with the address that was checked."""

    url: str
    scheme: str
    host: str  # lower case; IPv6 without brackets
    port: int
    address: IPAddress  # the checked address to connect to
    host_header: str  # what ``Host`` must say: the URL's authority, default port omitted

    @property
    def is_ip_literal(self) -> bool:
        """Whether the URL names an address rather than a host name."""
        return _ip_literal(self.host) is not None

    def pinned_url(self) -> str:
        """``url`` with its authority replaced by the checked address; path and query untouched."""
        _, path, query, _ = split_url(self.url)
        ip = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{self.scheme}://{ip}:{self.port}{path or '/'}{query}"

    @property
    def sni_hostname(self) -> str | None:
        """The name TLS must present and verify when connecting to ``address``."""
        return None if self.scheme != "https" or self.is_ip_literal else self.host


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


def _address_allowed(kind: str | None, policy: UploadTargetPolicy) -> bool:
    return (
        kind is None
        or (kind == "loopback" and policy.allow_loopback)
        or (kind == "private" and policy.allow_private)
    )


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


def check_url(url: str, policy: UploadTargetPolicy) -> tuple[str, str, int, str]:
    """Check what can be checked without DNS. Returns ``(scheme, host, port, host_header)``."""
    if not isinstance(url, str) or not url:
        raise UploadTargetRejected("upload URL is missing")
    if len(url) > MAX_URL_LENGTH:
        raise UploadTargetRejected(f"upload URL is longer than {MAX_URL_LENGTH} characters")
    if _FORBIDDEN_CHARS.search(url):
        raise UploadTargetRejected(
            "upload URL contains spaces, control, non-ASCII or unsafe characters"
        )
    try:
        parts = urlsplit(url)
    except ValueError:
        raise UploadTargetRejected("upload URL is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in {s.lower() for s in policy.allowed_schemes}:
        allowed = ", ".join(policy.allowed_schemes)
        raise UploadTargetRejected(f"upload URL scheme must be one of: {allowed}")
    if scheme not in DEFAULT_PORTS:
        raise UploadTargetRejected("upload URL scheme must be http or https")
    if parts.fragment or "#" in url:
        raise UploadTargetRejected("upload URL must not contain a fragment ('#')")
    if "@" in parts.netloc:
        raise UploadTargetRejected("upload URL must not contain a user name or password")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UploadTargetRejected("upload URL has no host")
    try:
        port = DEFAULT_PORTS[scheme] if parts.port is None else parts.port
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise UploadTargetRejected("upload URL port is not a number from 1 to 65535")
    if policy.allowed_ports and port not in policy.allowed_ports:
        raise UploadTargetRejected(f"upload URL port {port} is not allowed")
    if _ip_literal(host) is None and _is_legacy_ipv4(host):
        raise UploadTargetRejected("upload URL host is an IPv4 address in a non-standard form")
    if not policy.host_allowed(host):
        raise UploadTargetRejected(f"upload host '{host}' is not in the allowed hosts")
    netloc_host = f"[{host}]" if ":" in host else host
    host_header = netloc_host if port == DEFAULT_PORTS[scheme] else f"{netloc_host}:{port}"
    return scheme, host, port, host_header


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """Resolve ``host`` with ``getaddrinfo`` in the loop's executor."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise HostUnresolvable(f"upload host '{host}' could not be resolved") from None
    # The scope id of a link-local IPv6 answer ("fe80::1%eth0") is not part of the address.
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    if not addresses:
        raise HostUnresolvable(f"upload host '{host}' could not be resolved")
    return addresses


async def resolve_target(
    url: str, policy: UploadTargetPolicy, *, resolver: Resolver | None = None
) -> ResolvedTarget:
    """Check ``url`` against ``policy`` and resolve its host off the event loop.

    Every address the host resolves to must be allowed (an attacker's DNS answer may mix a public
    and a private address); the first one is returned to connect to. Raises
    :class:`UploadTargetRejected` (or its subclass :class:`HostUnresolvable`).
    """
    scheme, host, port, host_header = check_url(url, policy)
    literal = _ip_literal(host)
    resolve = resolver or system_resolver
    addresses = [literal] if literal is not None else await resolve(host, port)
    if not addresses:
        raise HostUnresolvable(f"upload host '{host}' could not be resolved")
    for address in addresses:
        kind = address_class(address)
        if not _address_allowed(kind, policy):
            raise UploadTargetRejected(
                f"upload host '{host}' resolves to a {kind} address, which is not allowed"
            )
    return ResolvedTarget(url, scheme, host, port, addresses[0], host_header)
