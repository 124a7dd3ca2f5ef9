"""Seconds to start DeepSpeed's comm layer in a fresh environment: DeepSpeed's own
``init_distributed`` against raft's worker (``raft.worker._init_deepspeed_comm``), which
skips the shared-memory all-reduce op only DeepSpeed's inference uses.

    python benchmarks/deepspeed_comm_init.py

Each side runs in its own process with an empty TORCH_EXTENSIONS_DIR, as on a machine (or a
new virtualenv) that has never built the op; one process, gloo, world size 1.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

CHILD = """
import os, sys, time
import torch.distributed as dist
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2], RANK="0", WORLD_SIZE="1",
                  LOCAL_RANK="0", DS_ACCELERATOR="cpu")
dist.init_process_group("gloo")
start = time.perf_counter()
if sys.argv[1] == "raft":
    from raft.worker import _init_deepspeed_comm
    _init_deepspeed_comm()
else:
    import deepspeed
    deepspeed.init_distributed(dist_backend="gloo")
print(f"RESULT {time.perf_counter() - start:.1f}")
"""


def measure(side: str, port: int) -> float:
    with tempfile.TemporaryDirectory() as extensions:
        env = {**os.environ, "TORCH_EXTENSIONS_DIR": extensions}
        out = subprocess.run(
            [sys.executable, "-c", CHILD, side, str(port)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    return float(next(line for line in out.stdout.splitlines() if line.startswith("RESULT")).split()[1])


def main() -> None:
    raft = measure("raft", 29611)
    plain = measure("deepspeed", 29612)
    print(
        f"comm init, fresh extensions dir: deepspeed.init_distributed {plain:.1f} s, raft's worker {raft:.1f} s"
    )


if __name__ == "__main__":
    main()
