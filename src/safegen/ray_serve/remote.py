"""The ``Classifier`` and ``Generator`` protocols implemented by calls to Ray Serve deployments.

The ingress builds the ordinary app with these adapters injected, so routes, validation, the
generate-score-upload flow and error mapping are the same code as in the single-process server.

Errors: a ``SafegenError`` raised in a replica comes back from Ray wrapped (``RayTaskError``, whose
``cause`` is the original exception, unpickled with its attributes). :func:`domain_error` unwraps
it, so the ingress re-raises the very subclass (``InvalidInput`` with its field, ``Overloaded``
with its Retry-After); Ray's own failures become ``Overloaded`` (Serve's back-pressure) or
``NotReady`` (replicas gone), and anything else the caller's fixed-message fallback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

from PIL import Image
from ray import exceptions as ray_errors
from ray.serve import exceptions as serve_errors

from safegen.errors import GenerationFailed, InferenceFailed, NotReady, Overloaded, SafegenError
from safegen.generation.base import GenerationRequest
from safegen.imaging import resize_rgb
from safegen.moderation.engine import Score

logger = logging.getLogger("safegen.ray_serve")

T = TypeVar("T")


@dataclass(frozen=True)
class ClassifierInfo:
    """What the ingress needs to know about the classifier deployment, asked once at start."""

    model_name: str
    labels: list[str]
    size: tuple[int, int]  # the model's input (width, height)


def domain_error(exc: BaseException, fallback: SafegenError) -> SafegenError:
    """The domain error a failed remote call stands for (see the module docstring)."""
    for link in _chain(exc):
        if isinstance(link, SafegenError) and not isinstance(link, ray_errors.RayError):
            return link  # the replica's own exception, attributes and subclass intact
        if isinstance(link, serve_errors.BackPressureError):
            return Overloaded(f"{fallback.message}: the deployment's queue is full; retry shortly")
        if isinstance(link, _UNAVAILABLE):
            return NotReady(f"{fallback.message}: no replica is available")
    # The type only: the text of a remote traceback can hold prompts or internals.
    logger.error("remote call failed: %s", type(exc).__name__)
    return fallback


_UNAVAILABLE = (
    serve_errors.DeploymentUnavailableError,
    serve_errors.ReplicaUnavailableError,
    ray_errors.RayActorError,
)


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc``, then what it wraps: Ray's ``cause`` attribute or Python's ``__cause__``."""
    links: list[BaseException] = []
    current: object = exc
    while isinstance(current, BaseException) and all(current is not seen for seen in links):
        links.append(current)
        current = getattr(current, "cause", None) or current.__cause__
    return links


async def remote_call(response: Awaitable[T], fallback: SafegenError) -> T:
    """Await a deployment response, turning any failure into a ``SafegenError``."""
    try:
        return await response
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        raise domain_error(exc, fallback) from None


class _Deployment:
    """Calls to a deployment, and its readiness as those calls find it."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self._ready = True

    @property
    def ready(self) -> bool:
        """False after a call found no replica; true again after the next answered call."""
        return self._ready

    async def _call(self, response: Awaitable[T], fallback: SafegenError) -> T:
        try:
            result = await remote_call(response, fallback)
        except NotReady:
            self._ready = False
            raise
        self._ready = True
        return result


class RemoteClassifier(_Deployment):
    """A ``Classifier`` served by the classifier deployment (any of its replicas)."""

    def __init__(self, handle: Any, info: ClassifierInfo) -> None:
        super().__init__(handle)
        self.model_name = info.model_name
        self.labels = list(info.labels)
        self._size = info.size

    @classmethod
    async def connect(cls, handle: Any) -> RemoteClassifier:
        """Ask the deployment what it serves (this also waits until a replica answers)."""
        info = await remote_call(
            handle.describe.remote(), NotReady("the classifier deployment did not answer")
        )
        return cls(handle, info)

    async def classify_bytes(self, items: list[bytes]) -> list[Score | SafegenError]:
        return await self._call(
            self._handle.classify_bytes.remote(items), InferenceFailed("the classifier failed")
        )

    async def classify_image(self, image: Image.Image) -> Score:
        # The replica needs only the model's input size: shrinking here (with the very resize the
        # engine applies, which then finds nothing to do) sends ~150 KB instead of megabytes.
        small = await asyncio.to_thread(_to_model_input, image, self._size)
        return await self._call(
            self._handle.classify_image.remote(small), InferenceFailed("the classifier failed")
        )


def _to_model_input(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    return Image.fromarray(resize_rgb(image, size))


class RemoteGenerator(_Deployment):
    """A ``Generator`` served by the generator deployment. Its life cycle belongs to Ray."""

    def __init__(self, handle: Any, name: str) -> None:
        super().__init__(handle)
        self.name = name

    @classmethod
    async def connect(cls, handle: Any) -> RemoteGenerator:
        name = await remote_call(
            handle.describe.remote(), NotReady("the generator deployment did not answer")
        )
        return cls(handle, name)

    async def start(self) -> None:
        """Nothing to do: the replicas load and warm the model in their constructors."""

    async def stop(self) -> None:
        """Nothing to do: Serve stops the replicas."""

    async def generate(self, req: GenerationRequest) -> Image.Image:
        image: Image.Image = await self._call(
            self._handle.generate.remote(req), GenerationFailed("image generation failed")
        )
        return image
