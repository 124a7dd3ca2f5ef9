"""Where a run's fixed cost goes: the same tiny run three times in one warm cluster, every
output line stamped with seconds since start, plus a check of whether Ray hands an actor a
pooled worker process (it does not: each Train worker is a new process).

    python benchmarks/fit_timeline.py          # about 3 minutes here

Each run: a tiny BERT, full fine-tuning, ZeRO 0, 2 workers, 2 epochs of 600 rows. Read the
stages from the stamped lines: "[raft] run" (data checked) → "Requesting resources"
(Train controller up) → "Started training worker group" → "[raft] model:" (model and
DeepSpeed ready) → "before training" (data shards flowing) → "epoch 2/2" → "PROF fit".
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

CHILD = r"""
import os, tempfile, time
from pathlib import Path
import ray
from raft.resources import LOCAL_SYSTEM_CONFIG
from raft.spec import validate
from raft.testing import make_tiny_model, toy_sentiment_rows, write_jsonl
from raft.train import fit

root = Path(tempfile.mkdtemp(prefix="raft-timeline-"))
model = make_tiny_model(root / "tiny-bert")
train = write_jsonl(toy_sentiment_rows(600, seed=0), root / "train.jsonl")
val = write_jsonl(toy_sentiment_rows(120, seed=1), root / "validation.jsonl")
ray.init(address="local", num_cpus=4, include_dashboard=True, logging_level="WARNING", _system_config=LOCAL_SYSTEM_CONFIG)

@ray.remote(num_cpus=1)
def pid():
    time.sleep(0.5)
    return os.getpid()

@ray.remote(num_cpus=1)
class Probe:
    def pid(self):
        return os.getpid()

pooled = set(ray.get([pid.remote() for _ in range(4)]))
actors = [Probe.remote() for _ in range(2)]
print("PROF actor took a pooled worker process:", any(p in pooled for p in ray.get([a.pid.remote() for a in actors])), flush=True)
for a in actors:
    ray.kill(a)
for i in range(3):
    spec = validate({"model": {"path": str(model)}, "task": {"type": "sequence_classification", "max_length": 16},
        "technique": {"type": "full"}, "data": {"train": str(train), "validation": str(val)},
        "train": {"epochs": 2, "lr": 3e-3}, "scaling": {"num_workers": 2},
        "output": {"dir": str(root / "runs"), "name": f"r{i}"}})
    started = time.perf_counter()
    outcome = fit(spec)
    print(f"PROF fit {i}: {time.perf_counter() - started:.1f} s, training loop {outcome.summary['train_seconds']:.1f} s", flush=True)
"""

KEEP = (
    "PROF",
    "[raft] run",
    "Requesting resources",
    "Started training worker group",
    "[raft] model:",
    "before training",
    "epoch 2/2",
)


def main() -> None:
    started = time.monotonic()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "RAY_DEDUP_LOGS": "0"},
    )
    for line in child.stdout:
        if any(key in line for key in KEEP):
            print(f"{time.monotonic() - started:7.1f}  {line.rstrip()[:150]}", flush=True)
    sys.exit(child.wait())


if __name__ == "__main__":
    main()
