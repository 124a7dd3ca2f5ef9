"""Experiment tracking: one MLflow run and one TensorBoard log per training run (no Ray).

The driver feeds a ``Tracker`` the run's progress events (``raft.progress``): the resolved
spec becomes the MLflow run's params, step and epoch events its metrics (at the global
step), and the exported model its artifact. A search files every trial as a child run
of the search's own run (MLflow's ``mlflow.parentRunId`` tag), so the UI groups them.

The embedded default needs no server: ``sqlite:///<output.dir>/mlflow.db`` with artifacts
beside it, which ``mlflow ui --backend-store-uri sqlite:///runs/mlflow.db`` opens.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from raft import progress, storage

RUN_DIR_TAG = "raft.run_dir"
PARENT_TAG = "mlflow.parentRunId"
TENSORBOARD_DIR = "tensorboard"


def tracking_uri(settings: Any, output_dir: str) -> str:
    """The spec's tracking URI, else $MLFLOW_TRACKING_URI, else a SQLite store in the
    (local) output folder, else one in ~/.raft (an output.dir URI has no local folder)."""
    if settings.tracking_uri:
        return settings.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    folder = Path(output_dir) if not storage.is_uri(output_dir) else Path("~/.raft").expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder.absolute() / 'mlflow.db'}"


def _artifact_root(uri: str) -> str | None:
    """Artifacts beside a local SQLite store (MLflow's default is ./mlruns in the cwd)."""
    if uri.startswith("sqlite:///"):
        return str(Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts")
    return None


class MlflowRun:
    """One MLflow run, through ``MlflowClient`` (no global "active run": trials log from
    threads of their own, and the driver may hold several)."""

    def __init__(
        self,
        uri: str,
        experiment: str,
        run_name: str,
        run_dir: str,
        tags: dict[str, str] | None = None,
        parent_run_id: str | None = None,
    ):
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            self.experiment_id = found.experiment_id
        else:
            try:
                self.experiment_id = self.client.create_experiment(
                    experiment, artifact_location=_artifact_root(uri)
                )
            except Exception:  # another trial created it first
                self.experiment_id = self.client.get_experiment_by_name(experiment).experiment_id
        self.run_id = (
            self._resumed(run_dir)
            or self.client.create_run(
                self.experiment_id,
                run_name=run_name,
                tags={RUN_DIR_TAG: run_dir, **(tags or {})}
                | ({PARENT_TAG: parent_run_id} if parent_run_id else {}),
            ).info.run_id
        )

    def _resumed(self, run_dir: str) -> str | None:
        """The unfinished run of the same run folder (a resumed raft run goes on logging
        into the MLflow run it started)."""
        quoted = run_dir.replace("'", "\\'")
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{RUN_DIR_TAG}` = '{quoted}'", max_results=5
        )
        for run in runs:
            if run.info.status != "FINISHED":
                self.client.update_run(run.info.run_id, status="RUNNING")
                return run.info.run_id
        return None

    def log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        fresh = [Param(k, v) for k, v in params.items() if k not in existing]
        for start in range(0, len(fresh), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=fresh[start : start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        if metrics:
            now = int(time.time() * 1000)
            self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def log_model(self, model_dir: str) -> None:
        if storage.is_uri(model_dir):
            with tempfile.TemporaryDirectory(prefix="raft-mlflow-") as local:
                storage.download_dir(model_dir, local)
                self.client.log_artifacts(self.run_id, local, artifact_path="model")
        else:
            self.client.log_artifacts(self.run_id, model_dir, artifact_path="model")

    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


class TensorBoardLog:
    """Scalars as TensorBoard event files in ``<run_dir>/tensorboard`` (written locally and
    uploaded when the run's folder is a URI)."""

    def __init__(self, run_dir: str):
        from torch.utils.tensorboard import SummaryWriter

        self.target = storage.join(run_dir, TENSORBOARD_DIR)
        self.local = tempfile.mkdtemp(prefix="raft-tensorboard-") if storage.is_uri(run_dir) else self.target
        self.writer = SummaryWriter(log_dir=self.local)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=step)

    def close(self) -> None:
        self.writer.close()
        if self.local != self.target:
            storage.upload_dir(self.local, self.target)


class Tracker:
    """The run's MLflow run and TensorBoard log, fed progress events (one thread)."""

    def __init__(
        self,
        spec: Any,
        run_dir: str,
        parent_run_id: str | None = None,
        uri: str | None = None,
        tags: dict[str, str] | None = None,
    ):
        settings = spec.tracking
        self.world_size = 1
        self.mlflow = None
        self.tensorboard = None
        self.log_model = settings.log_model
        if settings.mlflow:
            self.mlflow = MlflowRun(
                uri or tracking_uri(settings, spec.output.dir),
                settings.experiment,
                spec.run_name,
                run_dir,
                tags={"raft.task": spec.task.type, "raft.technique": spec.technique.type, **(tags or {})},
                parent_run_id=parent_run_id,
            )
            self.mlflow.log_params(progress.flat_params(spec.model_dump(mode="json")))
        if settings.tensorboard:
            self.tensorboard = TensorBoardLog(run_dir)

    @property
    def run_id(self) -> str | None:
        return self.mlflow.run_id if self.mlflow else None

    def event(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "start":
            self.world_size = int(event.get("world_size") or 1)
            return
        if kind == "step":
            metrics = progress.step_metrics(event, self.world_size)
        elif kind == "epoch":
            metrics = progress.epoch_metrics(event)
        else:
            return
        step = int(event.get("global_step", 0))
        for sink in (self.mlflow, self.tensorboard):
            if sink is not None:
                sink.log_metrics(metrics, step)

    def finish(self, model_dir: str | None, failed: bool = False) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.mlflow is not None:
            if model_dir and self.log_model and not failed:
                self.mlflow.log_model(model_dir)
            self.mlflow.end("FAILED" if failed else "FINISHED")


def search_run(spec: Any, run_dir: str) -> MlflowRun | None:
    """The MLflow run of a whole search (trials are its children): the search spec as
    params; the leaderboard and the winner's model are logged at its end."""
    settings = spec.tracking
    if not settings.mlflow:
        return None
    run = MlflowRun(
        tracking_uri(settings, spec.output.dir),
        settings.experiment,
        spec.run_name,
        run_dir,
        tags={"raft.task": spec.task.type, "raft.search": "true"},
    )
    run.log_params(progress.flat_params(spec.model_dump(mode="json")))
    return run


def close_trial_runs(search: MlflowRun, trials: dict[str, dict[str, Any]]) -> None:
    """Finish the trial runs a search left open. Tune stops a trial (ASHA, PBT) by ending
    its process, whose monitor then neither drains its last events nor ends its MLflow
    run: from Tune's own record of each trial ({trial_id: {"results": [every reported
    result], "errored", "stopped_early"}}) the missing epochs are logged and the run is
    ended. A run no trial id names (a PBT restart's earlier segment) is marked KILLED."""
    children = search.client.search_runs(
        [search.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{search.run_id}'", max_results=5000
    )
    for child in children:
        trial = trials.get(child.info.run_name)
        run_id = child.info.run_id
        if trial is not None:
            search.client.set_tag(run_id, "raft.stopped_early", str(bool(trial["stopped_early"])).lower())
        if child.info.status != "RUNNING":
            continue
        if trial is None:
            search.client.set_terminated(run_id, status="KILLED")
            continue
        logged = {int(m.value) for m in search.client.get_metric_history(run_id, "epoch")}
        for result in trial["results"]:
            if result.get("epoch") is None or int(result["epoch"]) in logged:
                continue
            kept = {k: v for k, v in result.items() if k.startswith("val_") or k in ("epoch", "train_loss")}
            step = int(result.get("global_step") or 0)
            search_view(search, run_id).log_metrics(progress.epoch_metrics(kept), step)
        search.client.set_terminated(run_id, status="FAILED" if trial["errored"] else "FINISHED")


def search_view(search: MlflowRun, run_id: str) -> MlflowRun:
    """Another run of the same store, through the search's client."""
    view = object.__new__(MlflowRun)
    view.uri, view.client, view.experiment_id, view.run_id = (
        search.uri,
        search.client,
        search.experiment_id,
        run_id,
    )
    return view
