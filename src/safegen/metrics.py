"""Every Prometheus metric of the service, in one place, named ``safegen_*``.

Metrics live on a registry owned by the app (not the global one), so several apps in one process
(tests, the Ray ingress) never collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
JOB_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
WEBHOOK_OUTCOMES = ("delivered", "gone", "refused", "rejected", "exhausted")


def status_class(status: int) -> str:
    """``2xx``..``5xx`` for an HTTP status, ``error`` for 0 (no response came)."""
    return f"{status // 100}xx" if status >= 100 else "error"


class Metrics:
    """The service's metrics, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # HTTP edge
        self.http_requests = Counter(
            "safegen_http_requests_total", "HTTP requests answered",
            ["route", "method", "status"], registry=r,
        )
        self.http_latency = Histogram(
            "safegen_http_request_duration_seconds", "HTTP request latency",
            ["route"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.rejections = Counter(
            "safegen_rejected_requests_total",
            "Requests refused before work started (auth, rate limit, size, overload)",
            ["reason"], registry=r,
        )
        self.ready = Gauge("safegen_ready", "1 when the service accepts work", registry=r)
        # classifier
        self.images = Counter(
            "safegen_classified_images_total", "Images scored, by outcome", ["outcome"], registry=r
        )
        self.nsfw_flagged = Counter(
            "safegen_nsfw_flagged_images_total",
            "Images judged NSFW (fail-safe verdicts included), by route", ["route"], registry=r,
        )
        self.result_cache = Counter(
            "safegen_result_cache_total", "Duplicate-cache lookups, by result (hit|miss)",
            ["result"], registry=r,
        )
        self.batch_size = Histogram(
            "safegen_batch_size", "Images per model forward pass", buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "safegen_queue_depth", "Images waiting for the model", registry=r
        )
        self.inference_latency = Histogram(
            "safegen_inference_duration_seconds", "Model forward time per batch",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        # generation and delivery
        self.generation_latency = Histogram(
            "safegen_generation_duration_seconds", "Image generation time",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.generations = Counter(
            "safegen_generations_total", "Generation requests, by outcome", ["outcome"], registry=r
        )
        self.nsfw_failsafe = Counter(
            "safegen_nsfw_failsafe_total",
            "NSFW checks answered with the fail-safe score 1.0, by reason", ["reason"], registry=r,
        )
        self.upload_attempts = Counter(
            "safegen_upload_attempts_total", "Upload attempts, by answer's status class",
            ["status_class"], registry=r,
        )
        self.uploads = Counter(
            "safegen_uploads_total", "Uploads, by final result (success|failure)", ["result"],
            registry=r,
        )
        self.upload_retries = Counter(
            "safegen_upload_retries_total", "Upload attempts after the first", registry=r
        )
        self.upload_latency = Histogram(
            "safegen_upload_duration_seconds", "Upload time including retries",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.ratelimit_storage_errors = Counter(
            "safegen_ratelimit_storage_errors_total",
            "Rate-limit checks whose storage could not be reached, by policy applied",
            ["policy"], registry=r,
        )
        # asynchronous jobs and their webhooks
        self.jobs_queue_depth = Gauge(
            "safegen_jobs_queue_depth",
            "Jobs waiting to start (the shared queue's, as seen by this process)", registry=r,
        )
        self.jobs = Counter(
            "safegen_jobs_total", "Jobs finished, by final status", ["status"], registry=r
        )
        self.job_latency = Histogram(
            "safegen_job_duration_seconds", "Job time from submission to its final status",
            ["status"], buckets=JOB_BUCKETS, registry=r,
        )
        self.job_wait = Histogram(
            "safegen_job_queue_wait_seconds", "Job time from submission to its start",
            buckets=JOB_BUCKETS, registry=r,
        )
        self.jobs_reclaimed = Counter(
            "safegen_jobs_reclaimed_total",
            "Jobs taken over from a worker that stopped renewing its lease", registry=r,
        )
        self.webhook_attempts = Counter(
            "safegen_webhook_attempts_total", "Webhook attempts, by answer's status class",
            ["status_class"], registry=r,
        )
        self.webhooks = Counter(
            "safegen_webhooks_total",
            "Webhook events, by final outcome (delivered|gone|refused|rejected|exhausted)",
            ["outcome"], registry=r,
        )
        for outcome in WEBHOOK_OUTCOMES:
            self.webhooks.labels(outcome=outcome)
        for result in ("success", "failure"):
            self.uploads.labels(result=result)
        for outcome in ("generated", "failed"):
            self.generations.labels(outcome=outcome)
        for result in ("hit", "miss"):
            self.result_cache.labels(result=result)
        for reason in ("timeout", "error"):
            self.nsfw_failsafe.labels(reason=reason)
