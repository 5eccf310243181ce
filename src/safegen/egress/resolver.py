"""DNS for outbound targets: the policy applied to every address, once per target.

Lookups run on a small thread pool of their own with a deadline, so a slow resolver can neither
hold a request forever nor starve the default executor that JPEG encoding and other work share.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from safegen.egress.policy import EgressPolicy, IPAddress, UrlTarget, address_class, admit_url
from safegen.errors import HostUnresolvable

# (host, port) -> addresses. Tests pass their own; the service uses a SystemResolver.
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]


class SystemResolver:
    """``getaddrinfo`` on ``threads`` threads of its own, each lookup bounded by ``timeout_s``.

    A lookup past its deadline is abandoned (its thread finishes in the background); with every
    thread stuck, further lookups wait for one and time out in turn, touching nothing else.
    """

    def __init__(self, threads: int, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(threads, "safegen-dns")

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        loop = asyncio.get_running_loop()
        lookup = loop.run_in_executor(
            self._pool, socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM
        )
        try:
            infos = await asyncio.wait_for(lookup, self.timeout_s)
        except asyncio.TimeoutError:
            raise HostUnresolvable(
                f"host '{host}' could not be resolved within {self.timeout_s:g} s"
            ) from None
        except (OSError, UnicodeError):
            raise HostUnresolvable(f"host '{host}' could not be resolved") from None
        # The scope id of a link-local IPv6 answer ("fe80::1%eth0") is not part of the address.
        return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True)
class ResolvedTarget(UrlTarget):
    """A URL that passed the policy, with the checked address its connection must go to."""

    address: IPAddress = ipaddress.IPv4Address(0)


async def resolve_target(url: str, policy: EgressPolicy, resolver: Resolver) -> ResolvedTarget:
    """Check ``url`` against ``policy`` and resolve its host once.

    Every address the host resolves to must be allowed (an attacker's DNS answer may mix a public
    and a private address); the first one is returned to connect to. Raises
    :class:`TargetRejected` (or its subclass :class:`HostUnresolvable`, worth a retry).
    """
    target = admit_url(url, policy)
    literal = target.ip_literal
    try:
        addresses = [literal] if literal is not None else await resolver(target.host, target.port)
    except HostUnresolvable as exc:
        raise HostUnresolvable(
            f"{policy.purpose} {exc.message}", code=f"{policy.purpose}_host_unresolvable"
        ) from None
    if not addresses:
        raise HostUnresolvable(
            f"{policy.purpose} host '{target.host}' could not be resolved",
            code=f"{policy.purpose}_host_unresolvable",
        )
    for address in addresses:
        if not policy.address_allowed(address):
            raise policy.rejected(
                f"host '{target.host}' resolves to a {address_class(address)} address, "
                "which is not allowed"
            )
    return ResolvedTarget(
        target.url, target.scheme, target.host, target.port, target.host_header, addresses[0]
    )

