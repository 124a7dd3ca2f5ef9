"""``raft serve MODEL_DIR``: an exported model as a Ray Serve application over HTTP.

    raft serve runs/topics-lora/model                    # a local cluster raft starts
    raft serve --best runs/topics-search                 # the winner of a raft tune search
    raft serve runs/topics-lora/model serve.num_replicas=2 --address ray://head:10001
    raft serve runs/chat-a/model serve.adapters_dir=runs # every LoRA run in runs/ on one base
    raft serve runs/topics-lora/model --build serve.yaml # a config for Ray's serve deploy

One deployment, ``Predictor``, loads the export as a user would (plain transformers/peft,
the export's own tokenizer or processor and labels) and answers through a FastAPI
ingress:

- ``POST /predict`` ``{"inputs": ..., "parameters": {...}}`` for every family (the task
  family checks and decodes each input), ``POST /predict/upload`` for image and audio
  files (multipart);
- causal LMs also answer OpenAI's ``/v1/completions`` and ``/v1/chat/completions`` (with
  streaming), so the ``openai`` client works unchanged; ``/v1/models`` lists the model and
  its adapters;
- ``/healthz`` (503 while the replica is unfit) and ``/stats`` (the replica that answers, its
  model calls by batch size, adapters loaded, model calls in a row that failed).

Serve health-checks every replica (``check_health``, every ``serve.health_check_period_s``)
and replaces one that dies, hangs past ``serve.health_check_timeout_s`` or has had
``serve.unhealthy_after_failures`` model calls in a row fail.

Requests that arrive together are run through the model as one batch (``@serve.batch``,
sized by ``serve.batching``), grouped by adapter and options. Adapters under
``serve.adapters_dir`` are loaded into the one base model on first use and evicted least
recently used (``@serve.multiplexed``, ``serve.max_adapters_per_replica``); a request picks
one with the ``serve_multiplexed_model_id`` header (which Serve also routes by) or an
OpenAI ``model`` of ``<name>:<adapter>``.
"""

# No ``from __future__ import annotations`` here: Serve pickles the deployment class by
# value, and FastAPI resolves a route's string annotations against the globals the pickled
# function carries, which hold only names its body uses (UploadFile would be missing).
import asyncio
import json
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

from raft import registry, serving
from raft.evaluate import load_exported
from raft.tasks import causal_lm

api = FastAPI(title="raft", description="A model fine-tuned and exported by raft.")


@api.exception_handler(HTTPException)
async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
    """OpenAI's error body on /v1 routes (its client shows ``error.message``); FastAPI's
    ``detail`` elsewhere."""
    from raft import serving as _serving

    if "/v1/" in request.url.path:
        return JSONResponse(
            _serving.openai_error(error.status_code, error.detail), status_code=error.status_code
        )
    return JSONResponse({"detail": error.detail}, status_code=error.status_code)


@api.exception_handler(RequestValidationError)
async def _invalid_body(request: Request, error: RequestValidationError) -> JSONResponse:
    from fastapi.encoders import jsonable_encoder

    from raft import serving as _serving

    if "/v1/" in request.url.path:
        return JSONResponse(
            _serving.openai_error(422, _serving.validation_messages(error.errors())), status_code=422
        )
    return JSONResponse({"detail": jsonable_encoder(error.errors())}, status_code=422)


@serve.deployment(name=serving.DEPLOYMENT_NAME)
@serve.ingress(api)
class Predictor:
    def __init__(self, model_dir: str, section: dict[str, Any] | None = None) -> None:
        import torch

        settings = serving.ServeSection.model_validate(section or {})
        self.model_dir = str(model_dir)
        self.spec, self.model, self.labels = load_exported(model_dir)
        if torch.cuda.is_available():  # the replica holds a GPU (serve.num_gpus)
            self.model.to("cuda")
        self.task = registry.get_task(self.spec.task.type)
        # An adapter export over its base. A peft model means peft is imported already; a full
        # model's replica skips importing it (seconds of every replica's start, and so of
        # replacing a dead one).
        peft = sys.modules.get("peft")
        self.is_adapter = peft is not None and isinstance(self.model, peft.PeftModel)
        # The run's name (runs/<name>/model), as /v1/models lists it.
        self.name = self.spec.output.name or Path(model_dir).resolve().parent.name
        self.adapters_dir = settings.adapters_dir
        self.max_adapters = settings.max_adapters_per_replica
        # peft's adapters are switched model-wide: one model call (or stream) at a time
        # holds this, and loading or unloading an adapter waits for it.
        self.model_lock = threading.Lock()
        self._adapter_names = 0
        self._checked: dict[str, tuple[Any, str | None]] = {}  # adapter id → (spec file stamp, problem)
        self.batch_sizes: Counter[int] = Counter()  # how many requests each model call took
        self.model_health = serving.ModelHealth(settings.unhealthy_after_failures)
        self._batched.set_max_batch_size(settings.batching.max_batch_size)
        self._batched.set_batch_wait_timeout_s(settings.batching.batch_wait_timeout_s)

    # -- the model call ----------------------------------------------------------------
    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _batched(self, requests: list[tuple[Any, Any, str]]) -> list[Any]:
        """Requests that arrived together (adapter, input, options as JSON): one model call
        per adapter and options among them."""
        self.batch_sizes[len(requests)] += 1
        groups: dict[tuple[Any, str], list[int]] = {}
        for index, (adapter, _, options) in enumerate(requests):
            groups.setdefault((adapter and adapter.name, options), []).append(index)
        answers: list[Any] = [None] * len(requests)
        for indices in groups.values():
            adapter, _, options = requests[indices[0]]
            inputs = [requests[i][1] for i in indices]
            # The model runs on the event loop, as Serve's batching expects: requests that
            # arrive meanwhile wait in the replica and make up the next batch. Run in a
            # thread instead (asyncio.to_thread), batches stayed small: mean batch 1.2-1.3
            # with 32 clients in benchmarks/serve_batching.py here, against 6.4 this way.
            # The lock is awaited, not blocked on: a stream holds it from the loop. Taken
            # at once when free, as it nearly always is: no thread hop per batch.
            if not self.model_lock.acquire(blocking=False):
                await asyncio.to_thread(self.model_lock.acquire)
            try:
                self._activate(adapter)
                try:
                    results = self.task.predict(
                        self.model, self.model_dir, self.spec.task, inputs, **json.loads(options)
                    )
                except Exception as error:  # these requests fail (500); enough in a row: unfit
                    self.model_health.record(error)
                    raise
                self.model_health.record(None)
            finally:
                self.model_lock.release()
            for i, result in zip(indices, results, strict=True):
                answers[i] = result
        return answers

    def _activate(self, adapter: serving.LoadedAdapter | None) -> None:
        """Switch the peft model to ``adapter`` (None: the export's own). Holds the lock."""
        if not self.is_adapter:
            return
        name = "default" if adapter is None else adapter.name
        if name not in self.model.peft_config:  # evicted by another request since it was picked
            self.model.load_adapter(str(adapter.path), adapter_name=name)
        self.model.set_adapter(name)

    async def _call(self, adapter: Any, items: list[Any], options: dict[str, Any]) -> list[Any]:
        key = json.dumps(options, sort_keys=True)
        return list(await asyncio.gather(*(self._batched((adapter, item, key)) for item in items)))

    # -- adapters ----------------------------------------------------------------------
    @serve.multiplexed(max_num_models_per_replica=4)
    async def _load_adapter(self, adapter_id: str) -> serving.LoadedAdapter:
        """Load adapter ``adapter_id`` into the base model (Serve caches it per replica and
        evicts the least recently used beyond ``serve.max_adapters_per_replica``)."""
        # The decorator's limit is fixed where the class is written; the spec's value is set
        # on the wrapper Serve keeps on this replica (before any eviction can happen).
        wrapper = getattr(self, "__serve_multiplex_wrapper", None)
        if wrapper is not None:
            wrapper.max_num_models_per_replica = self.max_adapters
        path = serving.adapter_path(self.adapters_dir, adapter_id)
        self._adapter_names += 1
        name = f"adapter{self._adapter_names}"  # peft names are module keys: no dots

        def load() -> None:
            with self.model_lock:
                self.model.load_adapter(str(path), adapter_name=name)

        await asyncio.to_thread(load)
        return serving.LoadedAdapter(adapter_id, name, path, self._unload_adapter)

    def _unload_adapter(self, name: str) -> None:
        with self.model_lock:
            if name in self.model.peft_config:
                self.model.delete_adapter(name)

    async def _adapter(self, adapter_id: str | None) -> serving.LoadedAdapter | None:
        """The adapter a request asks for (None: the export's own), checked: 422 for an id
        that cannot name one, 404 for one that is not there."""
        if not adapter_id:
            return None
        problem = serving.adapter_problem(adapter_id)
        if problem:
            raise HTTPException(status_code=422, detail=problem)
        if not self.adapters_dir:
            raise HTTPException(
                status_code=404, detail=f"unknown adapter {adapter_id!r}: this deployment serves no adapters"
            )
        path = serving.adapter_path(self.adapters_dir, adapter_id)
        if path is None:
            known = serving.available_adapters(self.adapters_dir)
            raise HTTPException(
                status_code=404, detail=f"unknown adapter {adapter_id!r}; this deployment has {known}"
            )
        mismatch = self._mismatch(adapter_id, path)
        if mismatch:
            raise HTTPException(status_code=422, detail=mismatch)
        return await self._load_adapter(adapter_id)

    def _mismatch(self, adapter_id: str, path: Path) -> str | None:
        """Why the adapter at ``path`` cannot run here (None: it can), remembered per
        adapter until its spec file changes (this runs for every request that names one)."""
        from raft.export import SPEC_FILE

        stamp = (path, (path / SPEC_FILE).stat().st_mtime_ns if (path / SPEC_FILE).is_file() else None)
        known = self._checked.get(adapter_id)
        if known is None or known[0] != stamp:
            self._checked[adapter_id] = (stamp, self._check_adapter(adapter_id, path))
        return self._checked[adapter_id][1]

    def _check_adapter(self, adapter_id: str, path: Path) -> str | None:
        from raft.export import SPEC_FILE
        from raft.labels import LABELS_FILE, LabelMap
        from raft.spec import load_spec

        if not (path / SPEC_FILE).is_file():
            return f"adapter {adapter_id!r} is not a raft export (no {SPEC_FILE})"
        problem = serving.adapter_mismatch(self.spec, load_spec(path / SPEC_FILE), adapter_id)
        if problem is None and self.labels is not None:
            theirs = LabelMap.load(path) if (path / LABELS_FILE).is_file() else None
            if theirs is None or theirs.names != self.labels.names:
                problem = f"adapter {adapter_id!r} predicts other labels than this deployment's {list(self.labels.names)}"
        return problem

    def _adapter_from_model(self, model: str) -> str | None:
        """The adapter an OpenAI ``model`` field names (``<name>`` or ``<name>:<adapter>``)."""
        base, adapter = serving.split_model_id(model, self.name)
        if base != self.name:
            raise HTTPException(
                status_code=404, detail=f"unknown model {model!r}; this deployment serves {self.name!r}"
            )
        return adapter or serve.get_multiplexed_model_id() or None

    def _options(self, parameters: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.task.request_options(parameters, self.spec.task)
        except ValueError as error:
            raise HTTPException(status_code=422, detail=[str(error)]) from None

    def _inputs(self, items: list[Any]) -> list[Any]:
        decoded, problems = serving.input_problems(self.task, self.spec.task, items, self.model_dir)
        if problems:
            raise HTTPException(status_code=422, detail=problems)
        return decoded

    # -- routes ------------------------------------------------------------------------
    @api.post("/predict")
    async def predict(self, request: serving.PredictRequest) -> dict[str, Any]:
        options = self._options(request.parameters)
        inputs = self._inputs(request.items())
        adapter = await self._adapter(serve.get_multiplexed_model_id())
        answers = await self._call(adapter, inputs, options)
        return {"model": self._model_id(adapter), "predictions": answers}

    @api.post("/predict/upload")
    async def predict_upload(
        self,
        files: list[UploadFile] = File(...),  # noqa: B008 (FastAPI's way to declare a form field)
        parameters: str = Form("{}"),
    ) -> dict[str, Any]:
        """Image or audio files as a multipart upload (``files``), with the parameters as
        a JSON form field."""
        if not self.task.media_inputs:
            raise HTTPException(
                status_code=422, detail=f"this {self.task.name} model takes JSON inputs at /predict"
            )
        try:
            given = json.loads(parameters)
        except json.JSONDecodeError as error:
            raise HTTPException(status_code=422, detail=[f"parameters is not JSON: {error}"]) from None
        if not isinstance(given, dict):
            raise HTTPException(status_code=422, detail=["parameters must be a JSON object"])
        options = self._options(given)
        inputs = self._inputs([await upload.read() for upload in files])
        adapter = await self._adapter(serve.get_multiplexed_model_id())
        answers = await self._call(adapter, inputs, options)
        return {"model": self._model_id(adapter), "predictions": answers}

    @api.post("/v1/completions")
    async def completions(self, request: serving.CompletionRequest) -> Any:
        self._require_generation("/v1/completions")
        options = self._options(request.options())
        prompts = self._inputs(request.prompts())
        adapter = await self._adapter(self._adapter_from_model(request.model))
        if request.stream:
            if len(prompts) != 1:
                raise HTTPException(status_code=422, detail="stream one prompt at a time")
            return self._stream(adapter, prompts[0], options, request.model, chat=False)
        answers = await self._call(adapter, prompts, options)
        return serving.completion_response(
            f"cmpl-{uuid.uuid4().hex}", request.model, int(time.time()), answers
        )

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: serving.ChatCompletionRequest) -> Any:
        self._require_generation("/v1/chat/completions")
        tokenizer = causal_lm.load_tokenizer(self.model_dir)
        if self.spec.task.chat_template is None and not tokenizer.chat_template:
            raise HTTPException(
                status_code=422,
                detail="this model has no chat template (it was not trained on chat); use /v1/completions",
            )
        options = self._options(request.options())
        (conversation,) = self._inputs([{"messages": [m.model_dump() for m in request.messages]}])
        adapter = await self._adapter(self._adapter_from_model(request.model))
        if request.stream:
            return self._stream(adapter, conversation, options, request.model, chat=True)
        (answer,) = await self._call(adapter, [conversation], options)
        return serving.chat_response(f"chatcmpl-{uuid.uuid4().hex}", request.model, int(time.time()), answer)

    def _stream(self, adapter: Any, item: Any, options: dict[str, Any], model: str, chat: bool) -> Any:
        """Server-sent events of one generation, a piece per token as it is produced."""
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())
        stop = options.pop("stop", None) or []
        settings = self.spec.task.generation.model_copy(update=options)
        if settings.num_beams > 1:  # transformers' streamers cannot follow beam search
            raise HTTPException(
                status_code=422,
                detail=f"this model decodes with beam search (num_beams {settings.num_beams}), "
                "which cannot stream; send stream: false",
            )
        tokenizer = causal_lm.load_tokenizer(self.model_dir)
        prompt = self.task.prompt_ids(tokenizer, item, self.spec.task)
        window = causal_lm.context_length(self.model_dir)
        if window is not None:  # generation ends at the context's end ("length")
            room = max(1, min(settings.max_new_tokens, window - len(prompt)))
            settings = settings.model_copy(update={"max_new_tokens": room})

        cancel = threading.Event()  # set when the client goes away: generation stops

        async def events() -> Any:
            await asyncio.to_thread(self.model_lock.acquire)
            try:
                self._activate(adapter)
                pieces = causal_lm.stream_completion(self.model, tokenizer, prompt, settings, stop, cancel)
                if chat:
                    yield serving.stream_chunk(rid, model, created, True, "", None)
                while (piece := await asyncio.to_thread(next, pieces, None)) is not None:
                    if isinstance(piece, dict):  # the last item: how it ended
                        yield serving.stream_chunk(rid, model, created, chat, None, piece["finish_reason"])
                    else:
                        yield serving.stream_chunk(rid, model, created, chat, piece, None)
                yield serving.STREAM_END
            finally:
                cancel.set()
                self.model_lock.release()

        return StreamingResponse(events(), media_type="text/event-stream")

    def _require_generation(self, route: str) -> None:
        if self.task.name != "causal_lm":
            raise HTTPException(
                status_code=404,
                detail=f"{route} serves causal LMs; this model is a {self.task.name} (use /predict)",
            )

    def _model_id(self, adapter: serving.LoadedAdapter | None) -> str:
        return self.name if adapter is None else f"{self.name}:{adapter.adapter_id}"

    @api.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        ids = [self.name]
        if self.adapters_dir:  # the adapters that can run over this base
            for adapter in serving.available_adapters(self.adapters_dir):
                path = serving.adapter_path(self.adapters_dir, adapter)
                if path is not None and self._mismatch(adapter, path) is None:
                    ids.append(f"{self.name}:{adapter}")
        return {"object": "list", "data": [{"id": i, "object": "model", "owned_by": "raft"} for i in ids]}

    @api.get("/stats")
    async def stats(self) -> dict[str, Any]:
        """The replica that answers (Serve's id, as its logs name it), its model calls by
        batch size since it started, the adapters loaded and the model calls in a row that
        failed."""
        loaded = []
        if self.is_adapter:
            loaded = sorted(name for name in self.model.peft_config if name != "default")
        return {
            "replica": serve.get_replica_context().replica_id.unique_id,
            "batches": {str(size): count for size, count in sorted(self.batch_sizes.items())},
            "adapters_loaded": len(loaded),
            "failed_model_calls_in_a_row": self.model_health.failures,
        }

    @api.get("/healthz")
    async def health(self) -> dict[str, str]:
        """This replica's health: 503 naming the problem while it is unfit to serve."""
        problem = self.model_health.problem()
        if problem:
            raise HTTPException(status_code=503, detail=f"unhealthy: {problem}")
        return {"status": "ok", "task": self.task.name}

    async def check_health(self) -> None:
        """Serve calls this every ``serve.health_check_period_s``, between model calls (on
        the replica's event loop): an error here, or no answer within
        ``serve.health_check_timeout_s``, three times in a row, and Serve replaces the
        replica. It fails once ``serve.unhealthy_after_failures`` model calls in a row
        raised (a broken device or model keeps failing every request it takes)."""
        problem = self.model_health.problem()
        if problem:
            raise RuntimeError(f"replica unfit to serve: {problem}")


class ServeError(ValueError):
    """The folder cannot be served, or the cluster cannot hold the deployment."""


def check_servable(model_dir: str, section: serving.ServeSection | None = None) -> Any:
    """The export's spec, once the folder is known to be a raft export of a served family
    (and, with ``serve.adapters_dir``, an adapter export whose base the adapters share)."""
    from raft.export import SPEC_FILE
    from raft.spec import load_spec

    if not (Path(model_dir) / SPEC_FILE).is_file():
        raise ServeError(f"{model_dir} is not a model exported by raft (no {SPEC_FILE})")
    spec = load_spec(Path(model_dir) / SPEC_FILE)
    if not registry.get_task(spec.task.type).serves:
        served = ", ".join(name for name, task in registry.tasks().items() if task.serves)
        raise ServeError(f"raft serve does not serve {spec.task.type} models yet (it serves: {served})")
    if section is not None and section.adapters_dir:
        if not Path(section.adapters_dir).is_dir():
            raise ServeError(f"serve.adapters_dir {section.adapters_dir!r} is not a folder")
        if not (Path(model_dir) / serving.ADAPTER_MARKER).is_file():
            raise ServeError(
                f"serve.adapters_dir needs an adapter export to serve (its base model carries the "
                f"adapters); {model_dir} holds a full model (technique {spec.technique.type}"
                f"{', merged' if spec.output.merge_adapter else ''})"
            )
    return spec


def start(
    model_dir: str,
    section: serving.ServeSection,
    address: str | None = None,
    name: str = serving.APP_NAME,
    verbose: bool = True,
) -> str:
    """Deploy ``model_dir`` as the Serve application ``name`` and return its URL once every
    replica is up (does not block). Applications of other names keep running beside it."""
    import math
    import os

    import ray

    from raft.cluster import use_token_if_available
    from raft.resources import LOCAL_SYSTEM_CONFIG

    check_servable(model_dir, section)
    replicas = serving.initial_replicas(section)
    needed = replicas * section.num_cpus
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        if address:
            use_token_if_available()
            ray.init(address=address, logging_level="WARNING", log_to_driver=verbose)
        else:
            ray.init(
                address="local",  # its own, as raft.cluster.connect starts one
                num_cpus=math.ceil(needed) + 1,
                _system_config=LOCAL_SYSTEM_CONFIG,
                logging_level="WARNING",
                # Replicas' and Serve's own logs (access logs too) stay in Ray's log files
                # unless verbose: raft serve prints the application's state as it changes.
                log_to_driver=verbose,
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
        },
        logging_config=serving.logging_config(section),
    )
    app = build_app({"model_dir": str(model_dir), "serve": section.model_dump(mode="json")})
    serve.run(app, name=name, route_prefix=section.route_prefix)
    host = "127.0.0.1" if section.host in ("0.0.0.0", "::") else section.host
    return f"http://{host}:{section.port}{section.route_prefix.rstrip('/')}"


def status_line(name: str = serving.APP_NAME) -> str:
    """The application's state now, as ``raft serve`` shows it while it serves."""
    application = serve.status().applications.get(name)
    if application is None:
        return "not deployed"

    def name(value: Any) -> str:  # Serve's enums, or their string values (replica states)
        return str(getattr(value, "value", value))

    deployments = {
        deployment: (name(overview.status), {name(state): n for state, n in overview.replica_states.items()})
        for deployment, overview in application.deployments.items()
    }
    return serving.describe_status(name(application.status), deployments, application.message)


def build_app(args: dict[str, Any]) -> Any:
    """Application builder: what ``serve run`` / ``serve deploy`` import (``raft.serve:build_app``)."""
    model_dir = str(args["model_dir"])
    spec = check_servable(model_dir)
    given = args.get("serve") or (spec.serve.model_dump(mode="json") if spec.serve else {})
    section = serving.ServeSection.model_validate(given)
    check_servable(model_dir, section)
    return Predictor.options(**serving.deployment_options(section)).bind(
        model_dir, section.model_dump(mode="json")
    )
