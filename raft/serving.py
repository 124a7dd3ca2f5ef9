"""The ``serve:`` section and the pure logic of serving: replicas, batching, adapters,
request ids, and the Serve config file that ``raft serve --build`` writes. No Ray here;
``raft.serve`` turns this into a Ray Serve application.

    serve:
      num_replicas: 2                 # or autoscaling: {min_replicas: 1, max_replicas: 4}
      num_cpus: 1                     # per replica
      max_ongoing_requests: 32        # per replica; more wait in its queue
      max_queued_requests: 64         # beyond that a request is refused with 503
      request_timeout_s: 30           # a request still running after this gets 408
      health_check_period_s: 10       # Serve asks each replica if it is fit this often...
      health_check_timeout_s: 30      # ...and replaces it after 3 checks in a row fail or time out
      unhealthy_after_failures: 3     # model calls in a row that failed make a replica unfit
      batching: {max_batch_size: 16, batch_wait_timeout_s: 0.005}
      max_adapters_per_replica: 4     # LoRA adapters kept loaded over one base model (LRU)
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    model_validator,
)

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
    health_check_period_s: PositiveFloat = Field(
        10.0,
        description="How often Serve asks each replica whether it is fit to serve; a replica that fails "
        "3 checks in a row (an error or no answer) is stopped and replaced.",
    )
    health_check_timeout_s: PositiveFloat = Field(
        30.0,
        description="A health check not answered within this fails (a hung or frozen replica). Serve runs "
        "the check between model calls, so one model call longer than about 3 times this (a huge "
        "generation) gets its replica replaced: keep it at least request_timeout_s / 3.",
    )
    unhealthy_after_failures: PositiveInt = Field(
        3,
        description="Model calls in a row that failed with an internal error (a broken device or model; "
        "an input or option the model refuses does not count) after which the replica's health check "
        "fails and Serve replaces it.",
    )
    batching: BatchingSection = Field(default_factory=BatchingSection, description="Dynamic batching.")
    max_adapters_per_replica: PositiveInt = Field(
        4,
        description="LoRA adapters a replica keeps loaded over its one base model (least recently used go).",
    )
    adapters_dir: str | None = Field(
        None,
        description="Folder of LoRA adapter exports over the served model's base, picked per request by "
        "id: <id>/model (a raft run) or <id> (an adapter folder). The served model must be an adapter export.",
    )
    access_log: bool = Field(
        True,
        description="A log line per request from the proxy and the replica (off: less work per request).",
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


ADAPTER_MARKER = "adapter_config.json"


def adapter_path(adapters_dir: str | Path, adapter_id: str) -> Path | None:
    """The folder of adapter ``adapter_id`` (a valid id) under ``adapters_dir``: a raft
    run's ``<id>/model``, or ``<id>`` itself; None when neither holds an adapter."""
    root = Path(adapters_dir)
    for candidate in (root / adapter_id / "model", root / adapter_id):
        if (candidate / ADAPTER_MARKER).is_file():
            return candidate
    return None


def available_adapters(adapters_dir: str | Path) -> list[str]:
    """Ids of the adapters under ``adapters_dir``, sorted."""
    root = Path(adapters_dir)
    if not root.is_dir():
        return []
    return sorted(
        entry.name
        for entry in root.iterdir()
        if adapter_problem(entry.name) is None and adapter_path(root, entry.name) is not None
    )


def adapter_mismatch(base_spec: Any, adapter_spec: Any, adapter_id: str) -> str | None:
    """Why adapter ``adapter_id`` (its raft spec) cannot run over the served model's base."""
    if adapter_spec.task.type != base_spec.task.type:
        return f"adapter {adapter_id!r} is a {adapter_spec.task.type} model; this deployment serves {base_spec.task.type}"
    if Path(adapter_spec.model.path).resolve() != Path(base_spec.model.path).resolve():
        return (
            f"adapter {adapter_id!r} was trained over {adapter_spec.model.path}; this deployment's base is "
            f"{base_spec.model.path}"
        )
    if not type(adapter_spec.technique).is_adapter or adapter_spec.output.merge_adapter:
        return f"{adapter_id!r} is not an adapter export (technique {adapter_spec.technique.type})"
    if adapter_spec.technique.type != base_spec.technique.type:
        return (
            f"adapter {adapter_id!r} is a {adapter_spec.technique.type} adapter; this deployment's "
            f"adapters are {base_spec.technique.type} (one kind per base model)"
        )
    return None


class LoadedAdapter:
    """What ``serve.multiplexed`` caches per adapter id: the adapter's name in the replica's
    peft model. Serve calls ``__del__`` when it evicts the id (least recently used); that
    unloads the adapter, once (Python calls ``__del__`` again at garbage collection)."""

    def __init__(self, adapter_id: str, name: str, path: Path, unload: Any) -> None:
        self.adapter_id, self.name, self.path, self._unload = adapter_id, name, path, unload

    def __del__(self) -> None:
        unload, self._unload = getattr(self, "_unload", None), None
        if unload is not None:
            unload(self.name)


class ModelHealth:
    """Whether a replica is fit to serve, from its own model calls: unfit once ``limit``
    calls in a row failed. Inputs are checked before they reach the model, so a call that
    raises is the replica's fault (a broken device, a corrupted model: RuntimeError, out of
    memory...), except a ValueError, which is how raft and transformers refuse an input or
    an option: that says nothing about the replica either way. One call that succeeds makes
    the replica fit again. Serve's health check asks :meth:`problem` and replaces the
    replica while it names one."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.failures = 0  # model calls in a row that failed
        self.last_error: str | None = None

    def record(self, error: BaseException | None) -> None:
        """One model call's outcome: None when it answered, else what it raised."""
        if error is None:
            self.failures, self.last_error = 0, None
        elif not isinstance(error, ValueError):
            self.failures += 1
            self.last_error = f"{type(error).__name__}: {error}"

    def problem(self) -> str | None:
        """Why the replica is unfit to serve (None: it is fit)."""
        if self.failures < self.limit:
            return None
        if self.failures == 1:
            return f"its last model call failed with {self.last_error}"
        return f"its last {self.failures} model calls failed, the last with {self.last_error}"


def deployment_options(section: ServeSection) -> dict[str, Any]:
    """The Predictor deployment's Serve options (as ``@serve.deployment`` takes them)."""
    options: dict[str, Any] = {
        "max_ongoing_requests": section.max_ongoing_requests,
        "max_queued_requests": section.max_queued_requests,
        "ray_actor_options": {"num_cpus": section.num_cpus, "num_gpus": section.num_gpus},
        "health_check_period_s": section.health_check_period_s,
        "health_check_timeout_s": section.health_check_timeout_s,
        "logging_config": logging_config(section),
    }
    if section.autoscaling is not None:
        options["autoscaling_config"] = section.autoscaling.model_dump()
    else:
        options["num_replicas"] = section.num_replicas or 1
    return options


def logging_config(section: ServeSection) -> dict[str, Any]:
    """Serve's logging config of the deployment and the proxy."""
    return {"enable_access_log": section.access_log}


def describe_status(
    app_status: str, deployments: dict[str, tuple[str, dict[str, int]]], message: str = ""
) -> str:
    """One line of a Serve application's state: its status, each deployment's status and
    replicas by state (``raft serve`` prints it whenever it changes: replicas starting,
    autoscaling, a replica replaced after a failure)."""
    parts = [app_status]
    for name, (status, replicas) in sorted(deployments.items()):
        counts = ", ".join(f"{count} {state.lower()}" for state, count in sorted(replicas.items()) if count)
        parts.append(f"{name} {status.lower()}: {counts or 'no replicas'}")
    if message and app_status != "RUNNING":
        parts.append(message.strip().splitlines()[0][:300])
    return " · ".join(parts)


def initial_replicas(section: ServeSection) -> int:
    if section.autoscaling is not None:
        return max(section.autoscaling.min_replicas, 1)
    return section.num_replicas or 1


def serve_config(section: ServeSection, model_dir: str, name: str = APP_NAME) -> dict[str, Any]:
    """A Serve config file (``serve run`` / ``serve deploy`` / KubeRay's RayService)."""
    deployment = {"name": DEPLOYMENT_NAME, **deployment_options(section)}
    return {
        "proxy_location": "EveryNode",
        "logging_config": logging_config(section),
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
    """``POST /predict``: one input or a list of them, and the family's parameters (the
    Hugging Face inference API's shape). What an input is depends on the family: a text, a
    [text, pair], base64 image or audio bytes, an {"image"/"text": ...} object."""

    inputs: Any = Field(..., description="One input, or a list of them.")
    parameters: dict[str, Any] = Field(default_factory=dict, description="Options of the family's predict.")

    def items(self) -> list[Any]:
        """A list is a list of inputs (so one text pair is [[text, pair]])."""
        return list(self.inputs) if isinstance(self.inputs, list) else [self.inputs]


# -- request parameters shared by families (pydantic: unknown keys are refused) -----------
class TopK(SectionModel):
    top_k: PositiveInt = Field(1, le=1000, description="Classes to return per input, best first.")


class GenerationOptions(SectionModel):
    """Per-request decoding overrides of the export's ``generation:`` settings."""

    max_new_tokens: PositiveInt | None = Field(None, le=4096)
    temperature: NonNegativeFloat | None = None
    top_p: PositiveFloat | None = Field(None, le=1.0)
    num_beams: PositiveInt | None = Field(None, le=16)
    repetition_penalty: PositiveFloat | None = None


def decode_media(item: Any, kind: str) -> bytes:
    """A media input's bytes: bytes of an upload, or base64 text (a ``data:`` URL too).
    ValueError names what is wrong; whether the bytes decode as ``kind`` is the family's."""
    if isinstance(item, bytes | bytearray):
        data = bytes(item)
    elif isinstance(item, str):
        text = item.split(",", 1)[1] if item.startswith("data:") and "," in item else item
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"give the {kind} as base64 text (or a data: URL); this is not base64") from None
    else:
        raise ValueError(f"give the {kind} as base64 text (or upload it as a file)")
    if not data:
        raise ValueError(f"the {kind} is empty")
    return data


def input_problems(
    task: Any, spec: Any, items: list[Any], model_dir: str | None = None
) -> tuple[list[Any], list[str]]:
    """(decoded inputs, problems) of a request's inputs, each problem naming its input."""
    if not items:
        return [], ["inputs: give at least one input"]
    decoded, problems = [], []
    for index, item in enumerate(items):
        try:
            decoded.append(task.request_input(item, spec, model_dir))
        except ValueError as error:
            problems.append(f"inputs[{index}]: {error}")
    return decoded, problems


def example_request(task_type: str, url: str, model_name: str) -> str:
    """A shell command that asks a freshly served model something (printed by raft serve)."""
    json_post = f"curl -s {url}/predict -H 'content-type: application/json' -d "
    if task_type == "causal_lm":
        body = {"model": model_name, "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 32}
        return (
            f"curl -s {url}/v1/chat/completions -H 'content-type: application/json' -d '{json.dumps(body)}'"
            f"   (or /v1/completions with a prompt; the openai client: base_url={url}/v1)"
        )
    if task_type in ("image_classification", "speech_recognition"):
        kind = "image.png" if task_type == "image_classification" else "clip.wav"
        return f"curl -s {url}/predict/upload -F files=@{kind}   (or /predict with base64 inputs)"
    if task_type == "image_text":
        body = {"inputs": [{"text": "a photo of a cat"}]}
        return (
            json_post
            + f"'{json.dumps(body)}'   (or {{\"image\": <base64>}} with parameters.candidate_labels)"
        )
    body = {
        "inputs": ["some text"],
        "parameters": {"top_k": 2} if task_type == "sequence_classification" else {},
    }
    return json_post + f"'{json.dumps(body)}'"


# -- OpenAI-compatible generation (causal LMs) ---------------------------------------------
class _OpenAIRequest(BaseModel):
    """Fields raft acts on; others an OpenAI client may send (user, seed, penalties...) are
    accepted and ignored, as OpenAI-compatible servers do. Unsupported values are refused."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(..., min_length=1)
    max_tokens: PositiveInt | None = Field(None, le=4096)
    max_completion_tokens: PositiveInt | None = Field(None, le=4096)
    temperature: NonNegativeFloat | None = Field(None, le=2.0)
    top_p: PositiveFloat | None = Field(None, le=1.0)
    n: PositiveInt = Field(1, le=1, description="Completions per prompt (raft generates one).")
    stream: bool = False
    stop: str | list[str] | None = None
    logprobs: Any = None

    @model_validator(mode="after")
    def _supported(self) -> _OpenAIRequest:
        if self.logprobs not in (None, False, 0):
            raise ValueError("logprobs are not supported by raft serve")
        return self

    def options(self) -> dict[str, Any]:
        """The decoding options of the causal LM's predict."""
        options: dict[str, Any] = {}
        if (tokens := self.max_completion_tokens or self.max_tokens) is not None:
            options["max_new_tokens"] = tokens
        if self.temperature is not None:
            options["temperature"] = self.temperature
        if self.top_p is not None:
            options["top_p"] = self.top_p
        if self.stop:
            options["stop"] = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        return options


class CompletionRequest(_OpenAIRequest):
    prompt: str | list[str] = Field(..., description="A prompt, or a list of them.")

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    content: str


class ChatCompletionRequest(_OpenAIRequest):
    messages: list[ChatMessage] = Field(..., min_length=1)


def completion_response(rid: str, model: str, created: int, answers: list[dict[str, Any]]) -> dict[str, Any]:
    """An OpenAI ``text_completion`` object of one answer per prompt."""
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": i, "text": a["generated_text"], "finish_reason": a["finish_reason"], "logprobs": None}
            for i, a in enumerate(answers)
        ],
        "usage": usage(answers),
    }


def chat_response(rid: str, model: str, created: int, answer: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer["generated_text"]},
                "finish_reason": answer["finish_reason"],
                "logprobs": None,
            }
        ],
        "usage": usage([answer]),
    }


def usage(answers: list[dict[str, Any]]) -> dict[str, int]:
    prompt = sum(a["prompt_tokens"] for a in answers)
    completion = sum(a["completion_tokens"] for a in answers)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def stream_chunk(
    rid: str, model: str, created: int, chat: bool, text: str | None, finish_reason: str | None
) -> str:
    """One server-sent event of a streamed completion (chat: ``chat.completion.chunk``)."""
    if chat:
        delta: dict[str, Any] = {} if text is None else {"content": text}
        if text == "" and finish_reason is None:
            delta = {"role": "assistant", "content": ""}
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model}
    else:
        choice = {"index": 0, "text": text or "", "finish_reason": finish_reason, "logprobs": None}
        body = {"id": rid, "object": "text_completion", "created": created, "model": model}
    return f"data: {json.dumps({**body, 'choices': [choice]})}\n\n"


STREAM_END = "data: [DONE]\n\n"


def validation_messages(errors: list[dict[str, Any]]) -> list[str]:
    """Pydantic/FastAPI validation errors as "field: message" lines."""
    return [f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in errors]


def openai_error(status: int, detail: Any) -> dict[str, Any]:
    """OpenAI's error body (what its client raises with): {"error": {message, type, code}}."""
    message = "; ".join(str(d) for d in detail) if isinstance(detail, list) else str(detail)
    kind = {404: "not_found_error", 422: "invalid_request_error", 503: "overloaded_error"}.get(
        status, "invalid_request_error" if status < 500 else "server_error"
    )
    return {"error": {"message": message, "type": kind, "param": None, "code": status}}
