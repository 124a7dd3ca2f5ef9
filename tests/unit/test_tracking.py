"""raft.tracking against real MLflow (a SQLite store) and TensorBoard files: what the
tracker writes, read back with MLflow's own client and TensorBoard's event reader."""

from __future__ import annotations

from pathlib import Path

import pytest

from raft.spec import validate
from raft.tracking import PARENT_TAG, RUN_DIR_TAG, Tracker, search_run, tracking_uri
from tests.helpers import base_spec


def _spec(tmp_path: Path, **tracking):
    data = {"train": tmp_path / "train.jsonl", "validation": tmp_path / "validation.jsonl"}
    document = base_spec(
        tmp_path / "model", data, tmp_path, output={"dir": str(tmp_path / "runs"), "name": "r1"}
    )
    document["tracking"] = tracking
    return validate(document)


def _events() -> list[dict]:
    return [
        {"event": "start", "total_steps": 20, "epochs": 2, "world_size": 2, "global_step": 0},
        {"event": "epoch", "epoch": 0, "global_step": 0, "val_accuracy": 0.5, "val_loss": 0.7},
        *(
            {
                "event": "step",
                "epoch": 1 + (s > 10),
                "global_step": s,
                "loss": 1.0 / s,
                "lr": 1e-3 * (20 - s),
                "samples_per_second": 8.0,
            }
            for s in (5, 10, 15, 20)
        ),  # fmt: skip
        {"event": "message", "text": "resumed from nothing"},
        {
            "event": "epoch",
            "epoch": 1,
            "global_step": 10,
            "val_accuracy": 0.75,
            "val_loss": 0.5,
            "train_loss": 0.2,
        },
        {
            "event": "epoch",
            "epoch": 2,
            "global_step": 20,
            "val_accuracy": 1.0,
            "val_loss": 0.25,
            "train_loss": 0.1,
        },
    ]


def test_the_default_store_is_a_sqlite_file_in_the_output_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = _spec(tmp_path)
    assert (
        tracking_uri(spec.tracking, str(tmp_path / "runs")) == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert tracking_uri(spec.tracking, str(tmp_path / "runs")) == "http://tracking:5000"
    given = _spec(tmp_path, tracking_uri="sqlite:////elsewhere/x.db")
    assert tracking_uri(given.tracking, str(tmp_path / "runs")) == "sqlite:////elsewhere/x.db"


def test_a_run_is_tracked_in_mlflow_and_tensorboard_and_read_back(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = _spec(tmp_path, experiment="unit")
    run_dir = str(tmp_path / "runs" / "r1")
    model_dir = tmp_path / "export"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    tracker = Tracker(spec, run_dir)
    for event in _events():
        tracker.event(event)
    tracker.finish(str(model_dir))

    client = MlflowClient(tracking_uri(spec.tracking, spec.output.dir))
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "r1"
    assert run.data.tags[RUN_DIR_TAG] == run_dir and run.data.tags["raft.technique"] == "full"
    assert run.data.params["train.batch_size"] == "16" and run.data.params["model.path"] == str(
        tmp_path / "model"
    )
    losses = client.get_metric_history(tracker.run_id, "train/loss")
    assert [(m.step, m.value) for m in losses] == [(5, 0.2), (10, 0.1), (15, 1 / 15), (20, 0.05)]
    accuracy = client.get_metric_history(tracker.run_id, "eval/accuracy")
    assert sorted((m.step, m.value) for m in accuracy) == [(0, 0.5), (10, 0.75), (20, 1.0)]
    # samples/s is the whole run's: the per-worker rate × 2 workers
    assert {m.value for m in client.get_metric_history(tracker.run_id, "train/samples_per_second")} == {16.0}
    assert [a.path for a in client.list_artifacts(tracker.run_id, "model")] == ["model/config.json"]
    # artifacts sit beside the store, not in the working directory
    assert list((tmp_path / "runs" / "mlartifacts").rglob("config.json"))

    events = EventAccumulator(str(Path(run_dir) / "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/learning_rate", "eval/accuracy", "eval/loss"} <= set(
        events.Tags()["scalars"]
    )
    assert [(e.step, e.value) for e in events.Scalars("eval/accuracy")] == [(0, 0.5), (10, 0.75), (20, 1.0)]


def test_a_resumed_run_logs_into_its_unfinished_mlflow_run_and_a_trial_under_its_search(
    tmp_path, monkeypatch
):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = _spec(tmp_path, tensorboard=False)
    run_dir = str(tmp_path / "runs" / "r1")
    first = Tracker(spec, run_dir)
    first.event({"event": "step", "epoch": 1, "global_step": 5, "loss": 0.5, "lr": 1.0})
    # the driver died here: the run was never ended
    again = Tracker(spec, run_dir)
    assert again.run_id == first.run_id
    again.finish(None)
    third = Tracker(spec, run_dir)  # the run had finished: a new run with that folder is a new MLflow run
    assert third.run_id != first.run_id
    third.finish(None, failed=True)
    client = MlflowClient(tracking_uri(spec.tracking, spec.output.dir))
    assert client.get_run(third.run_id).info.status == "FAILED"

    search = search_run(spec, str(tmp_path / "runs" / "search"))
    trial = Tracker(
        spec, str(tmp_path / "runs" / "search" / "trials" / "t1"), parent_run_id=search.run_id, uri=search.uri
    )
    trial.finish(None)
    children = client.search_runs(
        [search.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{search.run_id}'"
    )
    assert [c.info.run_id for c in children] == [trial.run_id]


def test_tracking_off_writes_nothing(tmp_path):
    spec = _spec(tmp_path, mlflow=False, tensorboard=False)
    tracker = Tracker(spec, str(tmp_path / "runs" / "r1"))
    tracker.event(_events()[2])
    tracker.finish(None)
    assert tracker.run_id is None and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("field", ["mlflow", "tensorboard", "log_model"])
def test_tracking_switches_are_booleans(tmp_path, field):
    from raft.spec import SpecError

    with pytest.raises(SpecError, match=f"tracking.{field}"):
        _spec(tmp_path, **{field: "sometimes"})


def test_a_search_closes_the_trial_runs_tune_stopped(tmp_path, monkeypatch):
    """Tune ends a stopped trial's process: its run is left RUNNING, without its last epoch."""
    from mlflow.tracking import MlflowClient

    from raft.tracking import close_trial_runs

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = _spec(tmp_path, tensorboard=False)
    search = search_run(spec, str(tmp_path / "runs" / "search"))

    def trial(name: str) -> Tracker:
        named = spec.model_copy(update={"output": spec.output.model_copy(update={"name": name})})
        return Tracker(named, str(tmp_path / "runs" / "search" / "trials" / name), search.run_id, search.uri)

    stopped, broken, segment, done = trial("t1"), trial("t2"), trial("t3-1"), trial("t4")
    stopped.event({"event": "epoch", "epoch": 1, "global_step": 10, "val_accuracy": 0.5})
    done.finish(None)
    results = [
        {"epoch": 1, "global_step": 10, "val_accuracy": 0.5, "time_this_iter_s": 3.0},
        {"epoch": 2, "global_step": 20, "val_accuracy": 0.75, "train_loss": 0.25, "trial_id": "t1"},
    ]
    close_trial_runs(
        search,
        {
            "t1": {"results": results, "errored": False, "stopped_early": True},
            "t2": {"results": [], "errored": True, "stopped_early": False},
            "t4": {"results": results, "errored": False, "stopped_early": False},
        },
    )
    client = MlflowClient(search.uri)
    status = {t: client.get_run(r.run_id).info.status for t, r in
              {"t1": stopped, "t2": broken, "t3-1": segment, "t4": done}.items()}  # fmt: skip
    assert status == {"t1": "FINISHED", "t2": "FAILED", "t3-1": "KILLED", "t4": "FINISHED"}
    history = client.get_metric_history(stopped.run_id, "eval/accuracy")
    assert sorted((m.step, m.value) for m in history) == [(10, 0.5), (20, 0.75)]  # epoch 1 not twice
    assert client.get_run(stopped.run_id).data.tags["raft.stopped_early"] == "true"
    assert "perf/time_this_iter_s" not in client.get_run(stopped.run_id).data.metrics  # Tune's own columns
    assert client.get_metric_history(done.run_id, "eval/accuracy") == []  # a finished run keeps its metrics
    assert client.get_run(done.run_id).data.tags["raft.stopped_early"] == "false"
