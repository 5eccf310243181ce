"""Generate -> encode -> (score || upload): the /generate use case, free of HTTP.

Once an image exists it is always delivered: the NSFW score never blocks the upload (they run
concurrently), a failed or slow check yields the fail-safe score 1.0, and a job keeps running to
the end even when the client that asked for it goes away (``submit`` shields it and keeps a handle
so shutdown can wait for it).

Every job counts against the service's capacity from admission until its upload ends, whatever
stage it is in, in total and per client: a client whose uploads stall fills its own share, not
everyone's. The generated image is dropped as soon as it is encoded and scored; a job waiting on
its upload holds only the JPEG.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from PIL import Image

from safegen.delivery import (
    Uploader,
    UploadResult,
    content_md5_header,
    is_sigv4,
    redact,
    rename_object,
    retarget,
)
from safegen.egress import ResolvedTarget
from safegen.errors import InvalidInput, Overloaded, TooManyJobs
from safegen.generation.base import GenerationRequest, Generator
from safegen.generation.upscale import Upscaler
from safegen.imaging import encode_jpeg, md5_hex
from safegen.metrics import Metrics, status_class
from safegen.moderation.engine import Classifier
from safegen.moderation.verdict import failsafe_verdict, is_nsfw
from safegen.settings import Settings

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
    target: ResolvedTarget | None = None  # ``url`` checked and resolved, once, at admission


@dataclass(frozen=True)
class GenerateJob:
    request: GenerationRequest
    upscale: bool = True
    nsfw_check: bool = True
    nsfw_threshold: float | None = None  # None: SAFEGEN_NSFW_THRESHOLD
    delivery: Delivery | None = None  # None: the JPEG is returned inline
    client: str = ""  # who asked (API key id or address): the unit of the per-client job limit


@dataclass
class GenerateOutcome:
    image_hash: str
    nsfw_score: float | None
    jpeg: bytes
    nsfw: bool | None = None  # the verdict; None when the check was turned off
    upload: UploadResult | None = None
    timings_s: dict[str, float] = field(default_factory=dict)  # stage -> seconds

    @property
    def b64_json(self) -> str:
        return base64.b64encode(self.jpeg).decode("ascii")


@dataclass(frozen=True)
class GenerateConfig:
    """Values from :class:`~safegen.settings.Settings` (the one place defaults are written)."""

    jpeg_quality: int
    nsfw_timeout_s: float
    nsfw_threshold: float
    max_jobs: int  # jobs in flight, any stage
    max_jobs_per_client: int

    @classmethod
    def from_settings(cls, settings: Settings) -> GenerateConfig:
        return cls(
            jpeg_quality=settings.jpeg_quality, nsfw_timeout_s=settings.nsfw_timeout_s,
            nsfw_threshold=settings.nsfw_threshold,
            max_jobs=settings.generator_max_pending,
            max_jobs_per_client=settings.max_jobs_per_key,
        )


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
        self._admitted = 0  # jobs from admission to the end of their upload
        self._per_client: collections.Counter[str] = collections.Counter()
        self._last_job_s = 1.0  # for Retry-After when full

    @property
    def in_flight(self) -> int:
        return self._admitted

    async def prepare_delivery(self, delivery: Delivery) -> Delivery:
        """Refuse a bad target (policy, private address, expired) before any work is done, and
        resolve it once: every attempt of the upload goes to the address checked here."""
        if delivery.mode == "post" and "key" not in {k.lower() for k in delivery.post_fields}:
            raise InvalidInput(
                "presigned POST needs the policy's form fields, including 'key' (the prefix)",
                field="s3_post_fields",
            )
        target = await self.uploader.prepare(delivery.url)
        return dataclasses.replace(delivery, target=target)

    async def submit(self, job: GenerateJob) -> GenerateOutcome:
        """Admit ``job``, check its delivery target, then run it to the end.

        Raises :class:`Overloaded` (503) when the service is full and :class:`TooManyJobs` (429)
        when ``job.client`` has its share in flight, before any work. If the caller is cancelled
        once the job runs, the job still finishes (and is logged).
        """
        self._admit(job.client)
        try:
            if job.delivery is not None:
                job = dataclasses.replace(job, delivery=await self.prepare_delivery(job.delivery))
        except BaseException:
            self._release(job.client)
            raise
        task = asyncio.create_task(self.run(job))
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)
        task.add_done_callback(lambda _: self._release(job.client))
        return await asyncio.shield(task)

    def _admit(self, client: str) -> None:
        # No await between the checks and the counts: admission is atomic on the event loop.
        retry_after = max(1, round(self._last_job_s))
        if self._admitted >= self.config.max_jobs:
            raise Overloaded(
                f"{self._admitted} generation jobs are in flight, the limit "
                "(SAFEGEN_GENERATOR_MAX_PENDING)", retry_after_s=retry_after,
            )
        if self._per_client[client] >= self.config.max_jobs_per_client:
            raise TooManyJobs(
                f"this client has {self._per_client[client]} generation jobs in flight, the "
                "limit (SAFEGEN_MAX_JOBS_PER_KEY)", retry_after_s=retry_after,
            )
        self._admitted += 1
        self._per_client[client] += 1

    def _release(self, client: str) -> None:
        self._admitted -= 1
        self._per_client[client] -= 1
        if self._per_client[client] <= 0:
            del self._per_client[client]

    async def drain(self, grace_s: float) -> None:
        """Wait up to ``grace_s`` for started jobs (their uploads included) to finish."""
        if self._jobs:
            logger.info("waiting for %d generation job(s) to finish", len(self._jobs))
            _, unfinished = await asyncio.wait(set(self._jobs), timeout=grace_s)
            if unfinished:  # stopping anyway: say which deliveries are given up
                logger.warning(
                    "%d generation job(s) still running after %g s (SAFEGEN_SHUTDOWN_GRACE_S): "
                    "stopping without them, their images are not delivered",
                    len(unfinished), grace_s,
                )

    async def run(self, job: GenerateJob) -> GenerateOutcome:
        started = time.monotonic()
        image = await self._generate(job)
        generated = time.monotonic()
        jpeg = await asyncio.to_thread(encode_jpeg, image, self.config.jpeg_quality)
        image_hash = md5_hex(jpeg)
        encoded = time.monotonic()
        score = asyncio.create_task(self._score(image)) if job.nsfw_check else None
        del image  # the scoring task holds it until scored; the upload needs only the JPEG
        upload = (
            asyncio.create_task(self._deliver(job.delivery, jpeg, image_hash))
            if job.delivery is not None
            else None
        )
        outcome = GenerateOutcome(image_hash=image_hash, nsfw_score=None, jpeg=jpeg)
        if score is not None:
            outcome.nsfw_score, failed = await score
            threshold = (self.config.nsfw_threshold if job.nsfw_threshold is None
                         else job.nsfw_threshold)
            outcome.nsfw = failsafe_verdict() if failed else is_nsfw(outcome.nsfw_score, threshold)
            outcome.timings_s["nsfw"] = time.monotonic() - encoded
        if upload is not None:
            outcome.upload = await upload
            outcome.timings_s["upload"] = outcome.upload.elapsed_s
        outcome.timings_s.update(
            generate=generated - started, encode=encoded - generated,
            total=time.monotonic() - started,
        )
        self._last_job_s = outcome.timings_s["total"]
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

    async def _score(self, image: Image.Image) -> tuple[float, bool]:
        """(NSFW probability, failed): the fail-safe 1.0 when the check fails or is too slow."""
        try:
            result = await asyncio.wait_for(
                self.classifier.classify_image(image), self.config.nsfw_timeout_s
            )
        except asyncio.TimeoutError:
            self.metrics.nsfw_failsafe.labels(reason="timeout").inc()
            logger.warning("NSFW check exceeded %.1fs: fail-safe score", self.config.nsfw_timeout_s)
            return FAILSAFE_SCORE, True
        except Exception:
            self.metrics.nsfw_failsafe.labels(reason="error").inc()
            logger.exception("NSFW check failed: fail-safe score")
            return FAILSAFE_SCORE, True
        return result.nsfw_score, False

    async def _deliver(self, delivery: Delivery, jpeg: bytes, image_hash: str) -> UploadResult:
        name = f"{image_hash}.jpg"
        headers = dict(delivery.headers)
        if delivery.mode == "post":
            key = _post_key(delivery.post_fields, name)
            result = await self.uploader.post_form(
                delivery.target or delivery.url, delivery.post_fields, key, jpeg, name
            )
        else:
            renamed = delivery.mode == "rename"
            url = rename_object(delivery.url, name) if renamed else delivery.url
            # Same host, another object: the address checked at admission, no second lookup.
            target = retarget(delivery.target, url) if delivery.target else url
            if is_sigv4(url) and not any(k.lower() == "content-md5" for k in headers):
                # SigV4 signs only the headers it lists, so Content-MD5 is safe and lets the
                # storage refuse corrupted bytes. SigV2 signs it positionally: never add it there.
                headers["Content-MD5"] = content_md5_header(jpeg)
            result = await self.uploader.put(target, jpeg, headers, renamed=renamed)
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

