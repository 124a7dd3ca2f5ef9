"""Spec → DeepSpeed config dict. Pure: no Ray, no DeepSpeed import.

raft owns the optimizer and schedule: a fused torch AdamW and a transformers schedule are
handed to ``deepspeed.initialize``, with optimizer offload too. There DeepSpeed would insist
on its own CPU Adam, a C++ op compiled on each machine's first run (2-3 minutes here);
fused torch AdamW steps CPU tensors as fast or faster (benchmarks/optimizer_step.py: 0.030
against 0.038 s a step for 22M parameters), so raft turns that insistence off
(``zero_force_ds_cpu_optimizer``). Declaring ``optimizer`` in ``deepspeed.config`` brings
DeepSpeed's own back.
"""

from __future__ import annotations

import copy
from typing import Any

# Normalisation and embedding weights, and biases, get no weight decay (the usual AdamW
# recipe from BERT onwards).
NO_DECAY_MARKERS = ("bias", "LayerNorm.weight", "layer_norm.weight", "layernorm.weight", "norm.weight")


def resolve_precision(precision: str, use_gpu: bool, bf16_supported: bool) -> str:
    """'auto' → bf16 where the GPU supports it, else fp32."""
    if precision != "auto":
        return precision
    return "bf16" if use_gpu and bf16_supported else "fp32"


def build_deepspeed_config(spec: Any, precision: str, world_size: int | None = None) -> dict[str, Any]:
    """The DeepSpeed config for one run (per-worker micro batch, ZeRO stage, offload...).
    ``world_size``: the workers actually running (an elastic run's may be below its most)."""
    ds = spec.deepspeed
    train = spec.train
    world_size = world_size or spec.scaling.max_workers
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if spec.scaling.elastic and ds.zero_stage in (1, 2):
        # Lets a ZeRO-1/2 checkpoint's partitioned optimizer state load into another
        # number of workers (an elastic run that lost or regained some).
        zero["elastic_checkpoint"] = True
    if ds.zero_stage >= 2:
        # Contiguous gradients avoid fragmentation. Overlapping the reduction with the
        # backward pass needs CUDA streams; on CPU (gloo) it buys nothing and DeepSpeed's
        # asynchronous bucket reduction has been seen to hang there.
        zero.update(contiguous_gradients=True, overlap_comm=spec.scaling.use_gpu)
    if ds.zero_stage == 3:
        # Lets the engine gather a full 16-bit state dict on rank 0 for export.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": spec.scaling.use_gpu}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": spec.scaling.use_gpu}

    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": train.batch_size,
        "gradient_accumulation_steps": train.gradient_accumulation_steps,
        "train_batch_size": train.batch_size * train.gradient_accumulation_steps * world_size,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        # raft prints its own progress; DeepSpeed's per-step lines would drown it.
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        # raft's torch AdamW is a client optimizer, which ZeRO treats as "untested".
        "zero_allow_untested_optimizer": True,
        # ...and which may step offloaded (CPU) optimizer state: see the module docstring.
        "zero_force_ds_cpu_optimizer": False,
    }
    if train.max_grad_norm is not None:
        config["gradient_clipping"] = train.max_grad_norm
    return deep_merge(config, ds.config)


# DeepSpeed's default for its gradient-reduce and all-gather buckets, in elements.
DEEPSPEED_BUCKET_ELEMENTS = 500_000_000
# Bucket sizes are rounded up to a multiple of this: DeepSpeed asserts that the all-gather
# bucket is a multiple of its NCCL alignment factor (2 elements in 16-bit), and a model's
# parameter count may be odd.
BUCKET_ALIGNMENT = 512


def size_buckets(
    config: dict[str, Any], trainable_parameters: int, user_config: dict[str, Any]
) -> dict[str, Any]:
    """Cap ZeRO's communication buckets at the model's trainable parameter count.

    DeepSpeed sizes them for billion-parameter models (5e8 elements). ZeRO-3 allocates its
    reduce bucket whole, so a 22M-parameter MiniLM worker held a 1.9 GB fp32 buffer beside
    217 MB of model states, more memory than ZeRO-0 took. A bucket no bigger than the
    gradients it can ever hold changes nothing else: every gradient still fits in one
    reduce (the size is rounded up to BUCKET_ALIGNMENT elements). Models over 5e8
    trainable parameters keep DeepSpeed's default; sizes set in
    ``deepspeed.config`` (``user_config``) are kept as written."""
    zero = config.get("zero_optimization", {})
    stage = zero.get("stage", 0)
    if not stage:
        return config
    keys = ["reduce_bucket_size"] + (["allgather_bucket_size"] if stage in (1, 2) else [])
    written = (user_config or {}).get("zero_optimization", {})
    aligned = -(-max(1, int(trainable_parameters)) // BUCKET_ALIGNMENT) * BUCKET_ALIGNMENT
    elements = min(DEEPSPEED_BUCKET_ELEMENTS, aligned)
    sized = copy.deepcopy(config)
    for key in keys:
        if key not in written:
            sized["zero_optimization"][key] = elements
    return sized


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Nested dict merge; ``override`` wins on conflicts."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def uses_client_optimizer(config: dict[str, Any]) -> bool:
    """True when raft builds the optimizer (the config declares none)."""
    return "optimizer" not in config


def parameter_groups(named_parameters: Any, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay for weight matrices, none for biases and norms."""
    decay, no_decay = [], []
    for name, parameter in named_parameters:
        if not parameter.requires_grad:
            continue
        target = no_decay if any(marker in name for marker in NO_DECAY_MARKERS) else decay
        target.append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def micro_batches_per_epoch(rows_per_worker: int, batch_size: int) -> int:
    """Batches one worker trains on per epoch (partial last batch included)."""
    return max(1, -(-rows_per_worker // batch_size))


def steps_per_epoch(rows_per_worker: int, batch_size: int, accumulation: int) -> int:
    """Optimizer steps per epoch for one worker's shard: every epoch ends on a step
    (``accumulation_step``), so a last group of fewer than ``accumulation`` batches is one."""
    return -(-micro_batches_per_epoch(rows_per_worker, batch_size) // accumulation)


def accumulation_step(index: int, micro_batches: int, accumulation: int) -> tuple[bool, float]:
    """For an epoch's batch ``index`` (of ``micro_batches``): whether an optimizer step
    follows it, and the factor to scale its loss by. Groups of ``accumulation`` batches
    make a step, and the epoch's last batch always does, so no step straddles two epochs
    (and the evaluation and checkpoint between them). DeepSpeed divides every loss by
    gradient_accumulation_steps; the batches of a shorter last group are scaled up so that
    its gradient too is the mean over its batches."""
    tail = micro_batches % accumulation
    ends_step = (index + 1) % accumulation == 0 or index + 1 >= micro_batches
    in_tail = tail and index >= micro_batches - tail
    return ends_step, accumulation / tail if in_tail else 1.0


def total_steps(rows_per_worker: int, spec: Any) -> int:
    per_epoch = steps_per_epoch(
        rows_per_worker, spec.train.batch_size, spec.train.gradient_accumulation_steps
    )
    steps = per_epoch * spec.train.epochs
    return min(steps, spec.train.max_steps) if spec.train.max_steps else steps


def resumed_total_steps(
    global_step: int, epoch: int, batches_into_epoch: int, rows_per_worker: int, spec: Any
) -> int:
    """The LR schedule's length for a run resumed at ``global_step`` (in ``epoch``, that
    many batches into it) with ``rows_per_worker`` rows a worker now: the steps taken, plus
    the rest at the rate of the workers running now. A run that resumes with other workers
    (elastic, or more workers asked for) steps at another rate than it began with: a
    schedule recounted from scratch would end before the run (the rest at a learning rate
    of 0) or after it (the rate never decayed)."""
    accumulation = spec.train.gradient_accumulation_steps
    per_epoch = steps_per_epoch(rows_per_worker, spec.train.batch_size, accumulation)
    rest_of_epoch = max(0, per_epoch - batches_into_epoch // accumulation) if epoch < spec.train.epochs else 0
    steps = global_step + rest_of_epoch + per_epoch * max(0, spec.train.epochs - epoch - 1)
    return min(steps, spec.train.max_steps) if spec.train.max_steps else steps


def reschedule(scheduler: Any, spec: Any, steps: int) -> None:
    """Give a restored ``LambdaLR`` schedule (transformers' ``get_scheduler``) the length
    ``steps``, keeping its position; the caller sets the learning rate from it."""
    import torch
    from transformers import get_scheduler

    groups = [{"params": [torch.zeros(1, requires_grad=True)]} for _ in scheduler.lr_lambdas]
    fresh = get_scheduler(
        spec.train.lr_scheduler,
        torch.optim.SGD(groups, lr=1.0),
        num_warmup_steps=warmup_steps(spec, steps),
        num_training_steps=steps,
    )
    scheduler.lr_lambdas = list(fresh.lr_lambdas)


def warmup_steps(spec: Any, steps: int) -> int:
    if spec.train.warmup_steps is not None:
        return spec.train.warmup_steps
    return int(spec.train.warmup_ratio * steps)
