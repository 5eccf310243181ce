"""Request and response models of the classification and health endpoints."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    code: str = Field(description="stable machine-readable identifier")
    message: str = Field(description="what went wrong, for people")
    field: str | None = Field(None, description="the request field at fault, when there is one")
    request_id: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class ImageScore(BaseModel):
    index: int = Field(description="position of the image in the request")
    filename: str | None
    label: str = Field(description="most probable label")
    nsfw_score: float = Field(ge=0, le=1, description="probability of the 'nsfw' label")
    nsfw: bool = Field(description="the verdict: nsfw_score at or above the threshold")
    scores: dict[str, float] = Field(description="probability of every label")
    frames_scored: int = Field(
        1, ge=1, description="frames scored (an animation: up to SAFEGEN_MAX_FRAMES, spread "
        "evenly); label and scores are the highest-scoring frame's",
    )
    worst_frame: int = Field(0, ge=0, description="index of the highest-scoring frame")


class ImageProblem(BaseModel):
    code: str = Field(description="e.g. invalid_image, unsupported_format, too_large")
    message: str


class ImageError(BaseModel):
    index: int
    filename: str | None
    error: ImageProblem


class ClassifyResponse(BaseModel):
    model: str
    results: list[ImageScore | ImageError]


class ImageByUrl(BaseModel):
    url: str = Field(description="an http(s) URL the server fetches, or a base64 data URL")


class ClassifyJsonRequest(BaseModel):
    images: list[str | ImageByUrl] = Field(
        description="base64-encoded image files (data: URLs accepted), or {\"url\": ...} items"
    )
    filenames: list[str] | None = Field(None, description="optional names echoed in results")
    nsfw_threshold: float | None = Field(
        None, ge=0, le=1,
        description="score at or above which an image is NSFW (default SAFEGEN_NSFW_THRESHOLD)",
    )


class Health(BaseModel):
    status: str
    components: dict[str, bool] = Field(default_factory=dict)
