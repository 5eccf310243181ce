"""The wire format, without any I/O: shared by the sync and the async client.

Request bodies and response parsing for ``/v1/classify``, ``/generate``, ``/v1/moderations`` and
``/v1/info``, and how a long list of images is cut into requests the server accepts.
"""

from __future__ import annotations

import base64
import contextlib
from typing import Any

import httpx

from safegen.client.config import CHUNK_ERROR_STATUSES
from safegen.client.errors import APIError, UploadFailed, api_error
from safegen.client.inputs import Source, read_local
from safegen.client.models import (
    GenerateResult,
    ImageProblem,
    ImageResult,
    ModerationResult,
    ServerInfo,
)
from safegen.client.retry import retry_after

# Assumed until /v1/info answers: the server's documented defaults.
DEFAULT_FILES_PER_REQUEST = 64
DEFAULT_MAX_IMAGE_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_REQUEST_BYTES = 100 * 1024 * 1024
MULTIPART_OVERHEAD = 512  # bytes of part headers per file, generously


def plan_chunks(
    sources: list[Source], max_files: int, max_request_bytes: int
) -> list[list[Source]]:
    """Consecutive runs of at most ``max_files`` images whose known sizes fit one request."""
    chunks: list[list[Source]] = []
    current: list[Source] = []
    size = 0
    for source in sources:
        cost = source.size_hint + MULTIPART_OVERHEAD
        if current and (len(current) >= max_files or size + cost > max_request_bytes):
            chunks.append(current)
            current, size = [], 0
        current.append(source)
        size += cost
    if current:
        chunks.append(current)
    return chunks


def multipart(parts: list[tuple[Source, bytes]]) -> list[tuple[str, tuple[str, bytes]]]:
    return [("files", (s.filename or f"image-{s.index}", data)) for s, data in parts]


def error_from(response: httpx.Response) -> APIError:
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    return api_error(response.status_code, body, retry_after(response))


def result_for(source: Source, item: dict[str, Any]) -> ImageResult:
    if "error" in item:
        problem = item["error"]
        return ImageResult(
            source.index, source.label, source.filename,
            error=ImageProblem(str(problem.get("code")), str(problem.get("message"))),
        )
    return ImageResult(
        source.index, source.label, source.filename, label=item.get("label"),
        nsfw_score=float(item["nsfw_score"]), scores=dict(item.get("scores") or {}),
        nsfw=item.get("nsfw"),
    )


def parse_classify(body: dict[str, Any], sent: list[Source]) -> list[ImageResult]:
    """Results of one request, mapped back by the ``index`` the server echoes."""
    results = body["results"]
    if len(results) != len(sent):
        raise ValueError(f"the server returned {len(results)} results for {len(sent)} images")
    return [result_for(sent[int(item["index"])], item) for item in results]


def failed(source: Source, problem: ImageProblem) -> ImageResult:
    return ImageResult(source.index, source.label, source.filename, error=problem)


def not_classified(source: Source) -> ImageResult:
    return failed(source, ImageProblem("not_classified", "not classified: the run stopped first"))


def parse_info(body: dict[str, Any]) -> ServerInfo:
    limits = body["limits"]
    return ServerInfo(
        version=str(body["version"]), model=str(body["model"]),
        generator=bool(body["generator"]), nsfw_threshold=float(body["nsfw_threshold"]),
        max_files_per_request=int(limits["max_files_per_request"]),
        max_image_bytes=int(limits["max_image_bytes"]),
        max_request_bytes=int(limits["max_request_bytes"]),
    )


def server_timing(header: str | None) -> dict[str, float]:
    """``"generate;dur=812.3, nsfw;dur=20.1"`` -> ``{"generate": 812.3, "nsfw": 20.1}``."""
    timings: dict[str, float] = {}
    for part in (header or "").split(","):
        name, *params = (p.strip() for p in part.split(";"))
        for param in params:
            if name and param.startswith("dur="):
                with contextlib.suppress(ValueError):
                    timings[name] = float(param[4:])
    return timings


def generate_body(prompt: str, fields: dict[str, Any]) -> dict[str, Any]:
    """Only the fields the caller set (``generate``'s keyword arguments that are not None): the
    server's defaults, the spec's, apply to the rest."""
    return {"prompt": prompt, **{k: v for k, v in fields.items() if v is not None}}


def parse_generate(response: httpx.Response) -> GenerateResult:
    """The result of a ``/generate`` call, or the typed error (``UploadFailed`` keeps the data)."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise error_from(response)
    result = GenerateResult(
        image_hash=str(data.get("image_hash")), nsfw_score=data.get("nsfw_score"),
        nsfw=data.get("nsfw"), s3_url=data.get("s3_url"),
        s3_upload_status=data.get("s3_upload_status"), b64_json=data.get("b64_json"),
        timings_ms=server_timing(response.headers.get("server-timing")),
        request_id=response.headers.get("x-request-id"),
    )
    if response.status_code == 200:
        return result
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    raise UploadFailed(
        result, response.status_code, str(error.get("code", "upload_failed")),
        str(error.get("message", "the upload failed")), request_id=error.get("request_id"),
    )


_MAGIC = [
    (b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF8", "image/gif"), (b"RIFF", "image/webp"),
]


def data_url(data: bytes) -> str:
    mime = next((m for magic, m in _MAGIC if data.startswith(magic)), "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def moderation_body(urls: list[str], model: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "input": [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    }
    if model is not None:
        body["model"] = model
    return body


def parse_moderation(body: dict[str, Any]) -> list[ModerationResult]:
    return [
        ModerationResult(
            flagged=bool(item["flagged"]), categories=dict(item["categories"]),
            category_scores={k: float(v) for k, v in item["category_scores"].items()},
            category_applied_input_types=dict(item.get("category_applied_input_types") or {}),
        )
        for item in body["results"]
    ]


def chunk_results(response: httpx.Response, sent: list[Source]) -> dict[int, ImageResult]:
    """A request's results by input index. A 4xx about the request's content (too many bytes, a
    malformed part) is every sent image's error, kept per image; anything else stops the run."""
    if response.status_code == 200:
        return {r.index: r for r in parse_classify(response.json(), sent)}
    error = error_from(response)
    if response.status_code in CHUNK_ERROR_STATUSES:
        problem = ImageProblem(error.code, error.message)
        return {s.index: failed(s, problem) for s in sent}
    raise error


def url_for_moderation(source: Source, max_bytes: int) -> str:
    """A URL as given (the server fetches it), anything else inline as a data URL."""
    if source.url is not None:
        return source.url
    data = read_local(source, max_bytes)
    if isinstance(data, ImageProblem):
        raise ValueError(f"{source.label}: {data.message}")
    return data_url(data)
