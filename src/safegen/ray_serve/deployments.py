"""The three Ray Serve deployments and the application that binds them.

- ``SafegenClassifier`` runs a ``ClassifierEngine`` per replica. Batching is the engine's own
  batcher, not ``@serve.batch``: the batcher batches *images* (a 20-image request and 20 one-image
  requests fill batches alike), overlaps JPEG decoding with the forward pass, bounds its queue
  (``Overloaded`` at once) and reports per-image errors. ``@serve.batch`` batches *calls*, would
  re-implement all of that and decode on the event loop. What Serve must do is let enough
  requests into a replica for batches to fill: ``max_ongoing_requests`` is raised accordingly.
- ``SafegenGenerator`` runs a ``DiffusersGenerator`` per replica (one generation at a time each).
- ``SafegenIngress`` serves the very app of ``create_app``, with the two engines replaced by
  adapters that call the other deployments (:mod:`safegen.ray_serve.remote`).
"""

from __future__ import annotations

import inspect
import logging
import os
from typing import Any, cast

from fastapi import FastAPI
from PIL import Image
from ray import serve
from ray.serve import Application, Deployment

from safegen.app import create_app
from safegen.errors import ModelUnavailable, NotReady, SafegenError
from safegen.generation.base import GenerationRequest
from safegen.generation.diffusers_backend import build_generator
from safegen.metrics import Metrics
from safegen.moderation.engine import ClassifierEngine, EngineConfig, Score
from safegen.ray_serve.config import RayServeConfig
from safegen.ray_serve.remote import ClassifierInfo, RemoteClassifier, RemoteGenerator
from safegen.settings import Settings

logger = logging.getLogger("safegen.ray_serve")

CLASSIFIER = "SafegenClassifier"
GENERATOR = "SafegenGenerator"
INGRESS = "SafegenIngress"


def _supports_late_bound_ingress() -> bool:
    # Ray 2.56 made ``serve.ingress()``'s app optional (``__serve_build_asgi_app__``).
    parameter = inspect.signature(serve.ingress).parameters.get("app")
    return parameter is not None and parameter.default is None


if not _supports_late_bound_ingress():  # checked here: the ingress class below needs it
    raise ImportError("safegen on Ray Serve needs ray[serve]>=2.56; pip install 'safegen[ray]'")


def replica_identity() -> dict[str, Any]:
    """This replica's id and process, for stats and logs."""
    context = serve.get_replica_context()
    return {"replica_id": context.replica_id.unique_id, "pid": os.getpid()}


def _sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    return float(metrics.registry.get_sample_value(name, labels or {}) or 0.0)


@serve.deployment(name=CLASSIFIER)
class ClassifierDeployment:
    """One ``ClassifierEngine`` per replica, loaded and warmed before the replica takes work."""

    async def __init__(self, settings: Settings) -> None:  # type: ignore[misc]  # Serve awaits it
        self._grace_s = settings.shutdown_grace_s
        self._engine = ClassifierEngine(EngineConfig.from_settings(settings), Metrics())
        await self._engine.start()

    def describe(self) -> ClassifierInfo:
        engine = self._engine
        return ClassifierInfo(engine.model_name, list(engine.labels), engine.size)

    async def classify_bytes(self, items: list[bytes]) -> list[Score | SafegenError]:
        return await self._engine.classify_bytes(items)

    async def classify_image(self, image: Image.Image) -> Score:
        return await self._engine.classify_image(image)

    def stats(self) -> dict[str, Any]:
        """This replica's batches: how many, how many held more than one image, images scored."""
        metrics = self._engine.metrics
        batches = _sample(metrics, "safegen_batch_size_count")
        single = _sample(metrics, "safegen_batch_size_bucket", {"le": "1.0"})
        return {
            **replica_identity(),
            "batches": int(batches),
            "multi_image_batches": int(batches - single),
            "images": int(_sample(metrics, "safegen_batch_size_sum")),
        }

    def check_health(self) -> None:
        # Serve replaces a replica whose health check raises.
        if not self._engine.ready:
            raise NotReady("the classifier engine is not ready")

    async def __del__(self) -> None:
        engine = getattr(self, "_engine", None)
        if engine is not None:
            await engine.stop(self._grace_s)


@serve.deployment(name=GENERATOR)
class GeneratorDeployment:
    """One text-to-image pipeline per replica (a GPU each, in production)."""

    async def __init__(self, settings: Settings) -> None:  # type: ignore[misc]  # Serve awaits it
        generator = build_generator(settings)
        if generator is None:
            raise ModelUnavailable("SAFEGEN_GENERATOR_MODEL is 'none': no generator to deploy")
        self._generator = generator
        await generator.start()

    def describe(self) -> str:
        return self._generator.name

    async def generate(self, req: GenerationRequest) -> Image.Image:
        return await self._generator.generate(req)

    def stats(self) -> dict[str, Any]:
        return {**replica_identity(), "pending": getattr(self._generator, "pending", None)}

    def check_health(self) -> None:
        if not getattr(self._generator, "ready", True):
            raise NotReady("the image generator is not loaded")

    async def __del__(self) -> None:
        generator = getattr(self, "_generator", None)
        if generator is not None:
            await generator.stop()


@serve.deployment(name=INGRESS)
@serve.ingress()
class IngressDeployment:
    """The HTTP edge: ``create_app``'s app with remote engines. Holds no model."""

    async def __init__(  # type: ignore[misc]  # Serve awaits it
        self, settings: Settings, classifier: Any, generator: Any = None
    ) -> None:
        self._settings = settings
        self._classifier = await RemoteClassifier.connect(classifier)
        self._generator = None if generator is None else await RemoteGenerator.connect(generator)
        self._app: FastAPI | None = None

    def __serve_build_asgi_app__(self) -> FastAPI:
        # Called by Serve after __init__, once the handles are connected.
        self._app = create_app(
            self._settings, classifier=self._classifier, generator=self._generator
        )
        return self._app

    def stats(self) -> dict[str, Any]:
        """This replica's id and the HTTP requests it answered, by status."""
        assert self._app is not None
        metrics: Metrics = self._app.state.metrics
        answered: dict[str, int] = {}
        for metric in metrics.http_requests.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    status = sample.labels["status"]
                    answered[status] = answered.get(status, 0) + int(sample.value)
        return {**replica_identity(), "answered": answered}


def check_shared_state(settings: Settings, config: RayServeConfig) -> None:
    """Refuse what cannot work across ingress replicas; warn about what works per replica only."""
    if not settings.no_auth and not settings.api_keys and settings.api_keys_file is None:
        # Each replica would generate its own temporary key: clients could not know which to send.
        raise ValueError(
            "on Ray Serve, configure SAFEGEN_API_KEYS or SAFEGEN_API_KEYS_FILE (or "
            "SAFEGEN_NO_AUTH): a generated key would differ between ingress replicas"
        )
    ingress = config.ingress
    several = ingress.autoscaling is not None or ingress.num_replicas > 1
    if settings.rate_limit and settings.rate_limit_storage.startswith("memory") and several:
        logger.warning(
            "rate limits use memory:// storage with several ingress replicas: each replica keeps "
            "its own budget; set SAFEGEN_RATE_LIMIT_STORAGE=redis://... to share one"
        )


def build_application(settings: Settings, config: RayServeConfig | None = None) -> Application:
    """The Serve application: ingress -> classifier (+ generator when one is configured)."""
    config = config or RayServeConfig()
    check_shared_state(settings, config)
    classifier = _sized(ClassifierDeployment, config.classifier.options()).bind(settings)
    generator = None
    if build_generator(settings) is not None:  # the same rule the single-process app applies
        generator = _sized(GeneratorDeployment, config.generator.options()).bind(settings)
    ingress = _sized(IngressDeployment, config.ingress.options())
    return ingress.bind(settings, classifier, generator)


def _sized(deployment: object, options: dict[str, Any]) -> Deployment:
    # ``@serve.deployment`` returns a Deployment, which type checkers see as the class it wraps.
    return cast(Deployment, deployment).options(**options)


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Builder for ``serve run``/``serve deploy`` config files.

    ``args`` may hold ``settings`` (overrides of ``SAFEGEN_*``) and ``ray`` (a
    :class:`RayServeConfig` mapping); everything else comes from the environment.
    """
    args = dict(args or {})
    settings = Settings(**args.get("settings", {}))
    return build_application(settings, RayServeConfig(**args.get("ray", {})))
