"""``/v1/generations``: the ``/generate`` body as a job that answers 202 at once and reports back.

Validation is ``/generate``'s own (same limits, same upload-target checks) plus the webhook's
egress checks, all before anything is recorded; the job is recorded before the 202 is sent.
"""

from __future__ import annotations

from typing import Any, Literal, cast

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from safegen.api.auth import require_api_key
from safegen.api.bodies import parse_json, read_body
from safegen.api.generate import GenerateBody, GenerateData, build_job
from safegen.api.ratelimit_charges import charge, identity, precheck
from safegen.api.schemas import ErrorBody, ErrorResponse
from safegen.errors import NotReady
from safegen.jobs.model import DEFAULT_EVENTS
from safegen.jobs.service import JobService

EventName = Literal["start", "completed"]
router = APIRouter(tags=["jobs"], dependencies=[Depends(require_api_key)])


class GenerationBody(GenerateBody):
    webhook: str | None = Field(
        None, description="URL that receives the job object, signed (Standard Webhooks)"
    )
    webhook_events_filter: list[EventName] = Field(
        default_factory=lambda: cast(list[EventName], list(DEFAULT_EVENTS)),
        description="start: when a worker starts the job; completed: on any final status",
    )


class JobUrls(BaseModel):
    get: str
    cancel: str


class Job(BaseModel):
    id: str
    status: Literal["queued", "running", "succeeded", "failed", "canceled"]
    created_at: str
    started_at: str | None = None
    completed_at: str | None = None
    urls: JobUrls
    data: GenerateData | None = None
    error: ErrorBody | None = None


def _jobs(request: Request) -> JobService:
    jobs: JobService | None = getattr(request.app.state, "jobs", None)
    if jobs is None:
        raise NotReady("image generation is disabled (SAFEGEN_GENERATOR_MODEL=none)")
    return jobs


def _owner(request: Request) -> str:
    return getattr(request.state, "key_id", None) or ""


@router.post(
    "/v1/generations", status_code=202, response_model=Job,
    responses={401: {"model": ErrorResponse}, 422: {"model": ErrorResponse},
               429: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
    openapi_extra={"requestBody": {
        "required": True,
        "content": {"application/json": {"schema": GenerationBody.model_json_schema()}},
    }},
    summary="Queue a generation; the job is answered at once and runs on any worker",
)
async def create_generation(request: Request) -> Any:
    # As /generate: who is asking and their budget before the body, then the body, bounded.
    jobs = _jobs(request)
    settings = request.app.state.settings
    await precheck(request, "/generate")
    raw = await read_body(request, settings.generate_max_body_bytes,
                          "SAFEGEN_GENERATE_MAX_BODY_BYTES")
    body = await parse_json(raw, GenerationBody)
    generate_fields = body.model_dump(exclude={"webhook", "webhook_events_filter"})
    job = build_job(GenerateBody(**generate_fields), settings, client=identity(request))
    rate_headers = await charge(request, "/generate")
    service = request.app.state.generate_service
    if job.delivery is not None:  # refused now rather than when a worker takes the job
        await service.prepare_delivery(job.delivery)
    if body.webhook is not None:
        await jobs.check_webhook(body.webhook, list(body.webhook_events_filter))
    record = await jobs.submit(
        job, _owner(request), str(request.base_url), body.webhook,
        list(body.webhook_events_filter),
    )
    return JSONResponse(record.public(), status_code=202, headers=rate_headers)


@router.get(
    "/v1/generations/{job_id}", response_model=Job,
    responses={401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}},
    summary="A job: its status and, once finished, the same data /generate returns",
)
async def get_generation(job_id: str, request: Request) -> Any:
    record = await _jobs(request).get(job_id, _owner(request))
    return JSONResponse(record.public())


@router.post(
    "/v1/generations/{job_id}/cancel", response_model=Job,
    responses={401: {"model": ErrorResponse}, 404: {"model": ErrorResponse},
               409: {"model": ErrorResponse, "description": "the job has already started"}},
    summary="Cancel a job that has not started",
)
async def cancel_generation(job_id: str, request: Request) -> Any:
    record = await _jobs(request).cancel(job_id, _owner(request))
    return JSONResponse(record.public())
