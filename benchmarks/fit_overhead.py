"""Fixed cost of a run: several tiny jobs in one Ray cluster, with Ray's default worker
reaping and with raft's worker reuse (raft.resources.WORKER_REUSE_SYSTEM_CONFIG).

    python benchmarks/fit_overhead.py            # 3 jobs per setting (about 8 minutes here)
    python benchmarks/fit_overhead.py --jobs 2 --only reuse

Each job is a 1-epoch LoRA chat SFT of a tiny Llama (600 rows, 2 workers, ZeRO 2), so
nearly all of its wall time is start-up: Ray Data's row check, the Train worker group,
model + DeepSpeed, the first pass over each shard, checkpoint and export. Each setting gets
a fresh cluster in a fresh process. Prints wall seconds per job and the training loop's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one_setting(setting: str, jobs: int) -> list[dict]:
    import ray

    from raft.resources import WORKER_REUSE_SYSTEM_CONFIG
    from raft.spec import validate
    from raft.testing import make_tiny_generative_model, toy_sft_rows, write_jsonl
    from raft.train import fit

    root = Path(tempfile.mkdtemp(prefix=f"raft-overhead-{setting}-"))
    model = make_tiny_generative_model(root / "model", "causal_lm")
    train = write_jsonl(toy_sft_rows(600, seed=0, chat=True), root / "train.jsonl")
    validation = write_jsonl(toy_sft_rows(60, seed=1, chat=True), root / "validation.jsonl")
    extra = {"_system_config": WORKER_REUSE_SYSTEM_CONFIG} if setting == "reuse" else {}
    ray.init(address="local", num_cpus=4, include_dashboard=True, logging_level="WARNING", **extra)
    results = []
    for job in range(jobs):
        spec = validate(
            {
                "model": {"path": str(model)},
                "task": {"type": "causal_lm", "format": "chat", "max_length": 48},
                "technique": {"type": "lora", "r": 8},
                "data": {"train": str(train), "validation": str(validation)},
                "train": {"epochs": 1, "batch_size": 16},
                "scaling": {"num_workers": 2},
                "deepspeed": {"zero_stage": 2},
                "output": {"dir": str(root / f"runs{job}")},
            }
        )
        started = time.perf_counter()
        outcome = fit(spec)
        results.append(
            {
                "setting": setting,
                "job": job + 1,
                "wall_s": round(time.perf_counter() - started, 1),
                "train_loop_s": round(outcome.summary["train_seconds"], 1),
            }
        )
    ray.shutdown()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--only", choices=["default", "reuse"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(one_setting(args.child, args.jobs)), flush=True)
        return
    rows = []
    for setting in [args.only] if args.only else ["default", "reuse"]:
        out = subprocess.run(
            [sys.executable, __file__, "--child", setting, "--jobs", str(args.jobs)],
            capture_output=True,
            text=True,
            env=os.environ | {"HF_HUB_OFFLINE": "1"},
            cwd=ROOT,
        )
        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if out.returncode != 0 or not lines:
            sys.exit(f"{setting} failed:\n{out.stderr[-3000:]}")
        rows += json.loads(lines[-1].removeprefix("RESULT "))
    print(f"{'setting':8} {'job':>3} {'wall s':>7} {'train loop s':>13}")
    for row in rows:
        print(f"{row['setting']:8} {row['job']:>3} {row['wall_s']:>7} {row['train_loop_s']:>13}")


if __name__ == "__main__":
    main()
