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
    scores: dict[str, float] = Field(description="probability of every label")


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


class ClassifyJsonRequest(BaseModel):
    images: list[str] = Field(description="base64-encoded image files (data: URLs accepted)")
    filenames: list[str] | None = Field(None, description="optional names echoed in results")


class Health(BaseModel):
    status: str
    components: dict[str, bool] = Field(default_factory=dict)
