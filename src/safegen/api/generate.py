"""``POST /generate``: generate an image, score it and deliver it (the spec's contract)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from safegen.api.auth import require_api_key
from safegen.api.bodies import parse_json, read_body
from safegen.api.ratelimit_charges import charge, identity, precheck
from safegen.api.schemas import ErrorBody, ErrorResponse
from safegen.delivery.headers import check_upload_header, parse_header_line
from safegen.errors import InvalidInput, NotReady
from safegen.generation.base import GenerationRequest
from safegen.moderation.verdict import choose_threshold
from safegen.services.generate_service import (
    Delivery,
    GenerateJob,
    GenerateOutcome,
    GenerateService,
)
from safegen.settings import Settings

router = APIRouter(tags=["generation"], dependencies=[Depends(require_api_key)])

def _bool(value: object) -> object:
    """Clients send ``"true"``/``"false"`` strings as often as JSON booleans: accept both."""
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if isinstance(value, bool):
        return value
    raise ValueError("must be true or false (a JSON boolean or the string)")


StrictishBool = Annotated[bool, BeforeValidator(_bool)]


class GenerateBody(BaseModel):
    """The spec's request; fields marked optional keep the spec's defaults."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, description="positive prompt")
    negative_prompt: str | None = Field(None, description="what the image should not contain")
    width: int = Field(512, description="image width in pixels (before upscaling)")
    height: int = Field(1024, description="image height in pixels (before upscaling)")
    num_inference_steps: int = Field(15, description="diffusion steps")
    response_format: Literal["s3", "b64_json"] = "s3"
    upscale: StrictishBool = Field(True, description="upscale before delivery")
    s3_prefix: str | None = Field(
        None, description="the complete presigned URL to PUT to (or the POST URL in post mode)"
    )
    enable_nsfw_check: StrictishBool = True
    nsfw_threshold: float | None = Field(
        None, ge=0, le=1,
        description="score at or above which the image is NSFW (default SAFEGEN_NSFW_THRESHOLD)",
    )
    seed: int | None = Field(None, ge=0, lt=2**63, description="same seed, same pixels")
    guidance_scale: float | None = Field(None, ge=0, le=50)
    upload_mode: Literal["rename", "as_signed", "post"] = Field(
        "rename",
        description="rename: put to {md5}.jpg (the spec); as_signed: put to the URL as given; "
        "post: presigned POST with a starts-with $key policy",
    )
    upload_headers: dict[str, str] | None = Field(
        None, description="headers the signer signed (x-amz-acl, content-type, cache-control...)"
    )
    s3_post_fields: dict[str, str] | None = Field(
        None, description="post mode: the presigned POST's form fields; 'key' is the prefix"
    )


class GenerateData(BaseModel):
    s3_url: str | None = None
    nsfw_score: float | None = Field(None, ge=0, le=1)
    nsfw: bool | None = Field(
        None, description="the verdict: true at or above the threshold or when the check failed "
        "(fail-safe); null when the check was turned off",
    )
    image_hash: str
    s3_upload_status: int | None = None
    b64_json: str | None = None


class GenerateResponse(BaseModel):
    data: GenerateData


class GenerateFailure(BaseModel):
    data: GenerateData
    error: ErrorBody


@router.post(
    "/generate",
    response_model=GenerateResponse,
    responses={
        401: {"model": ErrorResponse}, 413: {"model": ErrorResponse},
        422: {"model": ErrorResponse}, 429: {"model": ErrorResponse},
        500: {"model": ErrorResponse},
        502: {"model": GenerateFailure, "description": "generated, but the upload failed"},
        503: {"model": ErrorResponse},
    },
    openapi_extra={"requestBody": {
        "required": True,
        "content": {"application/json": {"schema": GenerateBody.model_json_schema()}},
    }},
    summary="Generate an image, score it for NSFW content and deliver it",
)
async def generate(request: Request) -> Any:
    # The order is the defence: who is asking, are they within budget, then (and only then) the
    # body, bounded to what a prompt and a URL need.
    service: GenerateService | None = request.app.state.generate_service
    if service is None:
        raise NotReady("image generation is disabled (SAFEGEN_GENERATOR_MODEL=none)")
    settings: Settings = request.app.state.settings
    await precheck(request, "/generate")
    raw = await read_body(request, settings.generate_max_body_bytes,
                          "SAFEGEN_GENERATE_MAX_BODY_BYTES")
    job = build_job(await parse_json(raw, GenerateBody), settings, client=identity(request))
    rate_headers = await charge(request, "/generate")
    outcome = await service.submit(job)
    if outcome.nsfw:
        request.app.state.metrics.nsfw_flagged.labels(route="/generate").inc()
    response = render(outcome, request)
    response.headers.update(rate_headers)
    # Standard Server-Timing: where the time went (generation vs scoring, encoding and upload).
    response.headers["Server-Timing"] = ", ".join(
        f"{stage};dur={seconds * 1000:.1f}" for stage, seconds in outcome.timings_s.items()
    )
    return response


def build_job(body: GenerateBody, settings: Settings, *, client: str = "") -> GenerateJob:
    """Check the request against the configured limits; every refusal names its field."""
    if len(body.prompt) > settings.max_prompt_chars:
        raise InvalidInput(
            f"prompt is {len(body.prompt)} characters; the limit is {settings.max_prompt_chars} "
            "(SAFEGEN_MAX_PROMPT_CHARS)", field="prompt",
        )
    if body.negative_prompt and len(body.negative_prompt) > settings.max_prompt_chars:
        raise InvalidInput(
            f"negative_prompt exceeds {settings.max_prompt_chars} characters "
            "(SAFEGEN_MAX_PROMPT_CHARS)", field="negative_prompt",
        )
    for name in ("width", "height"):
        value = getattr(body, name)
        low, high, step = (settings.min_image_side, settings.max_image_side,
                           settings.image_side_multiple)
        if not low <= value <= high or value % step:
            raise InvalidInput(
                f"{name} must be a multiple of {step} between {low} and {high}; got {value}",
                field=name,
            )
    if not 1 <= body.num_inference_steps <= settings.max_inference_steps:
        raise InvalidInput(
            f"num_inference_steps must be between 1 and {settings.max_inference_steps} "
            "(SAFEGEN_MAX_INFERENCE_STEPS)", field="num_inference_steps",
        )
    return GenerateJob(
        request=GenerationRequest(
            prompt=body.prompt, negative_prompt=body.negative_prompt, width=body.width,
            height=body.height, num_inference_steps=body.num_inference_steps, seed=body.seed,
            guidance_scale=body.guidance_scale,
        ),
        upscale=body.upscale,
        nsfw_check=body.enable_nsfw_check,
        nsfw_threshold=choose_threshold(body.nsfw_threshold, settings.nsfw_threshold),
        delivery=_delivery(body, settings),
        client=client,
    )


def _delivery(body: GenerateBody, settings: Settings) -> Delivery | None:
    if body.response_format == "b64_json":
        return None  # the JPEG goes back inline; nothing is uploaded
    if body.s3_prefix is None:
        raise InvalidInput("s3_prefix (a presigned URL) is required for response_format=s3",
                           field="s3_prefix")
    if body.upload_mode == "post" and not body.s3_post_fields:
        raise InvalidInput("upload_mode=post needs s3_post_fields", field="s3_post_fields")
    headers = dict(parse_header_line(line) for line in settings.upload_default_headers)
    for name, value in (body.upload_headers or {}).items():
        check_upload_header(name, value)
        headers[name] = value
    return Delivery(
        url=body.s3_prefix, mode=body.upload_mode, headers=headers,
        post_fields=body.s3_post_fields or {},
    )


def render(outcome: GenerateOutcome, request: Request) -> JSONResponse:
    """The spec's response; 502 with the same data and a reason when the upload failed."""
    data: dict[str, object] = {
        "nsfw_score": outcome.nsfw_score, "nsfw": outcome.nsfw, "image_hash": outcome.image_hash,
    }
    upload = outcome.upload
    if upload is None:
        data["b64_json"] = outcome.b64_json
        return JSONResponse({"data": data})
    data = {"s3_url": upload.url, **data, "s3_upload_status": upload.status}
    if upload.ok:
        return JSONResponse({"data": data})
    error = {
        "code": "upload_failed",
        "message": upload.reason or "the upload failed",
        "request_id": getattr(request.state, "request_id", None),
    }
    return JSONResponse({"data": data, "error": error}, status_code=502)
