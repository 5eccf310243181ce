"""The pinned client against real sockets: a URL's host name in any spelling reaches the address
that was checked for it, the connect timeout holds, and nothing else is connected to."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import httpcore
import httpx
import pytest

from safegen.egress import EgressPolicy, PinnedClient
from safegen.egress.client import _PinnedNetwork, _Pins
from safegen.egress.policy import IPAddress
from safegen.egress.resolver import ResolvedTarget
from tests.support.faultserver import FaultServer
from tests.support.tlscerts import TestCA

LOOPBACK_OK = EgressPolicy(purpose="fetch", allowed_schemes=("http",), allow_loopback=True)
LOOPBACK_V4 = ipaddress.ip_address("127.0.0.1")


def resolving_to(address: IPAddress):  # type: ignore[no-untyped-def]
    """A stand-in for DNS (none here): every name resolves to ``address``."""
    async def resolve(host: str, port: int) -> list[IPAddress]:
        return [address]
    return resolve


@dataclass
class Served:
    """What :func:`http_server` saw: its port, each request's head, one entry per connection."""

    port: int
    heads: list[bytes] = field(default_factory=list)
    connections: list[int] = field(default_factory=list)


@contextlib.asynccontextmanager
async def http_server(host: str) -> AsyncIterator[Served]:
    """An HTTP/1.1 server on ``host`` answering every request with 200 ``ok`` and keeping the
    connection open; records what it saw."""
    served = Served(0)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.connections.append(1)
        try:
            while True:
                served.heads.append(await reader.readuntil(b"\r\n\r\n"))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, host, 0)
    served.port = server.sockets[0].getsockname()[1]
    async with server:
        yield served


async def get(client: PinnedClient, url: str) -> httpx.Response:
    target = await client.resolve(url)
    response = await client.send(target, client.build_request(target, "GET"))
    await response.aread()
    await response.aclose()
    return response


@pytest.mark.parametrize("spelling", ["images.example", "Images.EXAMPLE", "images.example."])
async def test_a_host_name_in_any_spelling_reaches_its_checked_address(spelling: str) -> None:
    # Upper case and the root's trailing dot name the same host: the connection must find the
    # address pinned for it, not be refused as unchecked.
    client = PinnedClient(LOOPBACK_OK, resolving_to(LOOPBACK_V4), timeout=httpx.Timeout(5.0))
    async with http_server("127.0.0.1") as served, client:
        response = await get(client, f"http://{spelling}:{served.port}/image.png")
    assert (response.status_code, response.text) == (200, "ok")


async def test_an_ipv6_literal_reaches_its_address() -> None:
    client = PinnedClient(LOOPBACK_OK, resolving_to(LOOPBACK_V4), timeout=httpx.Timeout(5.0))
    async with http_server("::1") as served, client:
        response = await get(client, f"http://[::1]:{served.port}/image.png")
    assert (response.status_code, response.text) == (200, "ok")


async def test_certificates_are_verified_unless_the_caller_says_otherwise(
    tls_fault_server: FaultServer, test_ca: TestCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The webhook client takes the default: a self-signed (here: untrusted CA) receiver is
    # refused before any request is sent, and the same server is reached once its CA is trusted.
    # Trust comes from the caller, never from the environment (like proxies and netrc).
    monkeypatch.setenv("SSL_CERT_FILE", str(test_ca.ca_pem))
    https_ok = EgressPolicy(purpose="webhook", allowed_schemes=("https",), allow_loopback=True)
    url = tls_fault_server.url + "/hook"
    async with PinnedClient(https_ok, resolving_to(LOOPBACK_V4),
                            timeout=httpx.Timeout(5.0)) as default:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await get(default, url)
    assert tls_fault_server.requests == []
    async with PinnedClient(https_ok, resolving_to(LOOPBACK_V4), timeout=httpx.Timeout(5.0),
                            verify=test_ca.client_context()) as trusting:
        assert (await get(trusting, url)).status_code == 200


@contextlib.contextmanager
def unanswered_port() -> Iterator[int]:
    """A listening port whose accept queue is full: the kernel drops new SYNs, so a connect
    waits until its timeout (what a firewalled or overloaded host does)."""
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket())
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(16):  # fill the queue until a connection is no longer taken
            filler = stack.enter_context(socket.socket())
            filler.settimeout(0.5)
            try:
                filler.connect(("127.0.0.1", port))
            except TimeoutError:
                break
        else:
            pytest.fail("the accept queue never filled")
        yield port


async def test_the_connect_timeout_holds_for_the_pinned_address() -> None:
    with unanswered_port() as port:
        async with PinnedClient(LOOPBACK_OK, resolving_to(LOOPBACK_V4),
                                timeout=httpx.Timeout(30.0, connect=0.2)) as client:
            # The outer bound only stops a connect that ignores its timeout from hanging the test.
            with pytest.raises(httpx.ConnectTimeout):
                await asyncio.wait_for(get(client, f"http://images.example:{port}/"), 20)


async def test_the_network_layer_refuses_any_host_not_pinned() -> None:
    network = _PinnedNetwork(_Pins())
    with pytest.raises(httpcore.ConnectError, match=r"^evil\.example:443 is not a checked target$"):
        await network.connect_tcp("evil.example", 443)


def test_a_pin_is_held_while_any_request_to_its_address_is_in_flight() -> None:
    pins = _Pins()
    first = ipaddress.ip_address("8.8.8.8")
    second = ipaddress.ip_address("8.8.4.4")

    def target(address: IPAddress) -> ResolvedTarget:
        return ResolvedTarget("https://images.example/a", "https", "images.example", 443,
                              "images.example", address)

    with pins.hold(target(first)):
        with pins.hold(target(first)):
            assert pins.address_for("images.example", 443) == first
        assert pins.address_for("images.example", 443) == first  # one request still in flight
        assert pins.address_for("images.example", 8443) is None  # the port is part of the pin
        with pins.hold(target(second)):
            pass
        assert pins.address_for("images.example", 443) == first  # the other address was released
    assert pins.address_for("images.example", 443) is None


async def test_the_host_header_is_the_urls_own_and_other_headers_pass() -> None:
    client = PinnedClient(LOOPBACK_OK, resolving_to(LOOPBACK_V4), timeout=httpx.Timeout(5.0))
    async with http_server("127.0.0.1") as served, client:
        target = await client.resolve(f"http://images.example:{served.port}/a.png")
        request = client.build_request(
            target, "GET", headers={"HOST": "internal.example", "X-Trace": "1"}
        )
        response = await client.send(target, request)
        await response.aclose()
    head = served.heads[0].decode().lower()
    assert f"\r\nhost: images.example:{served.port}\r\n" in head
    assert "internal.example" not in head
    assert "\r\nx-trace: 1\r\n" in head


async def test_proxies_and_netrc_from_the_environment_are_not_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A proxy would connect wherever the URL says, past the pins; a netrc entry would hand the
    # server's own credentials to whatever host a client names.
    netrc = tmp_path / "netrc"
    netrc.write_text("machine images.example login service password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    async with http_server("127.0.0.1") as proxy, http_server("127.0.0.1") as direct:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        async with PinnedClient(LOOPBACK_OK, resolving_to(LOOPBACK_V4),
                                timeout=httpx.Timeout(5.0)) as client:
            response = await get(client, f"http://images.example:{direct.port}/a.png")
    assert (response.status_code, len(direct.heads), proxy.heads) == (200, 1, [])
    assert b"authorization" not in direct.heads[0].lower()


async def test_an_idle_connection_is_reused_for_5_s_then_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Reuse spares a storage host a TCP and TLS handshake per upload; dropping idle connections
    # after 5 s (httpcore's clock, injected) keeps the pool from holding sockets the host has
    # long since closed.
    now = [1000.0]
    monkeypatch.setattr(httpcore._async.http11, "time", SimpleNamespace(monotonic=lambda: now[0]))
    async with http_server("127.0.0.1") as served, PinnedClient(
        LOOPBACK_OK, resolving_to(LOOPBACK_V4), timeout=httpx.Timeout(5.0)
    ) as client:
        url = f"http://images.example:{served.port}/a.png"
        await get(client, url)
        now[0] += 4.9
        await get(client, url)
        assert len(served.connections) == 1
        now[0] += 5.1
        await get(client, url)
        assert len(served.connections) == 2
