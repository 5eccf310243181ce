"""``Client``: the blocking client. Requests of one ``classify`` run go out from a small thread
pool (``max_concurrency``); everything else is one call, one request (plus retries)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
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
from safegen.client.fetch import fetch, url_client_options
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


class Client:
    """A safegen server. ``base_url``/``api_key`` default to ``SAFEGEN_URL``/``SAFEGEN_API_KEY``.

    ``files_per_request`` overrides the limit read from the server's ``/v1/info``.
    """

    def __init__(
        self, base_url: str | None = None, api_key: str | None = None, *,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT, retry: RetryPolicy | None = None,
        max_concurrency: int = DEFAULT_CONCURRENCY, files_per_request: int | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = resolve_base_url(base_url)
        self.retry = retry or RetryPolicy()
        self.max_concurrency = check_concurrency(max_concurrency)
        self._files_per_request = files_per_request
        self._http = httpx.Client(
            base_url=self.base_url, headers=request_headers(api_key), timeout=timeout,
            transport=transport,
        )
        self._fetcher = httpx.Client(**url_client_options(self._http.timeout))  # type: ignore[arg-type]
        self._info: ServerInfo | None = None

    def close(self) -> None:
        self._http.close()
        self._fetcher.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---- transport ---------------------------------------------------------------------------

    def _send(self, method: str, path: str, *, idempotent: bool, **kwargs: Any) -> httpx.Response:
        """One request with the retry policy; the last answer is returned whatever its status."""
        attempts = self.retry.attempts
        for attempt in range(1, attempts + 1):
            try:
                response = self._http.request(method, path, **kwargs)
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
                response.close()
            logger.info("retrying %s %s after %s in %.2f s (attempt %d of %d)",
                        method, path, why, wait, attempt + 1, attempts)
            time.sleep(wait)
        raise AssertionError("unreachable")

    def _json(self, method: str, path: str, *, idempotent: bool, **kwargs: Any) -> Any:
        response = self._send(method, path, idempotent=idempotent, **kwargs)
        if response.status_code != 200:
            raise wire.error_from(response)
        return response.json()

    # ---- API ---------------------------------------------------------------------------------

    def info(self) -> ServerInfo:
        """The server's limits and features (``GET /v1/info``)."""
        if self._info is None:
            self._info = wire.parse_info(self._json("GET", "v1/info", idempotent=True))
        return self._info

    def _limits(self) -> tuple[int, int, int]:
        """(files per request, bytes per image, bytes per request)."""
        try:
            info = self.info()
        except APIError as exc:
            if exc.status != 404:  # a server without /v1/info: assume its documented defaults
                raise
            files, image, request = (wire.DEFAULT_FILES_PER_REQUEST, wire.DEFAULT_MAX_IMAGE_BYTES,
                                     wire.DEFAULT_MAX_REQUEST_BYTES)
        else:
            files = info.max_files_per_request
            image, request = info.max_image_bytes, info.max_request_bytes
        return self._files_per_request or files, image, request

    def classify(
        self, images: Any, *, recursive: bool = False, progress: bool = False,
        on_progress: ProgressCallback | None = None,
    ) -> list[ImageResult]:
        """Score paths, folders, bytes, PIL images and URLs; results in input order.

        A bad image gets its own error; a failure that stops the run raises
        ``IncompleteClassification`` with every result that finished.
        """
        sources = expand(images, recursive)
        files, image_bytes, request_bytes = self._limits()
        chunks = wire.plan_chunks(sources, files, request_bytes)
        with Progress(len(sources), progress) as bar:
            run = BatchRun(sources, bar, on_progress)

            def work(chunk: list[Source]) -> None:
                if run.stopped:
                    return
                try:
                    run.record(self._classify_chunk(chunk, image_bytes))
                except SafegenClientError as exc:
                    run.fail(exc)

            with ThreadPoolExecutor(self.max_concurrency) as pool:
                list(pool.map(work, chunks))
        return run.outcome()

    def _load(self, source: Source, max_bytes: int) -> bytes | ImageProblem:
        if source.url is not None:
            return fetch(self._fetcher, source.url, max_bytes)
        return read_local(source, max_bytes)

    def _classify_chunk(self, chunk: list[Source], max_bytes: int) -> list[ImageResult]:
        loaded = [(s, self._load(s, max_bytes)) for s in chunk]
        done = {s.index: wire.failed(s, p) for s, p in loaded if isinstance(p, ImageProblem)}
        parts = [(s, d) for s, d in loaded if isinstance(d, bytes)]
        if parts:
            response = self._send("POST", "v1/classify", idempotent=True,
                                  files=wire.multipart(parts))
            done.update(wire.chunk_results(response, [s for s, _ in parts]))
        return [done[s.index] for s in chunk]

    def moderate(self, images: Iterable[Any] | Any, *, model: str | None = None
                 ) -> list[ModerationResult]:
        """``POST /v1/moderations`` (OpenAI's shape); URLs are passed on for the server to fetch."""
        sources = expand(images)
        _, max_bytes, _ = self._limits()
        urls = [wire.url_for_moderation(s, max_bytes) for s in sources]
        body = self._json("POST", "v1/moderations", idempotent=True,
                          json=wire.moderation_body(urls, model))
        return wire.parse_moderation(body)

    def generate(
        self, prompt: str, *, negative_prompt: str | None = None, width: int | None = None,
        height: int | None = None, num_inference_steps: int | None = None,
        response_format: str | None = None, upscale: bool | None = None,
        s3_prefix: str | None = None, enable_nsfw_check: bool | None = None,
        seed: int | None = None, guidance_scale: float | None = None,
        upload_mode: str | None = None, upload_headers: dict[str, str] | None = None,
        s3_post_fields: dict[str, str] | None = None,
    ) -> GenerateResult:
        """``POST /generate``; fields left at None take the server's (the spec's) defaults.

        Not idempotent: retried only when the request surely did not start (connect failure,
        429, 503). ``UploadFailed`` carries the generated result when only delivery failed.
        """
        fields = {k: v for k, v in locals().items() if k not in ("self", "prompt")}
        response = self._send("POST", "generate", idempotent=False,
                              json=wire.generate_body(prompt, fields))
        return wire.parse_generate(response)

