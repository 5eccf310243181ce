"""How each Ray Serve deployment is sized: replicas, CPUs/GPUs, concurrency, autoscaling.

Read from the environment (``SAFEGEN_RAY_<DEPLOYMENT>__<FIELD>``, e.g.
``SAFEGEN_RAY_CLASSIFIER__NUM_REPLICAS=2``) or from the ``ray:`` mapping of a Serve config file's
``args``. A Serve config file's own ``deployments:`` section overrides these again, so operators can
resize a running application with ``serve deploy`` alone. No Ray import here: the values are plain
data until :mod:`safegen.ray_serve.deployments` turns them into deployment options.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class DeploymentSpec(BaseModel):
    """Sizing of one deployment. ``autoscaling`` replaces ``num_replicas`` when it is set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_replicas: int = Field(1, ge=1)
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    memory_bytes: int | None = Field(None, ge=1, description="Ray's logical 'memory' resource")
    resources: dict[str, float] = Field(
        default_factory=dict, description="custom resources, e.g. {'gpu_node': 0.01} to pin"
    )
    max_ongoing_requests: int = Field(8, ge=1, description="requests one replica runs at once")
    max_queued_requests: int = Field(
        -1, ge=-1, description="requests a caller queues for the deployment; then 503 (-1: no cap)"
    )
    autoscaling: dict[str, Any] | None = Field(
        None, description="Ray's autoscaling_config: min_replicas, max_replicas, "
        "target_ongoing_requests, upscale_delay_s, downscale_delay_s ..."
    )
    graceful_shutdown_timeout_s: float = Field(30.0, ge=0)

    @model_validator(mode="after")
    def _autoscaling_bounds(self) -> DeploymentSpec:
        if self.autoscaling is not None:
            low = self.autoscaling.get("min_replicas", 1)
            high = self.autoscaling.get("max_replicas", low)
            if not isinstance(low, int) or not isinstance(high, int) or not 0 <= low <= high:
                raise ValueError("autoscaling needs integers 0 <= min_replicas <= max_replicas")
        return self

    def options(self) -> dict[str, Any]:
        """Keyword arguments for ``Deployment.options()``."""
        actor: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.memory_bytes is not None:
            actor["memory"] = self.memory_bytes
        if self.resources:
            actor["resources"] = dict(self.resources)
        options: dict[str, Any] = {
            "ray_actor_options": actor,
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "graceful_shutdown_timeout_s": self.graceful_shutdown_timeout_s,
        }
        if self.autoscaling is not None:
            options["autoscaling_config"] = dict(self.autoscaling)
        else:
            options["num_replicas"] = self.num_replicas
        return options


class ClassifierSpec(DeploymentSpec):
    """The classifier's sizing. Subclasses carry their own defaults, so that setting one field
    from the environment keeps the others' deployment-specific defaults."""

    # Requests must pile up inside the replica for its batcher to fill batches: Serve's default
    # of 5 ongoing requests per replica would cap every batch at 5 single-image requests.
    max_ongoing_requests: int = Field(64, ge=1)
    max_queued_requests: int = Field(512, ge=-1)


class GeneratorSpec(DeploymentSpec):
    """The generator's sizing: a replica runs one generation at a time and queues a few."""

    max_ongoing_requests: int = Field(4, ge=1)
    max_queued_requests: int = Field(64, ge=-1)


class IngressSpec(DeploymentSpec):
    """The HTTP edge's sizing: it parses, awaits remote calls and uploads (cheap, I/O bound)."""

    num_cpus: float = Field(0.5, ge=0)
    max_ongoing_requests: int = Field(256, ge=1)


class RayServeConfig(BaseSettings):
    """The Ray Serve application: its name, route prefix and the three deployments' sizing."""

    model_config = SettingsConfigDict(
        env_prefix="SAFEGEN_RAY_", env_nested_delimiter="__", extra="ignore", frozen=True
    )

    app_name: str = "safegen"
    route_prefix: str = "/"
    classifier: ClassifierSpec = Field(default_factory=ClassifierSpec)
    generator: GeneratorSpec = Field(default_factory=GeneratorSpec)
    ingress: IngressSpec = Field(default_factory=IngressSpec)
