"""raft report from a run's and a search's files (made up here; the integration tests
report real runs): the figures, and the page as headless Chromium draws it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raft.report import REPORT_FILE, ReportError, run_figures, write_report
from tests.helpers import drawn_titles, render_in_chromium


def _write_run(run_dir: Path, confusion: bool = True) -> None:
    run_dir.mkdir(parents=True)
    history = [
        {"epoch": 0, "global_step": 0, "val_accuracy": 0.5, "val_loss": 0.7, "val_rows": 10},
        {"epoch": 1, "global_step": 10, "val_accuracy": 0.9, "val_loss": 0.3, "val_rows": 10,
         "train_loss": 0.4, "samples_per_second": 20.0},
    ]  # fmt: skip
    if confusion:
        history[-1]["confusion_matrix"] = [[4, 1], [0, 5]]
    summary = {"run": "r1", "primary_metric": "val_accuracy", "before": 0.5, "after": 0.9,
               "history": history, "labels": ["neg", "pos"], "wall_seconds": 12.0}  # fmt: skip
    (run_dir / "summary.json").write_text(json.dumps(summary))
    events = [{"event": "start", "total_steps": 10, "epochs": 1, "world_size": 2, "global_step": 0}] + [
        {"event": "step", "epoch": 1, "global_step": s, "loss": 1 / s, "lr": 1e-3, "samples_per_second": 9.0}
        for s in (2, 4, 6, 8, 10)
    ]
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(e) for e in events) + "\n")


RUN_TITLES = ["Loss", "Validation metrics per epoch", "Learning rate", "Throughput",
              "Confusion matrix (last evaluation)"]  # fmt: skip


def test_a_runs_report_draws_every_plot_in_chromium(tmp_path):
    run_dir = tmp_path / "r1"
    _write_run(run_dir)
    written = Path(write_report(str(run_dir)))
    assert written == run_dir / REPORT_FILE
    page = written.read_text()
    assert "<script src=" not in page  # self-contained: plotly.js is inlined
    dom = render_in_chromium(written)
    assert drawn_titles(dom) == RUN_TITLES
    assert dom.count('class="main-svg"') >= len(RUN_TITLES)
    assert 'class="hm"' in dom  # the confusion matrix's heatmap was painted
    assert "neg" in dom and "Every evaluation" in dom


def test_the_run_figures_follow_what_the_run_recorded(tmp_path):
    run_dir = tmp_path / "r1"
    _write_run(run_dir, confusion=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    titles = [f.layout.title.text for f in run_figures(summary, [])]
    assert titles == ["Loss", "Validation metrics per epoch"]  # no steps, no confusion matrix
    loss = run_figures(summary, [])[0]
    assert [trace.name for trace in loss.data] == ["train loss (epoch mean)", "validation loss"]
    assert list(loss.data[1].y) == [0.7, 0.3]


def test_a_searchs_report_draws_curves_parallel_coordinates_and_the_leaderboard(tmp_path):
    run_dir = tmp_path / "search"
    rows = [
        {"rank": 1, "trial": "t1", "params": {"train.lr": 3e-3, "technique.type": "full"}, "best": 1.0,
         "best_epoch": 2, "epochs": 2, "stopped_early": False, "status": "finished",
         "history": [{"epoch": 1, "val_accuracy": 0.8}, {"epoch": 2, "val_accuracy": 1.0}]},
        {"rank": 2, "trial": "t2", "params": {"train.lr": 1e-6, "technique.type": "lora"}, "best": 0.4,
         "best_epoch": 1, "epochs": 1, "stopped_early": True, "status": "finished",
         "history": [{"epoch": 1, "val_accuracy": 0.4}]},
    ]  # fmt: skip
    run_dir.mkdir()
    (run_dir / "leaderboard.json").write_text(json.dumps(rows))
    _write_run(run_dir / "trials" / "t1")
    dom = render_in_chromium(Path(write_report(str(run_dir))))
    assert drawn_titles(dom) == [
        "val_accuracy per epoch, every trial",
        "Hyperparameters against the best val_accuracy of each trial",
        "Training loss per step, every trial",
    ]
    assert 'class="parcoords"' in dom
    assert "log10 train.lr" in dom and "lora" in dom  # a log axis, and categories by name
    assert "Leaderboard" in dom and "t2 (stopped early)" in dom


def test_a_folder_that_is_no_run_is_named(tmp_path):
    with pytest.raises(ReportError, match="is not a finished raft run or search"):
        write_report(str(tmp_path))


def test_a_resumed_runs_retrained_steps_are_drawn_once(tmp_path):
    """After a resume the steps past the checkpoint come again: the report keeps the latest."""
    events = [
        {"event": "step", "global_step": s, "loss": loss, "lr": 1.0, "samples_per_second": 1.0}
        for s, loss in ((5, 0.9), (10, 0.8), (15, 0.7), (10, 0.6), (15, 0.5), (20, 0.4))
    ]
    loss = run_figures({"history": []}, events)[0]
    assert list(loss.data[0].x) == [5, 10, 15, 20] and list(loss.data[0].y) == [0.9, 0.6, 0.5, 0.4]
