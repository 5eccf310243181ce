"""Generate -> encode -> (score || upload): the /generate use case, free of HTTP.

Once an image exists it is always delivered: the NSFW score never blocks the upload (they run
concurrently), a failed or slow check yields the fail-safe score 1.0, and a job keeps running to
the end even when the client that asked for it goes away (``submit`` shields it and keeps a handle
so shutdown can wait for it).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from PIL import Image

from safegen.delivery import Uploader, UploadResult, content_md5_header, redact, rename_object
from safegen.errors import InvalidInput
from safegen.generation.base import GenerationRequest, Generator
from safegen.generation.upscale import Upscaler
from safegen.imaging import encode_jpeg, md5_hex
from safegen.metrics import Metrics, status_class
from safegen.moderation.engine import Classifier

logger = logging.getLogger("safegen.generate")

UploadMode = Literal["rename", "as_signed", "post"]
FAILSAFE_SCORE = 1.0


@dataclass(frozen=True)
class Delivery:
    """Where and how the JPEG goes. ``url`` is the presigned PUT URL, or the POST URL."""

    url: str
    mode: UploadMode = "rename"
    headers: Mapping[str, str] = field(default_factory=dict)
    post_fields: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GenerateJob:
    request: GenerationRequest
    upscale: bool = True
    nsfw_check: bool = True
    delivery: Delivery | None = None  # None: the JPEG is returned inline


@dataclass
class GenerateOutcome:
    image_hash: str
    nsfw_score: float | None
    jpeg: bytes
    upload: UploadResult | None = None
    timings_s: dict[str, float] = field(default_factory=dict)  # stage -> seconds

    @property
    def b64_json(self) -> str:
        return base64.b64encode(self.jpeg).decode("ascii")


@dataclass(frozen=True)
class GenerateConfig:
    jpeg_quality: int = 90
    nsfw_timeout_s: float = 5.0


class GenerateService:
    """Runs generation jobs and keeps every started job alive until it has delivered."""

    def __init__(
        self,
        generator: Generator,
        classifier: Classifier,
        uploader: Uploader,
        config: GenerateConfig,
        metrics: Metrics,
        upscaler: Upscaler | None = None,
    ) -> None:
        self.generator = generator
        self.classifier = classifier
        self.uploader = uploader
        self.upscaler = upscaler
        self.config = config
        self.metrics = metrics
        self._jobs: set[asyncio.Task[GenerateOutcome]] = set()

    @property
    def in_flight(self) -> int:
        return len(self._jobs)

    async def check_delivery(self, delivery: Delivery) -> None:
        """Refuse a bad target (policy, private address, expired) before any work is done."""
        await self.uploader.check_target(delivery.url)
        if delivery.mode == "post" and "key" not in {k.lower() for k in delivery.post_fields}:
            raise InvalidInput(
                "presigned POST needs the policy's form fields, including 'key' (the prefix)",
                field="s3_post_fields",
            )

    async def submit(self, job: GenerateJob) -> GenerateOutcome:
        """Run ``job``; if the caller is cancelled the job still finishes (and is logged)."""
        task = asyncio.create_task(self.run(job))
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)
        return await asyncio.shield(task)

    async def drain(self, grace_s: float) -> None:
        """Wait up to ``grace_s`` for started jobs (their uploads included) to finish."""
        if self._jobs:
            logger.info("waiting for %d generation job(s) to finish", len(self._jobs))
            await asyncio.wait(set(self._jobs), timeout=grace_s)

    async def run(self, job: GenerateJob) -> GenerateOutcome:
        started = time.monotonic()
        image = await self._generate(job)
        generated = time.monotonic()
        jpeg = await asyncio.to_thread(encode_jpeg, image, self.config.jpeg_quality)
        image_hash = md5_hex(jpeg)
        encoded = time.monotonic()
        score = asyncio.create_task(self._score(image)) if job.nsfw_check else None
        upload = (
            asyncio.create_task(self._deliver(job.delivery, jpeg, image_hash))
            if job.delivery is not None
            else None
        )
        outcome = GenerateOutcome(image_hash=image_hash, nsfw_score=None, jpeg=jpeg)
        if score is not None:
            outcome.nsfw_score = await score
            outcome.timings_s["nsfw"] = time.monotonic() - encoded
        if upload is not None:
            outcome.upload = await upload
            outcome.timings_s["upload"] = outcome.upload.elapsed_s
        outcome.timings_s.update(
            generate=generated - started, encode=encoded - generated,
            total=time.monotonic() - started,
        )
        return outcome

    async def _generate(self, job: GenerateJob) -> Image.Image:
        started = time.monotonic()
        try:
            image = await self.generator.generate(job.request)
            if job.upscale and self.upscaler is not None:
                image = await self.upscaler.upscale(image, prompt=job.request.prompt)
        except Exception:
            self.metrics.generations.labels(outcome="failed").inc()
            raise
        self.metrics.generation_latency.observe(time.monotonic() - started)
        self.metrics.generations.labels(outcome="generated").inc()
        return image

    async def _score(self, image: Image.Image) -> float:
        """The NSFW probability, or the fail-safe 1.0 when the check fails or is too slow."""
        try:
            result = await asyncio.wait_for(
                self.classifier.classify_image(image), self.config.nsfw_timeout_s
            )
        except asyncio.TimeoutError:
            self.metrics.nsfw_failsafe.labels(reason="timeout").inc()
            logger.warning("NSFW check exceeded %.1fs: fail-safe score", self.config.nsfw_timeout_s)
            return FAILSAFE_SCORE
        except Exception:
            self.metrics.nsfw_failsafe.labels(reason="error").inc()
            logger.exception("NSFW check failed: fail-safe score")
            return FAILSAFE_SCORE
        return result.nsfw_score

    async def _deliver(self, delivery: Delivery, jpeg: bytes, image_hash: str) -> UploadResult:
        name = f"{image_hash}.jpg"
        headers = dict(delivery.headers)
        if delivery.mode == "post":
            key = _post_key(delivery.post_fields, name)
            result = await self.uploader.post_form(
                delivery.url, delivery.post_fields, key, jpeg, name
            )
        else:
            renamed = delivery.mode == "rename"
            url = rename_object(delivery.url, name) if renamed else delivery.url
            if _is_sigv4(url) and not any(k.lower() == "content-md5" for k in headers):
                # SigV4 signs only the headers it lists, so Content-MD5 is safe and lets the
                # storage refuse corrupted bytes. SigV2 signs it positionally: never add it there.
                headers["Content-MD5"] = content_md5_header(jpeg)
            result = await self.uploader.put(url, jpeg, headers, renamed=renamed)
        self._record_upload(result)
        level = logging.INFO if result.ok else logging.WARNING
        logger.log(
            level, "upload %s: status=%d attempts=%d elapsed=%.2fs url=%s reason=%s",
            "succeeded" if result.ok else "failed", result.status, len(result.attempts),
            result.elapsed_s, redact(result.url or delivery.url), result.reason,
            extra={"image_hash": image_hash, "upload_mode": delivery.mode},
        )
        return result

    def _record_upload(self, result: UploadResult) -> None:
        m = self.metrics
        for attempt in result.attempts:
            m.upload_attempts.labels(status_class=status_class(attempt.status)).inc()
        if result.retries:
            m.upload_retries.inc(result.retries)
        m.uploads.labels(result="success" if result.ok else "failure").inc()
        m.upload_latency.observe(result.elapsed_s)


def _post_key(fields: Mapping[str, str], name: str) -> str:
    """The object key: the ``key`` field's prefix (or its ``${filename}``) completed by ``name``."""
    prefix = next(v for k, v in fields.items() if k.lower() == "key")
    if "${filename}" in prefix:
        return prefix.replace("${filename}", name)
    return prefix + name


def _is_sigv4(url: str) -> bool:
    return "X-Amz-Signature=" in url or "x-amz-signature=" in url
