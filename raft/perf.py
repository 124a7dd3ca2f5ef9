"""Performance arithmetic (no Ray): FLOPs per trained token, per-worker memory of model
states under each ZeRO stage, and live tensor memory of a process.

FLOPs follow the usual accounting (Kaplan et al.; PaLM's appendix for attention): a
matrix multiply with N weights costs 2N FLOPs per token forward; backward costs 2N for
the gradients of the activations (needed whenever anything below is trained) plus 2N for
the weights' own gradients, only for the weights that train. Full fine-tuning is then
6N per token; LoRA of a frozen base is 4N + 2·(adapter weights) (a slight overcount:
no activation gradient flows below the lowest adapter; in a 6-layer model about 3%). Attention's two
products (QKᵀ and AV) add 4·L·s·d per token forward and twice that backward: 12·L·s·d.
N excludes embedding lookups (no multiply), but not an output projection tied to them.
"""

from __future__ import annotations

import gc
import itertools
from collections.abc import Iterable
from typing import Any

MiB = 1024 * 1024


def training_flops_per_token(params: int, trainable: int, layers: int, hidden: int, seq_len: int) -> float:
    """FLOPs to train on one token: ``params`` non-embedding weights (frozen or not), of
    which ``trainable`` get gradients; ``layers`` × ``hidden`` attention at ``seq_len``."""
    if min(params, trainable, layers, hidden, seq_len) < 0 or trainable > params:
        raise ValueError(
            f"bad shape: params {params}, trainable {trainable}, layers {layers}, hidden {hidden}, "
            f"seq_len {seq_len}"
        )
    dense = 2 * params + 2 * params + 2 * trainable  # forward, activation grads, weight grads
    attention = 12 * layers * seq_len * hidden
    return float(dense + attention)


def model_shape(config: Any) -> tuple[int, int]:
    """(layers, hidden width) of a Hugging Face config; an encoder-decoder counts both stacks."""
    hidden = next(
        (getattr(config, k) for k in ("hidden_size", "n_embd", "d_model") if getattr(config, k, None)), None
    )
    layers = next(
        (
            getattr(config, k)
            for k in ("num_hidden_layers", "n_layer", "num_layers", "encoder_layers")
            if getattr(config, k, None)
        ),
        None,
    )
    if hidden is None or layers is None:
        raise ValueError(f"{type(config).__name__} names no layer count and hidden width")
    decoder = getattr(config, "num_decoder_layers", None) or getattr(config, "decoder_layers", None)
    if getattr(config, "is_encoder_decoder", False) and decoder:
        layers += decoder
    return int(layers), int(hidden)


def non_embedding_parameters(model: Any) -> tuple[int, int]:
    """(all, trainable) parameters that take part in matrix multiplies: embedding tables
    are left out unless tied to the output projection (then the lm head multiplies by them)."""
    import torch

    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = output.weight if output is not None and hasattr(output, "weight") else None
    lookup = {
        id(m.weight)
        for m in model.modules()
        if isinstance(m, torch.nn.Embedding) and (tied is None or m.weight is not tied)
    }
    total = trainable = 0
    for parameter in model.parameters():
        if id(parameter) in lookup:
            continue
        count = parameter.ds_numel if hasattr(parameter, "ds_numel") else parameter.numel()  # ZeRO-3
        total += count
        trainable += count if parameter.requires_grad else 0
    return total, trainable


def zero_memory_estimate(
    params: int,
    trainable: int,
    world_size: int,
    stage: int,
    precision: str = "fp32",
    offload_optimizer: bool = False,
    offload_params: bool = False,
) -> dict[str, int]:
    """Bytes of model states one worker holds, by DeepSpeed's layout with Adam.

    Parameters in the training precision (4 bytes in fp32, 2 in bf16/fp16); gradients of
    the trainable ones likewise; the optimizer keeps Adam's two fp32 moments (8 bytes) and,
    as DeepSpeed counts it, an fp32 master copy of what it steps with that copy's fp32
    gradient (8 more). ZeRO ≥ 1 keeps the copy even in fp32 training (it flattens its
    partition into buffers of its own); plain fp32 at stage 0 steps the parameters
    themselves. ZeRO 1 partitions the optimizer, 2 also the gradients, 3 also the
    parameters, over ``world_size``. Offloaded states move from ``device`` to ``host``;
    offloading the optimizer moves the gradient partition with it (ZeRO-Offload steps on
    the CPU, and the device holds gradients only in transient buckets). Mixed precision is
    DeepSpeed's own estimate exactly at ZeRO 2 (2N + 18N / world, 2N with offload) and at
    ZeRO 3 with offload (2N / world, 0 with parameters offloaded too)."""
    if stage not in (0, 1, 2, 3) or world_size < 1:
        raise ValueError(f"stage must be 0-3 and world_size ≥ 1, not {stage}, {world_size}")
    if offload_params and stage != 3 or offload_optimizer and stage == 0:
        raise ValueError("offload_params needs ZeRO 3; offload_optimizer needs ZeRO 1-3")
    width = 4 if precision == "fp32" else 2
    master = 8 if stage >= 1 or precision != "fp32" else 0
    parts = {
        "params": width * params // (world_size if stage == 3 else 1),
        "grads": width * trainable // (world_size if stage >= 2 else 1),
        "optimizer": (8 + master) * trainable // (world_size if stage >= 1 else 1),
    }
    host = (parts["optimizer"] + parts["grads"] if offload_optimizer else 0) + (
        parts["params"] if offload_params else 0
    )
    device = sum(parts.values()) - host
    return parts | {"device": device, "host": host, "total": device + host}


def tensor_bytes(tensors: Iterable[Any]) -> int:
    """Bytes of the storages behind ``tensors``, each storage once (views share one)."""
    seen: dict[int, int] = {}
    for tensor in tensors:
        try:
            if tensor is None or tensor.is_meta:
                continue
            storage = tensor.untyped_storage()
        except Exception:  # some tensor subclasses have no storage
            continue
        seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
    seen.pop(0, None)  # empty storages
    return sum(seen.values())


def live_tensor_bytes(also: Iterable[Any] = ()) -> int:
    """Bytes of the torch tensor storages alive in this process, each once: every tensor
    the garbage collector sees, plus ``also`` (tensors that may live in C++ only, as
    gradients do until Python asks for them). About 0.1 s."""
    import torch

    # (type(), not isinstance: some module objects warn when asked their __class__)
    found = (obj for obj in gc.get_objects() if issubclass(type(obj), torch.Tensor))
    return tensor_bytes(itertools.chain(found, also))


def peak_rss_bytes() -> int:
    """The process's peak resident memory (Linux reports KiB, macOS bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


# A run's stamps in order, each named for the stage that ends at it: the driver stamps
# the first three, rank 0's worker the rest (unix time: one clock per machine).
STAGES = (
    ("fit_started", "imports"),
    ("cluster_ready", "checks and cluster start"),
    ("data_ready", "data check"),
    ("workers_started", "Train worker group"),
    ("model_loaded", "model load"),
    ("engine_ready", "DeepSpeed init"),
    ("evaluated", "evaluation before training"),
    ("first_batch", "first training batch"),
    ("first_step", "first optimizer step"),
)


def first_step_breakdown(
    timeline: dict[str, float], command_started: float | None = None
) -> dict[str, float]:
    """Seconds each stage took up to the first optimizer step, from unix-time stamps
    (``command_started``: when the process began, if known); stages not stamped are left out."""
    previous = command_started
    out: dict[str, float] = {}
    for key, label in STAGES:
        if key not in timeline:
            continue
        if previous is not None:
            out[label] = round(timeline[key] - previous, 3)
        previous = timeline[key]
    return out
