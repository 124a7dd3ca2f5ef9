"""The GPU section (``python -m benchmarks --gpu``): one GPU worker, bf16, a ~0.5B decoder.

The model has Qwen2-0.5B's shape (hidden 896, 24 layers, 14 heads, 2 KV heads, MLP 4864,
vocabulary 151,936, tied embeddings: 494M parameters) with random weights, built from its
config and saved with a byte-level BPE tokenizer trained here on the topic sentences (no
hub access). The task is causal_lm on packed text (512-token blocks); raft trains it with
LoRA (r 8 on q/k/v/o) and in full, each a separate ``raft train`` with a fresh local
cluster, 2 short epochs. Figures: tokens/s, MFU against a bf16 matmul peak measured on
the same GPU in the same run, peak device memory next to raft.perf's estimate, data wait
and time to the first step, then the same figures for plain torch and plain DeepSpeed
loops on the same model and batches (benchmarks/gpu_baseline.py) beside them. MLflow
tracking is off here (its cost is a CPU figure).
``--dry-run`` builds the model, data and specs (on CPU too)
and checks them as ``raft train`` would, then stops before training.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import Context
from benchmarks.report import figure, target
from benchmarks.sections import DATA_STALL_TARGET, THROUGHPUT_TARGET, MiB

# Qwen2-0.5B's shape; random weights.
MODEL_SHAPE = {
    "hidden_size": 896,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "intermediate_size": 4864,
    "vocab_size": 151936,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": True,
    "rope_theta": 1000000.0,
}
LORA = {"type": "lora", "r": 8, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
ZERO_STAGE = 2


@dataclass
class GpuSizes:
    seq_len: int = 512
    batch_size: int = 8
    steps_per_epoch: int = 48
    validation_blocks: int = 16
    epochs: int = 2
    lr: float = 1e-4
    cpus_per_worker: int = 4
    matmul_seconds: float = 3.0


GPU_FULL = GpuSizes()
GPU_QUICK = GpuSizes(steps_per_epoch=8, validation_blocks=8, matmul_seconds=1.0)


def build_model(directory: Path) -> Path:
    """Save the random-weight decoder (bf16 safetensors, ~1 GB) and its tokenizer, once."""
    if (directory / "config.json").is_file() and any(directory.glob("*.safetensors")):
        return directory
    from raft.testing import make_byte_tokenizer, word_corpus

    words = sorted({w.strip(".,!?") for text in _sentences() for w in text.split() if w.strip(".,!?")})
    total = save_random_decoder(
        directory, MODEL_SHAPE, make_byte_tokenizer(word_corpus(words), vocab_size=2000)
    )
    print(f"  built a {total / 1e6:.0f}M-parameter Qwen2-shaped decoder in {directory}", flush=True)
    return directory


def save_random_decoder(directory: Path, shape: dict[str, Any], tokenizer: Any) -> int:
    """A Qwen2 of ``shape`` with random weights, saved in bf16 (as most decoders ship) with
    ``tokenizer``; returns its parameter count."""
    import torch
    import transformers

    config = transformers.Qwen2Config(
        **shape,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def _sentences() -> list[str]:
    return [
        json.loads(line)["text"]
        for line in (common.TOPICS / "train.jsonl").read_text().splitlines()
        if line.strip()
    ]


def text_rows(tokenizer: Any, tokens_needed: int, seed: int) -> tuple[list[dict], int]:
    """Documents of 30-60 topic sentences until they hold ``tokens_needed`` tokens (+15%
    for the partial blocks packing drops); returns (rows, tokens)."""
    sentences = _sentences()
    rng = random.Random(seed)
    rows, tokens = [], 0
    while tokens < tokens_needed * 1.15:
        text = " ".join(rng.choice(sentences) for _ in range(rng.randint(30, 60)))
        rows.append({"text": text})
        tokens += len(tokenizer(text)["input_ids"]) + 1  # + EOS
    return rows, tokens


def prepare(ctx: Context, sizes: GpuSizes) -> dict[str, Any]:
    """Model, data and the two specs in the run folder."""
    if "gpu" in ctx.cache:
        return ctx.cache["gpu"]
    from transformers import AutoTokenizer

    model_dir = build_model(ctx.root / "model")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    train_rows, train_tokens = text_rows(
        tokenizer, sizes.steps_per_epoch * sizes.batch_size * sizes.seq_len, seed=0
    )
    validation_rows, validation_tokens = text_rows(tokenizer, sizes.validation_blocks * sizes.seq_len, seed=1)
    data = {
        "train": common.write_jsonl(train_rows, ctx.root / "data/train.jsonl"),
        "validation": common.write_jsonl(validation_rows, ctx.root / "data/validation.jsonl"),
    }
    ctx.data_facts = {
        "train_documents": len(train_rows),
        "train_tokens": train_tokens,
        "validation_tokens": validation_tokens,
        "seq_len": sizes.seq_len,
        "batch_size": sizes.batch_size,
        "epochs": sizes.epochs,
        "expected_steps_per_epoch": train_tokens // sizes.seq_len // sizes.batch_size,
    }
    print(
        f"data: {len(train_rows)} documents, {train_tokens:,} tokens "
        f"(~{ctx.data_facts['expected_steps_per_epoch']} steps of {sizes.batch_size}×{sizes.seq_len} an epoch)",
        flush=True,
    )
    task_doc = {
        "type": "causal_lm",
        "format": "text",
        "max_length": sizes.seq_len,
        "generation": {"logged_samples": 0},
    }
    specs = {}
    for technique_doc in (LORA, {"type": "full"}):
        name = f"gpu-{technique_doc['type']}"
        specs[technique_doc["type"]] = {
            "model": {"path": str(model_dir)},
            "task": task_doc,
            "technique": technique_doc,
            "data": {"train": str(data["train"]), "validation": str(data["validation"])},
            "train": {
                "epochs": sizes.epochs,
                "batch_size": sizes.batch_size,
                "lr": sizes.lr,
                "precision": "bf16",
                "log_every_n_steps": 100000,
            },
            "scaling": {"num_workers": 1, "use_gpu": True, "cpus_per_worker": sizes.cpus_per_worker},
            "deepspeed": {"zero_stage": ZERO_STAGE},
            # The section measures training; tracking's own cost is measured on CPU, and
            # MLflow would copy the ~1 GB full model into its artifact store.
            "tracking": {"mlflow": False},
            "output": {"dir": str(ctx.root / "raft"), "name": name},
        }
    prepared = {"model_dir": model_dir, "data": data, "specs": specs, "task": task_doc}
    ctx.cache["gpu"] = prepared
    return prepared


def check(ctx: Context, sizes: GpuSizes) -> dict[str, Any]:
    """What --dry-run does: prepare, validate each spec as raft train does before any
    cluster (model folder, tokenizer, data files), and the FLOP and memory arithmetic."""
    from raft.spec import validate
    from raft.train import check_inputs

    prepared = prepare(ctx, sizes)
    perf = common.perf_module()
    plan = {}
    for technique, spec_doc in prepared["specs"].items():
        check_inputs(validate(spec_doc))
        facts = common.model_facts(ctx, str(prepared["model_dir"]), prepared["task"], spec_doc["technique"])
        per_token = perf.training_flops_per_token(
            facts["non_embedding_params"],
            facts["non_embedding_trainable"],
            facts["layers"],
            facts["hidden"],
            sizes.seq_len,
        )
        estimate = perf.zero_memory_estimate(
            facts["total_params"], facts["trainable_params"], world_size=1, stage=ZERO_STAGE, precision="bf16"
        )
        plan[technique] = {"model": facts, "flops_per_token": per_token, "estimate_bytes": estimate}
        print(
            f"  {technique}: {facts['total_params'] / 1e6:.0f}M parameters, "
            f"{facts['trainable_params'] / 1e6:.2f}M trainable, {per_token / 1e9:.2f} GFLOP per token, "
            f"model states ≈ {estimate['device'] / MiB:,.0f} MiB on the GPU; spec checked",
            flush=True,
        )
    return plan


def gpu(ctx: Context, sizes: GpuSizes) -> dict[str, Any]:
    """Train LoRA and full on one GPU; tokens/s, MFU, device memory, data wait, first step."""
    plan = check(ctx, sizes)
    prepared = prepare(ctx, sizes)
    measured_peak = common.peak(ctx, "cuda", processes=1, dtype="bf16")
    peak_flops = measured_peak["peak_flops"]
    figures, runs, errors = [], [], {}
    for technique, spec_doc in prepared["specs"].items():
        try:  # one technique's failure does not lose the other's figures
            run = common.run_raft_spec(
                ctx, spec_doc["output"]["name"], spec_doc, f"raft {technique}, 1 GPU, bf16, ZeRO {ZERO_STAGE}"
            )
        except common.BenchError as error:
            print(f"  {technique} FAILED: {error}", flush=True)
            errors[technique] = str(error)
            continue
        print("  " + common.describe_run(run), flush=True)
        epoch = common.steady_epoch(run)
        facts = plan[technique]["model"]
        flops = common.achieved_flops(facts, epoch)
        device_peak = (common.memory(run)["device_peak_mb"] or [None])[0]
        estimate_mb = plan[technique]["estimate_bytes"]["device"] / MiB
        stamps = common.timeline(run)
        row = common.run_row(run) | flops
        row |= {
            "mfu": flops["achieved_flops"] / peak_flops,
            "device_peak_mb": device_peak,
            "estimate_mb": estimate_mb,
            "first_step_seconds": stamps["first_step"] - run["t0"],
        }
        runs.append(row | {"technique": technique})
        figures += [
            figure("gpu", f"tokens/s, {technique}", epoch["tokens_per_second"], unit="tokens/s"),
            figure("gpu", f"MFU, {technique} (bf16 matmul peak)", row["mfu"], unit="%"),
            figure(
                "gpu",
                f"peak device memory, {technique}",
                device_peak,
                estimate_mb,
                unit="MiB",
                baseline_label="raft.perf model-state estimate",
            ),
            figure(
                "gpu",
                f"data wait, {technique}",
                epoch["data_wait_fraction"],
                unit="%",
                goal=target("value", "<", DATA_STALL_TARGET),
            ),
            figure("gpu", f"seconds to the first step, {technique}", row["first_step_seconds"], unit="s"),
        ]
    if errors and not runs:
        raise common.BenchError("; ".join(f"{t}: {e}" for t, e in errors.items()))
    try:
        baseline = plain_loops(ctx, sizes)
        figures += baseline_figures(runs, baseline["rows"])
    except common.BenchError as error:  # raft's own figures stand without it
        print(f"  plain loops FAILED: {error}", flush=True)
        baseline = {"error": str(error)}
    return {
        "figures": figures,
        "runs": runs,
        "errors": errors,
        "baseline": baseline,
        "peak": measured_peak,
        "peak_flops": peak_flops,
        "plan": plan,
        "notes": [
            f"Qwen2-0.5B-shaped decoder, random weights; {sizes.batch_size}×{sizes.seq_len}-token packed "
            f"batches, bf16, ZeRO {ZERO_STAGE}, 1 worker; bf16 matmul peak {peak_flops / 1e12:.1f} TFLOP/s "
            "measured in this run."
        ],
    }


def plain_loops(ctx: Context, sizes: GpuSizes) -> dict[str, Any]:
    """benchmarks/gpu_baseline.py in a subprocess (the GPU to itself, no Ray): the plain
    torch and plain DeepSpeed loops on the same model and batch shape."""
    result = ctx.root / "gpu_baseline.json"
    log = ctx.root / "logs" / "gpu_baseline.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        str(common.ROOT / "benchmarks" / "gpu_baseline.py"),
        "--batch-size",
        str(sizes.batch_size),
        "--seq-len",
        str(sizes.seq_len),
        "--result",
        str(result),
    ]
    print(f"  running the plain loops: {' '.join(command[1:])} (log: {log})", flush=True)
    with open(log, "w") as out:
        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=common.ROOT).returncode
    if code != 0 or not result.is_file():
        raise common.BenchError(f"the plain loops failed (exit {code}); log {log}:\n{common.tail(log)}")
    return json.loads(result.read_text()) | {"log": common.display_path(log)}


def baseline_figures(runs: list[dict[str, Any]], plain: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """raft's steady-epoch tokens/s and device peak beside the plain loops' for the same
    technique: against plain DeepSpeed (what raft adds to DeepSpeed, target as on CPU)
    and against plain torch (what DeepSpeed itself costs on one GPU)."""
    by = {(row["mode"], row["technique"]): row for row in plain}
    figures = []
    for run in runs:
        technique = run["technique"]
        for mode, label, goal in (
            ("deepspeed", "plain DeepSpeed loop", target("ratio", ">=", THROUGHPUT_TARGET)),
            ("torch", "plain torch loop", None),
        ):
            row = by.get((mode, technique))
            if row is None:
                continue
            figures.append(
                figure(
                    "gpu",
                    f"tokens/s against the {label}, {technique}",
                    run["tokens_per_second"],
                    row["tokens_per_second"],
                    unit="tokens/s",
                    baseline_label=label,
                    goal=goal,
                )
            )
        row = by.get(("deepspeed", technique))
        if row is not None and run.get("device_peak_mb") is not None:
            figures.append(
                figure(
                    "gpu",
                    f"peak device memory against the plain DeepSpeed loop, {technique}",
                    run["device_peak_mb"],
                    row["device_peak_mb"],
                    unit="MiB",
                    baseline_label="plain DeepSpeed loop",
                )
            )
    return figures
