"""``POST /v1/moderations``: OpenAI's moderation API, for images, so its SDKs can point here.

The route translates OpenAI's wire format and nothing else: images are scored by the same
classifier and judged by the same verdict (``moderation/verdict.py``) as ``/v1/classify``.
This model judges one category, ``sexual``; every other category OpenAI defines is answered
``false`` / ``0.0`` with no applied input types, which says "not judged" in OpenAI's own terms.
Text is refused with 400: a silent "not flagged" for text nobody read would be a lie.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from safegen.api.auth import require_api_key
from safegen.api.bodies import parse_json, read_body
from safegen.api.image_inputs import decode_data_url, is_data_url
from safegen.api.ratelimit_charges import charge, precheck
from safegen.api.schemas import ErrorResponse
from safegen.errors import ImageError, InvalidInput, SafegenError, TooLarge, UnsupportedInput
from safegen.moderation.base import Classifier, Score
from safegen.moderation.verdict import choose_threshold, is_nsfw
from safegen.settings import Settings

router = APIRouter(tags=["moderation"], dependencies=[Depends(require_api_key)])

# OpenAI's categories, in its order. Only "sexual" is judged here (from the image's NSFW score).
CATEGORIES = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit",
    "illicit/violent", "self-harm", "self-harm/instructions", "self-harm/intent", "sexual",
    "sexual/minors", "violence", "violence/graphic",
)
JUDGED = "sexual"
TEXT_REFUSED = "this service moderates images only: send image_url items, not text"


class ImageUrl(BaseModel):
    url: str = Field(description="an http(s) URL the server fetches, or a base64 data URL")


class ImageUrlItem(BaseModel):
    type: Literal["image_url"]
    image_url: ImageUrl


class ModerationRequest(BaseModel):
    """OpenAI's request; ``input`` may hold only ``image_url`` items here."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="accepted and ignored: the served model answers")
    input: str | list[Any] = Field(description="image_url items (text is refused with 400)")
    nsfw_threshold: float | None = Field(
        None, ge=0, le=1, description="safegen's own: the score at or above which 'sexual' is "
        "flagged (default SAFEGEN_NSFW_THRESHOLD)",
    )


class Moderation(BaseModel):
    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float]
    category_applied_input_types: dict[str, list[str]]


class ModerationResponse(BaseModel):
    id: str
    model: str
    results: list[Moderation]


@router.post(
    "/v1/moderations",
    response_model=ModerationResponse,
    responses={
        400: {"model": ErrorResponse}, 401: {"model": ErrorResponse},
        413: {"model": ErrorResponse}, 422: {"model": ErrorResponse},
        429: {"model": ErrorResponse}, 503: {"model": ErrorResponse},
    },
    openapi_extra={"requestBody": {
        "required": True,
        "content": {"application/json": {"schema": ModerationRequest.model_json_schema()}},
    }},
    summary="Moderate images, compatible with OpenAI's moderation API",
)
async def moderations(request: Request, response: Response) -> ModerationResponse:
    """One result per image item, in order. Any item that cannot be scored fails the request
    with an error naming it (``input[i]``): OpenAI's shape has no per-item error."""
    settings: Settings = request.app.state.settings
    classifier: Classifier = request.app.state.classifier
    await precheck(request, "/v1/moderations")
    raw = await read_body(request, settings.max_request_bytes, "SAFEGEN_MAX_REQUEST_BYTES")
    body = await parse_json(raw, ModerationRequest)
    urls = _image_urls(body, settings.max_files_per_request)
    threshold = choose_threshold(body.nsfw_threshold, settings.nsfw_threshold)
    response.headers.update(await charge(request, "/v1/moderations", cost=len(urls)))
    loaded = await _load(request, urls, settings)
    scored = await classifier.classify_bytes(loaded)
    results = [_moderation(i, outcome, threshold) for i, outcome in enumerate(scored)]
    flagged = sum(1 for r in results if r.flagged)
    if flagged:
        request.app.state.metrics.nsfw_flagged.labels(route="/v1/moderations").inc(flagged)
    return ModerationResponse(
        id=f"modr-{uuid.uuid4().hex}", model=classifier.model_name, results=results
    )


def _image_urls(body: ModerationRequest, limit: int) -> list[str]:
    items = [body.input] if isinstance(body.input, str) else body.input
    if not items:
        raise InvalidInput("input holds no items: send at least one image_url", field="input")
    if len(items) > limit:
        raise TooLarge(f"{len(items)} items in one request; the limit is {limit} "
                       "(SAFEGEN_MAX_FILES_PER_REQUEST)", field="input")
    urls: list[str] = []
    for index, item in enumerate(items):
        kind = item.get("type") if isinstance(item, dict) else None
        if isinstance(item, str) or kind == "text":
            raise UnsupportedInput(TEXT_REFUSED, field=f"input[{index}]")
        if kind != "image_url" or not isinstance(item.get("image_url"), dict):
            raise InvalidInput(
                "each item must be {\"type\": \"image_url\", \"image_url\": {\"url\": ...}}",
                field=f"input[{index}]",
            )
        url = item["image_url"].get("url")
        if not isinstance(url, str) or not url:
            raise InvalidInput("image_url.url must be a URL or a data URL",
                               field=f"input[{index}].image_url.url")
        urls.append(url)
    return urls


async def _load(request: Request, urls: list[str], settings: Settings) -> list[bytes]:
    """The bytes of every item: data URLs decoded here, http(s) URLs fetched."""
    fetcher = request.app.state.image_fetcher
    remote = [i for i, url in enumerate(urls) if not is_data_url(url)]
    fetched = await fetcher.fetch_all([urls[i] for i in remote]) if remote else []
    loaded: list[bytes | SafegenError] = [
        decode_data_url(url, settings.max_image_bytes, f"input[{i}]") if is_data_url(url) else b""
        for i, url in enumerate(urls)
    ]
    for index, outcome in zip(remote, fetched, strict=True):
        loaded[index] = outcome
    good: list[bytes] = []
    for index, outcome in enumerate(loaded):
        if isinstance(outcome, SafegenError):
            raise _about_item(index, outcome)
        good.append(outcome)
    return good


def _about_item(index: int, error: SafegenError) -> SafegenError:
    """The item's own error, said of its place in ``input``."""
    if isinstance(error, ImageError | InvalidInput):
        error.message = f"input[{index}]: {error.message}"
        error.field = f"input[{index}]"
    return error


def _moderation(index: int, outcome: Score | SafegenError, threshold: float) -> Moderation:
    if isinstance(outcome, SafegenError):
        raise _about_item(index, outcome)
    flagged = is_nsfw(outcome.nsfw_score, threshold)
    return Moderation(
        flagged=flagged,
        categories={name: flagged if name == JUDGED else False for name in CATEGORIES},
        category_scores={
            name: outcome.nsfw_score if name == JUDGED else 0.0 for name in CATEGORIES
        },
        category_applied_input_types={
            name: ["image"] if name == JUDGED else [] for name in CATEGORIES
        },
    )
