"""The suite's sections: each a function of the shared Context returning a dict with
``figures`` (rows of the report, see benchmarks/report.py) and whatever details its
tables and plots need. Runs are shared through the Context (see benchmarks/common.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import BenchError, Context
from benchmarks.report import figure, paired_ratios, repeated, target

THROUGHPUT_TARGET = 0.95
MFU_TARGET = 0.7
FIRST_STEP_TARGET_S = 15.0
DATA_STALL_TARGET = 0.05
MiB = 1024 * 1024


# -- 1. throughput ----------------------------------------------------------------------
def throughput(ctx: Context) -> dict[str, Any]:
    """Plain DDP (fused AdamW) vs raft at ZeRO 0, 2 and 3, full fine-tuning, 2 workers; at
    ZeRO 2 and 3 also vs a plain DeepSpeed loop. With ``ctx.repeats`` > 1 every config runs
    that many times, round-robin (plain, raft 0, raft 2, DeepSpeed 2, raft 3, DeepSpeed 3,
    then again), and the figures are medians: two runs of the same config differ here by
    more than the gaps being measured."""
    order: list[tuple[str, Any]] = [
        ("plain", lambda r: common.plain_run(ctx, "full", repeat=r)),
        ("raft 0", lambda r: common.raft_run(ctx, "full", 0, repeat=r)),
        ("raft 2", lambda r: common.raft_run(ctx, "full", 2, repeat=r)),
        ("deepspeed 2", lambda r: common.plain_run(ctx, "full", zero_stage=2, repeat=r)),
        ("raft 3", lambda r: common.raft_run(ctx, "full", 3, repeat=r)),
        ("deepspeed 3", lambda r: common.plain_run(ctx, "full", zero_stage=3, repeat=r)),
        # One worker each: a core left over for Ray's own processes (2 workers fill 2 cores here).
        ("plain, 1 process", lambda r: common.plain_run(ctx, "full", repeat=r, workers=1)),
        ("raft 0, 1 worker", lambda r: common.raft_run(ctx, "full", 0, workers=1, repeat=r)),
    ]
    epochs: dict[str, list[dict[str, Any]]] = {key: [] for key, _ in order}
    runs = []
    for repeat in range(ctx.repeats):
        for key, make in order:
            run = make(repeat)
            epochs[key].append(
                run["history"][-1] if key.startswith(("plain", "deepspeed")) else common.steady_epoch(run)
            )
            runs.append(common.run_row(run))

    def rates(key: str, metric: str) -> list[float]:
        return [float(epoch[metric]) for epoch in epochs[key]]

    figures, repeats = [], {}
    for key, _ in order:
        repeats[key] = {m: repeated(rates(key, m)) for m in ("samples_per_second", "tokens_per_second")}
    for stage in (0, 2, 3):
        mine = f"raft {stage}"
        for metric, unit in (("samples_per_second", "samples/s"), ("tokens_per_second", "tokens/s")):
            figures.append(
                figure(
                    "throughput",
                    f"{unit} per worker, full, ZeRO {stage}",
                    repeats[mine][metric]["median"],
                    repeats["plain"][metric]["median"],
                    unit=unit,
                    baseline_label="plain DDP, fused AdamW",
                    goal=target("ratio", ">=", THROUGHPUT_TARGET),
                )
            )
        if stage:  # what raft adds to DeepSpeed itself, apart from what ZeRO costs
            figures.append(
                figure(
                    "throughput",
                    f"samples/s per worker, full, ZeRO {stage}",
                    repeats[mine]["samples_per_second"]["median"],
                    repeats[f"deepspeed {stage}"]["samples_per_second"]["median"],
                    unit="samples/s",
                    baseline_label=f"plain DeepSpeed ZeRO {stage} loop, no Ray",
                    goal=target("ratio", ">=", THROUGHPUT_TARGET),
                )
            )
    figures.append(
        figure(
            "throughput",
            "samples/s, full, ZeRO 0, 1 worker (a core to spare for Ray's processes)",
            repeats["raft 0, 1 worker"]["samples_per_second"]["median"],
            repeats["plain, 1 process"]["samples_per_second"]["median"],
            unit="samples/s",
            baseline_label="plain loop, 1 process",
            goal=target("ratio", ">=", THROUGHPUT_TARGET),
        )
    )
    pairs = {
        f"raft ZeRO {stage} / {base}": paired_ratios(
            rates(f"raft {stage}", "samples_per_second"), rates(key, "samples_per_second")
        )
        for stage, key, base in (
            (0, "plain", "plain DDP"),
            (2, "plain", "plain DDP"),
            (2, "deepspeed 2", "plain DeepSpeed ZeRO 2"),
            (3, "plain", "plain DDP"),
            (3, "deepspeed 3", "plain DeepSpeed ZeRO 3"),
        )
    }
    pairs["raft ZeRO 0, 1 worker / plain, 1 process"] = paired_ratios(
        rates("raft 0, 1 worker", "samples_per_second"), rates("plain, 1 process", "samples_per_second")
    )
    notes = []
    if ctx.repeats > 1:
        notes.append(
            f"{ctx.repeats} runs of every config, round-robin; figures are medians. Spread is (max − min) / "
            "median over one config's runs; a paired ratio divides raft by the baseline run of the same round."
        )
    return {"figures": figures, "runs": runs, "repeats": repeats, "paired": pairs, "notes": notes}


# -- 2. MFU -----------------------------------------------------------------------------
def mfu(ctx: Context) -> dict[str, Any]:
    """Achieved FLOP/s per worker over the matmul peak per process, raft vs plain."""
    measured_peak = common.peak(ctx, "cpu", processes=2, dtype="fp32")
    peak_flops = measured_peak["peak_flops"]
    figures, runs = [], []
    for technique in ("full", "lora"):
        facts = common.minilm_facts(ctx, technique)
        plain = common.plain_run(ctx, technique)
        run = common.raft_run(ctx, technique, 0)
        values = {}
        for who, epoch, source in (
            ("plain", plain["history"][-1], plain),
            ("raft", common.steady_epoch(run), run),
        ):
            flops = common.achieved_flops(facts, epoch)
            values[who] = flops["achieved_flops"] / peak_flops
            runs.append(
                common.run_row(source)
                | {k: v for k, v in flops.items()}
                | {"mfu": values[who], "technique": technique}
            )
        figures.append(
            figure(
                "mfu",
                f"MFU per worker, {technique} (ZeRO 0)",
                values["raft"],
                values["plain"],
                unit="%",
                baseline_label="plain DDP MFU",
                goal=target("ratio", ">=", MFU_TARGET),
            )
        )
        figures.append(
            figure(
                "mfu",
                f"achieved FLOP/s per worker, {technique}",
                runs[-1]["achieved_flops"],
                runs[-2]["achieved_flops"],
                unit="FLOP/s",
                baseline_label="plain DDP",
            )
        )
    return {
        "figures": figures,
        "runs": runs,
        "peak": measured_peak,
        "peak_flops": peak_flops,
        "models": {t: common.minilm_facts(ctx, t) for t in ("full", "lora")},
        "notes": [
            "MFU = training_flops_per_token (raft.perf: 2N forward + 2N activation grads + "
            "2·trainable weight grads + 12·L·s·d attention, N non-embedding) × padded tokens/s, over "
            f"the fp32 matmul peak of one process while 2 run at once "
            f"({peak_flops / 1e9:.2f} GFLOP/s, measured in this run)."
        ],
    }


# -- 3. time to first step --------------------------------------------------------------
def first_step(ctx: Context) -> dict[str, Any]:
    """Command start → first optimizer step: raft (ZeRO 0, full) by stage vs plain DDP; with
    --address also on that running cluster, where no cluster start is paid."""
    perf = common.perf_module()
    run = common.raft_run(ctx, "full", 0)
    stamps = common.timeline(run)
    plain = common.plain_run(ctx, "full")
    raft_seconds = stamps["first_step"] - run["t0"]
    plain_seconds = plain["first_step"] - plain["t0"]
    stages = perf.first_step_breakdown(stamps, run["t0"])
    # The like-for-like run: the plain script evaluates nothing before its first step.
    # (Subtracting the evaluation stage from the run above is not the same: the workers
    # start Ray Data's passes while the model loads, so that stage no longer holds the
    # data pipeline's start-up, which moves into the stages before it.)
    bare_name = "full-zero0-w2-no-eval"
    bare_spec = common.classification_spec(ctx, bare_name, "full", 0, False, 2)
    bare_spec["train"]["eval_before_training"] = False
    bare = common.run_raft_spec(
        ctx, bare_name, bare_spec, "raft full ZeRO 0, 2 workers, train.eval_before_training: false"
    )
    bare_stamps = common.timeline(bare)
    bare_seconds = bare_stamps["first_step"] - bare["t0"]
    figures = [
        figure(
            "first_step",
            "seconds from command start to the first optimizer step",
            raft_seconds,
            plain_seconds,
            unit="s",
            baseline_label="plain DDP script",
        ),
        figure(
            "first_step",
            "the same with no evaluation before training (train.eval_before_training: false; the plain script has none)",
            bare_seconds,
            plain_seconds,
            unit="s",
            baseline_label="plain DDP script",
            goal=target("difference", "<=", FIRST_STEP_TARGET_S),
        ),
    ]
    result: dict[str, Any] = {}
    if ctx.address:
        cluster_run = common.raft_run(ctx, "full", 0, address=ctx.address)
        cluster_stamps = common.timeline(cluster_run)
        cluster_stages = perf.first_step_breakdown(cluster_stamps, cluster_run["t0"])
        cluster_seconds = cluster_stamps["first_step"] - cluster_run["t0"]
        figures.append(
            figure(
                "first_step",
                "the same on a running cluster (--address: no cluster start), less the evaluation",
                cluster_seconds - cluster_stages.get("evaluation before training", 0.0),
                plain_seconds,
                unit="s",
                baseline_label="plain DDP script",
                goal=target("difference", "<=", FIRST_STEP_TARGET_S),
            )
        )
        result = {"cluster_seconds": cluster_seconds, "cluster_stages": cluster_stages}
    return result | {
        "figures": figures,
        "raft_seconds": raft_seconds,
        "plain_seconds": plain_seconds,
        "raft_stages": stages,
        "timeline": stamps,
        "no_eval_seconds": bare_seconds,
        "no_eval_stages": perf.first_step_breakdown(bare_stamps, bare["t0"]),
        "notes": [
            "raft: `raft train` (a fresh local Ray cluster) from Popen to rank 0's first optimizer "
            "step, which comes after the pre-training evaluation; plain: benchmarks/plain_ddp.py "
            "from Popen to rank 0's first step."
        ],
    }


# -- 4. data stall ----------------------------------------------------------------------
def data_stall(ctx: Context) -> dict[str, Any]:
    """Second-epoch share of training time spent waiting for the next batch, every raft
    run made so far (at least the ZeRO-0 one)."""
    common.raft_run(ctx, "full", 0)
    figures = []
    for run in ctx.raft_runs.values():
        epoch = common.steady_epoch(run)
        technique = run["spec"]["technique"]["type"]
        plain = ctx.plain_runs.get(f"plain-{technique}")
        figures.append(
            figure(
                "data_stall",
                f"data wait, {run['label']}",
                epoch["data_wait_fraction"],
                plain["history"][-1]["data_wait_fraction"] if plain else None,
                unit="%",
                baseline_label="plain DDP (tokenizes in the loop)" if plain else None,
                goal=target("value", "<", DATA_STALL_TARGET),
            )
        )
    return {"figures": figures}


# -- padding: length-grouped batching ---------------------------------------------------
def padding(ctx: Context) -> dict[str, Any]:
    """raft (full, ZeRO 0, 2 workers) on rows of varied length, with and without
    data.group_by_length: real tokens and rows per second, and the share of computed tokens
    that are padding. Batches are trimmed to their longest row either way."""
    data = common.ensure_varied_data(ctx)
    runs, epochs = [], {}
    for grouped in (False, True):
        name = "full-zero0-w2-varied" + ("-grouped" if grouped else "")
        spec = common.classification_spec(ctx, name, "full", 0, False, 2)
        spec["data"] = {"train": str(data["train"]), "validation": str(data["validation"])}
        spec["data"]["group_by_length"] = grouped
        label = "raft full ZeRO 0, 2 workers, varied lengths" + (", grouped by length" if grouped else "")
        run = common.run_raft_spec(ctx, name, spec, label)
        epochs[grouped] = common.steady_epoch(run)
        runs.append(common.run_row(run))

    def padded_share(epoch: dict[str, Any]) -> float:
        return 1.0 - epoch["tokens_per_second"] / epoch["padded_tokens_per_second"]

    figures = [
        figure(
            "padding",
            f"{unit} per worker, varied lengths, grouped by length",
            epochs[True][key],
            epochs[False][key],
            unit=unit,
            baseline_label="not grouped",
        )
        for key, unit in (("tokens_per_second", "tokens/s"), ("samples_per_second", "samples/s"))
    ]
    figures.append(
        figure(
            "padding",
            "padding share of the tokens computed, grouped by length",
            padded_share(epochs[True]),
            padded_share(epochs[False]),
            unit="%",
            baseline_label="not grouped",
        )
    )
    return {
        "figures": figures,
        "runs": runs,
        "notes": [
            "Rows join 1-18 topic sentences (about 10 to 128+ tokens, max_length 128); every batch "
            "is cut to its longest row. Grouped: each worker sorts windows of data.length_window "
            "(32) batches by length before batching."
        ],
    }


# -- 5. memory --------------------------------------------------------------------------
MEMORY_CONFIGS = ((0, False), (2, False), (3, False), (3, True))


def deepspeed_estimates(total: int, largest_layer: int, stage: int, offload: bool, workers: int) -> dict:
    """DeepSpeed's own model-state estimators (they assume mixed precision on GPUs): the
    functions that estimate_zero{2,3}_model_states_mem_needs_all_cold print a table of.
    ZeRO 0 is the ZeRO-2 estimate on one GPU (nothing partitioned)."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.runtime.zero import stage3, stage_1_and_2

    printed = io.StringIO()
    if stage == 3:
        cpu, gpu, _largest = stage3.estimate_zero3_model_states_mem_needs(
            total,
            largest_layer,
            num_gpus_per_node=workers,
            cpu_offload=offload,
            cpu_offload_params=False,
            zero_init=True,
        )
        with contextlib.redirect_stdout(printed):
            stage3.estimate_zero3_model_states_mem_needs_all_cold(total, largest_layer, workers)
    else:
        gpus = workers if stage else 1
        cpu, gpu = stage_1_and_2.estimate_zero2_model_states_mem_needs(
            total, num_gpus_per_node=gpus, cpu_offload=offload
        )
        with contextlib.redirect_stdout(printed):
            stage_1_and_2.estimate_zero2_model_states_mem_needs_all_cold(total, gpus)
    return {"per_gpu_bytes": gpu, "per_cpu_bytes": cpu, "table": printed.getvalue()}


def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def memory(ctx: Context) -> dict[str, Any]:
    """Per-worker model states, live tensors and peak RSS at ZeRO 0, 2, 3 and 3 + optimizer
    offload (full, 2 workers), next to raft.perf's and DeepSpeed's estimates."""
    perf = common.perf_module()
    facts = common.minilm_facts(ctx, "full")
    configs, figures, workers = [], [], 2
    for stage, offload in MEMORY_CONFIGS:
        run = common.raft_run(ctx, "full", stage, offload_optimizer=offload)
        measured = common.memory(run)
        counts = run["summary"].get("parameters") or {}
        total = counts.get("total") or facts["total_params"]
        trainable = counts.get("trainable") or facts["trainable_params"]
        estimate = perf.zero_memory_estimate(
            total,
            trainable,
            world_size=workers,
            stage=stage,
            precision="fp32",
            offload_optimizer=offload,
        )
        ds = deepspeed_estimates(total, facts["largest_layer_params"], stage, offload, workers)
        planned = plan_estimate(ctx, total, trainable, stage, offload, workers)
        label = f"ZeRO {stage}" + (" + offload" if offload else "")
        config = {
            "label": label,
            # model states (parameters, gradients, optimizer state and copies) where raft
            # reports them apart; else every live tensor
            "model_state_mb": measured.get("model_state_mb") or measured["tensor_mb"],
            "tensor_mb": measured["tensor_mb"],
            "peak_rss_mb": measured["peak_rss_mb"],
            "estimate_bytes": estimate,
            # On CPU workers, "device" and "host" are the same process memory: compare the total.
            "estimate_mb": estimate["total"] / MiB,
            "deepspeed_per_gpu_mb": ds["per_gpu_bytes"] / MiB,
            "deepspeed_per_cpu_mb": ds["per_cpu_bytes"] / MiB,
            "deepspeed_table": ds["table"],
            "plan_mb": planned / MiB,
        }
        configs.append(config)
        figures.append(
            figure(
                "memory",
                f"model states per worker, {label}",
                _mean(config["model_state_mb"]),
                config["estimate_mb"],
                unit="MiB",
                baseline_label="raft.perf estimate",
            )
        )
        figures.append(
            figure(
                "memory",
                f"peak RSS per worker, {label}",
                max(config["peak_rss_mb"]),
                config["plan_mb"],
                unit="MiB",
                baseline_label="raft plan's estimate",
            )
        )
    plain = ctx.plain_runs.get("plain-full")
    if plain and plain.get("memory", {}).get("tensor_mb") is not None:
        figures.append(
            figure(
                "memory",
                "live tensors per worker, ZeRO 0",
                _mean(configs[0]["tensor_mb"]),
                plain["memory"]["tensor_mb"],
                unit="MiB",
                baseline_label="plain DDP",
            )
        )
    # ZeRO 3 shards everything over N, but ZeRO ≥ 1 also keeps an fp32 master copy that
    # ZeRO 0 in fp32 does not: the layout predicts more than 1/N. Target: within 10% of it.
    zero0, zero3 = _mean(configs[0]["model_state_mb"]), _mean(configs[2]["model_state_mb"])
    predicted = configs[2]["estimate_mb"] / configs[0]["estimate_mb"]
    figures.append(
        figure(
            "memory",
            "ZeRO-3 / ZeRO-0 model states per worker (parameters + gradients + optimizer)",
            zero3 / zero0 if zero0 and zero3 is not None else None,
            predicted,
            unit="",
            baseline_label=f"raft.perf's predicted ratio; 1/N = {1 / workers:.2f}",
            goal=target("ratio", "<=", 1.1, text="≤ 1.1 × predicted (≈ 1/N)"),
        )
    )
    return {
        "figures": figures,
        "configs": configs,
        "model": facts,
        "notes": [
            "model states: parameters (a ZeRO-3 worker's own partitions), gradients and the "
            "optimizer's state and fp32 copies, right after the worker's first optimizer step; "
            "live tensors: every torch tensor storage alive then (DeepSpeed's communication "
            "buckets too); both per rank. The raft.perf estimate counts fp32 parameters, "
            "gradients, Adam moments and ZeRO's fp32 master copy (device + host: on CPU workers "
            "both are the same process memory); DeepSpeed's estimators assume 16-bit parameters "
            "on GPUs and report per-CPU memory per node."
        ],
    }


def plan_estimate(ctx: Context, total: int, trainable: int, stage: int, offload: bool, workers: int) -> int:
    """`raft plan`'s bytes per CPU worker for the suite's MiniLM run (states, activations,
    the process itself)."""
    from raft import plan

    config = json.loads((Path(common.model_path()) / "config.json").read_text())
    facts = plan.ModelFacts(total, trainable, *plan.config_shape(config), source="counted")
    return plan.estimate(
        facts,
        plan.Setting(stage, offload_optimizer=offload),
        world_size=workers,
        batch=ctx.sizes.batch_size,
        seq_len=ctx.sizes.max_length,
        precision="fp32",
        use_gpu=False,
    ).host


# -- 6. scaling -------------------------------------------------------------------------
def scaling(ctx: Context) -> dict[str, Any]:
    """Total samples/s with 1 and 2 workers on the same rows (full, ZeRO 0); on a real
    cluster too when --address is given."""
    figures, runs, notes = [], [], []
    targets = [(None, "this machine")] + ([(ctx.address, "cluster")] if ctx.address else [])
    for address, where in targets:
        rates = {}
        for workers in (1, 2):
            run = common.raft_run(ctx, "full", 0, workers=workers, address=address)
            rates[workers] = common.steady_epoch(run)["samples_per_second"] * workers
            nodes = len(set(run["summary"].get("worker_nodes") or [])) or None
            runs.append(common.run_row(run) | {"total_samples_per_second": rates[workers], "nodes": nodes})
        figures.append(
            figure(
                "scaling",
                f"total samples/s, 2 workers vs 1, {where}",
                rates[2],
                rates[1],
                unit="samples/s",
                baseline_label="1 worker",
            )
        )
        figures.append(
            figure(
                "scaling",
                f"scaling efficiency rate2 / (2 × rate1), {where}",
                rates[2] / (2 * rates[1]) if rates[1] else None,
            )
        )
    if not ctx.address:
        notes.append(
            "multi-node scaling: not run (no --address ray://HEAD:10001 given; the run folder must "
            "then be on storage every node reads at the same path)"
        )
    cpus = os.cpu_count() or 0
    if cpus <= 2:
        notes.append(
            f"this machine has {cpus} cores, shared by 2 workers and Ray's own processes: "
            "local efficiency is bounded by that, not by raft"
        )
    return {"figures": figures, "runs": runs, "notes": notes}


# -- 7. collected serve / tune results ------------------------------------------------
SERVE_RESULT = "serve_batching.json"
TUNE_RESULT = "tune_asha_vs_fifo.json"
SERVE_COMMAND = "python -m benchmarks --only serve  (python benchmarks/serve_batching.py)"
TUNE_COMMAND = "python -m benchmarks --only tune  (python benchmarks/tune_asha_vs_fifo.py)"


def serve_figures(result: dict[str, Any] | None, source: str = "") -> list[dict[str, Any]]:
    """Figures from serve_batching.py's JSON (None: 'not run' rows)."""
    if result is None:
        return [
            figure(
                "collected", "serve: batched / unbatched throughput", None, note=f"not run: {SERVE_COMMAND}"
            ),
            figure("collected", "serve: Serve-added p50 latency", None, note=f"not run: {SERVE_COMMAND}"),
        ]
    ratios = result.get("batched_vs_unbatched_throughput", {})
    most = max(ratios, key=int) if ratios else None
    rows = {(r["app"], r["clients"]): r["throughput_rps"] for r in result.get("rows", [])}
    added = result.get("added_latency", {})
    return [
        figure(
            "collected",
            f"serve: requests/s at {most} clients, batched vs unbatched{source}",
            rows.get(("batched", int(most))) if most else None,
            rows.get(("unbatched", int(most))) if most else None,
            unit="req/s",
            baseline_label="unbatched",
            goal=target("ratio", ">=", 3.0),
        ),
        figure(
            "collected",
            f"serve: Serve-added p50 latency{source}",
            added.get("added_p50_ms"),
            unit="ms",
            goal=target("value", "<", 5.0),
        ),
    ]


def tune_figures(result: dict[str, Any] | None, source: str = "") -> list[dict[str, Any]]:
    """Figures from tune_asha_vs_fifo.py's JSON (None: 'not run' rows)."""
    if result is None:
        return [figure("collected", "tune: ASHA / FIFO epochs", None, note=f"not run: {TUNE_COMMAND}")]
    by_name = {r["scheduler"]: r for r in result.get("results", [])}
    asha, fifo = by_name.get("asha", {}), by_name.get("fifo", {})
    return [
        figure(
            "collected",
            f"tune: training epochs, ASHA vs FIFO{source}",
            asha.get("total_epochs"),
            fifo.get("total_epochs"),
            unit="epochs",
            baseline_label="FIFO",
            goal=target("ratio", "<=", 0.5),
        ),
        figure(
            "collected",
            f"tune: ASHA's best {result.get('metric', 'metric')} reaches {result.get('target')}{source}",
            1.0 if asha.get("reached_target") else 0.0 if asha else None,
            unit="",
            goal=target("value", ">=", 1.0, text="reached (1 = yes)"),
        ),
        figure(
            "collected",
            f"tune: ASHA search wall / Σ trial seconds{source}",
            asha.get("overhead_ratio"),
            fifo.get("overhead_ratio"),
            baseline_label="FIFO",
        ),
    ]


def _read(path: Path) -> tuple[dict[str, Any] | None, str]:
    if not path.is_file():
        return None, ""
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime))
    try:
        return json.loads(path.read_text()), f" ({path.name}, {stamp})"
    except json.JSONDecodeError:
        return None, ""


def collected(ctx: Context, results_dir: Path) -> dict[str, Any]:
    """The newest serve and search results the two slow scripts wrote (not run here)."""
    serve, serve_source = _read(results_dir / SERVE_RESULT)
    tune, tune_source = _read(results_dir / TUNE_RESULT)
    return {
        "figures": serve_figures(serve, serve_source) + tune_figures(tune, tune_source),
        "files": {SERVE_RESULT: serve is not None, TUNE_RESULT: tune is not None},
    }


def run_script(ctx: Context, script: str, args: list[str]) -> None:
    """Run one of the slow scripts (--only serve / tune), its output shown as it comes."""
    command = [sys.executable, str(common.ROOT / "benchmarks" / script), *args]
    print(f"  running {' '.join(command[1:])}", flush=True)
    code = subprocess.call(command, cwd=common.ROOT, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    if code != 0:
        raise BenchError(f"{script} failed (exit {code})")


def serve(ctx: Context, results_dir: Path, quick: bool) -> dict[str, Any]:
    args = ["--output", str(results_dir / SERVE_RESULT)]
    if quick:
        args += ["--duration", "5", "--warmup", "2", "--sequential", "100"]
    run_script(ctx, "serve_batching.py", args)
    return collected(ctx, results_dir)


def tune(ctx: Context, results_dir: Path, quick: bool) -> dict[str, Any]:
    args = ["--output", str(results_dir / TUNE_RESULT)]
    if quick:
        args += ["--trials", "3", "--epochs", "3"]
    run_script(ctx, "tune_asha_vs_fifo.py", args)
    return collected(ctx, results_dir)
