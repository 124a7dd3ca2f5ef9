"""``raft tune``: a Ray Tune search where every trial is a full Ray Train + DeepSpeed run.

raft tune examples/minilm_topics_search.yaml          # a local cluster raft starts
raft tune spec.yaml --address ray://head:10001 tune.max_concurrent_trials=4
raft tune --resume runs/my-search                      # continue an interrupted search

The Ray Train v2 pattern: a Tuner runs a function trainable per trial; the function builds
the trial's ``TorchTrainer`` and calls ``fit()``, and ``TuneReportCallback`` hands each
epoch's validation metrics (reported by the workers) to Tune, where ASHA acts on them. The
trial function itself holds no CPU: its workers reserve what the trial's ``scaling`` says,
and ``tune.max_concurrent_trials`` bounds how many trials hold workers at once.

Population-based training needs the checkpoints themselves in Tune (an exploiting trial
restarts from another's), which ``TuneReportCallback`` does not hand over: under PBT the
trainer runs in a thread, a Train callback relays each report's metrics and checkpoint
through a queue, and the trial function reports both. A restart is a new Train run,
``trials/<trial_id>-<n>``, begun from the checkpoint Tune hands the trial.

Output under the run folder (``output.dir/output.name``):
    spec.yaml            the search spec, resolved (what --resume reads)
    search/              Ray Tune's experiment state (Tuner.restore reads it)
    trials/<trial_id>/   each trial's Ray Train run: checkpoints, spec.yaml
                         (PBT: trials/<trial_id>-<n>/ for each restart, with start.json)
    leaderboard.csv      one row per trial, best first
    leaderboard.json     the same, with every trial's metric per epoch (raft report reads it)
    plots/               the metric per epoch: every trial on one plot, and one per trial
    best/                the winner, laid out as ``raft train`` lays out a run:
                         model/, spec.yaml, summary.json
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raft import data, search, storage
from raft.cluster import connect
from raft.monitor import RunMonitor
from raft.search import TRIALS_DIR
from raft.sources import DataError
from raft.spec import dump_spec, validate
from raft.train import (
    RunError,
    TrainingFailed,
    build_trainer,
    check_inputs,
    describe,
    export_checkpoint,
    preflight,
    prepare_data,
    run_dir_of,
)
from raft.worker import MODEL_DIR

SEARCH_DIR = "search"
BEST_DIR = "best"
LEADERBOARD_JSON = "leaderboard.json"  # the leaderboard with every trial's history (raft report)
PLOTS_DIR = "plots"
# Trial results keep Tune's own bookkeeping too; these are the ones a leaderboard shows.
_TRIAL_ID = "trial_id"
TRIAL_FUNCTION_CPUS = 0.01
ATTEMPTS_FILE = "attempts"  # in each trial's folder: how many times the trial started


@dataclass
class SearchOutcome:
    run_dir: str
    best_dir: str | None
    metric: str
    mode: str
    leaderboard: list[dict[str, Any]]
    wall_seconds: float


# -- the per-trial function (runs in a Tune trial actor) -------------------------------
def trial_spec(document: dict[str, Any], params: dict[str, Any], run_dir: str, trial_id: str) -> Any:
    trial = search.apply_params(document, params)
    trial["output"] = {**trial.get("output", {}), "dir": storage.join(run_dir, TRIALS_DIR), "name": trial_id}
    return validate(trial)


def _run_trial(
    config: dict[str, Any],
    document: dict[str, Any],
    prepared: Any,
    run_dir: str,
    tracking: dict[str, str] | None = None,
) -> None:
    from ray import tune
    from ray.train import CheckpointConfig

    section = search.TuneSection.model_validate(document["tune"])
    trial_id = tune.get_context().get_trial_id()
    trials_dir = storage.join(run_dir, TRIALS_DIR, trial_id)
    attempt = attempts(trials_dir) + 1
    storage.write_text(storage.join(trials_dir, ATTEMPTS_FILE), str(attempt))
    # A trial is one Ray Train run, which a retry resumes from its own latest checkpoint.
    # Under PBT every start is a new run, begun from the checkpoint PBT hands the trial
    # (its own, or after an exploit another trial's).
    pbt = section.scheduler.type == "pbt"
    name = f"{trial_id}-{attempt}" if pbt and attempt > 1 else trial_id
    spec = trial_spec(document, decode(config, section), run_dir, name)
    storage.write_text(storage.join(run_dir_of(spec), "spec.yaml"), dump_spec(spec))
    if prepared is None:  # the space changes the data or the task: each trial reads its own
        prepared = prepare_data(spec)
    metric, mode = metric_and_mode(spec, section)
    # The best epoch's checkpoint is kept for best/ (Ray Train also keeps the latest).
    keep = CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=metric, checkpoint_score_order=mode)
    # The trial's own MLflow run (a child of the search's) and TensorBoard log.
    with RunMonitor(spec, run_dir_of(spec), console=False, **(tracking or {})) as monitor:
        if pbt:
            # Any checkpoint a trial reported may be cloned later, after its own run has moved
            # on: under PBT no run deletes its checkpoints.
            keep = CheckpointConfig(num_to_keep=None)
            _fit_reporting_checkpoints(spec, prepared, keep, tune.get_checkpoint(), monitor.board)
            monitor.finish(None)
            return
        from ray.tune.integration.ray_train import TuneReportCallback

        trainer = build_trainer(
            spec, prepared, callbacks=[TuneReportCallback()], checkpoint_config=keep, progress=monitor.board
        )
        result = trainer.fit()
        if result.error is not None:
            raise TrainingFailed(f"trial {trial_id} failed: {result.error}")
        monitor.finish(None)


def _fit_reporting_checkpoints(spec: Any, prepared: Any, keep: Any, start: Any, board: Any = None) -> None:
    """Fit, handing Tune each epoch's metrics *and checkpoint* (PBT exploits checkpoints;
    ``TuneReportCallback`` carries only their paths). The trainer runs in a thread; its
    controller's callback queues every report, and this function reports them to Tune."""
    import threading

    from ray import tune
    from ray.util.queue import Empty, Queue

    if start is not None:
        # Where this start came from (PBT: a checkpoint of this trial or of the one it cloned).
        values = _mutable_values(spec)
        storage.write_text(
            storage.join(run_dir_of(spec), "start.json"),
            json.dumps({"checkpoint": start.path, "params": values}, indent=2),
        )
        print(
            f"[raft tune] {spec.run_name}: starts from {start.path} with "
            + ", ".join(f"{k}={v}" for k, v in values.items()),
            flush=True,
        )
        finished = _finished_state(start, spec)
        if finished is not None:
            # PBT handed this trial a checkpoint of a run that already ran its last epoch:
            # there is nothing left to train, so its last result stands as this trial's.
            tune.report({**finished, "checkpoint_path": start.path}, checkpoint=start)
            return

    reports: Queue = Queue(actor_options={"num_cpus": 0})
    trainer = build_trainer(
        spec,
        prepared,
        callbacks=[_QueueReports(reports)],
        checkpoint_config=keep,
        start_from=start,
        progress=board,
    )
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as error:  # re-raised below, in Tune's thread
            outcome["error"] = error

    thread = threading.Thread(target=fit, name="raft-trial-fit", daemon=True)
    thread.start()
    try:
        while thread.is_alive() or not reports.empty():
            try:
                metrics, checkpoint = reports.get(timeout=1.0)
            except Empty:
                continue
            if checkpoint is not None:  # Ray Train's checkpoint class → Ray Tune's (same fields)
                checkpoint = tune.Checkpoint(checkpoint.path, filesystem=checkpoint.filesystem)
            tune.report(metrics, checkpoint=checkpoint)
    finally:
        reports.shutdown()
    if "error" in outcome:
        raise TrainingFailed(f"trial failed: {outcome['error']}") from outcome["error"]
    if outcome["result"].error is not None:
        raise TrainingFailed(f"trial failed: {outcome['result'].error}")


def _finished_state(checkpoint: Any, spec: Any) -> dict[str, Any] | None:
    """The last epoch's metrics of a checkpoint whose run has no epoch left under ``spec``."""
    from raft.worker import STATE_FILE, TrainState, _scalars

    with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/{STATE_FILE}") as stream:
        state = TrainState(**json.loads(stream.read()))
    steps_done = spec.train.max_steps is not None and state.global_step >= spec.train.max_steps
    if (state.epoch >= spec.train.epochs or steps_done) and state.history:
        return _scalars(state.history[-1])
    return None


def _mutable_values(spec: Any) -> dict[str, Any]:
    document = spec.model_dump(mode="json")
    values = {}
    for key in search.PBT_MUTABLE:
        section, field = key.split(".")
        values[key] = document[section][field]
    return values


def _QueueReports(queue: Any) -> Any:  # noqa: N802 (builds a callback class lazily: Ray import)
    from ray.train.v2.api.callback import UserCallback

    class QueueReports(UserCallback):
        """Runs in the Train controller: rank 0's metrics and the checkpoint's path."""

        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            path = checkpoint.path if checkpoint else None
            queue.put(({**metrics[0], "checkpoint_path": path}, checkpoint))

    return QueueReports()


def attempts(trial_dir: str) -> int:
    """Times the trial in ``trial_dir`` started (retries and resumed searches count)."""
    location = storage.join(trial_dir, ATTEMPTS_FILE)
    return int(storage.read_text(location)) if storage.exists(location) else 0


# -- the search space in Ray Tune's terms ---------------------------------------------
def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _by_index(distribution: search.Distribution) -> bool:
    # Tune and Optuna sample plain values; sections (dicts) and lists go by their index.
    return distribution.categorical and not all(_scalar(v) for v in distribution.values)


def param_space(section: search.TuneSection) -> dict[str, Any]:
    from ray import tune

    space = {}
    for key, distribution in section.space.items():
        values = list(range(len(distribution.values))) if _by_index(distribution) else distribution.values
        if distribution.categorical:
            grid = section.search.type == "grid"
            space[key] = tune.grid_search(values) if grid else tune.choice(values)
        else:
            low, high = distribution.values
            sampler = {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}
            space[key] = sampler[distribution.kind](low, high)
    return space


def decode(config: dict[str, Any], section: search.TuneSection) -> dict[str, Any]:
    """A trial's sampled config → {dotted key: spec value}."""
    params = {}
    for key, distribution in section.space.items():
        value = config[key]
        params[key] = distribution.values[value] if _by_index(distribution) else value
    return params


def metric_and_mode(spec: Any, section: search.TuneSection) -> tuple[str, str]:
    metric = section.metric or search.default_metric(spec)
    return metric, section.mode or search.default_mode(metric)


def _scheduler(section: search.TuneSection, spec: Any) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    chosen = section.scheduler
    if chosen.type == "asha":
        return ASHAScheduler(
            # The epoch the worker reports, not Tune's report count: a trial resumed from
            # its checkpoint goes on counting from where it was.
            time_attr="epoch",
            max_t=spec.train.epochs,
            grace_period=chosen.grace_period,
            reduction_factor=chosen.reduction_factor,
        )
    if chosen.type == "pbt":
        from ray import tune

        mutations = {}
        for key, distribution in section.space.items():
            distribution = chosen.mutations.get(key, distribution)
            if distribution.categorical:
                mutations[key] = list(distribution.values)
            else:
                low, high = distribution.values
                mutations[key] = {
                    "uniform": tune.uniform,
                    "loguniform": tune.loguniform,
                    "randint": tune.randint,
                }[distribution.kind](low, high)
        return _ConcurrentPBT()(
            time_attr="epoch",
            perturbation_interval=chosen.perturbation_interval,
            quantile_fraction=chosen.quantile_fraction,
            resample_probability=chosen.resample_probability,
            hyperparam_mutations=mutations,
        )
    return FIFOScheduler()


def _ConcurrentPBT() -> type:  # noqa: N802 (a class built lazily: Ray import)
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler

    class ConcurrentPBT(PopulationBasedTraining):
        """PBT that never pauses a trial to let another run. Tune's PBT pauses every
        trial that reports while another is PENDING, to share a cluster too small for
        the population; raft starts the whole population at once, so a PENDING trial is
        one restarting after an exploit, and a pause would end the reporting trial's Ray
        Train run for nothing (its restart is a new run)."""

        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
            decision = super().on_trial_result(tune_controller, trial, result)
            if decision == TrialScheduler.PAUSE and trial.status != Trial.PAUSED:
                return TrialScheduler.CONTINUE
            return decision

    return ConcurrentPBT


def _search_algorithm(section: search.TuneSection) -> Any:
    if section.search.type == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=section.search.seed)
    from ray.tune.search import BasicVariantGenerator

    # Tune ignores TuneConfig.max_concurrent_trials for a generator; it takes its own.
    return BasicVariantGenerator(random_state=section.search.seed, max_concurrent=section.concurrency)


# -- progress on the driver -----------------------------------------------------------
TABLE_SECONDS = 30.0  # the live trials table is printed at most this often (and at each trial's end)


def _progress_callback(metric: str, mode: str, section: search.TuneSection) -> Any:
    from ray.tune import Callback

    class Progress(Callback):
        """One line per trial event: its metric, the counts by state, the best so far;
        and a table of every trial, every TABLE_SECONDS and whenever a trial ends."""

        def __init__(self) -> None:
            self.best: tuple[float, str] | None = None
            self.started = time.perf_counter()
            self.table_at = self.started
            self.latest: dict[str, dict[str, Any]] = {}  # trial id → its last epoch and best

        def _table(self, trials: list[Any]) -> None:
            self.table_at = time.perf_counter()
            rows = [
                {
                    "trial": trial.trial_id,
                    "status": trial.status,
                    "params": decode(trial.config, section),
                    **self.latest.get(trial.trial_id, {}),
                }
                for trial in trials
            ]
            print(search.trials_table(rows, list(section.space), metric), flush=True)

        def _counts(self, trials: list[Any]) -> str:
            states: dict[str, int] = {}
            for trial in trials:
                states[trial.status.lower()] = states.get(trial.status.lower(), 0) + 1
            return ", ".join(f"{count} {state}" for state, count in sorted(states.items()))

        def on_trial_result(
            self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
        ) -> None:
            value = result.get(metric)
            if isinstance(value, int | float):
                better = self.best is None or (
                    value > self.best[0] if mode == "max" else value < self.best[0]
                )
                if better:
                    self.best = (value, trial.trial_id)
                record = self.latest.setdefault(trial.trial_id, {})
                record.update(epoch=result.get("epoch"), value=value)
                kept = record.get("best")
                if kept is None or (value > kept if mode == "max" else value < kept):
                    record["best"] = value
            shown = f"{value:.4f}" if isinstance(value, int | float) else "—"
            best = f"{self.best[0]:.4f} ({self.best[1]})" if self.best else "—"
            print(
                f"[raft tune] {time.perf_counter() - self.started:6.0f}s  trial {trial.trial_id} "
                f"epoch {result.get('epoch')}: {metric}={shown} · {self._counts(trials)} · best {best}",
                flush=True,
            )
            if time.perf_counter() - self.table_at >= TABLE_SECONDS:
                self._table(trials)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            print(f"[raft tune] trial {trial.trial_id} ended · {self._counts(trials)}", flush=True)
            self._table(trials)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            print(f"[raft tune] trial {trial.trial_id} failed · {self._counts(trials)}", flush=True)
            self._table(trials)

    return Progress()


# -- running a search -----------------------------------------------------------------
def _shares_data(section: search.TuneSection) -> bool:
    # Trials share one prepared dataset unless the space changes what preprocessing makes.
    return not any(key.split(".")[0] in ("data", "task", "model") for key in section.space)


def run_search(spec: Any, address: str | None = None, verbose: bool = False) -> SearchOutcome:
    """Check the spec, run every trial, write the leaderboard and export the winner."""
    if spec.tune is None:
        raise RunError("the spec has no tune: section (raft train runs a single run)")
    spec = preflight(spec)
    check_searched_inputs(spec)
    run_dir = run_dir_of(spec)
    if storage.exists(storage.join(run_dir, BEST_DIR)):
        raise RunError(
            f"search {spec.run_name!r} already finished: see {run_dir}. Choose another output.name."
        )
    if storage.exists(storage.join(run_dir, SEARCH_DIR)):
        raise RunError(
            f"search {spec.run_name!r} already started at {run_dir}; continue it with --resume {run_dir}"
        )
    return _search(spec, run_dir, address, verbose, resume=False)


def check_searched_inputs(spec: Any) -> None:
    """A space over ``model.*``, ``data.*`` or ``task.*`` gets each of its values checked
    as the base spec is (model folder, data files, task fit), before any trial starts."""
    document = spec.model_dump(mode="json")
    for key, distribution in spec.tune.space.items():
        if key.split(".")[0] not in ("model", "data", "task"):
            continue
        for value in distribution.corners():
            try:
                check_inputs(validate(search.apply_params(document, {key: value})))
            except (RunError, DataError) as error:
                raise RunError(f"tune.space.{key} = {value!r}: {error}") from None


def resume_search(run_dir: str, address: str | None = None, verbose: bool = False) -> SearchOutcome:
    """Continue the search at ``run_dir``: finished trials stay, unfinished and errored ones rerun."""
    spec_file = storage.join(run_dir, "spec.yaml")
    if not storage.exists(spec_file) or not storage.exists(storage.join(run_dir, SEARCH_DIR)):
        raise RunError(f"{run_dir} is not a search started by raft tune (no spec.yaml and search/ there)")
    import yaml

    spec = validate(yaml.safe_load(storage.read_text(spec_file)), source=spec_file)
    if spec.tune is None:
        raise RunError(f"{spec_file} has no tune: section; {run_dir} is a raft train run")
    return _search(preflight_resumed(spec), run_dir, address, verbose, resume=True)


def preflight_resumed(spec: Any) -> Any:
    from raft.train import check_model_path

    check_model_path(spec)
    data.resolve_sources(spec)
    check_searched_inputs(spec)
    return spec


def _search(spec: Any, run_dir: str, address: str | None, verbose: bool, resume: bool) -> SearchOutcome:
    import os

    # Tune saves the search state every so often ("auto": rarely, to keep the overhead
    # near 5%); a trial that finished after the last save reruns after an interruption.
    # The state is a few KB per trial: save it every second instead.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    if not verbose:  # Tune's own status boxes: raft prints a line per result and a trials table
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    from ray import tune

    section = spec.tune
    metric, mode = metric_and_mode(spec, section)
    started = time.perf_counter()
    with connect(spec, address, verbose=verbose, concurrent_runs=section.concurrency):
        prepared = prepare_data(spec)  # bad rows stop the search here, before any trial
        print(f"[raft tune] search {spec.run_name}: {describe(spec, prepared)} → {run_dir}", flush=True)
        if not resume:
            storage.write_text(storage.join(run_dir, "spec.yaml"), dump_spec(spec))
        tracked = _search_tracking(spec, run_dir)
        trainable = tune.with_resources(
            tune.with_parameters(
                _run_trial,
                document=spec.model_dump(mode="json"),
                prepared=prepared if _shares_data(section) else None,
                run_dir=run_dir,
                tracking={"parent_run_id": tracked.run_id, "tracking_uri": tracked.uri} if tracked else None,
            ),
            # The trial's workers reserve its CPUs; the function only waits on them, so it
            # takes a token share (Tune refuses an empty request).
            {"CPU": TRIAL_FUNCTION_CPUS},
        )
        search_path = storage.join(run_dir, SEARCH_DIR)
        if resume:
            tuner = tune.Tuner.restore(
                search_path, trainable=trainable, resume_unfinished=True, resume_errored=True
            )
            _restore_asha_rungs(tuner, search_path, section, mode)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=param_space(section),
                tune_config=tune.TuneConfig(
                    metric=metric,
                    mode=mode,
                    num_samples=section.num_samples,
                    # (a random/grid generator takes the limit itself: _search_algorithm)
                    max_concurrent_trials=section.concurrency if section.search.type == "optuna" else None,
                    scheduler=_scheduler(section, spec),
                    search_alg=_search_algorithm(section),
                ),
                run_config=tune.RunConfig(
                    name=SEARCH_DIR,
                    storage_path=run_dir,
                    failure_config=tune.FailureConfig(max_failures=section.max_failures),
                    # Only PBT's trials report checkpoints to Tune (exploits restart from them).
                    # Tune must not delete any: an exploiting trial's checkpoint record points
                    # into the trial it cloned, and deleting "old" ones removed checkpoints a
                    # restarting trial was about to load.
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
                    callbacks=[_progress_callback(metric, mode, section)],
                    verbose=1 if verbose else 0,
                ),
            )
        try:
            grid = tuner.fit()
            rows = leaderboard_rows(grid, spec, section, metric, mode, run_dir)
            storage.write_text(
                storage.join(run_dir, "leaderboard.csv"), search.leaderboard_csv(rows, list(section.space))
            )
            storage.write_text(
                storage.join(run_dir, LEADERBOARD_JSON), json.dumps(rows, indent=2, default=str)
            )
            print("\n" + search.leaderboard_table(rows, list(section.space), metric), flush=True)
            _plot(rows, metric, run_dir)
            best_dir = _export_best(rows, spec, prepared, run_dir, metric, mode)
        except BaseException:
            if tracked:
                tracked.end("FAILED")
            raise
        if tracked:
            _finish_search_tracking(tracked, spec, rows, metric, run_dir, best_dir, grid)
    return SearchOutcome(run_dir, best_dir, metric, mode, rows, time.perf_counter() - started)


def _search_tracking(spec: Any, run_dir: str) -> Any:
    """The search's MLflow run, or None (tracking off, or a store that fails: the search goes on)."""
    from raft.tracking import search_run

    try:
        return search_run(spec, run_dir)
    except Exception as error:
        print(
            f"[raft tune] warning: experiment tracking is off ({type(error).__name__}: {error})", flush=True
        )
        return None


def _finish_search_tracking(
    tracked: Any,
    spec: Any,
    rows: list[dict[str, Any]],
    metric: str,
    run_dir: str,
    best_dir: str | None,
    grid: Any,
) -> None:
    from raft.tracking import close_trial_runs

    try:
        trial_ids = {trial.path: trial.trial_id for trial in grid._experiment_analysis.trials}
        by_trial = {row["trial"]: row for row in rows}
        trials = {}
        for result in grid:
            trial_id = trial_ids.get(result.path) or Path(result.path).name
            frame = result.metrics_dataframe
            trials[trial_id] = {
                "results": frame.to_dict("records") if frame is not None else [],
                "errored": result.error is not None,
                "stopped_early": by_trial.get(trial_id, {}).get("stopped_early", False),
            }
        close_trial_runs(tracked, trials)
        winner = next((row for row in rows if row.get("best") is not None), None)
        if winner is not None:
            tracked.log_metrics({f"best/{metric}": float(winner["best"])}, step=0)
            tracked.set_tag("raft.best_trial", winner["trial"])
        tracked.client.log_text(
            tracked.run_id, search.leaderboard_csv(rows, list(spec.tune.space)), "leaderboard.csv"
        )
        if best_dir and spec.tracking.log_model:
            tracked.log_model(storage.join(best_dir, MODEL_DIR))
        tracked.end("FINISHED")
        print(f"[raft tune] MLflow: search run {tracked.run_id} in {tracked.uri}", flush=True)
    except Exception as error:
        print(
            f"[raft tune] warning: experiment tracking failed ({type(error).__name__}: {error})", flush=True
        )


def _restore_asha_rungs(tuner: Any, search_path: str, section: search.TuneSection, mode: str) -> None:
    """Give a resumed search's ASHA the results it had seen before the interruption.

    Tune restores trials and the searcher but builds the scheduler afresh from the
    Tuner's saved config, so without this every trial after a resume would be judged
    only against trials that also ran after it (and a poor one would not be stopped).
    Reaches into ray 2.60's ASHA (its brackets' rungs: milestone → {trial_id: score}).
    """
    if section.scheduler.type != "asha":
        return
    from ray.tune import ExperimentAnalysis, ResultGrid

    scheduler = tuner._local_tuner._tune_config.scheduler
    metric = section.metric
    sign = 1 if mode == "max" else -1  # ASHA compares sign * metric, larger is better
    for result in ResultGrid(ExperimentAnalysis(search_path)):
        frame = result.metrics_dataframe
        trial_id = (result.metrics or {}).get(_TRIAL_ID)
        if frame is None or trial_id is None or metric not in frame:
            continue
        history = frame[["epoch", metric]].dropna().to_dict("records")
        for bracket in scheduler._brackets:
            for milestone, recorded in bracket._rungs:
                reached = [h[metric] for h in history if h["epoch"] >= milestone]
                if reached:
                    recorded.setdefault(trial_id, sign * reached[0])


def leaderboard_rows(
    grid: Any, spec: Any, section: Any, metric: str, mode: str, run_dir: str
) -> list[dict[str, Any]]:
    # A result's last metrics may be another trial's (PBT hands an exploiting trial the
    # result it cloned), so the trial id comes from Tune's own record of each trial.
    trial_ids = {trial.path: trial.trial_id for trial in grid._experiment_analysis.trials}
    rows = []
    for result in grid:
        frame = result.metrics_dataframe
        history = frame.to_dict("records") if frame is not None else []
        trial_id = trial_ids.get(result.path) or Path(result.path).name
        params = decode(result.config, section)
        planned = validate(search.apply_params(spec.model_dump(mode="json"), params)).train.epochs
        best = search.best_epoch(history, metric, mode)
        epochs = int(history[-1].get("epoch", len(history))) if history else 0
        rows.append(
            {
                "trial": trial_id,
                "params": params,
                "status": "errored" if result.error else "finished",
                "attempts": attempts(storage.join(run_dir, TRIALS_DIR, trial_id)),
                "best": best[metric] if best else None,
                "best_epoch": int(best["epoch"]) if best else None,
                "checkpoint": best.get("checkpoint_path") if best else None,
                "epochs": epochs,
                "stopped_early": result.error is None and epochs < planned,
                "wall_s": float(history[-1].get("time_total_s", 0.0)) if history else 0.0,
                "history": [
                    {"epoch": h.get("epoch"), metric: h.get(metric), "checkpoint": h.get("checkpoint_path")}
                    for h in history
                ],
                "error": str(result.error) if result.error else None,
            }
        )
    ranked = search.rank(rows, mode)
    for place, row in enumerate(ranked, start=1):
        row["rank"] = place
    return ranked


def _plot(rows: list[dict[str, Any]], metric: str, run_dir: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def draw(selected: list[dict[str, Any]], name: str, title: str) -> None:
        figure, axes = plt.subplots(figsize=(7, 4.5))
        for row in selected:
            points = [(h["epoch"], h[metric]) for h in row["history"] if h.get(metric) is not None]
            if points:
                label = f"{row['trial']}" + (" (stopped early)" if row["stopped_early"] else "")
                axes.plot(*zip(*points, strict=True), marker="o", label=label)
        axes.set(xlabel="epoch", ylabel=metric, title=title)
        axes.grid(alpha=0.3)
        if selected:
            axes.legend(fontsize=7)
        figure.tight_layout()
        image = io.BytesIO()
        figure.savefig(image, format="png", dpi=110)
        plt.close(figure)
        storage.write_bytes(storage.join(run_dir, PLOTS_DIR, name), image.getvalue())

    draw(rows, f"{metric}.png", f"{metric} per epoch, every trial")
    for row in rows:
        draw([row], f"trial_{row['trial']}.png", f"trial {row['trial']}: {search._show(row['params'])}")


def _export_best(
    rows: list[dict[str, Any]], spec: Any, prepared: Any, run_dir: str, metric: str, mode: str
) -> str | None:
    from ray.train import Checkpoint

    winner = next((row for row in rows if row["checkpoint"]), None)
    if winner is None:
        print("[raft tune] no trial reported a checkpoint; nothing to export", flush=True)
        return None
    best_dir = storage.join(run_dir, BEST_DIR)
    winning = trial_spec(spec.model_dump(mode="json"), winner["params"], run_dir, winner["trial"])
    export_checkpoint(
        Checkpoint(winner["checkpoint"]), winning, prepared.labels, storage.join(best_dir, MODEL_DIR)
    )
    storage.write_text(storage.join(best_dir, "spec.yaml"), dump_spec(winning))
    summary = {
        "trial": winner["trial"],
        "params": winner["params"],
        "primary_metric": metric,
        "best": winner["best"],
        "best_epoch": winner["best_epoch"],
        "history": winner["history"],
        "model_dir": storage.join(best_dir, MODEL_DIR),
    }
    storage.write_text(storage.join(best_dir, "summary.json"), json.dumps(summary, indent=2, default=str))
    print(
        f"[raft tune] best: trial {winner['trial']} {metric}={winner['best']:.4f} at epoch "
        f"{winner['best_epoch']} → {best_dir}",
        flush=True,
    )
    return best_dir
