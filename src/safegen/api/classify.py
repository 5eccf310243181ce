"""``POST /v1/classify``: score one or many images, sent as multipart files or base64 JSON."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import APIRouter, Depends, Request, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from safegen.api.auth import require_api_key
from safegen.api.bodies import parse_json, read_body
from safegen.api.image_inputs import decode_base64, decode_data_url, is_data_url
from safegen.api.ratelimit_charges import charge, precheck
from safegen.api.schemas import (
    ClassifyJsonRequest,
    ClassifyResponse,
    ErrorResponse,
    ImageByUrl,
    ImageError,
    ImageProblem,
    ImageScore,
)
from safegen.errors import InvalidInput, SafegenError, TooLarge
from safegen.moderation.engine import Classifier, Score
from safegen.moderation.verdict import choose_threshold, is_nsfw, parse_threshold
from safegen.settings import Settings

router = APIRouter(tags=["classification"], dependencies=[Depends(require_api_key)])

_OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "nsfw_threshold": {"type": "number", "minimum": 0, "maximum": 1},
                    },
                    "required": ["files"],
                }
            },
            "application/json": {"schema": ClassifyJsonRequest.model_json_schema()},
        },
    }
}

Upload = tuple[str | None, bytes | SafegenError]


@dataclass
class Uploads:
    """The request's images, and its own verdict threshold when it sent one."""

    items: list[Upload] = field(default_factory=list)
    nsfw_threshold: float | None = None


@router.post(
    "/v1/classify",
    response_model=ClassifyResponse,
    responses={
        400: {"model": ErrorResponse}, 401: {"model": ErrorResponse},
        413: {"model": ErrorResponse}, 422: {"model": ErrorResponse},
        429: {"model": ErrorResponse}, 503: {"model": ErrorResponse},
    },
    openapi_extra=_OPENAPI_BODY,
    summary="Score images for NSFW content",
)
async def classify(request: Request, response: Response) -> ClassifyResponse:
    """Multipart with one or more ``files`` fields, or JSON ``{"images": ["<base64>", ...]}``.

    Either may carry ``nsfw_threshold`` (a form field, or a JSON member). A bad image yields an
    error entry at its index; the other images are still scored.
    """
    settings: Settings = request.app.state.settings
    classifier: Classifier = request.app.state.classifier
    content_type = request.headers.get("content-type", "")
    # A client with no budget left is refused before its body is read; the request is charged
    # by image once the count is known.
    await precheck(request, "/v1/classify")
    if content_type.startswith("multipart/form-data"):
        sent = await _read_multipart(request, settings)
    elif content_type.startswith("application/json"):
        sent = await _read_json(request, settings)
    else:
        raise InvalidInput(
            "send multipart/form-data with 'files' fields or application/json with 'images'",
            field="content-type",
        )
    uploads = sent.items
    threshold = choose_threshold(sent.nsfw_threshold, settings.nsfw_threshold)
    if not uploads:
        raise InvalidInput("no images in the request: send at least one", field="files")
    # Both readers already refused more than SAFEGEN_MAX_FILES_PER_REQUEST images.
    # Batches are charged by image, so a 100-image request is not one unit of the budget.
    response.headers.update(await charge(request, "/v1/classify", cost=len(uploads)))
    good = [(i, data) for i, (_, data) in enumerate(uploads) if isinstance(data, bytes)]
    scored = await classifier.classify_bytes([data for _, data in good])
    outcomes: list[Score | SafegenError] = [data for _, data in uploads]  # type: ignore[misc]
    for (index, _), outcome in zip(good, scored, strict=True):
        outcomes[index] = outcome
    results = [_result(i, uploads[i][0], o, threshold) for i, o in enumerate(outcomes)]
    flagged = sum(1 for r in results if isinstance(r, ImageScore) and r.nsfw)
    if flagged:
        request.app.state.metrics.nsfw_flagged.labels(route="/v1/classify").inc(flagged)
    return ClassifyResponse(model=classifier.model_name, results=results)


def _result(
    index: int, filename: str | None, outcome: Score | SafegenError, threshold: float
) -> ImageScore | ImageError:
    if isinstance(outcome, Score):
        return ImageScore(
            index=index, filename=filename, label=outcome.label,
            nsfw_score=outcome.nsfw_score, nsfw=is_nsfw(outcome.nsfw_score, threshold),
            scores=outcome.scores, frames_scored=outcome.frames_scored,
            worst_frame=outcome.worst_frame,
        )
    return ImageError(
        index=index,
        filename=filename,
        error=ImageProblem(code=outcome.code, message=outcome.message),
    )


async def _read_multipart(request: Request, settings: Settings) -> Uploads:
    limit = settings.max_files_per_request
    try:
        # Starlette stops parsing once a form holds more parts than these bounds
        # (one text field: nsfw_threshold).
        form = await request.form(max_files=limit, max_fields=1)
    except HTTPException as exc:
        if "Too many files" in str(exc.detail):
            raise TooLarge(
                f"more than {limit} files in one request; the limit is {limit} "
                "(SAFEGEN_MAX_FILES_PER_REQUEST)", field="files",
            ) from None
        # Too many text fields, or a malformed body: the form is wrong, not too large.
        raise InvalidInput(f"malformed multipart form: {exc.detail}", field="files") from None
    try:
        uploads = Uploads()
        for name, value in form.multi_items():
            if name == "nsfw_threshold" and isinstance(value, str):
                uploads.nsfw_threshold = parse_threshold(value)
                continue
            if name != "files":
                raise InvalidInput(f"unexpected form field '{name}'; use 'files'", field=name)
            if not isinstance(value, UploadFile):
                raise InvalidInput("'files' must be file parts, not text fields", field="files")
            data = await _read_upload(value, settings.max_image_bytes)
            uploads.items.append((value.filename, data))
        return uploads
    finally:
        await form.close()


async def _read_upload(upload: UploadFile, max_bytes: int) -> bytes | SafegenError:
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        return TooLarge(
            f"image is larger than {max_bytes} bytes (SAFEGEN_MAX_IMAGE_BYTES)", field="files"
        )
    return data


async def _read_json(request: Request, settings: Settings) -> Uploads:
    raw = await read_body(request, settings.max_request_bytes, "SAFEGEN_MAX_REQUEST_BYTES")
    body = await parse_json(raw, ClassifyJsonRequest)
    names = body.filenames or []
    if names and len(names) != len(body.images):
        raise InvalidInput("'filenames' must have one entry per image", field="filenames")
    if len(body.images) > settings.max_files_per_request:
        raise TooLarge(
            f"{len(body.images)} images in one request; the limit is "
            f"{settings.max_files_per_request} (SAFEGEN_MAX_FILES_PER_REQUEST)",
            field="images",
        )
    limit = settings.max_image_bytes
    datas = [
        decode_base64(item, limit, "images") if isinstance(item, str)
        else decode_data_url(item.url, limit, "images") if is_data_url(item.url)
        else b""  # fetched below
        for item in body.images
    ]
    remote = [i for i, item in enumerate(body.images)
              if isinstance(item, ImageByUrl) and not is_data_url(item.url)]
    if remote:
        fetcher = request.app.state.image_fetcher
        fetched = await fetcher.fetch_all([body.images[i].url for i in remote])  # type: ignore[union-attr]
        for index, outcome in zip(remote, fetched, strict=True):
            datas[index] = outcome
    return Uploads([(names[i] if names else None, d) for i, d in enumerate(datas)],
                   body.nsfw_threshold)

