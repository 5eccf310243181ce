"""``GET /v1/info``: what a client needs to know before sending (limits, model, features).

The Python client reads the files-per-request limit here to split large inputs; the console
reads the threshold and whether generation is on. Nothing secret: only limits and names.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from safegen import __version__
from safegen.api.auth import require_api_key
from safegen.settings import Settings

router = APIRouter(tags=["operations"], dependencies=[Depends(require_api_key)])


class Limits(BaseModel):
    max_files_per_request: int
    max_image_bytes: int
    max_request_bytes: int
    max_prompt_chars: int
    min_image_side: int
    max_image_side: int
    image_side_multiple: int
    max_inference_steps: int


class ServiceInfo(BaseModel):
    version: str
    model: str = Field(description="the NSFW classifier's name")
    generator: bool = Field(description="whether POST /generate is enabled")
    nsfw_threshold: float = Field(description="default verdict threshold (score at or above)")
    limits: Limits


@router.get("/v1/info", response_model=ServiceInfo, summary="Limits and features of this server")
async def info(request: Request) -> ServiceInfo:
    settings: Settings = request.app.state.settings
    return ServiceInfo(
        version=__version__,
        model=request.app.state.classifier.model_name,
        generator=request.app.state.generate_service is not None,
        nsfw_threshold=settings.nsfw_threshold,
        limits=Limits.model_validate(settings, from_attributes=True),
    )
