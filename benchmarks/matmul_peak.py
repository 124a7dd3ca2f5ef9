"""The matmul peak the MFU figures divide by, measured on this machine in the same run.

    python -m benchmarks.matmul_peak                       # CPU: 2 processes × 1 thread, fp32
    python -m benchmarks.matmul_peak --device cuda --dtype bf16 --processes 1

CPU: as many concurrent processes as training workers, each with as many torch threads
as a worker has (1), each multiplying square fp32 matrices for a few seconds; the peak is
FLOP/s per process at its best size (2·n³ per product), so it counts the cores' sharing
the way the workers share them. GPU: one process, bf16, larger squares, timed with
synchronisation.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

CPU_SIZES = (1024, 1536, 2048)
GPU_SIZES = (4096, 8192)


def _measure(device: str, dtype_name: str, threads: int, sizes: tuple[int, ...], seconds: float) -> dict:
    import torch

    torch.set_num_threads(threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    by_size = {}
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        out = torch.empty(n, n, device=device, dtype=dtype)
        torch.matmul(a, b, out=out)  # warm-up
        sync()
        count, start = 0, time.perf_counter()
        while True:
            torch.matmul(a, b, out=out)
            count += 1
            if count % 8 == 0 or not device.startswith("cuda"):
                sync()
                if time.perf_counter() - start >= seconds:
                    break
        sync()
        elapsed = time.perf_counter() - start
        by_size[n] = 2 * n**3 * count / elapsed
    return by_size


def _child(device: str, dtype: str, threads: int, sizes: tuple, seconds: float, barrier, queue) -> None:
    import torch

    torch.set_num_threads(threads)
    barrier.wait()  # every process multiplies at the same time, as the workers train
    queue.put(_measure(device, dtype, threads, sizes, seconds))


def measure_peak(
    processes: int = 2,
    threads: int = 1,
    device: str = "cpu",
    dtype: str = "fp32",
    sizes: tuple[int, ...] | None = None,
    seconds: float = 2.0,
) -> dict[str, Any]:
    """FLOP/s per process at each size, concurrently in ``processes`` spawned processes;
    ``peak_flops``: the mean over processes of each one's best size."""
    import torch.multiprocessing as mp

    sizes = tuple(sizes or (GPU_SIZES if device.startswith("cuda") else CPU_SIZES))
    context = mp.get_context("spawn")
    barrier, queue = context.Barrier(processes), context.Queue()
    children = [
        context.Process(target=_child, args=(device, dtype, threads, sizes, seconds, barrier, queue))
        for _ in range(processes)
    ]
    for child in children:
        child.start()
    results = [queue.get(timeout=120 + 2 * seconds * len(sizes)) for _ in children]
    for child in children:
        child.join()
    best = [max(r.values()) for r in results]
    return {
        "device": device,
        "dtype": dtype,
        "processes": processes,
        "threads_per_process": threads,
        "seconds_per_size": seconds,
        "flops_by_size": [{str(n): r[n] for n in sizes} for r in results],
        "peak_flops": sum(best) / len(best),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--processes", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--sizes", type=int, nargs="+")
    args = parser.parse_args()
    gpu = args.device.startswith("cuda")
    result = measure_peak(
        processes=args.processes or (1 if gpu else 2),
        threads=args.threads,
        device=args.device,
        dtype=args.dtype or ("bf16" if gpu else "fp32"),
        sizes=tuple(args.sizes) if args.sizes else None,
        seconds=args.seconds,
    )
    print(f"peak {result['peak_flops'] / 1e9:.2f} GFLOP/s per process")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
