"""raft's benchmark suite: every figure side by side, measured in one run.

    python -m benchmarks                       # the CPU suite (make bench), about an hour on 2 cores
    python -m benchmarks --quick               # tiny sizes: a smoke test
    python -m benchmarks --only throughput,first_step
    python -m benchmarks --only serve          # runs benchmarks/serve_batching.py (slow), then collects
    python -m benchmarks --only tune           # runs benchmarks/tune_asha_vs_fifo.py (slow), then collects
    python -m benchmarks --address HEAD:6379   # 2 nodes vs 1 and the first step on a running cluster too
    python -m benchmarks --gpu [--dry-run]     # one GPU, bf16, a 0.5B decoder

Sections: throughput (raft ZeRO 0/2/3 vs a plain PyTorch DDP loop, medians of --repeats
round-robin runs), padding (length-grouped batching on varied-length rows), mfu (achieved FLOP/s
over a matmul peak measured in the same run), first_step (command start to the first
optimizer step, by stage), data_stall (time waiting for batches), memory (per-worker
tensors and RSS vs estimates), scaling (1 vs 2 workers), collected (the serve and search
benchmarks' newest results). All use all-MiniLM-L6-v2 on long topic texts (128 tokens),
batch 16, 2 epochs; the second epoch is the steady state. Each raft run is ``raft train``
in a subprocess with a fresh local Ray cluster.

Writes <output-dir>/<date>[-gpu][-quick].json (figures, details, machine facts), .md (a
table: figure, raft, baseline, ratio, target, met) and -*.png plots; run outputs go to
<output-dir>/runs/ (git-ignored). A report of the same day and kind is updated: sections
not run this time keep their earlier figures (each says when it was measured).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks import common, report, sections
from benchmarks.common import ROOT, Context

RESULTS = ROOT / "benchmarks/results"
# The report's order; DEFAULT runs these; EXTRA only when named in --only.
ORDER = ["throughput", "mfu", "first_step", "data_stall", "padding", "memory", "scaling", "collected"]
EXTRA = ["serve", "tune"]
# Execution order: data_stall reads every raft run made before it.
EXECUTION = [
    "throughput",
    "mfu",
    "first_step",
    "padding",
    "memory",
    "scaling",
    "data_stall",
    "collected",
    "serve",
    "tune",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", help=f"comma-separated sections: {', '.join(ORDER + EXTRA)}")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--gpu", action="store_true", help="the GPU section instead (one GPU worker, bf16)")
    parser.add_argument("--dry-run", action="store_true", help="build data, model and specs, then stop")
    parser.add_argument(
        "--output-dir", default=str(RESULTS), help="where the report goes (default: %(default)s)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="runs of every throughput config, round-robin; figures are medians (default %(default)s; 1 with --quick)",
    )
    parser.add_argument(
        "--address", help="a Ray cluster (ray://HEAD:10001) for the multi-node scaling figure"
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    args.sections = selected_sections(args.only, args.gpu)
    return args


def selected_sections(only: str | None, gpu: bool) -> list[str]:
    if gpu:
        return ["gpu"]
    if not only:
        return [name for name in EXECUTION if name in ORDER]
    wanted = [name.strip() for name in only.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in ORDER + EXTRA]
    if unknown:
        raise SystemExit(f"--only: unknown section(s) {unknown}; known: {', '.join(ORDER + EXTRA)}")
    return [name for name in EXECUTION if name in wanted]


def report_stem(date: str, gpu: bool, quick: bool) -> str:
    return date + ("-gpu" if gpu else "") + ("-quick" if quick else "")


def machine_facts(gpu: bool) -> dict[str, Any]:
    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "absent"

    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = None
    try:
        kib = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        memory_gb = round(kib / 1024**2, 1)
    except (OSError, IndexError, ValueError):
        pass
    device = "CPU only"
    if gpu:
        try:
            import torch

            if torch.cuda.is_available():
                device = f"{torch.cuda.device_count()} × {torch.cuda.get_device_name(0)}"
            else:
                device = "no CUDA device visible"
        except ImportError:
            device = "torch missing"
    git = ""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True)
        git = head.stdout.strip() + (" (uncommitted changes)" if dirty.stdout.strip() else "")
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model,
        "memory_gb": memory_gb,
        "device": device,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: version(name) for name in ("torch", "ray", "deepspeed", "transformers", "peft")},
        "git": git,
    }


def run_section(name: str, ctx: Context, args: argparse.Namespace) -> dict[str, Any]:
    output_dir = Path(args.output_dir)
    if name == "gpu":
        from benchmarks import gpu

        return gpu.gpu(ctx, gpu.GPU_QUICK if args.quick else gpu.GPU_FULL)
    if name in ("collected", "serve", "tune"):
        if name == "collected":
            return sections.collected(ctx, output_dir)
        return getattr(sections, name)(ctx, output_dir, args.quick)
    return getattr(sections, name)(ctx)


def dry_run(ctx: Context, args: argparse.Namespace) -> None:
    if args.gpu:
        from benchmarks import gpu

        gpu.check(ctx, gpu.GPU_QUICK if args.quick else gpu.GPU_FULL)
    else:
        from raft.spec import validate
        from raft.train import check_inputs

        for technique, stage, offload, workers in (
            ("full", 0, False, 2),
            ("lora", 0, False, 2),
            ("full", 3, True, 2),
        ):
            name = f"{technique}-zero{stage}{'-offload' if offload else ''}-w{workers}"
            spec = common.classification_spec(ctx, name, technique, stage, offload, workers)
            check_inputs(validate(spec))
            facts = common.minilm_facts(ctx, technique)
            print(
                f"  {name}: spec checked; {facts['total_params'] / 1e6:.1f}M parameters, "
                f"{facts['trainable_params'] / 1e6:.2f}M trainable, {facts['layers']} layers × {facts['hidden']}",
                flush=True,
            )
    print(f"dry run: stopped before training (run folder {ctx.root})", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = dt.datetime.now()
    stem = report_stem(started.strftime("%Y-%m-%d"), args.gpu, args.quick)
    output_dir = Path(args.output_dir)
    sizes = common.QUICK if args.quick else common.FULL
    if args.gpu:
        from benchmarks import gpu

        gpu_sizes = gpu.GPU_QUICK if args.quick else gpu.GPU_FULL
        sizes = common.Sizes(
            train_rows=0,
            validation_rows=0,
            matmul_seconds=gpu_sizes.matmul_seconds,
            batch_size=gpu_sizes.batch_size,
        )
    ctx = Context(
        root=output_dir / "runs" / f"{stem}-{started.strftime('%H%M%S')}",
        sizes=sizes,
        address=args.address,
        repeats=1 if args.quick else args.repeats,
    )
    print(f"raft benchmarks: {', '.join(args.sections)}; run folder {ctx.root}", flush=True)
    if args.dry_run:
        dry_run(ctx, args)
        return 0

    measured: dict[str, dict[str, Any]] = {}
    failed = []
    for name in args.sections:
        print(f"\n== {name} ==", flush=True)
        began = time.monotonic()
        try:
            result = run_section(name, ctx, args)
        except Exception as error:  # one section's failure does not lose the others
            detail = str(error) if isinstance(error, common.BenchError) else traceback.format_exc()
            print(f"[{name}] FAILED: {detail}", flush=True)
            result = {"figures": [], "error": detail}
            failed.append(name)
        result["measured_at"] = dt.datetime.now().isoformat(timespec="seconds")
        result["seconds"] = round(time.monotonic() - began, 1)
        key = "collected" if name in ("serve", "tune") else name
        measured[key] = result
        for fig in result["figures"]:
            print(report.figure_line(fig), flush=True)

    previous_path = output_dir / f"{stem}.json"
    previous = {}
    if previous_path.is_file():
        try:
            previous = json.loads(previous_path.read_text()).get("sections", {})
        except (json.JSONDecodeError, AttributeError):
            previous = {}
    merged = report.merge_sections(previous, measured)
    order = ["gpu"] if args.gpu else ORDER
    merged = {name: merged[name] for name in order + sorted(set(merged) - set(order)) if name in merged}
    result = {
        "stem": stem,
        "date": started.strftime("%Y-%m-%d"),
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": dt.datetime.now().isoformat(timespec="seconds"),
        "command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
        "options": {k: v for k, v in vars(args).items() if k != "sections"} | {"sections": args.sections},
        "machine": machine_facts(args.gpu),
        "data": ctx.data_facts,
        "runs_dir": common.display_path(ctx.root),
        "sections": merged,
        "figures": report.all_figures(merged, order),
    }
    paths = report.write_report(result, output_dir)
    counts = report.summary_counts(result["figures"])
    print(
        f"\n{counts['met']} of {counts['targets']} targets met; wrote "
        + ", ".join(str(p.relative_to(ROOT) if p.is_relative_to(ROOT) else p) for p in paths.values()),
        flush=True,
    )
    if failed:
        print(f"failed sections: {', '.join(failed)}", flush=True)
    return 1 if failed else 0
