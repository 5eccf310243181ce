"""``AsyncClient``: the asyncio client, the same API as ``Client`` with ``await``. Requests of one
``classify`` run go out as tasks, at most ``max_concurrency`` at a time; files are read in a
thread so the event loop never blocks on the disk."""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Any

import httpx

from safegen.client import wire
from safegen.client.batch import BatchRun, ProgressCallback
from safegen.client.config import (
    DEFAULT_CONCURRENCY,
    DEFAULT_TIMEOUT,
    check_concurrency,
    request_headers,
    resolve_base_url,
)
from safegen.client.errors import APIError, ConnectionFailed, SafegenClientError
from safegen.client.fetch import afetch, url_client_options
from safegen.client.inputs import Source, expand, read_local
from safegen.client.models import (
    GenerateResult,
    ImageProblem,
    ImageResult,
    ModerationResult,
    ServerInfo,
)
from safegen.client.progress import Progress
from safegen.client.retry import RETRY_STATUSES, RetryPolicy, retry_after, retryable_error

logger = logging.getLogger("safegen.client")


class AsyncClient:
    """A safegen server, for asyncio code. See :class:`safegen.client.Client`."""

    def __init__(
        self, base_url: str | None = None, api_key: str | None = None, *,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT, retry: RetryPolicy | None = None,
        max_concurrency: int = DEFAULT_CONCURRENCY, files_per_request: int | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = resolve_base_url(base_url)
        self.retry = retry or RetryPolicy()
        self.max_concurrency = check_concurrency(max_concurrency)
        self._files_per_request = files_per_request
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=request_headers(api_key), timeout=timeout,
            transport=transport,
        )
        self._fetcher = httpx.AsyncClient(**url_client_options(self._http.timeout))  # type: ignore[arg-type]
        self._info: ServerInfo | None = None

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._fetcher.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _send(
        self, method: str, path: str, *, idempotent: bool, **kwargs: Any
    ) -> httpx.Response:
        attempts = self.retry.attempts
        for attempt in range(1, attempts + 1):
            try:
                response = await self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt == attempts or not retryable_error(exc, idempotent):
                    raise ConnectionFailed(
                        f"no answer from {self.base_url} ({type(exc).__name__}) "
                        f"after {attempt} attempt(s)"
                    ) from exc
                wait, why = self.retry.backoff(attempt), type(exc).__name__
            else:
                if response.status_code not in RETRY_STATUSES or attempt == attempts:
                    return response
                wait = self.retry.wait(attempt, retry_after(response))
                why = str(response.status_code)
                await response.aclose()
            logger.info("retrying %s %s after %s in %.2f s (attempt %d of %d)",
                        method, path, why, wait, attempt + 1, attempts)
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def _json(self, method: str, path: str, *, idempotent: bool, **kwargs: Any) -> Any:
        response = await self._send(method, path, idempotent=idempotent, **kwargs)
        if response.status_code != 200:
            raise wire.error_from(response)
        return response.json()

    async def info(self) -> ServerInfo:
        if self._info is None:
            self._info = wire.parse_info(await self._json("GET", "v1/info", idempotent=True))
        return self._info

    async def _limits(self) -> tuple[int, int, int]:
        try:
            info = await self.info()
        except APIError as exc:
            if exc.status != 404:
                raise
            files, image, request = (wire.DEFAULT_FILES_PER_REQUEST, wire.DEFAULT_MAX_IMAGE_BYTES,
                                     wire.DEFAULT_MAX_REQUEST_BYTES)
        else:
            files = info.max_files_per_request
            image, request = info.max_image_bytes, info.max_request_bytes
        return self._files_per_request or files, image, request

    async def classify(
        self, images: Any, *, recursive: bool = False, progress: bool = False,
        on_progress: ProgressCallback | None = None,
    ) -> list[ImageResult]:
        """See :meth:`safegen.client.Client.classify`."""
        sources = await asyncio.to_thread(expand, images, recursive)
        files, image_bytes, request_bytes = await self._limits()
        chunks = wire.plan_chunks(sources, files, request_bytes)
        slots = asyncio.Semaphore(self.max_concurrency)
        with Progress(len(sources), progress) as bar:
            run = BatchRun(sources, bar, on_progress)

            async def work(chunk: list[Source]) -> None:
                async with slots:
                    if run.stopped:
                        return
                    try:
                        run.record(await self._classify_chunk(chunk, image_bytes))
                    except SafegenClientError as exc:
                        run.fail(exc)

            await asyncio.gather(*(work(chunk) for chunk in chunks))
        return run.outcome()

    async def _load(self, source: Source, max_bytes: int) -> bytes | ImageProblem:
        if source.url is not None:
            return await afetch(self._fetcher, source.url, max_bytes)
        return await asyncio.to_thread(read_local, source, max_bytes)

    async def _classify_chunk(self, chunk: list[Source], max_bytes: int) -> list[ImageResult]:
        loaded = await asyncio.gather(*(self._load(s, max_bytes) for s in chunk))
        pairs = list(zip(chunk, loaded, strict=True))
        done = {s.index: wire.failed(s, p) for s, p in pairs if isinstance(p, ImageProblem)}
        parts = [(s, d) for s, d in pairs if isinstance(d, bytes)]
        if parts:
            response = await self._send("POST", "v1/classify", idempotent=True,
                                        files=wire.multipart(parts))
            done.update(wire.chunk_results(response, [s for s, _ in parts]))
        return [done[s.index] for s in chunk]

    async def moderate(self, images: Any, *, model: str | None = None) -> list[ModerationResult]:
        """See :meth:`safegen.client.Client.moderate`."""
        sources = expand(images)
        _, max_bytes, _ = await self._limits()
        urls = await asyncio.to_thread(
            lambda: [wire.url_for_moderation(s, max_bytes) for s in sources]
        )
        body = await self._json("POST", "v1/moderations", idempotent=True,
                                json=wire.moderation_body(urls, model))
        return wire.parse_moderation(body)

    async def generate(
        self, prompt: str, *, negative_prompt: str | None = None, width: int | None = None,
        height: int | None = None, num_inference_steps: int | None = None,
        response_format: str | None = None, upscale: bool | None = None,
        s3_prefix: str | None = None, enable_nsfw_check: bool | None = None,
        seed: int | None = None, guidance_scale: float | None = None,
        upload_mode: str | None = None, upload_headers: dict[str, str] | None = None,
        s3_post_fields: dict[str, str] | None = None,
    ) -> GenerateResult:
        """See :meth:`safegen.client.Client.generate`."""
        fields = {k: v for k, v in locals().items() if k not in ("self", "prompt")}
        response = await self._send("POST", "generate", idempotent=False,
                                    json=wire.generate_body(prompt, fields))
        return wire.parse_generate(response)
