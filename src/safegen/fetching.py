"""Images by URL: fetched through the egress policy of purpose ``fetch``, bounded in every way.

The URL is checked and resolved once (scheme, hosts, address classes) and the connection goes to
the checked address (``safegen.egress``). A fetch is bounded in bytes (cut while streaming,
whatever Content-Length says), in total time, and in redirects: none by default, and each one
allowed is checked again like a new URL. One failed fetch is that image's error; the others of
the request go on. Fetches of one request run concurrently, a few at a time.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import urljoin

import httpx

from safegen.egress import EgressPolicy, PinnedClient, Resolver
from safegen.errors import ImageError, SafegenError, TargetRejected, TooLarge
from safegen.settings import Settings

_REDIRECTS = {301, 302, 303, 307, 308}


class FetchFailed(ImageError):
    """The image at a URL could not be had (status, type, timeout, network)."""

    code = "fetch_failed"


@dataclass(frozen=True)
class FetchConfig:
    """Values from :class:`~safegen.settings.Settings` (the one place defaults are written)."""

    policy: EgressPolicy
    max_bytes: int
    timeout_s: float
    connect_timeout_s: float
    max_redirects: int
    concurrency: int
    max_per_host: int
    content_types: tuple[str, ...]

    @classmethod
    def from_settings(cls, settings: Settings) -> FetchConfig:
        return cls(
            policy=EgressPolicy.from_settings(settings, "fetch"),
            max_bytes=settings.fetch_max_bytes, timeout_s=settings.fetch_timeout_s,
            connect_timeout_s=settings.fetch_connect_timeout_s,
            max_redirects=settings.fetch_max_redirects, concurrency=settings.fetch_concurrency,
            max_per_host=settings.fetch_max_per_host,
            content_types=tuple(t.lower() for t in settings.fetch_content_types),
        )


class ImageFetcher:
    """Fetches images by URL. Use ``async with`` or call :meth:`aclose`."""

    def __init__(self, config: FetchConfig, resolver: Resolver, *, verify: object = True) -> None:
        self.config = config
        self._client = PinnedClient(
            config.policy, resolver,
            timeout=httpx.Timeout(config.timeout_s, connect=config.connect_timeout_s),
            max_per_host=config.max_per_host, verify=verify,
        )

    async def __aenter__(self) -> ImageFetcher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fetch_all(self, urls: list[str]) -> list[bytes | SafegenError]:
        """Each URL's bytes or its error, in order."""
        gate = asyncio.Semaphore(self.config.concurrency)

        async def one(url: str) -> bytes | SafegenError:
            async with gate:
                return await self.fetch(url)

        return list(await asyncio.gather(*(one(url) for url in urls)))

    async def fetch(self, url: str) -> bytes | SafegenError:
        try:
            return await asyncio.wait_for(self._follow(url), self.config.timeout_s)
        except asyncio.TimeoutError:
            return FetchFailed(f"fetching the image took longer than {self.config.timeout_s:g} s "
                               "(SAFEGEN_FETCH_TIMEOUT_S)")
        except SafegenError as exc:
            return exc
        except httpx.HTTPError:  # the exception text may hold the URL: not for clients
            return FetchFailed("the image could not be fetched (connection failed)")

    async def _follow(self, url: str) -> bytes:
        for _ in range(self.config.max_redirects + 1):
            target = await self._client.resolve(url)  # raises TargetRejected, per hop
            async with self._client.host_slot(target):
                response = await self._client.send(target, self._client.build_request(
                    target, "GET", headers={"Accept": "image/*"}
                ))
                try:
                    if response.status_code not in _REDIRECTS:
                        return await self._body(response)
                    location = response.headers.get("location")
                finally:
                    await response.aclose()
            if not location:
                raise FetchFailed("the image URL redirects without a Location")
            url = urljoin(url, location)
        if self.config.max_redirects == 0:
            raise TargetRejected(
                "fetch URL redirects; redirects are not followed (SAFEGEN_FETCH_MAX_REDIRECTS)",
                code="fetch_target_rejected",
            )
        raise TargetRejected(
            f"fetch URL redirects more than {self.config.max_redirects} times "
            "(SAFEGEN_FETCH_MAX_REDIRECTS)", code="fetch_target_rejected",
        )

    async def _body(self, response: httpx.Response) -> bytes:
        if response.status_code != 200:
            raise FetchFailed(f"the image URL answered HTTP {response.status_code}")
        kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if not self._type_allowed(kind):
            raise FetchFailed(
                f"the image URL sent Content-Type {kind or 'none'!r}; accepted: "
                f"{', '.join(self.config.content_types)} (SAFEGEN_FETCH_CONTENT_TYPES)"
            )
        limit = self.config.max_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise self._too_large()
        chunks: list[bytes] = []
        total = 0
        async for chunk in response.aiter_bytes():  # decoded: a gzip bomb is cut at the cap too
            total += len(chunk)
            if total > limit:
                raise self._too_large()
            chunks.append(chunk)
        return b"".join(chunks)

    def _type_allowed(self, kind: str) -> bool:
        for pattern in self.config.content_types:
            if pattern.endswith("/*") and kind.startswith(pattern[:-1]) or kind == pattern:
                return True
        return False

    def _too_large(self) -> TooLarge:
        return TooLarge(f"the image at the URL is larger than {self.config.max_bytes} bytes "
                        "(SAFEGEN_FETCH_MAX_BYTES)")
