"""Watch a run from the driver: live progress, ``metrics.jsonl``, MLflow and TensorBoard.

Rank 0 of the run pushes small events (``raft.progress``) to a ``ProgressBoard`` actor,
fire-and-forget, so a step never waits on the driver. A thread on the driver drains the
board twice a second and hands each event to the console (a progress bar on a terminal,
a line per event otherwise), to the run's ``metrics.jsonl`` and to the tracker.

Ray's and DeepSpeed's own output stays in Ray's log files (``--verbose`` shows it here
too): raft's lines reach the driver through the board, not through Ray's log stream.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from typing import Any

import ray

from raft import progress, storage
from raft.progress import METRICS_FILE, read_events
from raft.tracking import Tracker

POLL_SECONDS = 0.5
WRITE_SECONDS = 30.0


@ray.remote(num_cpus=0, max_restarts=0)
class ProgressBoard:
    """Events from rank 0, held until the driver drains them."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def push(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def drain(self) -> list[dict[str, Any]]:
        events, self.events = self.events, []
        return events


def new_board() -> Any:
    """A board on the driver's node: a lost worker node must not take it along. Pinned,
    not preferred: it needs no CPU, so the driver's node always has room for it."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    try:
        here = ray.get_runtime_context().get_node_id()
    except Exception:  # a Ray Client driver is on no node of the cluster
        return ProgressBoard.remote()
    return ProgressBoard.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False)
    ).remote()


def logs_dir() -> str | None:
    """Where Ray keeps this cluster's logs (workers, DeepSpeed, Train), when local."""
    try:
        node = ray._private.worker.global_worker.node
        return node.get_logs_dir_path() if node is not None else None
    except Exception:
        return None


class Console:
    """Progress on the driver's terminal: a bar when stdout is a terminal, else lines."""

    def __init__(self, label: str, interactive: bool | None = None):
        self.label = label
        self.interactive = sys.stdout.isatty() if interactive is None else interactive
        self.bar: Any = None
        self.state = progress.RunProgress()

    def write(self, line: str) -> None:
        text = f"[raft] {line}"
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def event(self, event: dict[str, Any]) -> None:
        self.state.update(event)
        kind = event.get("event")
        if kind == "message":
            self.write(event["text"])
        elif kind == "epoch":
            self.write(progress.epoch_line(event, self.state.epochs, self.state.world_size))
        elif kind == "step":
            if self.interactive:
                self._bar_update(event)
            else:
                self.write(self.state.step_line(time.time()))

    def _bar_update(self, event: dict[str, Any]) -> None:
        from tqdm.auto import tqdm

        if self.bar is None:
            self.bar = tqdm(
                total=self.state.total_steps,
                initial=self.state.first_step or 0,
                unit="step",
                desc=self.label,
                dynamic_ncols=True,
            )
        self.bar.n = self.state.global_step
        postfix = {"epoch": f"{self.state.epoch}/{self.state.epochs}"}
        postfix |= {"loss": f"{event['loss']:.4f}"} if "loss" in event else {}
        postfix |= {"lr": f"{event['lr']:.1e}"} if "lr" in event else {}
        if "samples_per_second" in event:
            postfix["samples/s"] = f"{event['samples_per_second'] * self.state.world_size:.1f}"
        self.bar.set_postfix(postfix, refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class RunMonitor:
    """``with RunMonitor(spec, run_dir) as monitor:`` hand ``monitor.board`` to the trainer
    (``raft.train.build_trainer``), then ``monitor.finish(model_dir)``."""

    def __init__(
        self,
        spec: Any,
        run_dir: str,
        console: bool = True,
        parent_run_id: str | None = None,
        tracking_uri: str | None = None,
    ):
        self.spec, self.run_dir = spec, run_dir
        self.console = Console(spec.run_name) if console else None
        self.parent_run_id, self.tracking_uri = parent_run_id, tracking_uri
        self.tracker: Tracker | None = None
        self.tracking_failed = False
        # A resumed run (same run name) keeps what its earlier drivers recorded.
        self.events: list[dict[str, Any]] = read_events(run_dir)
        self.written_at = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.board: Any = None
        self.board_lost = False
        self.finished = False

    def __enter__(self) -> RunMonitor:
        self.board = new_board()
        self._thread = threading.Thread(target=self._watch, name="raft-monitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        if not self.finished:
            self.finish(None, failed=kind is not None)

    # -- the thread --------------------------------------------------------------------
    def _watch(self) -> None:
        self._start_tracking()  # MLflow's import and store set-up: off the run's critical path
        while not self._stop.is_set():
            self._drain()
            self._stop.wait(POLL_SECONDS)
        self._drain()

    def _start_tracking(self) -> None:
        settings = self.spec.tracking
        if not (settings.mlflow or settings.tensorboard):
            return
        try:
            self.tracker = Tracker(self.spec, self.run_dir, self.parent_run_id, self.tracking_uri)
        except Exception as error:
            self._tracking_error(error)

    def _tracking_error(self, error: Exception) -> None:
        # Tracking is a record of the run, not the run: a store that fails stops tracking only.
        self.tracker, self.tracking_failed = None, True
        line = f"warning: experiment tracking stopped ({type(error).__name__}: {error}); training goes on"
        if self.console:
            self.console.write(line)
        else:
            print(f"[raft] {self.spec.run_name}: {line}", flush=True)

    def _drain(self) -> None:
        try:
            events = ray.get(self.board.drain.remote(), timeout=10)
        except ray.exceptions.GetTimeoutError:  # a busy cluster (a node being lost): next time
            return
        except Exception as error:  # the board is gone: the run goes on, unwatched
            if not self.board_lost:
                self.board_lost = True
                line = f"warning: live progress stopped ({type(error).__name__}); training goes on"
                if self.console:
                    self.console.write(line)
                else:
                    print(f"[raft] {self.spec.run_name}: {line}", flush=True)
            return
        for event in events:
            self.events.append(event)
            if self.console:
                self.console.event(event)
            if self.tracker is not None:
                try:
                    self.tracker.event(event)
                except Exception as error:
                    self._tracking_error(error)
        # On disk at every evaluation, and every half minute in between (a killed driver
        # loses at most that much of the step record).
        if any(e.get("event") == "epoch" for e in events) or (
            events and time.monotonic() - self.written_at > WRITE_SECONDS
        ):
            self.write_metrics()

    # -- the end -----------------------------------------------------------------------
    def write_metrics(self) -> None:
        """Every event so far, one JSON line each (``raft report`` reads them)."""
        self.written_at = time.monotonic()
        lines = [json.dumps(e, default=str) for e in self.events if e.get("event") != "message"]
        storage.write_text(storage.join(self.run_dir, METRICS_FILE), "\n".join(lines) + "\n")

    def finish(self, model_dir: str | None, failed: bool = False) -> dict[str, Any]:
        """Stop watching (after a last drain), log the model and close the tracked run;
        returns where the run is tracked."""
        self.finished = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=120)
        if self.console:
            self.console.close()
        if self.events:
            self.write_metrics()
        info: dict[str, Any] = {}
        if self.tracker is not None:
            try:
                self.tracker.finish(model_dir, failed=failed)
                if self.tracker.mlflow is not None:
                    info["mlflow"] = {
                        "tracking_uri": self.tracker.mlflow.uri,
                        "experiment_id": self.tracker.mlflow.experiment_id,
                        "run_id": self.tracker.mlflow.run_id,
                    }
                if self.tracker.tensorboard is not None:
                    info["tensorboard"] = self.tracker.tensorboard.target
            except Exception as error:
                self._tracking_error(error)
        with contextlib.suppress(Exception):
            ray.kill(self.board)
        return info
