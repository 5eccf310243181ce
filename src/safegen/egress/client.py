"""An HTTP client for client-chosen URLs whose connections go only to checked addresses.

- **Resolve once, connect to what was checked** (DNS rebinding): a target is resolved and checked
  by :func:`resolve_target`; while its request is sent, the pair (host, port) is pinned to that
  address, and the client's network layer connects to pinned addresses only.
- **One host name, one set of connections**: the URL keeps its host name, so connection pools are
  keyed by it and TLS verifies the certificate for it (SNI and ``Host`` follow). A connection
  verified for ``a.example`` is never reused for ``b.example``, even on the same address.
- No redirects, no proxies, certificates or netrc from the environment.
- At most ``max_per_host`` exchanges at once per host name: one slow or hostile host cannot take
  the connections every other host needs.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import httpcore
import httpx

from safegen.egress.policy import EgressPolicy, IPAddress
from safegen.egress.resolver import ResolvedTarget, Resolver, resolve_target
from safegen.egress.slots import KeyedSlots


class _Pins:
    """(host, port) -> checked addresses, held while a request to them is being sent."""

    def __init__(self) -> None:
        self._held: dict[tuple[str, int], collections.Counter[IPAddress]] = {}

    @contextlib.contextmanager
    def hold(self, target: ResolvedTarget) -> Iterator[None]:
        key = (target.host, target.port)
        addresses = self._held.setdefault(key, collections.Counter())
        addresses[target.address] += 1
        try:
            yield
        finally:
            addresses[target.address] -= 1
            if addresses[target.address] <= 0:
                del addresses[target.address]
            if not addresses:
                del self._held[key]

    def address_for(self, host: str, port: int) -> IPAddress | None:
        """A checked address for the pair; any of them passed the same policy."""
        addresses = self._held.get((host.strip("[]").lower().rstrip("."), port))
        return next(iter(addresses)) if addresses else None


class _PinnedNetwork(httpcore.AsyncNetworkBackend):
    """Opens TCP connections to pinned addresses only; anything else is refused."""

    def __init__(self, pins: _Pins) -> None:
        self._pins = pins
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self, host: str, port: int, timeout: float | None = None,
        local_address: str | None = None, socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        address = self._pins.address_for(host, port)
        if address is None:
            raise httpcore.ConnectError(f"{host}:{port} is not a checked target")
        return await self._inner.connect_tcp(
            str(address), port, timeout, local_address, socket_options
        )

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not outbound targets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _PinnedTransport(httpx.AsyncHTTPTransport):
    def __init__(self, pins: _Pins, verify: Any, limits: httpx.Limits) -> None:
        super().__init__(verify=verify, trust_env=False, limits=limits)
        # httpx offers no way to pass a network backend: swap its pool for an identical one whose
        # connections go through the pins (httpx's exception mapping around it stays as is).
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_PinnedNetwork(pins),
        )


class PinnedClient:
    """Sends requests to targets checked against one :class:`EgressPolicy`.

    ``verify`` is httpx's (``True``, a CA bundle path or an ``ssl.SSLContext``). Use
    ``async with`` or call :meth:`aclose`.
    """

    def __init__(
        self,
        policy: EgressPolicy,
        resolver: Resolver,
        *,
        timeout: httpx.Timeout,
        max_per_host: int = 8,
        verify: Any = True,
    ) -> None:
        self.policy = policy
        self._resolver = resolver
        self._pins = _Pins()
        self._slots = KeyedSlots(max_per_host)
        self._client = httpx.AsyncClient(
            transport=_PinnedTransport(
                self._pins, verify, httpx.Limits(max_connections=None, keepalive_expiry=5.0)
            ),
            timeout=timeout, follow_redirects=False, trust_env=False,
        )

    async def __aenter__(self) -> PinnedClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def resolve(self, url: str) -> ResolvedTarget:
        """Check ``url`` against the policy and resolve it once (raises ``TargetRejected``)."""
        return await resolve_target(url, self.policy, self._resolver)

    def build_request(self, target: ResolvedTarget, method: str, **kwargs: Any) -> httpx.Request:
        """A request to ``target.url``; ``Host`` is the URL's own and cannot be overridden."""
        headers = {k: v for k, v in (kwargs.pop("headers", None) or {}).items()
                   if k.lower() != "host"}
        return self._client.build_request(method, target.url, headers=headers, **kwargs)

    @contextlib.asynccontextmanager
    async def host_slot(self, target: ResolvedTarget) -> AsyncIterator[None]:
        """One of the ``max_per_host`` exchanges allowed at once with ``target``'s host."""
        async with self._slots.hold(target.host):
            yield

    async def send(self, target: ResolvedTarget, request: httpx.Request) -> httpx.Response:
        """Send ``request`` to ``target``'s checked address; the body is left to stream.

        The caller closes the response (``aclose``); redirects are never followed.
        """
        with self._pins.hold(target):
            return await self._client.send(request, stream=True, follow_redirects=False)
