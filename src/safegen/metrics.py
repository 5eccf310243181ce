"""Every Prometheus metric of the service, in one place, named ``safegen_*``.

Metrics live on a registry owned by the app (not the global one), so several apps in one process
(tests, the Ray ingress) never collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


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
        for result in ("success", "failure"):
            self.uploads.labels(result=result)
        for reason in ("timeout", "error"):
            self.nsfw_failsafe.labels(reason=reason)
