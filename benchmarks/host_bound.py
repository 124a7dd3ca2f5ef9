"""A CPU stand-in for a GPU run's host-bound steps: raft against the plain DeepSpeed loop
when each step is short, so per-step and per-epoch overhead shows.

    python benchmarks/host_bound.py [--technique lora] [--materialize auto|false] [--epochs 4]

On the H200 (benchmarks/results/2026-12-04-gpu.md) every loop was bound by the host, and
raft reached 0.60 of the plain DeepSpeed loop's tokens/s. The same kind of gap shows here
with a tiny model: a 2-layer Qwen2 (hidden 64, vocabulary 1,000) saved in bf16 as most
decoders are, trained on 64-token packed blocks in batches of 8 by one worker of one
thread, ZeRO 2, fp32 — about 12 ms a step. It runs ``raft train`` (epochs 2 onwards are
reported: the first includes start-up) and ``gpu_baseline.py --device cpu --tiny`` with
the same shape, batch and precision, and prints samples/s, data wait and the ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.gpu import LORA, save_random_decoder  # noqa: E402
from benchmarks.gpu_baseline import TINY_SHAPE  # noqa: E402

SEQ_LEN, BATCH = 64, 8


def build(root: Path, rows: int) -> tuple[Path, Path]:
    from raft.testing import make_byte_tokenizer, toy_text_rows, write_jsonl

    save_random_decoder(root / "model", TINY_SHAPE, make_byte_tokenizer(None))
    return root / "model", write_jsonl(toy_text_rows(rows), root / "train.jsonl")


def run_raft(root: Path, model: Path, data: Path, args: argparse.Namespace) -> list[dict]:
    import yaml

    technique = LORA if args.technique == "lora" else {"type": "full"}
    spec = {
        "model": {"path": str(model)},
        "task": {
            "type": "causal_lm",
            "format": "text",
            "max_length": SEQ_LEN,
            "generation": {"logged_samples": 0},
        },
        "technique": technique,
        "data": {"train": str(data), "materialize": {"auto": "auto", "false": False}[args.materialize]},
        "train": {
            "epochs": args.epochs,
            "batch_size": BATCH,
            "precision": "fp32",
            "log_every_n_steps": 10**6,
        },
        "scaling": {"num_workers": 1, "cpus_per_worker": 1},
        "deepspeed": {"zero_stage": 2},
        "tracking": {"mlflow": False, "tensorboard": False},
        "output": {"dir": str(root / "runs"), "name": "host-bound"},
    }
    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    raft = Path(sys.executable).parent / "raft"
    command = [str(raft)] if raft.exists() else [sys.executable, "-m", "raft"]
    subprocess.run(command + ["train", str(path)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    events = [json.loads(line) for line in (root / "runs/host-bound/metrics.jsonl").read_text().splitlines()]
    return [e for e in events if e.get("event") == "epoch" and e.get("epoch", 0) >= 2]


def run_plain(root: Path, args: argparse.Namespace) -> dict:
    result = root / "plain.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/gpu_baseline.py"), "--device", "cpu", "--tiny"]
        + ["--seq-len", str(SEQ_LEN), "--batch-size", str(BATCH), "--steps", "200", "--warmup", "10"]
        + ["--threads", "1", "--precision", "fp32", "--modes", "deepspeed", "--techniques", args.technique]
        + ["--result", str(result)],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return json.loads(result.read_text())["rows"][0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--technique", default="lora", choices=["lora", "full"])
    parser.add_argument("--materialize", default="auto", choices=["auto", "false"])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rows", type=int, default=6000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="raft-host-bound-") as folder:
        root = Path(folder)
        model, data = build(root, args.rows)
        epochs = run_raft(root, model, data, args)
        plain = run_plain(root, args)
    rates = [e["samples_per_second"] for e in epochs]
    waits = [e["data_wait_fraction"] for e in epochs]
    plain_rate = plain["tokens_per_second"] / SEQ_LEN
    print(
        f"{args.technique}, data.materialize {args.materialize}: raft epochs 2-{args.epochs} "
        f"{', '.join(f'{r:.1f}' for r in rates)} samples/s (median {statistics.median(rates):.1f}), "
        f"data wait {min(waits):.1%}-{max(waits):.1%}; plain DeepSpeed loop {plain_rate:.1f} samples/s "
        f"({plain['seconds_per_step'] * 1000:.1f} ms a step); ratio {statistics.median(rates) / plain_rate:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
