"""One AdamW step over MiniLM-sized parameters (~26M) on one CPU thread, by implementation.

    python benchmarks/optimizer_step.py

Why raft hands DeepSpeed a fused torch AdamW: prints seconds per step for torch's default
(per-parameter loop), foreach, fused, and DeepSpeed's CPU Adam (used with optimizer offload).
"""

from __future__ import annotations

import os
import time

import torch


def parameters() -> list[torch.nn.Parameter]:
    torch.manual_seed(0)
    shapes = [1536 * 384] * 24 + [384 * 30522]  # 6 BERT layers' FFN-sized blocks + embeddings
    params = [torch.nn.Parameter(torch.randn(n)) for n in shapes]
    for p in params:
        p.grad = torch.randn_like(p)
    return params


def seconds_per_step(make, steps: int = 5) -> float:
    params = parameters()
    optimizer = make(params)
    optimizer.step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    candidates = {
        "torch AdamW (default)": lambda ps: torch.optim.AdamW(ps, lr=1e-4),
        "torch AdamW (foreach)": lambda ps: torch.optim.AdamW(ps, lr=1e-4, foreach=True),
        "torch AdamW (fused)": lambda ps: torch.optim.AdamW(ps, lr=1e-4, fused=True),
        "DeepSpeedCPUAdam": lambda ps: DeepSpeedCPUAdam(ps, lr=1e-4, adamw_mode=True),
    }
    print(f"{sum(p.numel() for p in parameters()):,} parameters, 1 thread")
    for name, make in candidates.items():
        print(f"{name:24s} {seconds_per_step(make):.3f} s/step", flush=True)


if __name__ == "__main__":
    main()
