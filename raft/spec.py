"""The run spec: one YAML file, validated in full before anything expensive starts.

``load_spec("run.yaml", ["train.lr=3e-4"])`` reads the file, applies ``key=value``
overrides, and validates against the schema built from the registered task families and
techniques. Every problem is reported at once, each with its dotted path. Pure: no Ray.
"""

from __future__ import annotations

import copy
import datetime as _dt
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    confloat,
    field_validator,
    model_validator,
)

from raft import registry
from raft.registry import SectionModel
from raft.search import (
    AshaScheduler,
    PbtScheduler,
    SearchAlgorithm,
    TuneSection,
    metric_problems,
    space_problems,
)
from raft.serving import ServeSection


class SpecError(ValueError):
    """A spec that cannot run. ``problems`` holds one line per problem, path first."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = problems
        self.source = source
        where = f" in {source}" if source else ""
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s){where}:\n{lines}")


# -- sections -------------------------------------------------------------------------
class ModelSection(SectionModel):
    path: str = Field(
        description="Folder of a pretrained Hugging Face model (config.json + safetensors "
        "weights + tokenizer), or package:NAME/sub/folder for a model shipped inside an "
        "installed Python package. Must be readable on every node of the cluster."
    )
    trust_remote_code: bool = Field(
        False, description="Allow the model folder's own Python code to run. Off by default."
    )
    allow_pickle_weights: bool = Field(
        False,
        description="Allow a model folder that has only pickle-based weights (pytorch_model.bin). "
        "Unpickling can run any code the file names, so raft loads safetensors only unless this "
        "is on; turn it on only for folders you trust.",
    )


class DataSection(SectionModel):
    train: str = Field(
        description="Training data: a file, a folder, a glob, or a URI pyarrow can open "
        "(s3://, gs://, hdfs://); jsonl, csv, parquet, or a Hugging Face dataset saved with "
        "save_to_disk."
    )
    validation: str | None = Field(
        None, description="Validation data in the same forms. Default: split off the training data."
    )
    validation_fraction: confloat(gt=0.0, lt=1.0) | None = Field(
        None,
        description="Fraction of the training data held out for validation when no "
        "validation file is given (default 0.1), chosen with train.seed.",
    )
    format: Literal["auto", "jsonl", "csv", "parquet", "conll", "imagefolder", "hf"] = Field(
        "auto", description="File format; auto decides from the file extension or folder."
    )
    train_split: str = Field("train", description="Split to train on in a saved DatasetDict.")
    validation_split: str = Field(
        "validation", description="Split to validate on in a saved DatasetDict, when present."
    )
    cpus_per_task: PositiveFloat = Field(
        1.0, description="Logical CPUs each Ray Data preprocessing task reserves."
    )
    shuffle: Literal["global", "local", "none"] = Field(
        "global",
        description="Training order: global = a full shuffle of the rows, new every epoch (seeded by "
        "train.seed and the epoch), local = random block order plus a shuffle buffer, new every epoch (for "
        "data too big to shuffle), none = as read.",
    )
    shuffle_buffer: PositiveInt = Field(
        1000, description="Rows in the local shuffle buffer (shuffle: local)."
    )
    group_by_length: bool = Field(
        False,
        description="Batch training rows of similar token length together: each worker sorts a "
        "window of data.length_window batches by length, cuts it into batches and shuffles their "
        "order. Batches are trimmed to their longest row, so less padding is computed; rows of "
        "one batch are less random. Text families only (rows with an attention mask).",
    )
    length_window: int = Field(
        32,
        ge=2,
        description="Batches per window that group_by_length sorts (more: less padding, less randomness).",
    )
    materialize: Literal["auto"] | bool = Field(
        "auto",
        description="Tokenize once and keep the result in Ray's object store for every epoch, "
        "instead of reading and tokenizing the data again as each epoch streams. auto: for the "
        "text families, when the run trains more than one epoch, is not elastic (a lost node "
        "would take its blocks along), and the tokenized rows (bounded by rows × max length) "
        "fit in a quarter of the object store. true: always (tokenizing then happens before "
        "the workers start); false: always stream.",
    )
    on_bad_rows: Literal["error", "skip"] = Field(
        "error",
        description="A row the task cannot use: error stops before training, naming its file, line "
        "or row and the reason; skip drops it and counts it per reason (summary.json's "
        "skipped_rows). Reasons: bad_json (a jsonl line that does not parse or is not an object), "
        "bad_line (a CoNLL line without token and tag), missing_column (absent or null), "
        "wrong_type, empty_text, bad_label (outside task.labels, a negative id), length_mismatch "
        "(tokens vs tags), bad_conversation, bad_media (an unreadable image or clip), too_long: a "
        "row that cannot fit — token classification: its words' sub-word tokens exceed "
        "task.max_length; causal_lm prompt_completion: the completion and EOS leave no room for a "
        "prompt token; chat: no assistant token within task.max_length; speech: a clip longer "
        "than the model's window; any family: a jsonl line or a cell over 32 MiB. Text that "
        "families cut by design (classification, seq2seq, packed text) is not a fault.",
    )
    max_bad_fraction: confloat(ge=0.0, le=1.0) = Field(
        0.05,
        description="With on_bad_rows: skip, the largest share of a source's rows (data.train, "
        "data.validation, each on its own) that may be bad; more stops the run before training "
        "with the counts per reason. A few bad rows are noise; more usually means a systematic "
        "fault (a wrong column, max_length too low, a broken export) that skipping would hide.",
    )

    @model_validator(mode="after")
    def _one_validation_source(self) -> DataSection:
        if self.validation is not None and self.validation_fraction is not None:
            raise ValueError("give data.validation or data.validation_fraction, not both")
        return self


class TrainSection(SectionModel):
    epochs: PositiveInt = Field(3, description="Passes over the training data.")
    max_steps: PositiveInt | None = Field(
        None, description="Stop after this many optimizer steps (across epochs), if set."
    )
    batch_size: PositiveInt = Field(
        16, description="Examples per worker per forward pass (DeepSpeed's micro batch)."
    )
    gradient_accumulation_steps: PositiveInt = Field(
        1,
        description="Micro batches averaged into each optimizer step; an epoch's last step takes the batches left (every epoch ends on a step).",
    )
    lr: PositiveFloat = Field(5e-5, description="Peak learning rate (AdamW).")
    weight_decay: NonNegativeFloat = Field(
        0.0, description="AdamW weight decay; not applied to biases and norm weights."
    )
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "linear", description="Learning-rate schedule after warmup."
    )
    warmup_ratio: confloat(ge=0.0, lt=1.0) = Field(
        0.0, description="Fraction of all optimizer steps spent warming up."
    )
    warmup_steps: NonNegativeInt | None = Field(
        None, description="Warmup in optimizer steps; overrides warmup_ratio."
    )
    max_grad_norm: PositiveFloat | None = Field(
        1.0, description="Clip the global gradient norm to this (null: no clipping)."
    )
    seed: int = Field(42, description="Seed for model init, dropout and the validation split.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 on GPUs that support it, fp32 otherwise (and on CPU)."
    )
    log_every_n_steps: PositiveInt = Field(
        10, description="Progress (loss, learning rate, throughput) every N steps: shown, tracked, logged."
    )
    eval_before_training: bool = Field(
        True,
        description="Evaluate once before the first step: the run's baseline, shown as before → after. "
        "It delays the first step by one pass over the validation data.",
    )
    checkpoint_every_n_steps: PositiveInt | None = Field(
        None, description="Also checkpoint every N optimizer steps (always at epoch end)."
    )

    @model_validator(mode="after")
    def _warmup_once(self) -> TrainSection:
        if self.warmup_steps is not None and self.warmup_ratio > 0:
            raise ValueError("give train.warmup_steps or train.warmup_ratio, not both")
        return self


class ScalingSection(SectionModel):
    num_workers: PositiveInt | tuple[PositiveInt, PositiveInt] = Field(
        2,
        description="Ray Train workers (one process each). [min, max] makes the run elastic: it "
        "starts with as many as the cluster has room for (at least min), goes on with fewer when "
        "workers or nodes are lost, and grows back to max when capacity returns.",
    )
    use_gpu: bool = Field(False, description="One GPU per worker and NCCL; CPU and gloo otherwise.")
    cpus_per_worker: PositiveFloat = Field(
        1.0, description="Logical CPUs each worker reserves; also its torch thread count."
    )
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "SPREAD",
        description="How workers are placed on nodes (Ray placement group strategy). SPREAD puts "
        "them on as many nodes as it can; PACK fills one node first.",
    )
    max_failures: NonNegativeInt = Field(
        0,
        description="Times the run may restart its workers from the last complete checkpoint after "
        "a worker or node is lost (0: the first loss fails the run, naming the lost worker).",
    )

    @field_validator("num_workers", mode="before")
    @classmethod
    def _count_or_range(cls, value: Any) -> Any:
        """One clear message, instead of one per branch of the int | [min, max] union."""
        if isinstance(value, bool):
            raise ValueError(f"expected a number of workers or [min, max], got {value!r}")
        if isinstance(value, int):
            if value < 1:
                raise ValueError(f"expected at least 1 worker, got {value}")
            return value
        if (
            isinstance(value, (list, tuple))
            and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
        ):
            if value[0] > value[1]:
                raise ValueError(f"[{value[0]}, {value[1]}]: min is above max")
            return tuple(value)
        raise ValueError(f"expected a number of workers (2) or [min, max] (e.g. [1, 4]), got {value!r}")

    @property
    def elastic(self) -> bool:
        return isinstance(self.num_workers, tuple)

    @property
    def min_workers(self) -> int:
        return self.num_workers[0] if self.elastic else self.num_workers

    @property
    def max_workers(self) -> int:
        return self.num_workers[1] if self.elastic else self.num_workers


class DeepSpeedSection(SectionModel):
    zero_stage: Literal[0, 1, 2, 3] = Field(
        0, description="ZeRO stage: 0 replicate, 1 shard optimizer state, 2 + gradients, 3 + parameters."
    )
    offload_optimizer: bool = Field(
        False, description="Keep optimizer state in CPU memory, stepped there (ZeRO 1-3)."
    )
    offload_params: bool = Field(False, description="Keep parameters in CPU memory (ZeRO 3).")
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="Raw DeepSpeed config merged over the one raft builds (advanced).",
    )

    @model_validator(mode="after")
    def _offload_needs_zero(self) -> DeepSpeedSection:
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("offload_params needs zero_stage: 3")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage 1, 2 or 3")
        return self


class OutputSection(SectionModel):
    dir: str = Field("runs", description="Where runs are written (local path or shared URI).")
    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Run name: the folder under dir. Default: <task>-<technique>-<timestamp>.",
    )
    merge_adapter: bool = Field(False, description="Export the base model with the adapter merged in (LoRA).")
    num_checkpoints_to_keep: PositiveInt = Field(2, description="Newest checkpoints kept.")


class TrackingSection(SectionModel):
    mlflow: bool = Field(
        True,
        description="Track the run in MLflow: the spec as params, metrics per step and epoch, the model.",
    )
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI (a server, or sqlite:///path). Default: $MLFLOW_TRACKING_URI, "
        "else sqlite:///<output.dir>/mlflow.db (a local output.dir), else ~/.raft/mlflow.db.",
    )
    experiment: str = Field("raft", description="MLflow experiment the run (or search) is filed under.")
    log_model: bool = Field(True, description="Upload the exported model to MLflow as the run's artifact.")
    tensorboard: bool = Field(
        True, description="Also write TensorBoard event files to <run>/tensorboard (same scalars)."
    )


def _union(classes: list[type]) -> Any:
    if len(classes) == 1:
        return classes[0]
    return Annotated[Union[tuple(classes)], Field(discriminator="type")]  # noqa: UP007


def _build_run_spec() -> type[SectionModel]:
    task_union = _union([task.spec_class for task in registry.tasks().values()])
    technique_union = _union(list(registry.techniques().values()))

    class RunSpec(SectionModel):
        model: ModelSection
        task: task_union  # type: ignore[valid-type]
        technique: technique_union = Field(  # type: ignore[valid-type]
            default_factory=lambda: registry.techniques()["full"]()
        )
        data: DataSection
        train: TrainSection = Field(default_factory=TrainSection)
        scaling: ScalingSection = Field(default_factory=ScalingSection)
        deepspeed: DeepSpeedSection = Field(default_factory=DeepSpeedSection)
        output: OutputSection = Field(default_factory=OutputSection)
        tracking: TrackingSection = Field(default_factory=TrackingSection)
        tune: TuneSection | None = Field(None, description="A hyperparameter search (raft tune).")
        serve: ServeSection | None = Field(None, description="How raft serve deploys the export.")

        @model_validator(mode="after")
        def _cross_section_rules(self) -> RunSpec:
            problems = cross_section_problems(self)
            if problems:
                raise ValueError("\n".join(problems))  # one line each in format_errors
            return self

        @property
        def run_name(self) -> str:
            return self.output.name or default_run_name(self)

    return RunSpec


def cross_section_problems(spec: Any) -> list[str]:
    """Rules that span sections (each message starts with the path it is about)."""
    problems = []
    task = registry.get_task(spec.task.type)
    reason = registry.unsupported_reason(spec.technique.type, task)
    if reason:
        problems.append(f"technique.type: {spec.technique.type} cannot train {task.name}: {reason}")
    unknown_parts = [p for p in getattr(spec.technique, "parts", []) if p not in task.model_parts]
    if unknown_parts:
        known = ", ".join(sorted(task.model_parts)) or "none"
        problems.append(
            f"technique.parts: {unknown_parts} are not parts of a {task.name} model (it has: {known})"
        )
    if spec.output.merge_adapter and not type(spec.technique).mergeable:
        problems.append(f"output.merge_adapter: technique {spec.technique.type} has no adapter to merge")
    if spec.scaling.elastic and spec.deepspeed.zero_stage == 3:
        problems.append(
            "scaling.num_workers: an elastic [min, max] run needs deepspeed.zero_stage 0, 1 or 2 "
            "(a ZeRO-3 checkpoint only loads into the number of workers that wrote it)"
        )
    if spec.data.group_by_length and not task.token_inputs:
        problems.append(
            f"data.group_by_length: {task.name} rows have no token length to group by "
            "(its inputs are fixed-size pixels or audio features)"
        )
    if spec.train.precision in ("bf16", "fp16") and not spec.scaling.use_gpu:
        problems.append(
            f"train.precision: {spec.train.precision} needs scaling.use_gpu: true (CPU trains in fp32)"
        )
    if spec.tune is not None and not problems:
        problems += metric_problems(spec, spec.tune)
        problems += space_problems(spec.model_dump(mode="json", exclude={"tune"}), spec.tune)
    return problems


RunSpec = _build_run_spec()
RunSpec.__qualname__ = RunSpec.__name__  # picklable by reference, like any module-level class


def default_run_name(spec: Any) -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{spec.task.type}-{spec.technique.type}-{stamp}"


# -- loading --------------------------------------------------------------------------
def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.lr=3e-4`` → (["train", "lr"], 3e-4). Values are parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*", key.strip()):
        raise SpecError([f"override {text!r}: expected dotted.key=value"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise SpecError([f"{key}: value {raw!r} is not valid YAML ({error})"]) from None
    return key.strip().split("."), value


def apply_overrides(document: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``document`` with each ``key=value`` set; problems all at once."""
    document = copy.deepcopy(document)
    problems = []
    for text in overrides:
        try:
            path, value = parse_override(text)
        except SpecError as error:
            problems.extend(error.problems)
            continue
        node = document
        for depth, key in enumerate(path[:-1]):
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                problems.append(f"{'.'.join(path[: depth + 1])}: is not a section, cannot set {text!r}")
                break
            node = child
        else:
            node[path[-1]] = value
    if problems:
        raise SpecError(problems)
    return document


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise SpecError([f"spec file {str(path)!r} does not exist"])
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise SpecError([f"not valid YAML: {error}"], source=str(path)) from None
    if not isinstance(document, dict):
        raise SpecError(["the spec must be a mapping of sections"], source=str(path))
    return document


def validate(document: dict[str, Any], source: str | None = None) -> Any:
    """Validate a spec mapping; raise SpecError listing every problem with its path."""
    try:
        return RunSpec.model_validate(document)
    except ValidationError as error:
        raise SpecError(format_errors(error), source=source) from None


def load_spec(path: str | Path, overrides: list[str] | None = None) -> Any:
    document = apply_overrides(read_yaml(path), overrides or [])
    return validate(document, source=str(path))


def format_errors(error: ValidationError) -> list[str]:
    tags = set(registry.tasks()) | set(registry.techniques())
    lines = []
    for item in error.errors():
        loc = [str(part) for part in item["loc"]]
        # Drop the union tag pydantic inserts: task.sequence_classification.x → task.x.
        if len(loc) >= 2 and loc[0] in ("task", "technique") and loc[1] in tags:
            loc = loc[:1] + loc[2:]
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (not part of the spec; check the spelling)"
        elif item["type"] == "missing":
            message = "required"
        elif item["type"] == "union_tag_invalid":
            message = f"unknown type {item['input'].get('type')!r}; known: {sorted(_tags_for(loc))}"
        elif item["type"] == "union_tag_not_found":
            message = f"needs a type; known: {sorted(_tags_for(loc))}"
        if (
            item["type"] not in ("missing", "extra_forbidden")
            and "input" in item
            and not isinstance(item["input"], dict)
        ):
            message += f" (got {item['input']!r})"
        if not loc:  # cross-section rules: each line already starts with its path
            lines.extend(message.splitlines())
            continue
        lines.append(f"{'.'.join(loc)}: {message}")
    return lines


def _tags_for(loc: list[str]) -> list[str]:
    return list(registry.tasks()) if loc and loc[0] == "task" else list(registry.techniques())


def dump_spec(spec: Any) -> str:
    """The resolved spec as YAML (saved with every run and exported model)."""
    document = spec.model_dump(mode="json")
    for optional in ("tune", "serve"):  # a plain run's spec reads as it did before these
        if document.get(optional) is None:
            document.pop(optional, None)
    return yaml.safe_dump(document, sort_keys=False)


# What a resumed run must share with the run that wrote its checkpoints: anything else
# would load state into a different model, or continue over different data.
RESUME_FIXED = (
    "model",
    "task",
    "technique",
    "data",
    "deepspeed.zero_stage",
    "train.seed",
    "train.batch_size",
    "train.gradient_accumulation_steps",
)


RESUME_FREE_DATA = ("cpus_per_task", "on_bad_rows", "max_bad_fraction")


def resume_conflicts(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The settings that differ between a run's saved spec and the spec resuming it (both
    as ``dump_spec`` documents). More epochs, workers or checkpoints may change."""

    def pick(document: dict[str, Any], dotted: str) -> Any:
        node: Any = document
        for key in dotted.split("."):
            node = node.get(key) if isinstance(node, dict) else None
        if dotted == "data" and isinstance(node, dict):  # how rows are checked may change
            node = {k: v for k, v in node.items() if k not in RESUME_FREE_DATA}
        return node

    conflicts = []
    for dotted in RESUME_FIXED:
        before, after = pick(saved, dotted), pick(current, dotted)
        if before == after:
            continue
        if isinstance(before, dict) and isinstance(after, dict):
            keys = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
            conflicts += [f"{dotted}.{k}: {before.get(k)!r} → {after.get(k)!r}" for k in keys]
        else:
            conflicts.append(f"{dotted}: {before!r} → {after!r}")
    return conflicts


def reference_markdown() -> str:
    """The spec reference (every section and field, with its default and description)."""
    sections = {
        "model": ModelSection,
        "data": DataSection,
        "train": TrainSection,
        "scaling": ScalingSection,
        "deepspeed": DeepSpeedSection,
        "output": OutputSection,
        "tracking": TrackingSection,
        "tune": TuneSection,
        "tune.scheduler (type: asha)": AshaScheduler,
        "tune.scheduler (type: pbt)": PbtScheduler,
        "tune.search": SearchAlgorithm,
        "serve": ServeSection,
    }
    for name, task in registry.tasks().items():
        sections[f"task (type: {name})"] = task.spec_class
    for name, technique in registry.techniques().items():
        sections[f"technique (type: {name})"] = technique
    lines = []
    pending = list(sections.items())
    seen_nested: set[type] = set()
    while pending:
        title, model = pending.pop(0)
        lines += [f"**`{title}`**", "", "| key | default | meaning |", "|---|---|---|"]
        for key, info in model.model_fields.items():
            if key == "type":
                continue
            default = "required" if info.is_required() else info.get_default(call_default_factory=True)
            if isinstance(default, BaseModel) and "type" not in type(default).model_fields:
                # a nested section: its own table, once
                parent = title.split(" ")[0]
                if type(default) not in seen_nested:
                    seen_nested.add(type(default))
                    pending.append((f"{parent}.{key}", type(default)))
                shown = f"see `{parent}.{key}`"
            elif isinstance(default, BaseModel):  # a typed choice: its type is the default
                shown = f"`{{type: {default.type}}}`"
            else:
                shown = "required" if default == "required" else f"`{json_default(default)}`"
            lines.append(f"| `{key}` | {shown} | {info.description or ''} |")
        lines.append("")
    return "\n".join(lines)


def json_default(value: Any) -> str:
    import json

    return json.dumps(value) if not isinstance(value, str) else value
