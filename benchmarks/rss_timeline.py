"""Each Train worker's resident memory over a run, stage by stage, with the run's samples/s.

    python benchmarks/rss_timeline.py [--zero-stage 3] [--rows 480] [--epochs 2]
    MALLOC_MMAP_THRESHOLD_=131072 python benchmarks/rss_timeline.py   # glibc's fixed threshold

Runs the memory section's MiniLM classification spec (full fine-tuning, 2 workers) with
``raft train`` and samples every ``ray::RayTrainWorker`` process's VmRSS ten times a second.
It prints each worker's peak and the highest RSS between raft's own stage stamps (the
run's ``summary.json`` timeline), then each epoch's samples/s. Environment variables reach
the workers of the local cluster ``raft train`` starts, so the second line above shows
what glibc's allocator settings do to a run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import common  # noqa: E402

MiB = 1024 * 1024


def worker_rss() -> dict[int, float]:
    """VmRSS (MiB) of every Ray Train worker process on this machine."""
    found = subprocess.run(["pgrep", "-f", "ray::RayTrainWorker"], capture_output=True, text=True)
    out = {}
    for pid in map(int, found.stdout.split()):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:  # ended between pgrep and the read
            continue
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        if match:
            out[pid] = int(match.group(1)) / 1024
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zero-stage", type=int, default=3, choices=[0, 1, 2, 3])
    parser.add_argument("--rows", type=int, default=480)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args(argv)
    import yaml

    with tempfile.TemporaryDirectory(prefix="raft-rss-") as folder:
        root = Path(folder)
        sizes = common.Sizes(train_rows=args.rows, validation_rows=32, epochs=args.epochs)
        ctx = common.Context(root=root, sizes=sizes)
        spec = common.classification_spec(ctx, "rss", "full", args.zero_stage, False, 2)
        (root / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        samples: list[tuple[float, int, float]] = []
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                now = time.time()
                samples.extend((now, pid, mb) for pid, mb in worker_rss().items())
                done.wait(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.time()
        env = os.environ | {"HF_HUB_OFFLINE": "1"}
        env.pop("RAY_ADDRESS", None)
        subprocess.run(
            common.raft_command() + ["train", str(root / "spec.yaml")],
            cwd=ROOT,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        done.set()
        sampler.join()
        summary = json.loads((root / "raft/rss/summary.json").read_text())
        events = [json.loads(line) for line in (root / "raft/rss/metrics.jsonl").read_text().splitlines()]
    allocator = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    print(
        f"ZeRO {args.zero_stage}, full, 2 workers, {args.rows} rows × {args.epochs} epochs; "
        f"allocator settings: {allocator or 'glibc defaults'}"
    )
    print(f"raft's own figures: {summary.get('memory')}")
    stamps = sorted((at, name) for name, at in (summary.get("timeline") or {}).items())
    for pid in sorted({pid for _, pid, _ in samples}):
        series = [(at, mb) for at, p, mb in samples if p == pid]
        peak_at, peak = max(series, key=lambda item: item[1])
        print(f"worker {pid}: peak RSS {peak:,.0f} MiB at +{peak_at - start:.1f} s")
        previous = start
        for at, name in stamps + [(time.time(), "end of run")]:
            window = [mb for when, mb in series if previous <= when < at]
            if window:
                print(f"  up to {name:<18} (+{at - start:5.1f} s): highest {max(window):7,.0f} MiB")
            previous = at
    for event in events:
        if event.get("event") == "epoch" and event.get("epoch", 0) >= 1:
            print(f"epoch {event['epoch']}: {event.get('samples_per_second', 0):.1f} samples/s per worker")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
