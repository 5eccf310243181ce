"""Start a single-node Ray on loopback and run the application on it (tests, one-machine runs).

By default Ray looks for its own address by connecting to 8.8.8.8 and probes cloud metadata
addresses (169.254.169.254, metadata.google.internal), usage statistics off or not. The variables
of :data:`LOOPBACK_ENV` keep every connection on 127.0.0.1; they must be in the environment before
``ray`` is imported, so this module imports Ray only inside its functions.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from safegen.ray_serve.config import RayServeConfig
from safegen.settings import Settings

logger = logging.getLogger("safegen.ray_serve")

LOOPBACK_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # puts the node on 127.0.0.1
    "RAY_AUTH_MODE": "disabled",
    # A dead proxy for the cloud-metadata probes. The uploader ignores proxy variables
    # (trust_env=False); hub downloads would not, so fill the model cache beforehand.
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "no_proxy": "127.0.0.1,localhost,::1",
}


def apply_loopback_env() -> dict[str, str | None]:
    """Set :data:`LOOPBACK_ENV` in ``os.environ``; returns the previous values (to restore)."""
    previous = {name: os.environ.get(name) for name in LOOPBACK_ENV}
    os.environ.update(LOOPBACK_ENV)
    # Ray's workers import safegen too: make a source checkout importable for them.
    package_root = str(Path(__file__).resolve().parents[2])
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if package_root not in (str(Path(p).resolve()) for p in paths):
        previous.setdefault("PYTHONPATH", os.environ.get("PYTHONPATH"))
        os.environ["PYTHONPATH"] = os.pathsep.join([package_root, *paths])
    return previous


def restore_env(previous: dict[str, str | None]) -> None:
    for name, value in previous.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def start_local_ray(
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    object_store_bytes: int = 200 * 1024 * 1024,
    temp_dir: str | None = None,
    log_to_driver: bool = False,
) -> str:
    """``ray.init`` a private single-node Ray on loopback, dashboard off; returns its temp dir.

    ``temp_dir`` must be short (Ray's Unix socket paths are limited to about 100 characters).
    Replica logs are always under ``<temp_dir>/session_latest/logs``; ``log_to_driver`` also
    prints them here.
    """
    apply_loopback_env()
    import ray

    temp_dir = temp_dir or tempfile.mkdtemp(prefix="sg-ray-", dir="/tmp")
    ray.init(
        address="local",
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        include_dashboard=False,
        object_store_memory=object_store_bytes,
        _temp_dir=temp_dir,
        log_to_driver=log_to_driver,
        configure_logging=False,
    )
    return temp_dir


def serve_locally(
    settings: Settings, config: RayServeConfig | None = None, *, blocking: bool = True,
    **ray_options: Any,
) -> Any:
    """Run safegen on a local Ray: what ``safegen serve --ray`` does.

    ``blocking=False`` returns the ingress handle (the caller shuts down with :func:`shutdown`).
    Otherwise it serves until SIGTERM or SIGINT, then shuts Serve (in-flight work drains) and Ray
    down and returns normally, so a supervisor's stop ends with exit status 0.
    """
    settings = with_api_key(settings)
    config = config or RayServeConfig()
    ray_options.setdefault("log_to_driver", True)  # a server's replicas should log to its stderr
    start_local_ray(**ray_options)
    if not blocking:
        return _deploy(settings, config)
    # After ray.init, which installs its own SIGTERM handler (sys.exit) in the driver.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, _raise_stop)
    try:
        _deploy(settings, config)
        while True:
            time.sleep(3600)
    except _Stopped:
        logger.info("stop signal received: shutting down Serve and Ray")
    finally:
        for stop_signal in (signal.SIGTERM, signal.SIGINT):
            signal.signal(stop_signal, signal.SIG_IGN)  # a second signal must not cut shutdown
        shutdown()
    return None


class _Stopped(Exception):
    """Raised in the main thread by the stop-signal handler (also during start-up)."""


def _raise_stop(*_: object) -> None:
    raise _Stopped


def _deploy(settings: Settings, config: RayServeConfig) -> Any:
    from ray import serve

    from safegen.ray_serve.deployments import build_application

    serve.start(http_options={"host": settings.host, "port": settings.port})
    return serve.run(
        build_application(settings, config), name=config.app_name,
        route_prefix=config.route_prefix,
    )


def with_api_key(settings: Settings) -> Settings:
    """Settings with one API key for every replica: the configured ones, or a key generated here
    once and printed to stderr (as the single-process server does), never one per replica."""
    if settings.no_auth or settings.api_keys or settings.api_keys_file is not None:
        return settings
    from safegen.api.auth import announce_generated_key

    key = secrets.token_urlsafe(32)
    announce_generated_key(key)
    return settings.model_copy(update={"api_keys": [key]})


def shutdown() -> None:
    """Stop Serve (replicas run their shutdown: in-flight work drains) and then Ray."""
    import ray
    from ray import serve

    if ray.is_initialized():
        serve.shutdown()
        ray.shutdown()
