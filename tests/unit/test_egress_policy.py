"""Egress policy: schemes, hosts, ports, userinfo, and every class of address."""

from __future__ import annotations

import ipaddress

import pytest

from safegen.egress import EgressPolicy as UploadTargetPolicy
from safegen.egress import IPAddress, address_class, admit_url, resolve_target
from safegen.errors import HostUnresolvable
from safegen.errors import TargetRejected as UploadTargetRejected
from safegen.settings import Settings
from tests.support.uploads import resolve_locally as SYSTEM

OPEN = UploadTargetPolicy()
LOCAL = UploadTargetPolicy(allowed_schemes=("http", "https"), allow_loopback=True)


class fixed:  # noqa: N801 (reads as a function at the call sites)
    """A resolver that answers ``addresses`` for any host and records what it was asked."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = [ipaddress.ip_address(a) for a in addresses]
        self.asked: list[tuple[str, int]] = []

    @property
    def calls(self) -> int:
        return len(self.asked)

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.asked.append((host, port))
        return list(self.addresses)


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("8.8.8.8", None),
        ("1.1.1.1", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),
        ("64:ff9b::808:808", None),
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("2002:7f00:1::", "loopback"),  # 6to4 wrapping 127.0.0.1
        ("64:ff9b::7f00:1", "loopback"),  # NAT64 wrapping 127.0.0.1
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "private"),  # carrier-grade NAT: not private in Python, not global either
        ("192.0.2.1", "private"),  # documentation range
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("::ffff:10.0.0.1", "private"),
        ("2002:a00:1::", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("::ffff:169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "unspecified"),
        ("::", "unspecified"),
    ],
)
def test_address_classes(address: str, kind: str | None) -> None:
    assert address_class(ipaddress.ip_address(address)) == kind


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/b/1.png",
        "https://127.0.0.1/b/1.png",
        "https://[::1]/b/1.png",
        "https://[::ffff:127.0.0.1]/b/1.png",
        "https://[::ffff:7f00:1]/b/1.png",
        "https://localhost/b/1.png",
        "https://localhost./b/1.png",
        "https://10.0.0.1/b/1.png",
        "https://169.254.169.254/latest/meta-data/",
        "https://[fe80::1]/x",
        "https://224.0.0.1/x",
        "https://0.0.0.0/x",
    ],
)
async def test_non_public_addresses_are_refused_by_default(url: str) -> None:
    with pytest.raises(UploadTargetRejected, match=r"address, which is not allowed|scheme"):
        await resolve_target(url, OPEN, SYSTEM)


@pytest.mark.parametrize(
    "host",
    ["2130706433", "0x7f000001", "0x7f.1", "127.1", "017700000001", "127.000.000.001", "1.2.3"],
)
async def test_legacy_ipv4_forms_are_refused(host: str) -> None:
    policy = UploadTargetPolicy(allow_loopback=True, allow_private=True)
    with pytest.raises(UploadTargetRejected, match="non-standard form"):
        await resolve_target(f"https://{host}/b/1.png", policy, SYSTEM)


async def test_policy_flags_admit_only_their_class() -> None:
    loopback = UploadTargetPolicy(allow_loopback=True)
    private = UploadTargetPolicy(allow_private=True)
    assert (await resolve_target("https://127.0.0.1/k", loopback, SYSTEM)).address.is_loopback
    assert (await resolve_target("https://[::1]:8443/k", loopback, SYSTEM)).port == 8443
    with pytest.raises(UploadTargetRejected, match="private"):
        await resolve_target("https://10.0.0.1/k", loopback, SYSTEM)
    assert str((await resolve_target("https://10.0.0.1/k", private, SYSTEM)).address) == "10.0.0.1"
    with pytest.raises(UploadTargetRejected, match="loopback"):
        await resolve_target("https://127.0.0.1/k", private, SYSTEM)
    everything = UploadTargetPolicy(allow_loopback=True, allow_private=True)
    for url in ("https://169.254.169.254/", "https://224.0.0.1/", "https://0.0.0.0/"):
        with pytest.raises(UploadTargetRejected, match="not allowed"):
            await resolve_target(url, everything, SYSTEM)


@pytest.mark.parametrize("purpose", ["upload", "webhook", "fetch"])
def test_each_purpose_reads_its_own_address_settings(purpose: str) -> None:
    private, loopback = ipaddress.ip_address("10.0.0.8"), ipaddress.ip_address("127.0.0.1")
    default = UploadTargetPolicy.from_settings(Settings(), purpose)
    assert not default.address_allowed(private)
    assert not default.address_allowed(loopback)
    opened = UploadTargetPolicy.from_settings(
        Settings(**{f"{purpose}_allow_private": True, f"{purpose}_allow_loopback": True}), purpose
    )
    assert opened.address_allowed(private)
    assert opened.address_allowed(loopback)


async def test_localhost_resolves_through_the_system_resolver() -> None:
    target = await resolve_target("http://localhost:9/b/1.png?x=1", LOCAL, SYSTEM)
    assert target.address.is_loopback
    assert target.host == "localhost"
    assert target.host_header == "localhost:9"
    assert target.url == "http://localhost:9/b/1.png?x=1"


async def test_unresolvable_host() -> None:
    with pytest.raises(HostUnresolvable, match="could not be resolved"):
        await resolve_target("https://no-such-host.invalid/k", OPEN, SYSTEM)
    with pytest.raises(HostUnresolvable):
        await resolve_target("https://example.com/k", OPEN, resolver=fixed())


async def test_every_resolved_address_must_be_allowed() -> None:
    # A DNS answer mixing a public and a private address is refused as a whole.
    mixed = fixed("8.8.8.8", "10.0.0.1")
    with pytest.raises(UploadTargetRejected, match="private"):
        await resolve_target("https://s3.example.com/k", OPEN, resolver=mixed)
    url = "https://s3.example.com/b/1.png?Signature=a%2Bb"
    target = await resolve_target(url, OPEN, resolver=fixed("8.8.4.4", "8.8.8.8"))
    assert str(target.address) == "8.8.4.4"
    assert target.url == url  # the client connects to the address; TLS and Host use the name
    assert (target.host, target.host_header) == ("s3.example.com", "s3.example.com")


async def test_ipv6_answers_and_ip_literals() -> None:
    target = await resolve_target(
        "https://store.example:8443/k?q", OPEN, resolver=fixed("2606:4700:4700::1111")
    )
    assert str(target.address) == "2606:4700:4700::1111"
    assert (target.port, target.host_header) == (8443, "store.example:8443")
    literal = await resolve_target("https://8.8.8.8/k", OPEN, SYSTEM)
    assert literal.ip_literal == literal.address


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/k", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("gopher://example.com/k", "scheme"),
        ("http://example.com/k", "scheme"),  # https only by default
        ("example.com/k", "scheme"),
        ("https://user@example.com/k", "user name"),
        ("https://user:pw@example.com/k", "user name"),
        ("https://example.com@127.0.0.1/k", "user name"),
        ("https:///k", "no host"),
        ("https://example.com:0/k", "port"),
        ("https://example.com:65536/k", "port"),
        ("https://example.com:https/k", "port"),
        ("https://example.com/k#frag", "fragment"),
        ("https://example.com/a b", "unsafe characters"),
        ("https://example.com/k\r\nX-Injected: 1", "unsafe characters"),
        ("https://example.com/ü.png", "unsafe characters"),
        ('https://example.com/k?q="x"', "unsafe characters"),
        ("https://example.com\\@evil.com/", "unsafe characters"),
        ("https://[::1/k", "not a valid URL"),
        ("https://example.com/" + "a" * 9000, "longer than"),
        ("", "missing"),
    ],
)
def test_malformed_or_disallowed_urls(url: str, message: str) -> None:
    with pytest.raises(UploadTargetRejected, match=message):
        admit_url(url, OPEN)


def test_scheme_is_case_insensitive_and_ports_can_be_restricted() -> None:
    assert (lambda t: (t.scheme, t.host, t.port))(admit_url("HTTPS://Example.COM/k", OPEN)) == (
        "https", "example.com", 443
    )
    only_443 = UploadTargetPolicy(allowed_ports=(443,))
    assert admit_url("https://example.com:443/k", only_443).port == 443
    with pytest.raises(UploadTargetRejected, match="port 8443 is not allowed"):
        admit_url("https://example.com:8443/k", only_443)


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("prod-data.example.com", True),
        ("a.b.example.com", True),
        ("PROD-DATA.Example.com", True),
        ("prod-data.example.com.", True),
        ("example.com", False),  # '*.' needs a subdomain
        ("badexample.com", False),
        ("example.com.evil.net", False),
        ("s3.amazonaws.com", True),
        ("x.s3.amazonaws.com", False),
        ("evil.com", False),
    ],
)
def test_host_allowlist(host: str, allowed: bool) -> None:
    policy = UploadTargetPolicy(allowed_hosts=("*.example.com", "s3.amazonaws.com"))
    url = f"https://{host}/bucket/1.png"
    if allowed:
        assert admit_url(url, policy).host == host.lower().rstrip(".")
    else:
        with pytest.raises(UploadTargetRejected, match="not in the allowed hosts"):
            admit_url(url, policy)


async def test_allowlist_is_checked_before_dns_and_does_not_bypass_address_checks() -> None:
    resolver = fixed("8.8.8.8")
    policy = UploadTargetPolicy(allowed_hosts=("*.example.com",))
    with pytest.raises(UploadTargetRejected, match="allowed hosts"):
        await resolve_target("https://evil.com/k", policy, resolver=resolver)
    assert resolver.calls == 0
    # An allowed name that resolves to a private address is still refused.
    with pytest.raises(UploadTargetRejected, match="private"):
        await resolve_target("https://s3.example.com/k", policy, resolver=fixed("192.168.0.5"))
    literal_policy = UploadTargetPolicy(allowed_hosts=("[::1]",), allow_loopback=True)
    assert (await resolve_target("https://[::1]/k", literal_policy, SYSTEM)).ip_literal is not None


FETCH = UploadTargetPolicy(purpose="fetch", allowed_schemes=("https", "http"))


@pytest.mark.parametrize(
    ("url", "policy", "message"),
    [
        ("", FETCH, "fetch URL is missing"),
        ("https://e.example/" + "a" * 8192, FETCH, "fetch URL is longer than 8192 characters"),
        ("https://e.example/a b", FETCH,
         "fetch URL contains spaces, control, non-ASCII or unsafe characters"),
        ("https://[::1/k", FETCH, "fetch URL is not a valid URL"),
        ("ftp://e.example/k", FETCH, "fetch URL scheme must be one of: https, http"),
        ("ftp://e.example/k", UploadTargetPolicy(purpose="fetch", allowed_schemes=("ftp",)),
         "fetch URL scheme must be http or https"),
        ("https://e.example/k#", FETCH, "fetch URL must not contain a fragment ('#')"),
        ("https://u:p@e.example/k", FETCH, "fetch URL must not contain a user name or password"),
        ("https:///k", FETCH, "fetch URL has no host"),
        ("https://e.example:65536/k", FETCH, "fetch URL port is not a number from 1 to 65535"),
        ("https://e.example:8443/k",
         UploadTargetPolicy(purpose="fetch", allowed_ports=(443, 8080)),
         "fetch URL port 8443 is not allowed"),
        ("https://127.1/k", FETCH, "fetch URL host is an IPv4 address in a non-standard form"),
        ("https://Evil.example./k",
         UploadTargetPolicy(purpose="fetch", allowed_hosts=("*.example.com",)),
         "fetch host 'evil.example' is not in the allowed hosts"),
    ],
)
def test_each_rejection_reads_exactly_and_names_its_purpose(
    url: str, policy: UploadTargetPolicy, message: str
) -> None:
    # What a client reads in the 422 body: the URL's purpose, then what is wrong with it.
    with pytest.raises(UploadTargetRejected) as raised:
        admit_url(url, policy)
    assert (raised.value.message, raised.value.code) == (message, "fetch_target_rejected")


def test_a_url_that_is_not_a_string_is_missing() -> None:
    with pytest.raises(UploadTargetRejected) as raised:
        admit_url(None, FETCH)  # type: ignore[arg-type]
    assert raised.value.message == "fetch URL is missing"


def test_the_limits_are_inclusive() -> None:
    longest = "https://e.example/" + "a" * (8192 - len("https://e.example/"))
    assert admit_url(longest, FETCH).url == longest
    with pytest.raises(UploadTargetRejected, match="longer than"):
        admit_url(longest + "a", FETCH)
    assert admit_url("https://e.example:1/k", FETCH).port == 1
    assert admit_url("https://e.example:65535/k", FETCH).port == 65535
    for port in (0, 65536):
        with pytest.raises(UploadTargetRejected, match="from 1 to 65535"):
            admit_url(f"https://e.example:{port}/k", FETCH)


@pytest.mark.parametrize(
    ("url", "host", "port", "host_header"),
    [
        ("https://e.example/k", "e.example", 443, "e.example"),
        ("https://e.example:443/k", "e.example", 443, "e.example"),
        ("http://e.example/k", "e.example", 80, "e.example"),
        ("http://e.example:443/k", "e.example", 443, "e.example:443"),
        ("https://E.Example.:8443/k", "e.example", 8443, "e.example:8443"),
        ("https://[2001:db8::1]/k", "2001:db8::1", 443, "[2001:db8::1]"),
        ("https://[2001:db8::1]:8443/k", "2001:db8::1", 8443, "[2001:db8::1]:8443"),
    ],
)
def test_host_port_and_host_header(url: str, host: str, port: int, host_header: str) -> None:
    target = admit_url(url, FETCH)
    assert (target.host, target.port, target.host_header) == (host, port, host_header)


def test_a_wildcard_pattern_is_read_like_a_host_name() -> None:
    # Patterns in any case or with the root's trailing dot mean the same names; "*." needs a
    # non-empty label before the suffix.
    policy = UploadTargetPolicy(allowed_hosts=("*.Example.COM.", "S3.Storage.Example.",
                                               "[2001:DB8::1]"))
    for host in ("a.example.com", "s3.storage.example", "[2001:db8::1]"):
        assert admit_url(f"https://{host}/k", policy)
    for host in (".example.com", "example.com", "xs3.storage.example"):
        with pytest.raises(UploadTargetRejected, match="not in the allowed hosts"):
            admit_url(f"https://{host}/k", policy)


async def test_the_resolver_is_asked_for_the_host_and_port_and_never_for_a_literal() -> None:
    resolver = fixed("8.8.8.8")
    target = await resolve_target("https://Store.Example.:8443/k", OPEN, resolver)
    assert resolver.asked == [("store.example", 8443)]
    assert (target.scheme, target.host, target.port) == ("https", "store.example", 8443)
    literal = await resolve_target("https://8.8.4.4/k", OPEN, resolver)
    assert str(literal.address) == "8.8.4.4"
    assert resolver.asked == [("store.example", 8443)]


async def test_unresolvable_and_refused_hosts_read_exactly() -> None:
    with pytest.raises(HostUnresolvable) as raised:
        await resolve_target("https://store.example/k", FETCH, fixed())
    assert (raised.value.message, raised.value.code) == (
        "fetch host 'store.example' could not be resolved", "fetch_host_unresolvable"
    )

    async def times_out(host: str, port: int) -> list[IPAddress]:
        raise HostUnresolvable(f"host '{host}' could not be resolved within 5 s")

    with pytest.raises(HostUnresolvable) as raised:
        await resolve_target("https://store.example/k", FETCH, times_out)
    assert (raised.value.message, raised.value.code) == (
        "fetch host 'store.example' could not be resolved within 5 s", "fetch_host_unresolvable"
    )
    with pytest.raises(UploadTargetRejected) as refused:
        await resolve_target("https://store.example/k", FETCH, fixed("8.8.8.8", "fd00::1"))
    assert (refused.value.message, refused.value.code) == (
        "fetch host 'store.example' resolves to a private address, which is not allowed",
        "fetch_target_rejected",
    )
