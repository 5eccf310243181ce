"""The web console (``/console``), the landing page (``/``) and offline API docs (``/docs``).

Every page is a static file shipped in the package (``safegen/web``); the console's only backend is
the same-origin API. The docs' Swagger UI assets come from the ``fastapi-offline`` package
instead of a public CDN, so the docs work on a host without internet. Every page is served
with a strict Content-Security-Policy: scripts and styles from this server only, no inline script,
no connection anywhere but here.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response
from starlette.exceptions import HTTPException

router = APIRouter(include_in_schema=False)

WEB = Path(str(resources.files("safegen") / "web"))
_CSP = {
    "default-src": "'none'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self' data: blob:",  # thumbnails are blob: URLs, generated images data: URLs
    "connect-src": "'self'",
    "base-uri": "'none'",
    "form-action": "'none'",
    "frame-ancestors": "'none'",
}
# Swagger UI sets inline styles at run time; scripts stay 'self' only. (ReDoc is not offered: it
# shows a logo from its vendor's CDN that no option turns off.)
_DOCS_CSP = {**_CSP, "style-src": "'self' 'unsafe-inline'"}


def _policy(directives: dict[str, str]) -> str:
    return "; ".join(f"{name} {value}" for name, value in directives.items())


CONSOLE_POLICY = _policy(_CSP)
DOCS_POLICY = _policy(_DOCS_CSP)


def _docs_assets() -> Path:
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


# Allowlists: a request names a file, never a path, so nothing outside them can be served.
CONSOLE_ASSETS = {"console.js": "console/console.js", "console.css": "console/console.css",
                  "site.css": "site.css"}
DOCS_ASSETS = {"docs.js": "docs/docs.js"}
DOCS_VENDOR_ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png")


def _page(path: Path, policy: str) -> FileResponse:
    return FileResponse(path, headers=_security_headers(policy, cache="no-cache"))


def _asset(path: Path, policy: str) -> FileResponse:
    return FileResponse(path, headers=_security_headers(policy, cache="public, max-age=3600"))


def _security_headers(policy: str, cache: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cache-Control": cache,
    }


@router.get("/")
async def landing() -> Response:
    return _page(WEB / "index.html", CONSOLE_POLICY)


@router.get("/console")
async def console() -> Response:
    return _page(WEB / "console" / "index.html", CONSOLE_POLICY)


@router.get("/console/assets/{name}")
async def console_asset(name: str) -> Response:
    if name not in CONSOLE_ASSETS:
        raise HTTPException(404, "no such file")
    return _asset(WEB / CONSOLE_ASSETS[name], CONSOLE_POLICY)


@router.get("/docs")
async def swagger_ui() -> Response:
    return _page(WEB / "docs" / "swagger.html", DOCS_POLICY)


@router.get("/docs/assets/{name}")
async def docs_asset(name: str) -> Response:
    if name in DOCS_ASSETS:
        return _asset(WEB / DOCS_ASSETS[name], DOCS_POLICY)
    if name in DOCS_VENDOR_ASSETS:
        return _asset(_docs_assets() / name, DOCS_POLICY)
    raise HTTPException(404, "no such file")
