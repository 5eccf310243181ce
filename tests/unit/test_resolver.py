"""SystemResolver: getaddrinfo on its own threads, with a deadline, scope ids dropped.

``socket.getaddrinfo`` is replaced by a recording stand-in: the answers a test needs (a scoped
link-local address, a resolver that never answers) cannot be had from this machine's DNS.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from safegen.egress import SystemResolver
from safegen.errors import HostUnresolvable


@pytest.fixture
def resolver() -> Any:
    resolver = SystemResolver(threads=1, timeout_s=0.2)
    yield resolver
    resolver.close()


async def test_lookups_run_on_the_resolvers_own_threads_and_drop_scope_ids(
    resolver: SystemResolver, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Any, ...]] = []

    def getaddrinfo(*args: Any) -> list[tuple[Any, ...]]:
        calls.append((threading.current_thread().name, *args))
        return [
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fe80::1%eth0", 443, 0, 2)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 443)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    addresses = await resolver("storage.example", 443)
    assert addresses == [ipaddress.ip_address("fe80::1"), ipaddress.ip_address("93.184.216.34")]
    assert [str(a) for a in addresses] == ["fe80::1", "93.184.216.34"]
    (thread, *args), = calls
    # Not the default executor that JPEG encoding shares: a stuck DNS cannot starve it.
    assert thread.startswith("safegen-dns")
    assert args == ["storage.example", 443, 0, socket.SOCK_STREAM]


@pytest.fixture
def dns_never_answers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every lookup blocks its thread until the test ends (a DNS server that never answers)."""
    release = threading.Event()

    def never_answers(*args: Any) -> list[Any]:
        release.wait(10)
        return []

    monkeypatch.setattr(socket, "getaddrinfo", never_answers)
    yield
    release.set()


@pytest.mark.usefixtures("dns_never_answers")
async def test_a_lookup_past_its_deadline_is_abandoned_with_a_clear_error(
    resolver: SystemResolver,
) -> None:
    with pytest.raises(HostUnresolvable) as raised:
        await asyncio.wait_for(resolver("slow.example", 443), 10)  # guard: a hang fails
    assert raised.value.message == "host 'slow.example' could not be resolved within 0.2 s"


async def test_a_failed_lookup_names_the_host_only(
    resolver: SystemResolver, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fails(*args: Any) -> list[Any]:
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fails)
    with pytest.raises(HostUnresolvable) as raised:
        await resolver("nowhere.example", 443)
    assert raised.value.message == "host 'nowhere.example' could not be resolved"


@pytest.mark.usefixtures("dns_never_answers")
async def test_close_does_not_wait_for_a_stuck_lookup(resolver: SystemResolver) -> None:
    # Shutdown must not hang on a DNS server that never answers: the lookup's thread is left.
    with pytest.raises(HostUnresolvable):
        await resolver("stuck.example", 443)
    closing = threading.Thread(target=resolver.close)
    closing.start()
    closing.join(5)  # guard: a close that waits for the lookup ends only when the test does
    assert not closing.is_alive()
