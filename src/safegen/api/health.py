"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from safegen.api.auth import require_api_key
from safegen.api.schemas import Health

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz", response_model=Health, responses={503: {"model": Health}},
    summary="Models loaded and warmed; accepting work",
)
async def readyz(request: Request) -> JSONResponse:
    components = request.app.state.readiness()
    ready = bool(components) and all(components.values()) and not request.app.state.stopping
    status = "ready" if ready else ("stopping" if request.app.state.stopping else "starting")
    body = Health(status=status, components=components).model_dump()
    return JSONResponse(body, status_code=200 if ready else 503)


async def _metrics_access(request: Request) -> None:
    if not request.app.state.settings.metrics_public:
        await require_api_key(request)


@router.get(
    "/metrics", summary="Prometheus metrics (API key unless SAFEGEN_METRICS_PUBLIC)",
    response_class=Response, dependencies=[Depends(_metrics_access)],
)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry),
                    media_type=CONTENT_TYPE_LATEST)
