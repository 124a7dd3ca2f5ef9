"""``raft serve MODEL_DIR``: an exported model as a Ray Serve application over HTTP.

    raft serve runs/topics-lora/model                    # a local cluster raft starts
    raft serve --best runs/topics-search                 # the winner of a raft tune search
    raft serve runs/topics-lora/model serve.num_replicas=2 --address ray://head:10001
    raft serve runs/topics-lora/model --build serve.yaml # a config for Ray's serve deploy

One deployment, ``Predictor``, loads the export as a user would (plain transformers/peft,
the export's own tokenizer and labels) and answers through a FastAPI ingress. Requests
that arrive together are run through the model as one batch (``@serve.batch``, sized by
``serve.batching``); the section's replicas, autoscaling, queue limits and timeout become
the deployment's Serve options.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from ray import serve

from raft import registry, serving
from raft.evaluate import load_exported

api = FastAPI(title="raft", description="A model fine-tuned and exported by raft.")


@serve.deployment(name=serving.DEPLOYMENT_NAME)
@serve.ingress(api)
class Predictor:
    def __init__(self, model_dir: str, max_batch_size: int = 16, batch_wait_timeout_s: float = 0.005) -> None:
        self.model_dir = str(model_dir)
        self.spec, self.model, self.labels = load_exported(model_dir)
        import torch

        if torch.cuda.is_available():  # the replica holds a GPU (serve.num_gpus)
            self.model.to("cuda")
        self.task = registry.get_task(self.spec.task.type)
        # The run's name (runs/<name>/model), as /v1/models lists it.
        self.name = self.spec.output.name or Path(model_dir).resolve().parent.name
        self.batch_sizes: Counter[int] = Counter()  # how many requests each model call took
        self._batched.set_max_batch_size(max_batch_size)
        self._batched.set_batch_wait_timeout_s(batch_wait_timeout_s)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _batched(self, requests: list[tuple[Any, int]]) -> list[Any]:
        """Requests that arrived together, as one model call (top_k: the largest asked)."""
        self.batch_sizes[len(requests)] += 1
        top_k = max(k for _, k in requests)
        answers = self.task.predict(
            self.model, self.model_dir, self.spec.task, [x for x, _ in requests], top_k
        )
        return [self._trim(answer, k) for answer, (_, k) in zip(answers, requests, strict=True)]

    @staticmethod
    def _trim(answer: Any, top_k: int) -> Any:
        # (a method, not a module function: Serve pickles this class by value, without
        # the module's other globals)
        if isinstance(answer, dict) and "top_k" in answer:
            return {**answer, "top_k": answer["top_k"][:top_k]}
        return answer

    @api.post("/predict")
    async def predict(self, request: serving.PredictRequest) -> dict[str, Any]:
        items = request.items()
        problems = serving.input_problems(
            items, pairs=bool(getattr(self.spec.task, "text_pair_column", None))
        )
        if problems:
            raise HTTPException(status_code=422, detail=problems)
        answers = await asyncio.gather(*(self._batched((item, request.top_k)) for item in items))
        return {"model": self.name, "predictions": list(answers)}

    @api.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": self.name, "object": "model", "owned_by": "raft"}]}

    @api.get("/stats")
    async def stats(self) -> dict[str, Any]:
        """Model calls by batch size, since this replica started."""
        return {"batches": {str(size): count for size, count in sorted(self.batch_sizes.items())}}

    @api.get("/healthz")
    async def health(self) -> dict[str, str]:
        return {"status": "ok", "task": self.task.name}


class ServeError(ValueError):
    """The folder cannot be served, or the cluster cannot hold the deployment."""


def check_servable(model_dir: str) -> Any:
    """The export's spec, once the folder is known to be a raft export of a served family."""
    from raft.export import SPEC_FILE
    from raft.spec import load_spec

    if not (Path(model_dir) / SPEC_FILE).is_file():
        raise ServeError(f"{model_dir} is not a model exported by raft (no {SPEC_FILE})")
    spec = load_spec(Path(model_dir) / SPEC_FILE)
    if not registry.get_task(spec.task.type).serves:
        served = ", ".join(name for name, task in registry.tasks().items() if task.serves)
        raise ServeError(f"raft serve does not serve {spec.task.type} models yet (it serves: {served})")
    return spec


def start(
    model_dir: str, section: serving.ServeSection, address: str | None = None, name: str = serving.APP_NAME
) -> str:
    """Deploy ``model_dir`` as the Serve application ``name`` and return its URL once every
    replica is up (does not block). Applications of other names keep running beside it."""
    import math
    import os

    import ray

    from raft.cluster import use_token_if_available
    from raft.resources import LOCAL_SYSTEM_CONFIG

    check_servable(model_dir)
    replicas = serving.initial_replicas(section)
    needed = replicas * section.num_cpus
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        if address:
            use_token_if_available()
            ray.init(address=address, logging_level="WARNING")
        else:
            ray.init(
                num_cpus=math.ceil(needed) + 1, _system_config=LOCAL_SYSTEM_CONFIG, logging_level="WARNING"
            )
    available = ray.available_resources().get("CPU", 0.0)
    if needed > available:
        raise ServeError(
            f"the cluster has {available:g} free CPUs; {replicas} replica(s) × serve.num_cpus "
            f"{section.num_cpus:g} need {needed:g}"
        )
    serve.start(
        http_options={
            "host": section.host,
            "port": section.port,
            "request_timeout_s": section.request_timeout_s,
        }
    )
    app = build_app({"model_dir": str(model_dir), "serve": section.model_dump(mode="json")})
    serve.run(app, name=name, route_prefix=section.route_prefix)
    host = "127.0.0.1" if section.host in ("0.0.0.0", "::") else section.host
    return f"http://{host}:{section.port}{section.route_prefix.rstrip('/')}"


def build_app(args: dict[str, Any]) -> Any:
    """Application builder: what ``serve run`` / ``serve deploy`` import (``raft.serve:build_app``)."""
    model_dir = str(args["model_dir"])
    spec = check_servable(model_dir)
    given = args.get("serve") or (spec.serve.model_dump(mode="json") if spec.serve else {})
    section = serving.ServeSection.model_validate(given)
    return Predictor.options(**serving.deployment_options(section)).bind(
        model_dir, section.batching.max_batch_size, section.batching.batch_wait_timeout_s
    )
