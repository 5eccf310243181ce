"""All service settings: one validated object, read from the environment (prefix ``SAFEGEN_``).

The object is built by the app factory or the CLI, never at import time, and tests build their own
instances instead of patching the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from safegen.setting_values import parse_limit, parse_route_limits, parse_trusted_proxies

DEFAULT_NSFW_MODEL = "Falconsai/nsfw_image_detection"

CommaList = Annotated[list[str], NoDecode]


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """Every knob of the service. Each limit has a sane default and is validated here."""

    model_config = SettingsConfigDict(env_prefix="SAFEGEN_", extra="ignore", frozen=True)

    # --- server -----------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    shutdown_grace_s: float = Field(30.0, ge=0, description="time to finish in-flight work on stop")

    # --- NSFW classifier ----------------------------------------------------------------------
    nsfw_model: str = Field(DEFAULT_NSFW_MODEL, description="hub id or local directory")
    model_cache_dir: Path | None = Field(None, description="hub cache; default: HF_HOME's")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    backend: str = Field(
        "auto", description="auto (measured at first start), or a backend: torch, onnx, openvino"
    )
    precision: Literal["auto", "fp32", "bf16", "fp16", "int8"] = "auto"
    auto_max_drift: float = Field(
        1e-2, gt=0, le=1,
        description="auto considers only paths whose stated parity bound (max |delta p| against "
        "torch fp32) is within this; 1e-2 admits bf16, 5e-2 also onnx-int8, 0.3 openvino-int8",
    )
    auto_batch_size: bool = Field(
        True,
        description="the start-up measurement may lower max_batch_size to the batch size this "
        "host runs fastest per image",
    )
    fast_decode: bool = Field(
        True, description="JPEG draft decoding (faster, within the stated parity bound)"
    )
    max_batch_size: int = Field(32, ge=1, le=1024)
    max_batch_wait_ms: float = Field(5.0, ge=0, le=10_000)
    max_queue_images: int = Field(512, ge=1, description="images waiting for the model; then 503")
    max_queue_wait_s: float = Field(
        30.0, gt=0,
        description="longest expected wait for the model (queued images x recent model time per "
        "image); a request that would wait longer gets 503 at once",
    )
    decode_threads: int = Field(
        0, ge=0, le=256,
        description="threads decoding images for the classifier; 0: one per CPU core available",
    )
    torch_threads: int = Field(0, ge=0, description="0: torch's default")
    device_decode: bool = Field(
        False,
        description="decode JPEGs on the model's device with torchvision (nvjpeg on CUDA); "
        "needs torchvision and the torch backend",
    )
    inference_timeout_s: float = Field(
        30.0, gt=0,
        description="longest forward pass; past it the model counts as stalled: requests fail "
        "at once and readiness is 503 until it answers (queue time is not counted)",
    )

    # --- image generation (/generate) ---------------------------------------------------------
    generator_model: str = Field(
        "none", description="hub id or local directory of a text-to-image pipeline; none: off"
    )
    generator_warmup_steps: int = Field(1, ge=0, le=50)
    generator_max_pending: int = Field(
        16, ge=1, description="/generate jobs in flight (queued, generating, scoring, uploading); "
        "then 503"
    )
    max_jobs_per_key: int = Field(
        8, ge=1, description="/generate jobs in flight per API key (or client address); then 429"
    )
    generate_max_body_bytes: int = Field(
        64 * 1024, ge=1024, description="largest /generate request body (a prompt and a URL)"
    )
    upscaler: str = Field(
        "lanczos2x", description="lanczos2x (a resize), none, or a diffusion upscaler's hub id/dir"
    )
    upscaler_steps: int = Field(
        20, ge=1, le=500, description="denoising steps of a diffusion upscaler"
    )
    jpeg_quality: int = Field(90, ge=1, le=100)
    nsfw_timeout_s: float = Field(5.0, gt=0, le=120)
    nsfw_threshold: float = Field(
        0.5, ge=0, le=1, description="an image is NSFW when its score is at or above this"
    )
    max_prompt_chars: int = Field(2000, ge=1)
    min_image_side: int = Field(64, ge=8)
    max_image_side: int = Field(2048, ge=8)
    image_side_multiple: int = Field(8, ge=1)
    max_inference_steps: int = Field(100, ge=1)

    # --- delivery (presigned uploads) ---------------------------------------------------------
    upload_allowed_schemes: CommaList = Field(default_factory=lambda: ["https"])
    upload_allowed_hosts: CommaList = Field(
        default_factory=list, description="host names or *.suffix patterns; empty: any public host"
    )
    upload_allow_private: bool = False
    upload_allow_loopback: bool = False
    upload_backoff_s: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [1.0, 2.0, 4.0], description="sleeps between attempts"
    )
    upload_connect_timeout_s: float = Field(5.0, gt=0)
    upload_timeout_s: float = Field(30.0, gt=0, description="longest wait for one read or write")
    upload_allowed_ports: Annotated[list[int], NoDecode] = Field(
        default_factory=list, description="ports uploads may use; empty: any"
    )
    upload_attempt_timeout_s: float = Field(
        20.0, gt=0, description="one attempt, from waiting for a connection to the answer"
    )
    upload_deadline_s: float = Field(
        60.0, gt=0, description="one upload, retries included (also capped by the URL's expiry)"
    )
    upload_max_per_host: int = Field(8, ge=1, description="uploads at once to one host")
    upload_max_bytes: int = Field(32 * 1024 * 1024, ge=1, description="largest body uploaded")
    upload_max_retry_after_s: float = Field(
        8.0, ge=0, description="a longer Retry-After ends the upload instead of waiting"
    )
    upload_verify_etag: bool = Field(
        True, description="compare S3's ETag with the MD5 sent; off for SSE-KMS buckets"
    )
    dns_timeout_s: float = Field(5.0, gt=0, le=60, description="one outbound host lookup")
    dns_threads: int = Field(4, ge=1, le=64, description="threads for outbound host lookups")
    upload_default_headers: CommaList = Field(
        default_factory=list, description="'Name: value' headers the signer signed, sent always"
    )

    # --- asynchronous jobs (/v1/generations) and their webhooks --------------------------------
    jobs_storage: str = Field(
        "memory://",
        description="memory:// (in-process queue, lost on restart) or redis[s]://host:port/db "
        "(durable, shared by every replica)",
    )
    jobs_lease_s: float = Field(
        30.0, gt=0, le=3600,
        description="a worker renews its claim on a job this often; a job whose worker stopped "
        "renewing for this long is taken again by another worker",
    )
    jobs_max_attempts: int = Field(
        3, ge=1, le=100, description="times a job is taken before it fails as 'worker lost'"
    )
    jobs_concurrency: int = Field(1, ge=1, le=64, description="jobs one process runs at once")
    jobs_max_queued: int = Field(1000, ge=1, description="jobs waiting to start; then 503")
    jobs_max_in_flight_per_key: int = Field(
        32, ge=1, description="queued + running jobs of one API key; then 429"
    )
    jobs_max_result_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="largest job result kept (JSON, inline images too)"
    )
    jobs_result_ttl_s: float = Field(
        86400.0, gt=0, description="how long a finished job (and its result) can be read"
    )
    webhook_secret: str = Field(
        "", repr=False,
        description="whsec_<base64> signing secret (Standard Webhooks); empty: no webhooks",
    )
    webhook_allowed_schemes: CommaList = Field(default_factory=lambda: ["https"])
    webhook_allowed_hosts: CommaList = Field(
        default_factory=list, description="host names or *.suffix patterns; empty: any public host"
    )
    webhook_allow_private: bool = False
    webhook_allow_loopback: bool = False
    webhook_connect_timeout_s: float = Field(5.0, gt=0, le=60, description="DNS and connect")
    webhook_timeout_s: float = Field(10.0, gt=0, le=300, description="read/write per attempt")
    webhook_max_attempts: int = Field(8, ge=1, le=50)
    webhook_backoff_base_s: float = Field(
        1.0, ge=0, le=3600, description="wait before the 2nd attempt; doubles each time, jittered"
    )
    webhook_backoff_max_s: float = Field(
        600.0, ge=0, le=86400, description="longest wait between attempts (Retry-After too)"
    )
    webhook_max_per_host: int = Field(8, ge=1, description="concurrent deliveries to one host")

    # --- images by URL (/v1/classify JSON, /v1/moderations) -----------------------------------
    fetch_allowed_schemes: CommaList = Field(default_factory=lambda: ["https"])
    fetch_allowed_hosts: CommaList = Field(
        default_factory=list, description="host names or *.suffix patterns; empty: any public host"
    )
    fetch_allow_private: bool = False
    fetch_allow_loopback: bool = False
    fetch_max_bytes: int = Field(
        20 * 1024 * 1024, ge=1, description="bytes read from one URL; the stream is cut past it"
    )
    fetch_timeout_s: float = Field(10.0, gt=0, le=300, description="total time for one fetch")
    fetch_connect_timeout_s: float = Field(5.0, gt=0, le=60, description="DNS and connect")
    fetch_max_redirects: int = Field(
        0, ge=0, le=10, description="redirects followed; each hop's URL is checked again"
    )
    fetch_concurrency: int = Field(8, ge=1, description="fetches of one request at once")
    fetch_max_per_host: int = Field(8, ge=1, description="fetches to one host at once")
    fetch_content_types: CommaList = Field(
        default_factory=lambda: ["image/*", "application/octet-stream"],
        description="accepted Content-Type values (type/* patterns); the bytes are checked too",
    )

    # --- security at the edge -----------------------------------------------------------------
    api_keys: CommaList = Field(
        default_factory=list, repr=False, description="keys or sha256:<hex> digests of keys"
    )
    api_keys_file: Path | None = Field(None, description="one key or digest per line")
    no_auth: bool = Field(False, description="serve without authentication (local use only)")
    metrics_public: bool = Field(False, description="serve /metrics without an API key")
    rate_limit: str = Field("600/minute", description="per API key (or client address); '' off")
    rate_limit_routes: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=lambda: {"/generate": "60/minute"},
        description="per-route limits: '/generate=60/minute,/v1/classify=600/minute'",
    )
    rate_limit_storage: str = Field(
        "memory://", description="memory:// (one process) or redis://host:port/db (shared)"
    )
    rate_limit_fail_open: bool = Field(True, description="allow requests when Redis is down")
    rate_limit_storage_timeout_s: float = Field(0.5, gt=0, le=10)
    trusted_proxies: CommaList = Field(
        default_factory=list, description="addresses/CIDRs whose X-Forwarded-For is believed"
    )
    rate_limit_ipv6_prefix: int = Field(
        64, ge=32, le=128,
        description="IPv6 clients without a key share one budget per network of this prefix",
    )

    # --- input limits ---------------------------------------------------------------------------
    max_files_per_request: int = Field(64, ge=1)
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(40_000_000, ge=1)
    max_request_bytes: int = Field(100 * 1024 * 1024, ge=1)
    decode_memory_mb: int = Field(
        512, ge=16,
        description="decoded pixels held at once by all decode threads; an image needing more "
        "than this alone is refused",
    )
    allowed_formats: CommaList = Field(default_factory=lambda: ["JPEG", "PNG", "WEBP", "GIF"])
    result_cache_size: int = Field(
        10_000, ge=0, description="scores kept by SHA-256 of the uploaded bytes; 0: no cache"
    )
    max_frames: int = Field(
        8, ge=1, le=256,
        description="frames of an animation scored, spread evenly, first and last included",
    )
    max_animation_frames: int = Field(
        1000, ge=1, description="an animation with more frames is refused before decoding"
    )
    max_animation_pixels: int = Field(
        200_000_000, ge=1,
        description="frame count x canvas pixels an animation may have: the decoding work it "
        "costs to reach its last frame; checked from the header",
    )

    _split_lists = field_validator(
        "allowed_formats", "upload_allowed_schemes", "upload_allowed_hosts", "upload_backoff_s",
        "upload_default_headers", "upload_allowed_ports", "api_keys", "trusted_proxies",
        "webhook_allowed_schemes", "webhook_allowed_hosts", "fetch_allowed_schemes",
        "fetch_allowed_hosts", "fetch_content_types", mode="before",
    )(_split_commas)

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        from safegen.moderation.backends.registry import backend_names  # imports no backend

        if value != "auto" and value not in backend_names():
            raise ValueError(f"use auto or one of: {', '.join(backend_names())}")
        return value

    @field_validator("upload_backoff_s")
    @classmethod
    def _backoff_range(cls, values: list[float]) -> list[float]:
        if any(not 0 <= seconds <= 600 for seconds in values):
            raise ValueError("every backoff must be between 0 and 600 seconds")
        return values

    @field_validator("upload_allowed_schemes", "webhook_allowed_schemes", "fetch_allowed_schemes")
    @classmethod
    def _schemes(cls, values: list[str]) -> list[str]:
        lowered = [v.lower() for v in values]
        if not lowered or set(lowered) - {"http", "https"}:
            raise ValueError("schemes must be a non-empty subset of http, https")
        return lowered

    @field_validator("jobs_storage")
    @classmethod
    def _jobs_storage(cls, value: str) -> str:
        if not value.startswith(("memory://", "redis://", "rediss://")):
            raise ValueError("jobs_storage must be memory:// or redis[s]://host:port/db")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret(cls, value: str) -> str:
        if value:
            from safegen.jobs.signing import parse_secret

            parse_secret(value)  # raises ValueError naming the format, never echoing the value
        return value

    @field_validator("upload_default_headers")
    @classmethod
    def _header_lines(cls, values: list[str]) -> list[str]:
        # Imported here: the delivery package imports this module.
        from safegen.delivery.headers import parse_header_line

        for value in values:
            parse_header_line(value)
        return values

    @field_validator("allowed_formats")
    @classmethod
    def _known_formats(cls, formats: list[str]) -> list[str]:
        known = {"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"}
        upper = [f.upper() for f in formats]
        unknown = sorted(set(upper) - known)
        if unknown:
            raise ValueError(f"unknown image formats {unknown}; known: {sorted(known)}")
        if not upper:
            raise ValueError("at least one image format must be allowed")
        return upper

    @field_validator("rate_limit_routes", mode="before")
    @classmethod
    def _route_limits(cls, value: object) -> object:
        return parse_route_limits(value) if isinstance(value, str | dict) else value

    @field_validator("rate_limit")
    @classmethod
    def _limit(cls, value: str) -> str:
        if value.strip():
            parse_limit(value)
        return value.strip()

    @field_validator("rate_limit_storage")
    @classmethod
    def _storage(cls, value: str) -> str:
        if not value.startswith(("memory://", "redis://", "rediss://")):
            raise ValueError("rate_limit_storage must be memory:// or redis[s]://host:port/db")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, values: list[str]) -> list[str]:
        parse_trusted_proxies(values)
        return values

    @model_validator(mode="after")
    def _consistent_limits(self) -> Settings:
        if self.max_image_bytes > self.max_request_bytes:
            raise ValueError("max_image_bytes cannot exceed max_request_bytes")
        if self.no_auth and (self.api_keys or self.api_keys_file is not None):
            raise ValueError("no_auth is set but API keys are configured too; choose one")
        if self.min_image_side > self.max_image_side:
            raise ValueError("min_image_side cannot exceed max_image_side")
        return self
