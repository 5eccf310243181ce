"""All service settings: one validated object, read from the environment (prefix ``SAFEGEN_``).

The object is built by the app factory or the CLI, never at import time, and tests build their own
instances instead of patching the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

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
    backend: Literal["auto", "torch", "onnx"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16", "int8"] = "auto"
    fast_decode: bool = Field(
        True, description="JPEG draft decoding (faster, within the stated parity bound)"
    )
    max_batch_size: int = Field(32, ge=1, le=1024)
    max_batch_wait_ms: float = Field(5.0, ge=0, le=10_000)
    max_queue_images: int = Field(512, ge=1, description="images waiting for the model; then 503")
    decode_threads: int = Field(2, ge=1, le=64)
    torch_threads: int = Field(0, ge=0, description="0: torch's default")

    # --- input limits ---------------------------------------------------------------------------
    max_files_per_request: int = Field(64, ge=1)
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(40_000_000, ge=1)
    max_request_bytes: int = Field(100 * 1024 * 1024, ge=1)
    allowed_formats: CommaList = Field(default_factory=lambda: ["JPEG", "PNG", "WEBP", "GIF"])

    _split_lists = field_validator("allowed_formats", mode="before")(_split_commas)

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

    @model_validator(mode="after")
    def _consistent_limits(self) -> Settings:
        if self.max_image_bytes > self.max_request_bytes:
            raise ValueError("max_image_bytes cannot exceed max_request_bytes")
        return self
