"""A generate job and its outcome as JSON: what a queued job stores and what a finished one shows.

The result mirrors ``POST /generate``: the same ``data``, and an ``error`` when the upload failed
(the image exists and was scored; ``data`` still says so).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from safegen.errors import SafegenError
from safegen.generation.base import GenerationRequest
from safegen.services.generate_service import Delivery, GenerateJob, GenerateOutcome


def encode_job(job: GenerateJob) -> dict[str, Any]:
    encoded = dataclasses.asdict(job)
    if job.delivery is not None:  # Mapping fields: plain dicts for JSON
        encoded["delivery"]["headers"] = dict(job.delivery.headers)
        encoded["delivery"]["post_fields"] = dict(job.delivery.post_fields)
    return encoded


def decode_job(encoded: dict[str, Any]) -> GenerateJob:
    fields = dict(encoded)
    delivery = fields.pop("delivery", None)
    return GenerateJob(
        request=GenerationRequest(**fields.pop("request")),
        delivery=Delivery(**delivery) if delivery is not None else None,
        **fields,
    )


def outcome_result(outcome: GenerateOutcome) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
    """(status, data, error) of a finished generation, in ``/generate``'s shapes."""
    data: dict[str, Any] = {
        "nsfw_score": outcome.nsfw_score, "nsfw": outcome.nsfw, "image_hash": outcome.image_hash,
    }
    upload = outcome.upload
    if upload is None:
        data["b64_json"] = outcome.b64_json
        return "succeeded", data, None
    data = {"s3_url": upload.url, **data, "s3_upload_status": upload.status}
    if upload.ok:
        return "succeeded", data, None
    reason = upload.reason or "the upload failed"
    return "failed", data, {"code": "upload_failed", "message": reason}


def error_result(exc: BaseException) -> dict[str, Any]:
    """A client-safe error: a domain error's own words, a fixed message for anything else."""
    if isinstance(exc, SafegenError):
        body: dict[str, Any] = {"code": exc.code, "message": exc.message}
        if exc.field is not None:
            body["field"] = exc.field
        return body
    return {"code": "internal_error",
            "message": "the job failed unexpectedly; see the service logs"}


def result_size(data: dict[str, Any] | None, error: dict[str, Any] | None) -> int:
    return len(json.dumps({"data": data, "error": error}, separators=(",", ":")))
