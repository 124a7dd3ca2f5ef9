"""raft.progress: the driver's progress lines, ETAs and the scalars trackers record."""

from __future__ import annotations

import pytest

from raft.progress import (
    MLFLOW_PARAM_LIMIT,
    RunProgress,
    epoch_line,
    epoch_metrics,
    flat_params,
    format_duration,
    step_metrics,
)


def test_durations_read_as_a_person_would_say_them():
    assert [format_duration(s) for s in (0, 9.6, 75, 3600 + 125)] == ["0s", "10s", "1m15s", "1h02m"]
    assert format_duration(None) == format_duration(float("inf")) == format_duration(-1) == "?"


def _step(step: int, at: float, **extra) -> dict:
    return {"event": "step", "epoch": 1, "global_step": step, "time": at, "loss": 0.5, "lr": 1e-3,
            "samples_per_second": 10.0, **extra}  # fmt: skip


def test_eta_is_the_steps_left_at_the_pace_since_the_first_step_seen():
    run = RunProgress()
    run.update({"event": "start", "total_steps": 100, "epochs": 2, "world_size": 2, "global_step": 0})
    assert run.eta_seconds(now=5.0) is None  # no step yet
    run.update(_step(10, at=100.0))
    assert run.eta_seconds(now=100.0) is None  # one point: no pace yet
    run.update(_step(30, at=120.0))  # 20 steps in 20 s → 70 steps left: 70 s
    assert run.eta_seconds(now=120.0) == pytest.approx(70.0)
    line = run.step_line(now=120.0)
    # the throughput shown is all workers' (per-worker rate × 2 workers)
    assert line == "epoch 1/2 · step 30/100 (30%) · loss 0.5000 · lr 1.00e-03 · 20.0 samples/s · ETA 1m10s"


def test_a_resumed_run_measures_its_pace_from_where_it_resumed():
    run = RunProgress()
    run.update({"event": "start", "total_steps": 100, "epochs": 2, "world_size": 1, "global_step": 60})
    run.update(_step(70, at=10.0))
    run.update(_step(80, at=20.0))  # 10 steps in 10 s, 20 left
    assert run.eta_seconds(now=20.0) == pytest.approx(20.0)


def test_epoch_lines_show_the_evaluation_the_loss_and_the_throughput():
    metrics = {"event": "epoch", "epoch": 2, "global_step": 38, "val_accuracy": 0.75, "val_loss": 0.5,
               "val_rows": 120, "train_loss": 0.625, "samples_per_second": 50.0, "tokens_per_second": 9.0,
               "skipped_train_bad_json": 3, "time": 1.0}  # fmt: skip
    assert epoch_line(metrics, epochs=3, world_size=2) == (
        "epoch 2/3 done: val_accuracy 0.7500 · val_loss 0.5000 · train_loss 0.6250 · 100.0 samples/s"
    )
    assert epoch_line({"epoch": 0, "val_loss": 0.7}).startswith("before training: val_loss 0.7000")


def test_tracked_scalars_are_grouped_by_what_they_measure():
    assert step_metrics(_step(5, 1.0), world_size=4) == {
        "train/loss": 0.5,
        "train/learning_rate": 1e-3,
        "train/samples_per_second": 40.0,
    }
    epoch = epoch_metrics(
        {
            "event": "epoch",
            "epoch": 1,
            "global_step": 19,
            "time": 5.0,
            "val_accuracy": 0.5,
            "train_loss": 0.4,
            "data_wait_fraction": 0.01,
            "skipped_train_bad_json": 2,
            "confusion_matrix": [[1, 0], [0, 1]],
            "generations": [],
            "flag": True,
            "val_loss": float("nan"),
        }  # fmt: skip
    )
    assert epoch == {
        "epoch": 1.0,
        "eval/accuracy": 0.5,
        "train/epoch_loss": 0.4,
        "perf/data_wait_fraction": 0.01,
        "data/skipped_train_bad_json": 2.0,
    }


def test_a_spec_becomes_dotted_params_within_mlflows_limit():
    params = flat_params({"train": {"lr": 0.001, "max_steps": None}, "deepspeed": {"config": {}},
                          "task": {"labels": ["a", "b"]}, "note": "x" * 7000})  # fmt: skip
    assert params["train.lr"] == "0.001" and params["train.max_steps"] == "null"
    assert params["deepspeed.config"] == "{}" and params["task.labels"] == "['a', 'b']"
    assert len(params["note"]) == MLFLOW_PARAM_LIMIT
