"""safegen on Ray Serve (the ``ray`` extra): the same app, with engines in scalable deployments.

``serve run deploy/ray/serve-local.yaml`` uses :func:`build_app`; ``safegen serve --ray`` uses
:func:`serve_locally`. Importing this package does not import Ray (the loopback environment of
:mod:`safegen.ray_serve.local` must be set first), and the core package never imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray.serve import Application

    from safegen.ray_serve.config import RayServeConfig
    from safegen.settings import Settings

__all__ = ["build_app", "build_application", "serve_locally"]


def build_app(args: dict[str, Any] | None = None) -> Application:
    """The Serve application from a config file's ``args`` (see ``deployments.build_app``)."""
    from safegen.ray_serve.deployments import build_app as build

    return build(args)


def build_application(settings: Settings, config: RayServeConfig | None = None) -> Application:
    """The Serve application from a ``Settings`` object and deployment sizing."""
    from safegen.ray_serve.deployments import build_application as build

    return build(settings, config)


def serve_locally(settings: Settings, config: RayServeConfig | None = None, **kwargs: Any) -> Any:
    """Start a loopback Ray on this machine and serve on ``settings.host:port``."""
    from safegen.ray_serve.local import serve_locally as run

    return run(settings, config, **kwargs)
