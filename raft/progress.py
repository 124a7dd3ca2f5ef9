"""What a run reports while it trains, and how the driver words it (pure: no Ray).

Rank 0 sends small event dicts to the driver (``raft.monitor``); these functions turn
them into progress lines, ETAs and the scalars that MLflow and TensorBoard record.

Events: ``start`` (total_steps, epochs, world_size, global_step), ``step`` (epoch,
global_step, loss, lr, samples_per_second per worker), ``epoch`` (the epoch's metrics,
as in the run's history), ``message`` (text).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from raft import storage

MLFLOW_PARAM_LIMIT = 6000  # characters MLflow keeps of a param's value
METRICS_FILE = "metrics.jsonl"  # every event of a run, one JSON line each, in its folder


def read_events(run_dir: str) -> list[dict[str, Any]]:
    """The events recorded in a run's ``metrics.jsonl`` (a resumed run's from every driver
    that ran it, in order); none for a new run, or one from before the file existed."""
    location = storage.join(run_dir, METRICS_FILE)
    if not storage.exists(location):
        return []
    return [json.loads(line) for line in storage.read_text(location).splitlines() if line.strip()]


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


@dataclass
class RunProgress:
    """The driver's view of one run, fed every event in order."""

    total_steps: int | None = None
    epochs: int | None = None
    world_size: int = 1
    first_step: int | None = None  # global step of the first step event (a resume starts late)
    first_time: float | None = None
    global_step: int = 0
    epoch: int = 0
    last: dict[str, Any] = field(default_factory=dict)  # the latest step event

    def update(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "start":
            self.total_steps = event.get("total_steps")
            self.epochs = event.get("epochs")
            self.world_size = int(event.get("world_size") or 1)
            self.global_step = int(event.get("global_step") or 0)
        elif kind == "step":
            self.global_step = int(event["global_step"])
            if self.first_step is None:  # the pace is measured from here on
                self.first_step, self.first_time = self.global_step, event["time"]
            self.epoch = int(event["epoch"])
            self.last = event
        elif kind == "epoch":
            self.global_step = int(event.get("global_step", self.global_step))
            self.epoch = int(event.get("epoch", self.epoch))

    def eta_seconds(self, now: float) -> float | None:
        """Steps left at the pace since the first step seen (evaluations included, as they
        recur each epoch); None before two points exist."""
        if self.total_steps is None or self.first_time is None or self.first_step is None:
            return None
        done = self.global_step - self.first_step
        if done <= 0 or now <= self.first_time:
            return None
        return max(self.total_steps - self.global_step, 0) * (now - self.first_time) / done

    def step_line(self, now: float) -> str:
        event = self.last
        total = self.total_steps or 0
        share = f" ({100 * self.global_step / total:.0f}%)" if total else ""
        parts = [
            f"epoch {self.epoch}/{self.epochs or '?'}",
            f"step {self.global_step}/{total or '?'}{share}",
            f"loss {event['loss']:.4f}" if "loss" in event else None,
            f"lr {event['lr']:.2e}" if "lr" in event else None,
            f"{event['samples_per_second'] * self.world_size:.1f} samples/s"
            if "samples_per_second" in event
            else None,
            f"ETA {format_duration(self.eta_seconds(now))}",
        ]
        return " · ".join(part for part in parts if part)


def epoch_line(metrics: dict[str, Any], epochs: int | None = None, world_size: int = 1) -> str:
    """The evaluation after an epoch (``epoch`` 0: before training), with the epoch's
    training loss and throughput; the rest is in metrics.jsonl and the tracker."""
    shown = [
        f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}"
        for key, value in metrics.items()
        if (key.startswith("val_") and key != "val_rows") or key == "train_loss"
        if _number(value)
    ]
    if _number(metrics.get("samples_per_second")):
        shown.append(f"{metrics['samples_per_second'] * world_size:.1f} samples/s")
    epoch = metrics.get("epoch")
    head = "before training" if epoch == 0 else f"epoch {epoch}/{epochs or '?'} done"
    return f"{head}: " + " · ".join(shown)


def step_metrics(event: dict[str, Any], world_size: int = 1) -> dict[str, float]:
    """A step event's scalars, under the names MLflow and TensorBoard record."""
    names = {"loss": "train/loss", "lr": "train/learning_rate"}
    metrics = {names[key]: float(event[key]) for key in names if _number(event.get(key))}
    if _number(event.get("samples_per_second")):
        metrics["train/samples_per_second"] = float(event["samples_per_second"]) * world_size
    return metrics


def epoch_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """An epoch's scalars (``val_accuracy`` → ``eval/accuracy``, ``train_loss`` →
    ``train/epoch_loss``, throughput under ``perf/``)."""
    renamed: dict[str, float] = {}
    for key, value in metrics.items():
        if key in ("event", "time", "global_step") or not _number(value):
            continue
        if key.startswith("val_"):
            name = "eval/" + key.removeprefix("val_")
        elif key == "train_loss":
            name = "train/epoch_loss"
        elif key == "epoch":
            name = "epoch"
        elif key.startswith("skipped_"):
            name = "data/" + key
        else:
            name = "perf/" + key
        renamed[name] = float(value)
    return renamed


def flat_params(document: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A resolved spec as MLflow params: dotted keys, string values within MLflow's limit."""
    params: dict[str, str] = {}
    for key, value in document.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            params.update(flat_params(value, dotted + "."))
        else:
            text = "null" if value is None else str(value)
            params[dotted] = text[:MLFLOW_PARAM_LIMIT]
    return params


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
