"""Plain single-GPU training loops on the GPU section's model: what raft's GPU figures
are judged against.

    python benchmarks/gpu_baseline.py [--steps 20] [--profile] [--result out.json]

The decoder is the GPU section's (Qwen2-0.5B's shape, random weights, built in memory),
fed random 8×512-token blocks on the GPU, so no data pipeline is timed. For LoRA and full
fine-tuning it runs two loops, each written as one usually would:

- ``torch``: the model in fp32 on the GPU, ``torch.autocast`` bf16, fused AdamW, a linear
  schedule and gradient clipping at 1.0;
- ``deepspeed``: a hand-written DeepSpeed engine with the very config raft builds for the
  section's spec (ZeRO 2, bf16, raft's fused torch AdamW as a client optimizer), the model
  loaded in bf16 as raft loads it: what raft adds on top of DeepSpeed shows against this.

Each loop takes ``--warmup`` steps, then times ``--steps`` between two synchronisations:
tokens/s, MFU against a bf16 matmul peak measured here, and peak device memory.
``--profile`` adds a torch.profiler table of three DeepSpeed full steps (the top kernels
by GPU time, the top operators by CPU time, and how busy the GPU was).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.gpu import GPU_FULL, LORA, MODEL_SHAPE  # noqa: E402

TINY_SHAPE = MODEL_SHAPE | {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "vocab_size": 1000,
}


def matmul_peak(device: str, seconds: float = 1.0) -> float:
    import torch

    n = 8192 if device == "cuda" else 512
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
        if count % 10 == 0:
            _sync(device)
    _sync(device)
    return 2 * n**3 * count / (time.perf_counter() - start)


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def build(shape: dict[str, Any], technique: str, dtype: Any, device: str) -> Any:
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.Qwen2Config(**shape)
    with torch.device(device):  # initialised where it trains: seconds, not a minute on CPU
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    if technique == "lora":  # raft's own LoRA recipe (alpha 2r, dropout 0.05), as in the section
        from raft import registry

        task = registry.get_task("causal_lm")
        model = registry.apply_technique(model, registry.techniques()["lora"].model_validate(LORA), task)
    return model


def flops_per_token(model: Any, shape: dict[str, Any], seq_len: int) -> float:
    """raft.perf's count, as the GPU section makes it (benchmarks.common.model_facts)."""
    from raft import perf

    counted = perf.non_embedding_parameters(model)
    if isinstance(counted, tuple):
        params, trainable = counted
    else:
        params, trainable = counted, sum(p.numel() for p in model.parameters() if p.requires_grad)
    return perf.training_flops_per_token(
        params, trainable, shape["num_hidden_layers"], shape["hidden_size"], seq_len
    )


def raft_deepspeed_config(technique: str, trainable: int, batch_size: int, precision: str) -> dict[str, Any]:
    """The config raft builds for the GPU section's spec."""
    from raft.deepspeed_config import build_deepspeed_config, size_buckets
    from raft.spec import validate

    spec = validate(
        {
            "model": {"path": "unused"},
            "task": {"type": "causal_lm", "format": "text", "max_length": GPU_FULL.seq_len},
            "technique": LORA if technique == "lora" else {"type": "full"},
            "data": {"train": "unused.jsonl"},
            "train": {"batch_size": batch_size, "precision": precision},
            "scaling": {"num_workers": 1, "use_gpu": precision == "bf16"},
            "deepspeed": {"zero_stage": 2},
        }
    )
    config = build_deepspeed_config(spec, precision)
    return size_buckets(config, trainable, spec.deepspeed.config)


def run_loop(mode: str, technique: str, args: argparse.Namespace, peak: float) -> dict[str, Any]:
    import torch
    from transformers import get_scheduler

    device = args.device
    shape = TINY_SHAPE if args.tiny else MODEL_SHAPE
    total_steps = args.warmup + args.steps
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    bf16 = args.precision == "bf16"
    # The plain loop keeps fp32 weights under autocast; DeepSpeed takes them in bf16, as
    # raft loads them.
    model = build(shape, technique, torch.bfloat16 if bf16 and mode == "deepspeed" else torch.float32, device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, fused=device == "cuda")
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=total_steps)
    engine = None
    if mode == "deepspeed":
        import deepspeed

        config = raft_deepspeed_config(
            technique, sum(p.numel() for p in trainable), args.batch_size, args.precision
        )
        engine, *_ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config
        )
    generator = torch.Generator(device=device).manual_seed(0)
    batches = [
        torch.randint(
            0, shape["vocab_size"], (args.batch_size, args.seq_len), device=device, generator=generator
        )
        for _ in range(4)
    ]

    def step(index: int) -> None:
        ids = batches[index % len(batches)]
        if engine is not None:
            loss = engine(input_ids=ids, labels=ids).loss
            engine.backward(loss)
            engine.step()
            return
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    (engine or model).train()
    for index in range(args.warmup):
        step(index)
    _sync(device)
    start = time.perf_counter()
    for index in range(args.steps):
        step(index)
    _sync(device)
    seconds = time.perf_counter() - start
    tokens = args.steps * args.batch_size * args.seq_len
    per_token = flops_per_token(model, shape, args.seq_len)
    row = {
        "mode": mode,
        "technique": technique,
        "seconds_per_step": seconds / args.steps,
        "tokens_per_second": tokens / seconds,
        "mfu": tokens / seconds * per_token / peak,
        "device_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
    }
    print(
        f"{mode:9s} {technique:4s}: {row['seconds_per_step'] * 1000:7.1f} ms/step, "
        f"{row['tokens_per_second']:9,.0f} tokens/s, MFU {row['mfu']:.1%}, "
        f"peak {row['device_peak_mb'] or 0:,.0f} MiB",
        flush=True,
    )
    if args.profile and mode == "deepspeed" and technique == "full":
        row["profile"] = profile(step, device)
    return row


def profile(step: Any, device: str) -> dict[str, Any]:
    import torch
    from torch.profiler import ProfilerActivity

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    _sync(device)
    start = time.perf_counter()
    with torch.profiler.profile(activities=activities) as prof:
        for index in range(3):
            step(index)
        _sync(device)
    wall = time.perf_counter() - start
    events = prof.key_averages()
    gpu_us = sum(e.self_device_time_total for e in events if e.device_type.name == "CUDA")
    by_gpu = events.table(
        sort_by="self_cuda_time_total" if device == "cuda" else "self_cpu_time_total", row_limit=15
    )
    by_cpu = events.table(sort_by="cpu_time_total", row_limit=15)
    print(by_gpu, by_cpu, sep="\n", flush=True)
    print(
        f"profile: 3 steps in {wall:.3f} s; GPU kernels {gpu_us / 1e6:.3f} s ({gpu_us / 1e6 / wall:.0%} busy)"
    )
    return {"wall_seconds": wall, "gpu_kernel_seconds": gpu_us / 1e6, "by_gpu": by_gpu, "by_cpu": by_cpu}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=GPU_FULL.batch_size)
    parser.add_argument("--seq-len", type=int, default=GPU_FULL.seq_len)
    parser.add_argument("--modes", default="torch,deepspeed")
    parser.add_argument("--techniques", default="lora,full")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model (checks the script on CPU)")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--result", help="write the rows here as JSON")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    peak = matmul_peak(args.device)
    print(
        f"matmul peak: {peak / 1e12:.1f} TFLOP/s ({'bf16' if args.device == 'cuda' else 'fp32'})", flush=True
    )
    rows = []
    for technique in args.techniques.split(","):
        for mode in args.modes.split(","):
            rows.append(run_loop(mode, technique, args, peak))
            if args.device == "cuda":
                torch.cuda.empty_cache()
    if args.result:
        Path(args.result).write_text(json.dumps({"peak_flops": peak, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
