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
from raft.tune import TRIALS_DIR, resume_search, run_search
from tests.helpers import base_spec, drawn_titles, render_in_chromium

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


def test_asha_search_killed_resumes_retries_and_exports_the_winner(tiny_bert, toy_data, tmp_path):
    # One search covers the whole story (each trial costs ~40 s of Ray start-up here):
    # technique.type × a raw DeepSpeed config, tried one at a time in grid order (Tune
    # varies the alphabetically first key fastest):
    #   1. full, {}          learns (lr 3e-3): val_accuracy 1.0
    #   2. full, broken      DeepSpeed refuses the config: retried once, then errored
    #   3. lora, {}          barely moves in an epoch at this lr: ASHA stops it after epoch 1
    #                        (judged against trial 1's epoch 1, seen before the interruption)
    #   4. lora, broken      the same as 2
    # The driver is killed once the first trial has finished; --resume runs the rest.
    document = base_spec(
        tiny_bert,
        toy_data,
        tmp_path,
        # A constant lr: with the default linear decay the full trial's loss drops right at
        # the end of epoch 1 (step ~38), and in some runs only just after it, when ASHA
        # would see both trials at chance. Constant, it is at val_loss < 0.1 by then.
        train={"epochs": 2, "lr": 3e-3, "lr_scheduler": "constant"},
        scaling={"num_workers": 1},
        output={"name": "asha"},
        tune={
            "metric": "val_accuracy",
            "mode": "max",
            "num_samples": 1,
            "max_concurrent_trials": 1,
            "max_failures": 1,
            "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
            "search": {"type": "grid"},
            "space": {
                "technique.type": {"grid": ["full", "lora"]},
                "deepspeed.config": {"grid": [{}, {"zero_optimization": {"stage": "not-a-stage"}}]},
            },
        },
    )
    spec_file = tmp_path / "search.yaml"
    spec_file.write_text(yaml.safe_dump(document))
    run_dir = tmp_path / "runs" / "asha"
    log = tmp_path / "tune.log"
    process = _tune_process(spec_file, log)
    deadline = time.monotonic() + 400
    try:
        # Kill once Tune's saved state has the first trial finished.
        while "TERMINATED" not in _saved_states(run_dir / "search").values():
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the driver dies; its trials die with it
        process.wait()
    assert not (run_dir / "best").exists()
    (first,) = [d for d in (run_dir / TRIALS_DIR).iterdir() if list(d.glob("checkpoint_*"))]
    checkpoints = sorted(p.name for p in first.glob("checkpoint_*"))

    outcome = resume_search(str(run_dir))

    board = outcome.leaderboard
    by_params = {(r["params"]["technique.type"], bool(r["params"]["deepspeed.config"])): r for r in board}
    assert len(board) == 4 and len(by_params) == 4
    good, slow = by_params[("full", False)], by_params[("lora", False)]
    # The finished trial was not rerun by --resume.
    assert good["trial"] == first.name and good["attempts"] == 1
    assert sorted(p.name for p in first.glob("checkpoint_*")) == checkpoints
    # ASHA: the clearly worse trial stopped after one epoch; the good one ran both.
    assert (good["status"], good["epochs"], good["stopped_early"]) == ("finished", 2, False)
    assert (slow["status"], slow["epochs"], slow["stopped_early"]) == ("finished", 1, True)
    assert slow["best"] < good["best"]
    # Failing trials were retried, reported, and did not sink the search.
    for technique in ("full", "lora"):
        broken = by_params[(technique, True)]
        assert (broken["status"], broken["attempts"], broken["best"]) == ("errored", 2, None)
        assert "stage" in broken["error"]
    # Both techniques really ran: the LoRA trial checkpoints an adapter, the full one a model.
    assert list((run_dir / TRIALS_DIR / slow["trial"]).glob("checkpoint_*/model/adapter_config.json"))
    assert not list(first.glob("checkpoint_*/model/adapter_config.json"))

    assert board[0] is good and [r["rank"] for r in board] == [1, 2, 3, 4]
    with (run_dir / "leaderboard.csv").open() as handle:
        csv_rows = list(csv.DictReader(handle))
    assert [r["trial"] for r in csv_rows] == [r["trial"] for r in board]
    assert {
        "technique.type",
        "deepspeed.config",
        "best",
        "epochs",
        "stopped_early",
        "attempts",
        "wall_s",
    } <= set(csv_rows[0])
    plots = sorted(p.name for p in (run_dir / "plots").iterdir())
    assert "val_accuracy.png" in plots and len(plots) == 5
    assert all((run_dir / "plots" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)

    best = run_dir / "best"
    assert outcome.best_dir == str(best)
    winner = yaml.safe_load((best / "spec.yaml").read_text())
    assert (
        winner["technique"]["type"] == "full" and winner["deepspeed"]["config"] == {} and "tune" not in winner
    )
    summary = json.loads((best / "summary.json").read_text())
    assert summary["trial"] == first.name and summary["best"] == good["best"] >= 0.9
    assert _accuracy(best / "model", toy_data["validation"]) == pytest.approx(summary["best"], abs=0.02)
    assert_search_tracked_and_reported(run_dir, board)


def assert_search_tracked_and_reported(run_dir: Path, board: list[dict]) -> None:
    """One MLflow run for the search (resumed after the kill, not a second one) with
    every trial's run under it; the search's report as Chromium draws it."""
    from mlflow.tracking import MlflowClient

    from raft.report import write_report
    from raft.tracking import PARENT_TAG, RUN_DIR_TAG

    client = MlflowClient(f"sqlite:///{run_dir.parent / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("raft").experiment_id
    (search,) = client.search_runs([experiment], filter_string=f"tags.`{RUN_DIR_TAG}` = '{run_dir}'")
    assert search.info.status == "FINISHED" and search.data.tags["raft.best_trial"] == board[0]["trial"]
    assert search.data.metrics["best/val_accuracy"] == board[0]["best"]
    assert "tune.scheduler.type" in search.data.params
    children = client.search_runs([experiment], filter_string=f"tags.`{PARENT_TAG}` = '{search.info.run_id}'")
    by_name = {child.info.run_name: child for child in children}
    assert sorted(by_name) == sorted(row["trial"] for row in board)  # a retried trial keeps its run
    for row in board:
        child = by_name[row["trial"]]
        assert child.info.status == ("FINISHED" if row["status"] == "finished" else "FAILED")
        assert child.data.tags["raft.stopped_early"] == str(row["stopped_early"]).lower()
        if row["status"] == "finished":
            epochs = client.get_metric_history(child.info.run_id, "eval/accuracy")
            assert max(m.value for m in epochs) == pytest.approx(row["best"])
    assert {a.path for a in client.list_artifacts(search.info.run_id)} >= {"leaderboard.csv", "model"}

    dom = render_in_chromium(Path(write_report(str(run_dir))))
    assert drawn_titles(dom) == [
        "val_accuracy per epoch, every trial",
        "Hyperparameters against the best val_accuracy of each trial",
        "Training loss per step, every trial",
    ]
    assert 'class="parcoords"' in dom and "Leaderboard" in dom


def test_pbt_restarts_the_poor_trial_from_the_good_ones_checkpoint_with_a_mutated_lr(
    tiny_bert, toy_data, tmp_path
):
    # A population of two, trained side by side: lr 3e-3 learns, lr 1e-6 barely moves. Each
    # epoch end compares the two; the worse one (lr 1e-6, until it has been exploited)
    # restarts from the better one's checkpoint with that trial's lr scaled by 0.8 or 1.2.
    document = base_spec(
        tiny_bert,
        toy_data,
        tmp_path,
        # Five epochs: an exploit needs the good trial checkpointed as the top one while the
        # slow one still has an epoch left to report, whichever of the two starts first.
        train={"epochs": 5, "lr_scheduler": "constant"},
        scaling={"num_workers": 1},
        output={"name": "pbt"},
        tune={
            "metric": "val_loss",
            "num_samples": 1,
            "scheduler": {
                "type": "pbt",
                "perturbation_interval": 1,
                "quantile_fraction": 0.5,
                "resample_probability": 0.0,
                "mutations": {"train.lr": {"loguniform": [1e-6, 1e-2]}},
            },
            "search": {"type": "grid"},
            "space": {"train.lr": {"grid": [3e-3, 1e-6]}},
        },
    )
    outcome = run_search(validate(document))
    run_dir = Path(outcome.run_dir)
    trials = run_dir / TRIALS_DIR
    board = {row["trial"]: row for row in outcome.leaderboard}
    assert len(board) == 2 and all(row["status"] == "finished" for row in board.values()), board

    def lr(run: str) -> float:
        return yaml.safe_load((trials / run / "spec.yaml").read_text())["train"]["lr"]

    slow_id = next(t for t in board if lr(t) == pytest.approx(1e-6))
    good_id = next(t for t in board if t != slow_id)
    # The slow trial's first restart began from the good trial's own run, with its lr mutated.
    # (Tune keeps its own copy of each checkpoint a trial reports, in the trial's folder.)
    restart = json.loads((trials / f"{slow_id}-2" / "start.json").read_text())
    assert Path(restart["checkpoint"]).parent.name.startswith(f"_run_trial_{good_id}_"), restart
    assert lr(f"{slow_id}-2") in (pytest.approx(3e-3 * 0.8), pytest.approx(3e-3 * 1.2))
    assert restart["params"]["train.lr"] == pytest.approx(lr(f"{slow_id}-2"))
    assert int((trials / slow_id / "attempts").read_text()) >= 2

    # Before the exploit it had its own (bad) loss; the exploit brought it the good one's.
    own_first = next(h for h in board[slow_id]["history"] if h["epoch"] == 1)
    assert board[slow_id]["best"] < 0.5 * own_first["val_loss"], board[slow_id]["history"]
    assert min(board[slow_id]["best"], board[good_id]["best"]) < 0.2
    assert _accuracy(run_dir / "best" / "model", toy_data["validation"]) >= 0.9
