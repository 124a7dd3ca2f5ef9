"""Memory planning (no Ray): what one worker of a spec needs under each ZeRO stage and
offload option, against what each worker of the cluster has, and which setting to use.

``raft plan spec.yaml`` prints the whole comparison; ``raft train`` warns before it
launches a run whose own setting will not fit.

Per worker, the estimate adds three parts:

* **model states**: weights, gradients, Adam's moments and ZeRO's fp32 copies, as
  ``raft.perf.zero_memory_estimate`` lays them out for the stage and offload options (the
  same arithmetic as DeepSpeed's estimators; at ZeRO 2 in 16-bit exactly theirs). The
  technique enters through the trainable parameter count: LoRA or prompt tuning train a
  fraction of a percent, so gradients and optimizer state shrink to almost nothing.
* **activations**: Korthikanti et al. (2022), per transformer layer s·b·h·(34 + 5·a·s/h)
  bytes in 16-bit (s tokens, b rows a batch, h the hidden width, a attention heads),
  twice that in fp32, for every layer: a frozen base still keeps its activations so the
  gradient can reach an adapter below it.
* **process overhead**: a worker's own memory beside its tensors. On a GPU the CUDA
  context and the caching allocator's slack (``GPU_OVERHEAD``); on a CPU worker the
  process itself with torch, transformers, DeepSpeed and Ray loaded (``CPU_OVERHEAD``,
  from the benchmark suite: a MiniLM worker's peak RSS less its model states and
  activations).

Offloaded states count against host memory; on a CPU worker everything is host memory.
The settings are tried fastest first: ZeRO 0 (DDP), 1, 2, 2 with optimizer offload, 3, 3
with optimizer offload, 3 with parameters offloaded too; the first that fits is the
recommendation.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raft.perf import zero_memory_estimate

GiB = 1024**3
GPU_OVERHEAD = 1 * GiB
CPU_OVERHEAD = 1 * GiB
# Host memory a GPU worker's process takes beside offloaded states (torch's CUDA
# libraries alone map over a GiB).
GPU_WORKER_HOST_OVERHEAD = 2 * GiB


@dataclass(frozen=True)
class ModelFacts:
    """What the estimate needs of a model; ``source`` says how the counts were found."""

    params: int
    trainable: int
    layers: int
    hidden: int
    heads: int
    source: str  # "counted": the model built without weights, technique applied; "upper bound": weight files, all trainable
    positions: int | None = None  # inputs a row of a fixed-size family fills (ViT patches, Whisper frames)


@dataclass(frozen=True)
class Setting:
    stage: int
    offload_optimizer: bool = False
    offload_params: bool = False

    @property
    def label(self) -> str:
        offload = " + optimizer and parameter offload" if self.offload_params else ""
        offload = offload or (" + optimizer offload" if self.offload_optimizer else "")
        return f"ZeRO {self.stage}{offload}"


SETTINGS = (
    Setting(0),
    Setting(1),
    Setting(2),
    Setting(2, offload_optimizer=True),
    Setting(3),
    Setting(3, offload_optimizer=True),
    Setting(3, offload_optimizer=True, offload_params=True),
)


@dataclass(frozen=True)
class Budget:
    """Memory one worker may use: its GPU's (None for CPU workers) and its share of its
    node's host memory; ``where`` says where the numbers come from."""

    host: int
    accelerator: int | None = None
    where: str = ""


@dataclass
class Estimate:
    setting: Setting
    states: dict[str, int]  # raft.perf.zero_memory_estimate's parts
    activations: int
    overhead: int
    accelerator: int | None  # bytes on the worker's GPU (None: a CPU worker)
    host: int  # bytes of host memory
    fits: bool | None = None  # None: no budget to compare with, or its GPU memory is unknown
    why: list[str] = field(default_factory=list)


def activation_bytes(batch: int, seq_len: int, hidden: int, layers: int, heads: int, precision: str) -> int:
    """Activations kept for the backward pass (Korthikanti et al. 2022, no recomputation)."""
    if min(batch, seq_len, hidden, layers, heads) < 1:
        raise ValueError(
            f"bad shape: batch {batch}, seq_len {seq_len}, hidden {hidden}, layers {layers}, heads {heads}"
        )
    width = 4 if precision == "fp32" else 2
    per_layer = seq_len * batch * hidden * (34 + 5 * heads * seq_len / hidden) * width / 2
    return int(per_layer * layers)


def estimate(
    facts: ModelFacts,
    setting: Setting,
    *,
    world_size: int,
    batch: int,
    seq_len: int,
    precision: str,
    use_gpu: bool,
    budget: Budget | None = None,
) -> Estimate:
    """One worker's memory under ``setting``, and whether it fits ``budget``."""
    states = zero_memory_estimate(
        facts.params,
        facts.trainable,
        world_size,
        setting.stage,
        precision,
        setting.offload_optimizer,
        setting.offload_params,
    )
    activations = activation_bytes(batch, seq_len, facts.hidden, facts.layers, facts.heads, precision)
    if use_gpu:
        result = Estimate(
            setting,
            states,
            activations,
            GPU_OVERHEAD,
            accelerator=states["device"] + activations + GPU_OVERHEAD,
            host=states["host"] + GPU_WORKER_HOST_OVERHEAD,
        )
    else:
        result = Estimate(
            setting,
            states,
            activations,
            CPU_OVERHEAD,
            None,
            host=states["total"] + activations + CPU_OVERHEAD,
        )
    if budget is not None:
        gpu_unknown = result.accelerator is not None and budget.accelerator is None
        if result.accelerator is not None and not gpu_unknown and result.accelerator > budget.accelerator:
            result.why.append(f"GPU {gib(result.accelerator)} > {gib(budget.accelerator)}")
        if result.host > budget.host:
            result.why.append(f"host {gib(result.host)} > {gib(budget.host)}")
        # GPU memory unread (every GPU busy while probed): fits only as far as is known
        result.fits = False if result.why else None if gpu_unknown else True
    return result


def plan(
    facts: ModelFacts,
    *,
    world_size: int,
    batch: int,
    seq_len: int,
    precision: str,
    use_gpu: bool,
    budget: Budget | None = None,
) -> list[Estimate]:
    """Every setting, fastest first."""
    return [
        estimate(
            facts,
            setting,
            world_size=world_size,
            batch=batch,
            seq_len=seq_len,
            precision=precision,
            use_gpu=use_gpu,
            budget=budget,
        )
        for setting in SETTINGS
    ]


def recommend(estimates: list[Estimate]) -> Estimate | None:
    """The fastest setting that fits (None when none does or there is no budget)."""
    return next((e for e in estimates if e.fits), None)


def setting_of(spec: Any) -> Setting:
    ds = spec.deepspeed
    return Setting(ds.zero_stage, ds.offload_optimizer, ds.offload_params)


def spec_estimate(facts: ModelFacts, spec: Any, budget: Budget | None = None) -> Estimate:
    """The estimate for the spec's own setting."""
    return estimate(facts, setting_of(spec), budget=budget, **run_shape(spec, facts))


def run_shape(spec: Any, facts: ModelFacts) -> dict[str, Any]:
    """What, besides the model and the setting, decides a worker's memory. Positions a
    row: what the model's input size fixes (ViT patches, Whisper's 1500 encoder frames),
    else the task's max_length (text is padded to at most that), else 512."""
    precision = spec.train.precision
    if precision == "auto":
        precision = "bf16" if spec.scaling.use_gpu else "fp32"
    return {
        "world_size": spec.scaling.max_workers,
        "batch": spec.train.batch_size,
        "seq_len": facts.positions or getattr(spec.task, "max_length", None) or 512,
        "precision": precision,
        "use_gpu": spec.scaling.use_gpu,
    }


def gib(value: int | None) -> str:
    return "—" if value is None else f"{value / GiB:.2f} GiB"


def budget_from_nodes(
    nodes: list[dict[str, Any]], workers: int, cpus_per_worker: float, use_gpu: bool
) -> Budget:
    """Per-worker memory on the tightest node that can hold a worker. ``nodes``: dicts of
    ``memory`` (bytes tasks may use), ``cpus``, ``gpus`` and ``gpu_memory`` (bytes of its
    smallest GPU, or None). A node's host memory is shared by as many workers as it can
    hold, up to the run's workers."""
    shares, accelerators = [], []
    for node in nodes:
        if use_gpu:
            capacity = int(node.get("gpus") or 0)
        else:
            capacity = math.floor((node.get("cpus") or 0) / cpus_per_worker) if cpus_per_worker else 0
        if capacity < 1:
            continue
        shares.append(int(node["memory"]) // min(capacity, workers))
        if use_gpu and node.get("gpu_memory"):
            accelerators.append(int(node["gpu_memory"]))
    if not shares:
        raise ValueError("no node of the cluster can hold one worker of this spec")
    return Budget(
        host=min(shares),
        accelerator=min(accelerators) if accelerators else None,
        where=f"{len(shares)} node(s) that can hold a worker",
    )


# -- model facts --------------------------------------------------------------------------
def config_shape(config: dict[str, Any]) -> tuple[int, int, int]:
    """(layers, hidden, heads) from a config.json mapping (a nested text_config, as CLIP
    and other multimodal models have, when the top level names none)."""
    from types import SimpleNamespace

    from raft.perf import model_shape

    for candidate in (config, config.get("text_config") or {}, config.get("vision_config") or {}):
        try:
            layers, hidden = model_shape(SimpleNamespace(**candidate))
        except ValueError:
            continue
        heads = next(
            (
                candidate[k]
                for k in ("num_attention_heads", "n_head", "num_heads", "encoder_attention_heads")
                if candidate.get(k)
            ),
            max(1, hidden // 64),
        )
        return layers, hidden, int(heads)
    raise ValueError("config.json names no layer count and hidden width")


def weight_file_parameters(model_path: str) -> int:
    """Parameters in a model folder's safetensors files, from their headers alone."""
    total = 0
    files = sorted(Path(model_path).glob("*.safetensors"))
    if not files:
        raise ValueError(f"{model_path} has no *.safetensors files to count parameters from")
    for path in files:
        with open(path, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(size))
        for name, entry in header.items():
            if name != "__metadata__":
                total += math.prod(entry["shape"])
    return total


def upper_bound_facts(model_path: str) -> ModelFacts:
    """Counts from the weight files, every parameter trainable: the most any technique
    needs (a new head adds a few). Milliseconds: no model is built."""
    config = json.loads((Path(model_path) / "config.json").read_text())
    layers, hidden, heads = config_shape(config)
    params = weight_file_parameters(model_path)
    return ModelFacts(params, params, layers, hidden, heads, "upper bound", config_positions(config))


def counted_facts(spec: Any, labels: Any = None) -> ModelFacts:
    """Exact counts for the spec: its task's model built on torch's meta device (no
    weights read, no memory taken) with its technique applied."""
    import torch
    import transformers

    from raft import registry
    from raft.labels import LabelMap

    task = registry.get_task(spec.task.type)
    path = spec.model.path
    config = transformers.AutoConfig.from_pretrained(path, trust_remote_code=spec.model.trust_remote_code)
    names = getattr(spec.task, "labels", None)
    labels = labels or (LabelMap(tuple(names)) if names else None)
    if labels is not None and hasattr(config, "num_labels"):
        config.num_labels = labels.num_labels
    with torch.device("meta"):
        model = getattr(transformers, task.auto_class).from_config(
            config, trust_remote_code=spec.model.trust_remote_code
        )
        model = registry.apply_technique(model, spec.technique, task)
    params = sum(int(p.numel()) for p in model.parameters())
    trainable = sum(int(p.numel()) for p in model.parameters() if p.requires_grad)
    shape = config.to_dict()
    return ModelFacts(params, trainable, *config_shape(shape), "counted", config_positions(shape))


def config_positions(config: dict[str, Any]) -> int | None:
    """Positions a fixed-size input fills: image patches (+ the class token), or Whisper's
    encoder frames; None for text (its length is the task's max_length)."""
    if config.get("max_source_positions"):
        return int(config["max_source_positions"])
    vision = config.get("vision_config") or config
    if vision.get("image_size") and vision.get("patch_size"):
        return (int(vision["image_size"]) // int(vision["patch_size"])) ** 2 + 1
    return None


def local_budget(spec: Any) -> Budget:
    """This machine, for ``raft plan`` without a cluster: the memory free now, shared by
    the spec's workers; each GPU's free memory for GPU runs."""
    import psutil

    workers = spec.scaling.max_workers
    accelerator = None
    where = f"this machine: {gib(psutil.virtual_memory().available)} free, shared by {workers} worker(s)"
    if spec.scaling.use_gpu:
        import torch

        if torch.cuda.is_available():
            accelerator = min(torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count()))
            where += f", {torch.cuda.device_count()} GPU(s)"
        else:
            where += ", no GPU"
    return Budget(host=psutil.virtual_memory().available // workers, accelerator=accelerator, where=where)


def table(estimates: list[Estimate], asked: Setting | None = None) -> list[str]:
    """The comparison as markdown lines."""
    gpu = any(e.accelerator is not None for e in estimates)
    header = (
        ["setting", "model states", "activations", "process"] + (["GPU"] if gpu else []) + ["host", "fits"]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for e in estimates:
        fits = "—" if e.fits is None else "yes" if e.fits else "no: " + "; ".join(e.why)
        label = e.setting.label + (" (the spec's)" if e.setting == asked else "")
        cells = [label, gib(e.states["total"]), gib(e.activations), gib(e.overhead)]
        cells += [gib(e.accelerator)] if gpu else []
        cells += [gib(e.host), fits]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def as_dict(
    facts: ModelFacts,
    shape: dict[str, Any],
    budget: Budget,
    estimates: list[Estimate],
    best: Estimate | None,
    asked: Setting,
) -> dict[str, Any]:
    from dataclasses import asdict

    return {
        "model": asdict(facts),
        "run": shape,
        "budget": asdict(budget),
        "asked": asked.label,
        "recommended": best.setting.label if best else None,
        "settings": [
            {
                "setting": e.setting.label,
                "stage": e.setting.stage,
                "offload_optimizer": e.setting.offload_optimizer,
                "offload_params": e.setting.offload_params,
                "model_states": e.states,
                "activations": e.activations,
                "overhead": e.overhead,
                "accelerator": e.accelerator,
                "host": e.host,
                "fits": e.fits,
                "why": e.why,
            }
            for e in estimates
        ],
    }
