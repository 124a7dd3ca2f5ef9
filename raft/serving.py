"""The ``serve:`` section and the pure logic of serving: replicas, batching, adapters,
request ids, and the Serve config file that ``raft serve --build`` writes. No Ray here;
``raft.serve`` turns this into a Ray Serve application.

    serve:
      num_replicas: 2                 # or autoscaling: {min_replicas: 1, max_replicas: 4}
      num_cpus: 1                     # per replica
      max_ongoing_requests: 32        # per replica; more wait in its queue
      max_queued_requests: 64         # beyond that a request is refused with 503
      request_timeout_s: 30
      batching: {max_batch_size: 16, batch_wait_timeout_s: 0.005}
      max_adapters_per_replica: 4     # LoRA adapters kept loaded over one base model (LRU)
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, model_validator

from raft.registry import SectionModel

APP_NAME = "raft"
DEPLOYMENT_NAME = "Predictor"
IMPORT_PATH = "raft.serve:build_app"  # what Ray's `serve run` / `serve deploy` import
# An adapter id is one folder name under serve's adapter directory: no separators, no
# parent references, nothing a shell or a URL would read differently.
_ADAPTER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class AutoscalingSection(SectionModel):
    min_replicas: NonNegativeInt = Field(1, description="Replicas kept even when idle (0: scale to zero).")
    max_replicas: PositiveInt = Field(2, description="Most replicas under load.")
    target_ongoing_requests: PositiveFloat = Field(
        2.0, description="Requests in flight per replica that Serve scales towards."
    )

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingSection:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})"
            )
        return self


class BatchingSection(SectionModel):
    max_batch_size: PositiveInt = Field(
        16, description="Requests a replica runs through the model at once (1: no batching)."
    )
    batch_wait_timeout_s: NonNegativeFloat = Field(
        0.005, description="How long the first request of a batch waits for others to join it."
    )


class ServeSection(SectionModel):
    num_replicas: PositiveInt | None = Field(
        None, description="Fixed number of replicas (default 1); leave out with autoscaling."
    )
    autoscaling: AutoscalingSection | None = Field(
        None, description="Scale replicas with load instead of a fixed number."
    )
    num_cpus: PositiveFloat = Field(1.0, description="CPUs each replica reserves.")
    num_gpus: NonNegativeFloat = Field(0.0, description="GPUs each replica reserves (fractions share one).")
    max_ongoing_requests: PositiveInt = Field(
        32, description="Requests one replica works on at once; more wait in its queue."
    )
    max_queued_requests: PositiveInt = Field(
        64, description="Requests waiting for a replica; beyond this Serve answers 503 at once."
    )
    request_timeout_s: PositiveFloat = Field(30.0, description="A request still running after this gets 408.")
    batching: BatchingSection = Field(default_factory=BatchingSection, description="Dynamic batching.")
    max_adapters_per_replica: PositiveInt = Field(
        4,
        description="LoRA adapters a replica keeps loaded over its one base model (least recently used go).",
    )
    host: str = Field(
        "127.0.0.1", description="Address the HTTP proxy listens on (0.0.0.0: every interface)."
    )
    port: int = Field(8000, ge=1, le=65535, description="HTTP port.")
    route_prefix: str = Field("/", description="URL path the application answers under.")

    @model_validator(mode="after")
    def _replicas(self) -> ServeSection:
        if self.num_replicas is not None and self.autoscaling is not None:
            raise ValueError("give num_replicas or autoscaling, not both")
        if not self.route_prefix.startswith("/"):
            raise ValueError(f"route_prefix {self.route_prefix!r} must start with '/'")
        return self


def adapter_problem(adapter_id: str) -> str | None:
    """Why ``adapter_id`` cannot name an adapter (None when it can)."""
    if ".." in adapter_id or "/" in adapter_id or "\\" in adapter_id:
        return f"adapter id {adapter_id!r} may not contain '/', '\\\\' or '..'"
    if not _ADAPTER_ID.match(adapter_id):
        return (
            f"adapter id {adapter_id!r} must be 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return None


def split_model_id(model: str, base_name: str) -> tuple[str, str | None]:
    """An OpenAI-style ``model`` field → (base, adapter): ``base`` or ``base:adapter``."""
    base, _, adapter = model.partition(":")
    return base or base_name, adapter or None


def deployment_options(section: ServeSection) -> dict[str, Any]:
    """The Predictor deployment's Serve options (as ``@serve.deployment`` takes them)."""
    options: dict[str, Any] = {
        "max_ongoing_requests": section.max_ongoing_requests,
        "max_queued_requests": section.max_queued_requests,
        "ray_actor_options": {"num_cpus": section.num_cpus, "num_gpus": section.num_gpus},
    }
    if section.autoscaling is not None:
        options["autoscaling_config"] = section.autoscaling.model_dump()
    else:
        options["num_replicas"] = section.num_replicas or 1
    return options


def initial_replicas(section: ServeSection) -> int:
    if section.autoscaling is not None:
        return max(section.autoscaling.min_replicas, 1)
    return section.num_replicas or 1


def serve_config(section: ServeSection, model_dir: str, name: str = APP_NAME) -> dict[str, Any]:
    """A Serve config file (``serve run`` / ``serve deploy`` / KubeRay's RayService)."""
    deployment = {"name": DEPLOYMENT_NAME, **deployment_options(section)}
    return {
        "proxy_location": "EveryNode",
        "http_options": {
            "host": section.host,
            "port": section.port,
            "request_timeout_s": section.request_timeout_s,
        },
        "applications": [
            {
                "name": name,
                "route_prefix": section.route_prefix,
                "import_path": IMPORT_PATH,
                "args": {"model_dir": model_dir, "serve": section.model_dump(mode="json")},
                "deployments": [deployment],
            }
        ],
    }


class PredictRequest(SectionModel):
    """``POST /predict``: one input or a list; an input is a text, or [text, pair] for a
    pair classifier."""

    inputs: str | list[str | list[str]] = Field(..., description="A text, or a list of them.")
    top_k: PositiveInt = Field(1, le=1000, description="Classes to return per input, best first.")

    def items(self) -> list[Any]:
        return [self.inputs] if isinstance(self.inputs, str) else list(self.inputs)


def input_problems(items: list[Any], pairs: bool) -> list[str]:
    """What is wrong with a request's inputs for a model that takes text pairs or not."""
    if not items:
        return ["inputs: give at least one input"]
    problems = []
    for index, item in enumerate(items):
        if pairs and not (isinstance(item, list) and len(item) == 2):
            problems.append(f"inputs[{index}]: this model classifies text pairs; give [text, pair]")
        elif not pairs and not isinstance(item, str):
            problems.append(f"inputs[{index}]: give a text (this model takes one text per input)")
    return problems
