"""raft tune on the real local Ray cluster: ASHA over technique and learning rate, the
leaderboard, plots and best/; a search killed mid-way resumes without rerunning what finished."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import yaml

from raft.spec import validate
from raft.tune import ATTEMPTS_FILE, TRIALS_DIR, resume_search, run_search
from tests.helpers import base_spec

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _accuracy(model_dir: Path, rows_file: Path) -> float:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    batch = tokenizer(
        [r["text"] for r in rows], padding=True, truncation=True, max_length=16, return_tensors="pt"
    )
    with torch.no_grad():
        predicted = model(**batch).logits.argmax(-1).tolist()
    return sum(model.config.id2label[p] == r["label"] for p, r in zip(predicted, rows, strict=True)) / len(
        rows
    )


def test_asha_over_technique_and_lr_stops_the_poor_trials_and_exports_the_winner(
    tiny_bert, toy_data, tmp_path
):
    # A learning rate of 1e-6 cannot move the tiny model in two epochs: that corner of the
    # space is clearly worse, and ASHA must stop at least one trial there after epoch 1.
    document = base_spec(
        tiny_bert,
        toy_data,
        tmp_path,
        train={"epochs": 2},
        scaling={"num_workers": 1},
        output={"name": "asha"},
        tune={
            "metric": "val_accuracy",
            "mode": "max",
            "num_samples": 1,
            # One at a time, so ASHA sees the grid in order: the good (full, 3e-3) first,
            # and every later trial that is worse after epoch 1 than the median is stopped.
            "max_concurrent_trials": 1,
            "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
            "search": {"type": "grid"},
            "space": {"technique.type": {"grid": ["full", "lora"]}, "train.lr": {"grid": [3e-3, 1e-6]}},
        },
    )
    outcome = run_search(validate(document))
    run_dir = Path(outcome.run_dir)
    board = outcome.leaderboard
    assert len(board) == 4 and all(row["status"] == "finished" for row in board)
    combos = {(row["params"]["technique.type"], row["params"]["train.lr"]) for row in board}
    assert combos == {("lora", 1e-6), ("lora", 3e-3), ("full", 1e-6), ("full", 3e-3)}
    stopped = [row for row in board if row["stopped_early"]]
    assert stopped and all(row["epochs"] == 1 for row in stopped)
    assert all(row["best"] < board[0]["best"] for row in stopped)
    assert [row["rank"] for row in board] == [1, 2, 3, 4]
    assert board[0]["best"] >= board[1]["best"] >= board[2]["best"]

    # Each trial really ran its own technique: LoRA trials checkpoint an adapter.
    for row in board:
        trial_dir = run_dir / TRIALS_DIR / row["trial"]
        assert (
            yaml.safe_load((trial_dir / "spec.yaml").read_text())["technique"]["type"]
            == row["params"]["technique.type"]
        )
        adapter = list(trial_dir.glob("checkpoint_*/model/adapter_config.json"))
        assert bool(adapter) == (row["params"]["technique.type"] == "lora")

    with (run_dir / "leaderboard.csv").open() as handle:
        csv_rows = list(csv.DictReader(handle))
    assert [r["trial"] for r in csv_rows] == [row["trial"] for row in board]
    assert {"technique.type", "train.lr", "best", "epochs", "stopped_early", "wall_s"} <= set(csv_rows[0])
    plots = sorted(p.name for p in (run_dir / "plots").iterdir())
    assert "val_accuracy.png" in plots and len(plots) == 5
    assert all((run_dir / "plots" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)

    best = run_dir / "best"
    winner = yaml.safe_load((best / "spec.yaml").read_text())
    assert (winner["technique"]["type"], winner["train"]["lr"]) == (
        board[0]["params"]["technique.type"],
        board[0]["params"]["train.lr"],
    )
    assert winner["train"]["lr"] == 3e-3 and "tune" not in winner
    summary = json.loads((best / "summary.json").read_text())
    assert summary["best"] == board[0]["best"] >= 0.9
    model_dir = best / "model"
    if winner["technique"]["type"] == "full":
        assert _accuracy(model_dir, toy_data["validation"]) == pytest.approx(summary["best"], abs=0.02)
    else:
        assert (model_dir / "adapter_config.json").is_file()


def _tune_process(spec_file: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "raft", "tune", str(spec_file)],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _saved_states(search_dir: Path) -> dict[str, str]:
    """Trial id → status in Tune's saved search state (what --resume starts from)."""
    states = {}
    for state_file in sorted(search_dir.glob("experiment_state-*.json")):
        try:
            saved = json.loads(state_file.read_text())
        except json.JSONDecodeError:  # caught mid-write
            continue
        for trial_json, _ in saved["trial_data"]:
            trial = json.loads(trial_json)
            states[trial["trial_id"]] = trial["status"]
    return states


def test_killed_search_resumes_without_rerunning_the_finished_trial(tiny_bert, toy_data, tmp_path):
    # Two trials in turn. The second's raw DeepSpeed config is broken, so it fails at
    # start-up every time: it is retried once (max_failures: 1), then reported as errored,
    # and the search still exports the first.
    document = base_spec(
        tiny_bert,
        toy_data,
        tmp_path,
        train={"epochs": 1},
        scaling={"num_workers": 1},
        output={"name": "interrupted"},
        tune={
            "metric": "val_accuracy",
            "num_samples": 1,
            "max_failures": 1,
            "search": {"type": "grid"},
            "space": {
                "deepspeed.config": {"grid": [{}, {"zero_optimization": {"stage": "not-a-stage"}}]},
            },
        },
    )
    spec_file = tmp_path / "search.yaml"
    spec_file.write_text(yaml.safe_dump(document))
    log = tmp_path / "tune.log"
    process = _tune_process(spec_file, log)
    deadline = time.monotonic() + 400
    try:
        # Kill once Tune's saved state has the first trial finished.
        while "TERMINATED" not in _saved_states(tmp_path / "runs" / "interrupted" / "search").values():
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the driver dies; its trials die with it
        process.wait()
    run_dir = tmp_path / "runs" / "interrupted"
    first = next(d for d in (run_dir / TRIALS_DIR).iterdir() if d.is_dir())
    assert not (run_dir / "best").exists()
    checkpoints = sorted(p.name for p in first.glob("checkpoint_*"))

    outcome = resume_search(str(run_dir))

    board = {row["params"]["deepspeed.config"] == {}: row for row in outcome.leaderboard}
    good, broken = board[True], board[False]
    assert good["trial"] == first.name
    assert (first / ATTEMPTS_FILE).read_text() == "1"  # not rerun by --resume
    assert sorted(p.name for p in first.glob("checkpoint_*")) == checkpoints
    assert good["status"] == "finished" and good["epochs"] == 1
    assert broken["status"] == "errored" and broken["attempts"] == 2 and broken["best"] is None
    assert "stage" in broken["error"]
    assert outcome.leaderboard[0] is good and outcome.best_dir is not None
    assert json.loads((run_dir / "best" / "summary.json").read_text())["trial"] == first.name
