"""Unit tests of the suite's pure parts: ratios, targets, table rows, section selection,
and the report writer on made-up sections (no Ray, no training).

    .venv/bin/pytest tests/unit/test_bench_report.py
"""

from __future__ import annotations

import json

import pytest

from benchmarks import report, sections, suite
from benchmarks.report import check_target, figure, ratio, table_rows, target


def test_repeated_runs_summarised():
    summary = report.repeated([6.0, 9.0, 7.0, 8.0])
    assert summary["median"] == 7.5 and summary["min"] == 6.0 and summary["max"] == 9.0
    assert summary["spread"] == pytest.approx(3.0 / 7.5)
    assert report.repeated([5.0])["spread"] == 0
    assert report.paired_ratios([1.0, 3.0], [2.0, 2.0])["values"] == [0.5, 1.5]
    with pytest.raises(ValueError, match="2 raft runs against 1 baseline"):
        report.paired_ratios([1.0, 3.0], [2.0])
    with pytest.raises(ValueError, match="no runs"):
        report.repeated([])


def test_ratio():
    assert ratio(9.0, 10.0) == pytest.approx(0.9)
    assert ratio(None, 10.0) is None
    assert ratio(1.0, None) is None
    assert ratio(1.0, 0.0) is None
    assert ratio(1.0, float("nan")) is None


@pytest.mark.parametrize(
    ("raft", "baseline", "goal", "met"),
    [
        (9.6, 10.0, target("ratio", ">=", 0.95), True),
        (9.4, 10.0, target("ratio", ">=", 0.95), False),
        (0.04, None, target("value", "<", 0.05), True),
        (0.05, None, target("value", "<", 0.05), False),
        (50.0, 36.0, target("difference", "<=", 15), True),
        (52.0, 36.0, target("difference", "<=", 15), False),
        (None, 36.0, target("difference", "<=", 15), None),
        (10.0, 10.0, None, None),
    ],
)
def test_targets(raft, baseline, goal, met):
    assert figure("s", "f", raft, baseline, goal=goal)["met"] is met
    assert check_target(figure("s", "f", raft, baseline, goal=goal)) is met


def test_target_rejects_unknown_kinds():
    with pytest.raises(ValueError):
        target("speed", ">=", 1)
    with pytest.raises(ValueError):
        target("ratio", "=>", 1)


def test_table_rows_format_units_and_targets():
    rows = table_rows(
        [
            figure(
                "throughput",
                "samples/s per worker",
                21.6,
                23.9,
                unit="samples/s",
                baseline_label="plain DDP",
                goal=target("ratio", ">=", 0.95),
            ),
            figure("data_stall", "data wait", 0.012, unit="%", goal=target("value", "<", 0.05)),
            figure("first_step", "first step", 50.0, 36.0, unit="s", goal=target("difference", "<=", 15)),
            figure("collected", "serve", None, note="not run: python -m benchmarks --only serve"),
        ]
    )
    assert rows[0] == [
        "throughput",
        "samples/s per worker (baseline: plain DDP)",
        "21.60 samples/s",
        "23.90 samples/s",
        "0.904",
        "ratio ≥ 0.95",
        "**no**",
    ]
    assert rows[1][2] == "1.2%" and rows[1][5] == "< 5.0%" and rows[1][6] == "yes"
    assert rows[2][5] == "raft − baseline ≤ 15 s" and rows[2][6] == "yes"  # ints stay ints
    assert rows[3][2].startswith("not run") and rows[3][6] == "—"


def test_figure_line_and_counts():
    fig = figure("mfu", "MFU", 0.3, 0.4, unit="%", goal=target("ratio", ">=", 0.7))
    assert "target ratio ≥ 0.7: met" in report.figure_line(fig)
    counts = report.summary_counts([fig, figure("x", "y", 1.0)])
    assert counts == {"targets": 1, "met": 1, "missed": 0}


def test_all_figures_orders_sections_and_reports_failures():
    secs = {
        "memory": {"figures": [figure("memory", "m", 1.0)]},
        "throughput": {"figures": [figure("throughput", "t", 1.0)]},
        "mfu": {"figures": [], "error": "BenchError: no tokens_per_second\nmore"},
    }
    figures = report.all_figures(secs, suite.ORDER)
    assert [f["section"] for f in figures] == ["throughput", "mfu", "memory"]
    assert figures[1]["note"] == "error: BenchError: no tokens_per_second"


def test_merge_keeps_earlier_sections():
    merged = report.merge_sections({"a": {"x": 1}, "b": {"x": 1}}, {"b": {"x": 2}})
    assert merged == {"a": {"x": 1}, "b": {"x": 2}}


def test_section_selection():
    assert suite.selected_sections(None, gpu=False) == [
        "throughput",
        "mfu",
        "first_step",
        "padding",
        "memory",
        "scaling",
        "data_stall",
        "collected",
    ]
    assert suite.selected_sections("data_stall,throughput", gpu=False) == ["throughput", "data_stall"]
    assert suite.selected_sections("serve", gpu=False) == ["serve"]
    assert suite.selected_sections(None, gpu=True) == ["gpu"]
    with pytest.raises(SystemExit):
        suite.selected_sections("speed", gpu=False)
    assert suite.report_stem("2026-12-01", gpu=True, quick=True) == "2026-12-01-gpu-quick"


def test_collected_figures_from_results_and_absent():
    absent = sections.serve_figures(None) + sections.tune_figures(None)
    assert all(f["raft"] is None and f["note"].startswith("not run") for f in absent)
    serve = sections.serve_figures(
        {
            "batched_vs_unbatched_throughput": {"1": 1.0, "32": 3.4},
            "rows": [
                {"app": "batched", "clients": 32, "throughput_rps": 340.0},
                {"app": "unbatched", "clients": 32, "throughput_rps": 100.0},
            ],
            "added_latency": {"added_p50_ms": 3.1},
        }
    )
    assert serve[0]["ratio"] == pytest.approx(3.4) and serve[0]["met"] is True
    assert serve[1]["met"] is True
    tune = sections.tune_figures(
        {
            "metric": "val_loss",
            "target": 0.1,
            "results": [
                {"scheduler": "fifo", "total_epochs": 72, "overhead_ratio": 1.3},
                {"scheduler": "asha", "total_epochs": 30, "overhead_ratio": 1.5, "reached_target": True},
            ],
        }
    )
    assert tune[0]["ratio"] == pytest.approx(30 / 72) and tune[0]["met"] is True
    assert tune[1]["met"] is True


def made_up_report() -> dict:
    secs = {
        "throughput": {
            "figures": [
                figure(
                    "throughput", "samples/s", 7.0, 7.2, unit="samples/s", goal=target("ratio", ">=", 0.95)
                )
            ],
            "runs": [
                {"label": "plain DDP full", "samples_per_second": 7.2, "tokens_per_second": 920.0},
                {"label": "raft full ZeRO 0", "samples_per_second": 7.0, "tokens_per_second": 900.0},
            ],
        },
        "mfu": {
            "figures": [],
            "peak_flops": 6.6e10,
            "runs": [{"label": "raft full", "mfu": 0.41}, {"label": "plain full", "mfu": 0.45}],
        },
        "first_step": {
            "figures": [figure("first_step", "first step", 50.0, 36.0, unit="s")],
            "raft_stages": {
                "imports": 4.0,
                "checks and cluster start": 9.0,
                "first evaluation and step": 20.0,
            },
            "raft_seconds": 33.0,
            "plain_seconds": 20.0,
        },
        "memory": {
            "figures": [],
            "configs": [
                {
                    "label": "ZeRO 0",
                    "model_state_mb": [390.0, 390.0],
                    "tensor_mb": [400.0, 400.0],
                    "peak_rss_mb": [1500.0, 1400.0],
                    "estimate_mb": 390.0,
                    "deepspeed_per_gpu_mb": 433.0,
                    "deepspeed_per_cpu_mb": 130.0,
                },
                {
                    "label": "ZeRO 3",
                    "model_state_mb": [200.0, 190.0],
                    "tensor_mb": [2100.0, 2100.0],
                    "peak_rss_mb": [1300.0, 1300.0],
                    "estimate_mb": 200.0,
                    "deepspeed_per_gpu_mb": 220.0,
                    "deepspeed_per_cpu_mb": 10.0,
                },
            ],
        },
        "scaling": {"figures": [], "error": "BenchError: raft full ZeRO 0, 1 worker failed"},
    }
    return {
        "stem": "2026-12-01-test",
        "finished_at": "2026-12-01T00:00:00",
        "machine": {"device": "CPU only", "cpu_count": 2, "versions": {"torch": "2.13.0"}},
        "sections": secs,
        "figures": report.all_figures(secs, suite.ORDER),
    }


def test_write_report(tmp_path):
    paths = report.write_report(made_up_report(), tmp_path)
    saved = json.loads(paths["json"].read_text())
    assert saved["stem"] == "2026-12-01-test" and saved["plots"]
    text = paths["markdown"].read_text()
    assert "| throughput | samples/s" in text and "section failed" in text
    assert "| raft stage | seconds |" in text and "model states MiB per rank" in text
    for kind in ("throughput", "mfu", "memory", "first-step"):
        png = tmp_path / f"2026-12-01-test-{kind}.png"
        assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
        assert f"]({png.name})" in text


def fake_summary(samples: float, workers: int = 2, t0: float = 1000.0) -> dict:
    epoch = {
        "epoch": 2,
        "samples_per_second": samples,
        "tokens_per_second": samples * 127,
        "padded_tokens_per_second": samples * 128,
        "data_wait_fraction": 0.01,
    }
    return {
        "history": [{"epoch": 0}, epoch | {"epoch": 1}, epoch],
        "parameters": {"total": 22_713_604, "trainable": 22_713_604},
        "timeline": {
            key: t0 + 5 * (i + 1)
            for i, key in enumerate(
                (
                    "fit_started",
                    "cluster_ready",
                    "data_ready",
                    "workers_started",
                    "model_loaded",
                    "engine_ready",
                    "first_step",
                )
            )
        }
        | {"first_batch": t0 + 34},  # the first batch, read a second before the first step
        "memory": {
            "tensor_mb": [400.0] * workers,
            "peak_rss_mb": [1500.0] * workers,
            "device_peak_mb": [None],
        },
    }


def test_sections_on_made_up_runs(tmp_path, monkeypatch):
    """Every training section's arithmetic, with raft and plain runs replaced by made-up ones."""
    from benchmarks import common

    ctx = common.Context(root=tmp_path, sizes=common.QUICK)

    def raft_run(
        ctx, technique="full", zero_stage=0, offload_optimizer=False, workers=2, address=None, repeat=0
    ):
        name = f"{technique}-{zero_stage}-{offload_optimizer}-{workers}-{repeat}"
        run = {
            "label": name,
            "t0": 1000.0,
            # repeats of raft ZeRO 0: 7.0, 9.0, 5.0 (median 7.0)
            "summary": fake_summary((7.0, 9.0, 5.0)[repeat] if workers == 2 else 8.0, workers),
            "spec": {"technique": {"type": technique}},
        }
        ctx.raft_runs[name] = run
        return run

    def plain_run(ctx, technique="full", fused=True, zero_stage=None, repeat=0, workers=2):
        run = {"label": "plain", "t0": 1000.0, "first_step": 1020.0, "memory": {"tensor_mb": 380.0}}
        name = f"plain-{technique}-{repeat}-{workers}" + (
            "" if zero_stage is None else f"-deepspeed{zero_stage}"
        )
        ctx.plain_runs[name] = fake_summary((7.2, 7.2, 10.0)[repeat] if zero_stage is None else 6.0) | run
        return ctx.plain_runs[name]

    monkeypatch.setattr(common, "raft_run", raft_run)
    monkeypatch.setattr(common, "plain_run", plain_run)
    monkeypatch.setattr(common, "peak", lambda *a, **k: {"peak_flops": 2e11})
    monkeypatch.setattr(
        common,
        "ensure_data",
        lambda ctx: {"train": tmp_path / "train.jsonl", "validation": tmp_path / "train.jsonl"},
    )
    (tmp_path / "train.jsonl").write_text(
        "".join(json.dumps({"text": "x", "label": label}) + "\n" for label in "abcd")
    )

    out = sections.throughput(ctx)
    assert out["figures"][0]["ratio"] == pytest.approx(7.0 / 7.2)
    against_deepspeed = [f for f in out["figures"] if "DeepSpeed" in (f.get("baseline_label") or "")]
    assert len(against_deepspeed) == 2 and against_deepspeed[0]["ratio"] == pytest.approx(7.0 / 6.0)
    ctx.repeats = 3  # medians over round-robin repeats: raft 7, 9, 5 against plain 7.2, 7.2, 10
    out = sections.throughput(ctx)
    assert len(out["runs"]) == 24  # 8 configs (6 with 2 workers, 2 with 1), 3 times
    assert out["figures"][0]["raft"] == 7.0 and out["figures"][0]["baseline"] == 7.2
    paired = out["paired"]["raft ZeRO 0 / plain DDP"]
    assert paired["values"] == pytest.approx([7.0 / 7.2, 9.0 / 7.2, 0.5])
    assert paired["median"] == pytest.approx(7.0 / 7.2)
    assert out["repeats"]["raft 0"]["samples_per_second"]["spread"] == pytest.approx(4.0 / 7.0)
    one_worker = [f for f in out["figures"] if "1 worker" in f["name"]]
    assert len(one_worker) == 1 and one_worker[0]["ratio"] == pytest.approx(8.0 / 7.2)
    details = "\n".join(report.section_details("throughput", out))
    assert "7.00, 9.00, 5.00" in details and "57.1%" in details
    ctx.repeats = 1

    def run_raft_spec(ctx, name, spec, label, address=None):
        grouped = spec["data"].get("group_by_length", False)
        summary = fake_summary(9.0 if grouped else 6.0)
        for epoch in summary["history"][1:]:  # 80 real tokens a row, padded to 84 or to 125
            epoch.update(tokens_per_second=epoch["samples_per_second"] * 80)
            epoch.update(padded_tokens_per_second=epoch["samples_per_second"] * (84 if grouped else 125))
        run = {"label": label, "t0": 1000.0, "summary": summary, "spec": spec}
        ctx.raft_runs[name] = run
        return run

    monkeypatch.setattr(common, "run_raft_spec", run_raft_spec)
    out = sections.padding(ctx)
    tokens, samples, share = out["figures"]
    assert tokens["ratio"] == pytest.approx(1.5) and samples["ratio"] == pytest.approx(1.5)
    assert share["raft"] == pytest.approx(4 / 84) and share["baseline"] == pytest.approx(45 / 125)
    assert (tmp_path / "data/varied-train.jsonl").is_file()
    out = sections.mfu(ctx)
    assert out["figures"][0]["ratio"] == pytest.approx(7.0 / 7.2)
    assert 0 < out["figures"][0]["raft"] < 1
    out = sections.first_step(ctx)
    assert out["raft_seconds"] == pytest.approx(35.0) and out["plain_seconds"] == pytest.approx(20.0)
    assert sum(out["raft_stages"].values()) == pytest.approx(35.0)
    assert out["figures"][1]["met"] is True  # a run with no evaluation before training
    bare = ctx.raft_runs["full-zero0-w2-no-eval"]
    assert bare["spec"]["train"]["eval_before_training"] is False
    assert out["no_eval_seconds"] == pytest.approx(35.0) and out["no_eval_stages"]
    assert "eval_before_training: false" in "\n".join(report.section_details("first_step", out))
    ctx.address = "127.0.0.1:6390"  # and on a running cluster
    out = sections.first_step(ctx)
    assert len(out["figures"]) == 3 and out["cluster_seconds"] == pytest.approx(35.0)
    assert "on a running cluster" in "\n".join(report.section_details("first_step", out))
    ctx.address = None
    out = sections.memory(ctx)
    assert [c["label"] for c in out["configs"]] == ["ZeRO 0", "ZeRO 2", "ZeRO 3", "ZeRO 3 + offload"]
    rss = next(f for f in out["figures"] if f["name"] == "peak RSS per worker, ZeRO 0")
    # raft plan: 347 MiB of states, 486 MiB of activations, 1 GiB for the process
    assert rss["raft"] == 1500.0 and rss["baseline"] == pytest.approx(347 + 486 + 1024, rel=0.02)
    ratio_row = out["figures"][-1]
    assert ratio_row["raft"] == pytest.approx(1.0) and 0.5 < ratio_row["baseline"] < 1
    assert ratio_row["met"] is False
    out = sections.scaling(ctx)
    assert out["figures"][1]["raft"] == pytest.approx(14.0 / 16.0)
    out = sections.data_stall(ctx)
    assert out["figures"] and all(f["met"] for f in out["figures"])


def test_gpu_figures_put_raft_beside_the_plain_loops_of_the_same_technique():
    from benchmarks import gpu

    runs = [
        {"technique": "lora", "tokens_per_second": 15_000.0, "device_peak_mb": 13_000.0},
        {"technique": "full", "tokens_per_second": 20_000.0, "device_peak_mb": None},
    ]
    plain = [
        {"mode": "torch", "technique": "lora", "tokens_per_second": 30_000.0, "device_peak_mb": 14_000.0},
        {"mode": "deepspeed", "technique": "lora", "tokens_per_second": 25_000.0, "device_peak_mb": 12_000.0},
        {"mode": "deepspeed", "technique": "full", "tokens_per_second": 20_000.0, "device_peak_mb": 20_000.0},
    ]
    figures = {fig["name"]: fig for fig in gpu.baseline_figures(runs, plain)}
    lora = figures["tokens/s against the plain DeepSpeed loop, lora"]
    assert lora["ratio"] == pytest.approx(0.6) and check_target(lora) is False
    assert figures["tokens/s against the plain torch loop, lora"]["ratio"] == pytest.approx(0.5)
    assert check_target(figures["tokens/s against the plain torch loop, lora"]) is None  # no target
    assert check_target(figures["tokens/s against the plain DeepSpeed loop, full"]) is True
    assert figures["peak device memory against the plain DeepSpeed loop, lora"]["ratio"] == pytest.approx(
        13 / 12
    )
    # No plain torch row for full, and no device peak for its raft run: no figure made up.
    assert "tokens/s against the plain torch loop, full" not in figures
    assert "peak device memory against the plain DeepSpeed loop, full" not in figures
    assert len(figures) == 4
