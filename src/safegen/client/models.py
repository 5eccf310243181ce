"""Typed results of the client (plain dataclasses: the client needs no pydantic)."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ImageProblem:
    """Why one image has no score: the server's ``code`` and ``message`` (or the client's own,
    e.g. ``unreadable_file``, ``fetch_failed``, ``not_classified``)."""

    code: str
    message: str


@dataclass(frozen=True)
class ImageResult:
    """One input image's outcome, at its position in the input (``index``)."""

    index: int
    source: str  # the path, URL, or a description such as "bytes #3"
    filename: str | None = None
    label: str | None = None
    nsfw_score: float | None = None
    scores: dict[str, float] = field(default_factory=dict)
    nsfw: bool | None = None  # the server's verdict, when it sends one
    error: ImageProblem | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class GenerateResult:
    """``POST /generate``'s ``data``, plus where the time went (``Server-Timing``, in ms)."""

    image_hash: str
    nsfw_score: float | None
    nsfw: bool | None = None
    s3_url: str | None = None
    s3_upload_status: int | None = None
    b64_json: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    request_id: str | None = None

    def image_bytes(self) -> bytes | None:
        """The JPEG returned inline (``response_format="b64_json"``), else None."""
        return base64.b64decode(self.b64_json) if self.b64_json is not None else None


@dataclass(frozen=True)
class ModerationResult:
    """One result of ``POST /v1/moderations`` (OpenAI's moderation shape)."""

    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float]
    category_applied_input_types: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class ServerInfo:
    """``GET /v1/info``: the server's limits and features."""

    version: str
    model: str
    generator: bool
    nsfw_threshold: float
    max_files_per_request: int
    max_image_bytes: int
    max_request_bytes: int
