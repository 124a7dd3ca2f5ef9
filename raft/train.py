"""``raft train``: check everything, then run the spec on Ray Train and export the model.

raft train examples/minilm_topics_lora.yaml                  # a local cluster raft starts
raft train spec.yaml --address ray://head:10001 scaling.num_workers=8 scaling.use_gpu=true
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raft import checkpoints, data, registry, sources, storage
from raft.cluster import connect, memory_warning
from raft.failures import training_failure
from raft.labels import LabelMap
from raft.monitor import RunMonitor, logs_dir
from raft.perf import first_step_breakdown
from raft.sources import DataError
from raft.spec import dump_spec
from raft.worker import MODEL_DIR, train_loop_per_worker


class RunError(RuntimeError):
    """The run cannot start: bad paths, or output that would be overwritten."""


class TrainingFailed(RuntimeError):
    """Training started and failed (a worker error, lost workers past max_failures)."""


@dataclass
class TrainOutcome:
    run_dir: str  # a local folder or a URI (output.dir decides)
    model_dir: str
    history: list[dict[str, Any]]
    summary: dict[str, Any]


def run_dir_of(spec: Any) -> str:
    return storage.join(storage.normalize(spec.output.dir), spec.run_name)


def resolve_model_path(path: str) -> str:
    """``package:NAME/sub/dir`` → the folder inside the installed Python package NAME;
    a relative path → absolute (workers and exported adapters must not depend on the cwd)."""
    if path.startswith("package:"):
        import importlib.util

        package, _, inner = path.removeprefix("package:").partition("/")
        found = importlib.util.find_spec(package) if package else None
        if found is None or not found.submodule_search_locations:
            raise RunError(f"model.path {path!r}: Python package {package!r} is not installed")
        return str(Path(next(iter(found.submodule_search_locations)), inner))
    return os.path.abspath(os.path.expanduser(path))


def resolve_paths(spec: Any) -> Any:
    updates = {"model": spec.model.model_copy(update={"path": resolve_model_path(spec.model.path)})}
    name = spec.run_name
    updates["output"] = spec.output.model_copy(
        update={"name": name, "dir": storage.normalize(spec.output.dir)}
    )
    return spec.model_copy(update=updates)


def check_model_path(spec: Any) -> None:
    path = Path(spec.model.path)
    if not path.is_dir():
        raise RunError(f"model.path {spec.model.path!r} is not a folder (raft loads local model folders)")
    if not (path / "config.json").is_file():
        raise RunError(
            f"model.path {spec.model.path!r} has no config.json; is it a Hugging Face model folder?"
        )
    if any(path.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in path.glob("*.bin"))
    if not pickled:
        raise RunError(f"model.path {spec.model.path!r} has no *.safetensors weights")
    if not spec.model.allow_pickle_weights:
        raise RunError(
            f"model.path {spec.model.path!r} has no *.safetensors weights, only pickle-based "
            f"{', '.join(pickled)}, which can run code when loaded: raft loads safetensors only. "
            "Convert the weights to safetensors, or set model.allow_pickle_weights: true for a "
            "folder you trust"
        )
    print(f"[raft] model.allow_pickle_weights: loading pickle-based {', '.join(pickled)}", flush=True)


def check_inputs(spec: Any) -> Any:
    """The model and the data files are there and fit the task: returns the spec with
    resolved paths (no cluster needed)."""
    spec = resolve_paths(spec)
    check_model_path(spec)
    try:
        registry.get_task(spec.task.type).check_model(spec.task, spec.model.path)
    except ValueError as error:
        raise RunError(f"model.path {spec.model.path!r}: {error}") from None
    train_source, _, _ = data.resolve_sources(spec)
    return with_class_label_names(spec, train_source)


def with_class_label_names(spec: Any, train_source: Any) -> Any:
    """A saved Hugging Face dataset whose label column is a ClassLabel stores ids: its
    class names become task.labels (when the spec names none), so that the model, its
    metrics and its predictions use them (NER's entity types come from the tag names)."""
    column = registry.get_task(spec.task.type).label_column(spec.task)
    if column is None or getattr(spec.task, "labels", "unset") is not None:
        return spec
    names = sources.class_label_names(train_source, spec.data.train_split, column)
    if names is None:
        return spec
    return spec.model_copy(update={"task": spec.task.model_copy(update={"labels": names})})


def preflight(spec: Any) -> Any:
    """Every check that needs no cluster: returns the spec with resolved paths."""
    spec = check_inputs(spec)
    check_resumable(spec)
    return spec


def finished_model(spec: Any) -> str | None:
    """The exported model of a run that already finished (it is never trained again)."""
    model_dir = storage.join(run_dir_of(spec), MODEL_DIR)
    return model_dir if storage.exists(model_dir) else None


def check_resumable(spec: Any) -> None:
    """A run name that already has checkpoints resumes them: the model, task, technique,
    data and batch layout must be the ones they were written with."""
    saved = storage.join(run_dir_of(spec), "spec.yaml")
    if finished_model(spec) or not storage.exists(saved):
        return
    import yaml

    from raft.spec import resume_conflicts

    conflicts = resume_conflicts(
        yaml.safe_load(storage.read_text(saved)) or {}, yaml.safe_load(dump_spec(spec))
    )
    if conflicts:
        raise RunError(
            f"run {spec.run_name!r} exists at {run_dir_of(spec)} and would resume from its checkpoints, "
            f"but the spec changed: {'; '.join(conflicts)}. Use another output.name for a new run, "
            "or put these settings back to resume it."
        )


def fit(spec: Any, address: str | None = None, verbose: bool = False) -> TrainOutcome:
    """Train ``spec`` on Ray and export the model; raises RunError/DataError on bad input.

    Run names make runs restartable: the same name resumes the run's newest complete
    checkpoint (after a killed driver, a lost cluster), and a run that already finished is
    not trained again: its outcome is returned as it was."""
    started, timeline = time.perf_counter(), {"fit_started": time.time()}
    spec = preflight(spec)
    run_dir = run_dir_of(spec)
    done = finished_model(spec)
    if done is not None:
        print(
            f"[raft] run {spec.run_name!r} already finished: its model is at {done}; not training it "
            "again (choose another output.name for a new run)",
            flush=True,
        )
        return finished_outcome(run_dir, done)
    with connect(spec, address, verbose=verbose):
        timeline["cluster_ready"] = time.time()
        try:
            warning = memory_warning(spec)
        except Exception as error:  # an estimate that cannot be made must not stop the run
            warning = f"no memory estimate ({type(error).__name__}: {error})"
        if warning:
            print(f"[raft] warning: {warning}", flush=True)
        prepared = prepare_data(spec)
        timeline["data_ready"] = time.time()
        storage.write_text(storage.join(run_dir, "spec.yaml"), dump_spec(spec))
        print(f"[raft] run {spec.run_name}: {describe(spec, prepared)} → {run_dir}", flush=True)
        if not verbose and logs_dir():
            print(f"[raft] Ray's and DeepSpeed's logs: {logs_dir()} (--verbose shows them here)", flush=True)
        with RunMonitor(spec, run_dir) as monitor:
            trainer = build_trainer(spec, prepared, progress=monitor.board)
            try:
                result = trainer.fit()
            except Exception as error:
                raise TrainingFailed(training_failure(error, spec)) from error
            if result.error is not None:
                raise TrainingFailed(training_failure(result.error, spec))
            if result.checkpoint is None:
                raise TrainingFailed("training finished without a checkpoint; nothing to export")
            damaged = checkpoints.problems(result.checkpoint.filesystem, result.checkpoint.path)
            if damaged:
                raise TrainingFailed(
                    f"the final checkpoint {result.checkpoint.path} is damaged ({'; '.join(damaged[:3])}); "
                    "run the same command again to resume from the newest complete checkpoint"
                )
            model_dir = storage.join(run_dir, MODEL_DIR)
            export_checkpoint(result.checkpoint, spec, prepared.labels, model_dir)
            tracked = monitor.finish(model_dir)

    summary = _summary(
        spec, prepared.labels, result.return_value or {}, time.perf_counter() - started, model_dir
    )
    summary["skipped_rows"] = prepared.skipped
    summary["tracking"] = tracked
    if "mlflow" in tracked:
        print(
            f"[raft] MLflow run {tracked['mlflow']['run_id']} in {tracked['mlflow']['tracking_uri']} "
            f"(mlflow ui --backend-store-uri {tracked['mlflow']['tracking_uri']})",
            flush=True,
        )
    summary["timeline"] = timeline | (summary.pop("worker_timeline", None) or {})
    stages = first_step_breakdown(summary["timeline"])
    if "first_step" in summary["timeline"]:
        print(
            f"[raft] first step {sum(stages.values()):.1f} s after the run started: "
            + ", ".join(f"{name} {seconds:.1f}" for name, seconds in stages.items()),
            flush=True,
        )
    storage.write_text(storage.join(run_dir, "summary.json"), json.dumps(summary, indent=2))
    return TrainOutcome(run_dir, model_dir, summary["history"], summary)


def finished_outcome(run_dir: str, model_dir: str) -> TrainOutcome:
    summary_path = storage.join(run_dir, "summary.json")
    summary = json.loads(storage.read_text(summary_path)) if storage.exists(summary_path) else {}
    summary.setdefault("history", [])
    summary["already_finished"] = True
    return TrainOutcome(run_dir, model_dir, summary["history"], summary)


def prepare_data(spec: Any) -> data.PreparedData:
    """Ray Data's checked, sharded datasets for ``spec`` (bad rows are named here)."""
    prepared = data.prepare(spec)
    if prepared.train_rows // spec.scaling.max_workers == 0:
        raise DataError(
            f"data.train has {prepared.train_rows} rows, fewer than the {spec.scaling.max_workers} "
            "workers scaling.num_workers asks for"
        )
    for role, counts in prepared.skipped.items():  # {role: {reason: count}}
        print(
            f"[raft] {role}: skipped {sum(counts.values())} bad rows (data.on_bad_rows: skip): "
            f"{data.sources.describe_counts(counts)}",
            flush=True,
        )
    return prepared


def describe(spec: Any, prepared: data.PreparedData) -> str:
    unit = "examples" if registry.get_task(spec.task.type).changes_row_count(spec.task) else "rows"
    return (
        f"{prepared.train_rows} training {unit}, {prepared.validation_rows} validation {unit}"
        + (f", {prepared.labels.num_labels} classes" if prepared.labels else "")
        + (f"; tokenized once ({prepared.materialized})" if prepared.materialized else "")
    )


def build_trainer(
    spec: Any,
    prepared: data.PreparedData,
    callbacks: list[Any] | None = None,
    checkpoint_config: Any = None,
    start_from: Any = None,
    progress: Any = None,
) -> Any:
    """The ``TorchTrainer`` of one run (``raft train``, or one trial of ``raft tune``);
    ``start_from`` is another run's ``Checkpoint`` to begin from when this run
    has none of its own (Ray Train v2 dropped ``resume_from_checkpoint`` for this);
    ``progress`` is the ``raft.monitor`` board rank 0 sends its progress to."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "spec": spec.model_dump(mode="json"),
            "labels": list(prepared.labels.names) if prepared.labels else None,
            "train_rows": prepared.train_rows,
            "skipped": prepared.skipped,
            "samples": prepared.samples,
            "start_from": start_from,
            "progress": progress,  # raft.monitor's board: rank 0's events for the driver
        },
        scaling_config=ScalingConfig(
            num_workers=spec.scaling.num_workers,  # an int, or (min, max): elastic
            use_gpu=spec.scaling.use_gpu,
            resources_per_worker={"CPU": spec.scaling.cpus_per_worker}
            | ({"GPU": 1} if spec.scaling.use_gpu else {}),
            placement_strategy=spec.scaling.placement_strategy,
        ),
        run_config=RunConfig(
            name=spec.run_name,
            storage_path=spec.output.dir,
            checkpoint_config=checkpoint_config
            or CheckpointConfig(num_to_keep=spec.output.num_checkpoints_to_keep),
            failure_config=FailureConfig(max_failures=spec.scaling.max_failures),
            callbacks=callbacks or [],
        ),
        datasets={"train": prepared.train, "validation": prepared.validation},
    )


def export_checkpoint(checkpoint: Any, spec: Any, labels: LabelMap | None, model_dir: str) -> None:
    """Export the model in a Ray Train checkpoint to ``model_dir`` (a folder or a URI)."""
    from raft.export import export_model

    with checkpoint.as_directory() as checkpoint_dir:
        if storage.is_uri(model_dir):  # build it here, then upload
            with tempfile.TemporaryDirectory(prefix="raft-export-") as local:
                exported = export_model(
                    Path(checkpoint_dir) / MODEL_DIR, Path(local) / MODEL_DIR, spec, labels
                )
                storage.upload_dir(exported, model_dir)
        else:
            export_model(Path(checkpoint_dir) / MODEL_DIR, model_dir, spec, labels)


def _summary(spec: Any, labels: LabelMap | None, returned: dict, wall_seconds: float, model_dir: str) -> dict:
    task = registry.get_task(spec.task.type)
    history = returned.get("history", [])
    key = f"val_{task.primary_metric}"
    return {
        "run": spec.run_name,
        "model_dir": str(model_dir),
        "primary_metric": key,
        "before": history[0].get(key) if history and history[0].get("epoch") == 0 else None,
        "after": history[-1].get(key) if history else None,
        "history": history,
        "parameters": returned.get("parameters"),
        "precision": returned.get("precision"),
        "train_seconds": returned.get("train_seconds"),
        "samples_per_second_per_worker": returned.get("samples_per_second_per_worker"),
        "wall_seconds": wall_seconds,
        "labels": list(labels.names) if labels else None,
        "resumed_from": returned.get("resumed_from"),
        "worker_nodes": returned.get("worker_nodes"),
        "worker_timeline": returned.get("timeline"),
        "memory": returned.get("memory"),
    }
