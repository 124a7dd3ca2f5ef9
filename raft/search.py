"""The ``tune:`` section and the pure logic of a search: distributions over dotted spec keys,
trial specs built from sampled values, the metrics a task reports, and the leaderboard.
No Ray here; ``raft.tune`` turns this into a Ray Tune run.

    tune:
      metric: val_accuracy
      mode: max
      num_samples: 8
      max_concurrent_trials: 2
      scheduler: {type: asha, grace_period: 1, reduction_factor: 2}
      search: {type: optuna, seed: 0}
      space:
        train.lr: {loguniform: [1.0e-5, 1.0e-3]}
        train.batch_size: {choice: [8, 16]}
        technique.type: {choice: [lora, full]}   # each type keeps only its own fields
        technique.r: {choice: [4, 8]}            # applies to the trials that draw lora
"""

from __future__ import annotations

import copy
import csv
import io
import math
from typing import Annotated, Any, Literal

from pydantic import Field, PositiveInt, model_validator

from raft import registry
from raft.registry import SectionModel

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")
# Metric-name fragments where smaller is better (mode defaults to min for these).
_LOWER_IS_BETTER = ("loss", "perplexity", "wer", "cer")

TRIALS_DIR = "trials"  # a search's folder of trial runs, each laid out as a raft train run


class Distribution(SectionModel):
    """One search dimension, written ``{choice: [...]}``, ``{loguniform: [low, high]}``, …"""

    kind: Literal["choice", "grid", "uniform", "loguniform", "randint"]
    values: list[Any]

    @model_validator(mode="before")
    @classmethod
    def _from_one_key(cls, data: Any) -> Any:
        if isinstance(data, dict) and set(data) - {"kind", "values"}:
            if len(data) != 1:
                raise ValueError(f"give one distribution ({', '.join(DISTRIBUTIONS)}), got {sorted(data)}")
            ((kind, values),) = data.items()
            if kind not in DISTRIBUTIONS:
                raise ValueError(f"unknown distribution {kind!r}; known: {', '.join(DISTRIBUTIONS)}")
            return {"kind": kind, "values": values}
        if isinstance(data, list):  # a bare list is a choice
            return {"kind": "choice", "values": data}
        if not isinstance(data, dict):
            raise ValueError(
                f"expected a distribution such as {{choice: [a, b]}} or {{loguniform: [low, high]}}, got {data!r}"
            )
        return data

    @model_validator(mode="after")
    def _bounds(self) -> Distribution:
        if self.kind in ("choice", "grid"):
            if not self.values:
                raise ValueError(f"{self.kind} needs at least one value")
            return self
        if len(self.values) != 2 or not all(_is_number(v) for v in self.values):
            raise ValueError(f"{self.kind} needs [low, high] numbers, got {self.values!r}")
        low, high = self.values
        if not low < high:
            raise ValueError(f"{self.kind} [{low}, {high}]: low must be below high")
        if self.kind == "loguniform" and low <= 0:
            raise ValueError(f"loguniform [{low}, {high}]: bounds must be positive")
        if self.kind == "randint" and not all(isinstance(v, int) for v in self.values):
            raise ValueError(f"randint [{low}, {high}]: bounds must be integers (high excluded)")
        return self

    @property
    def categorical(self) -> bool:
        return self.kind in ("choice", "grid")

    def corners(self) -> list[Any]:
        """Values that stand for the whole range when checking a spec: every category, or
        both ends of a range (randint's high is excluded)."""
        if self.categorical:
            return list(self.values)
        low, high = self.values
        return [low, high - 1] if self.kind == "randint" else [low, high]


class AshaScheduler(SectionModel):
    type: Literal["asha"] = "asha"
    grace_period: PositiveInt = Field(1, description="Epochs every trial gets before it can be stopped.")
    reduction_factor: float = Field(
        2.0, gt=1.0, description="At each rung only the best 1/reduction_factor of trials go on."
    )


class FifoScheduler(SectionModel):
    type: Literal["fifo"] = "fifo"


class PbtScheduler(SectionModel):
    type: Literal["pbt"] = "pbt"
    perturbation_interval: PositiveInt = Field(
        1,
        description="Epochs between exploit/explore steps: a trial in the bottom quantile restarts "
        "from a top trial's checkpoint with its hyperparameters mutated.",
    )
    quantile_fraction: float = Field(
        0.25, gt=0.0, le=0.5, description="Share of trials in the top and in the bottom quantile."
    )
    resample_probability: float = Field(
        0.25,
        ge=0.0,
        le=1.0,
        description="Chance a mutated value is drawn afresh instead of scaled by 0.8 or 1.2.",
    )
    mutations: dict[str, Distribution] = Field(
        default_factory=dict,
        description="Where a mutated value is drawn from, by key (default: the key's own space "
        "distribution). A range scales the value by 0.8 or 1.2 (or redraws it); a list moves to a "
        "neighbouring value (or redraws one).",
    )


# What population-based training may change in a running trial: it restarts the trial from
# another one's checkpoint, so the model, the data and the optimizer's state must carry over.
PBT_MUTABLE = ("train.lr", "train.max_grad_norm")

Scheduler = Annotated[FifoScheduler | AshaScheduler | PbtScheduler, Field(discriminator="type")]


class SearchAlgorithm(SectionModel):
    type: Literal["random", "grid", "optuna"] = Field(
        "random",
        description="random sampling, grid (every combination of grid/choice values), "
        "or Optuna's TPE through Ray Tune's OptunaSearch.",
    )
    seed: int | None = Field(0, description="Seed of the sampler (null: not seeded).")


class TuneSection(SectionModel):
    space: dict[str, Distribution] = Field(
        ...,
        description="Dotted spec key → distribution: {choice: [...]}, {grid: [...]}, "
        "{uniform: [low, high]}, {loguniform: [low, high]}, {randint: [low, high)}.",
    )
    metric: str | None = Field(
        None,
        description="Validation metric to optimise, e.g. val_accuracy (default: the task's main one; "
        "required by asha, pbt and optuna, which act on it).",
    )
    mode: Literal["min", "max"] | None = Field(
        None, description="min or max (default: min for loss/perplexity/wer/cer, else max)."
    )
    num_samples: PositiveInt = Field(4, description="Trials to run (with grid: repeats of the whole grid).")
    max_concurrent_trials: PositiveInt | None = Field(
        None,
        description="Trials at once (default 1; pbt: the whole population, which trains "
        "together); each reserves its own scaling.num_workers workers.",
    )
    scheduler: Scheduler = Field(
        default_factory=FifoScheduler,
        description="fifo (every trial runs all its epochs), asha (early stopping) or pbt "
        "(population-based training: poor trials restart from good ones' checkpoints with "
        "mutated train.lr / train.max_grad_norm).",
    )
    search: SearchAlgorithm = Field(default_factory=SearchAlgorithm, description="How trials are drawn.")
    max_failures: int = Field(
        1,
        ge=0,
        description="Times a failed trial is retried (from its last checkpoint) before it counts as errored.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> TuneSection:
        problems = []
        if not self.space:
            problems.append("space: name at least one spec key to search")
        acting = self.scheduler.type if self.scheduler.type != "fifo" else None  # asha, pbt
        acting = acting or ("optuna" if self.search.type == "optuna" else None)
        if acting and self.metric is None:
            problems.append(
                f"metric: {acting} acts on a metric; set tune.metric (e.g. val_loss or the task's val_ metric)"
            )
        if self.search.type == "grid":
            ranges = [k for k, d in self.space.items() if not d.categorical]
            if ranges:
                problems.append(
                    f"space: grid search needs choice/grid values, not ranges ({', '.join(ranges)})"
                )
        if self.search.type != "grid":
            grids = [k for k, d in self.space.items() if d.kind == "grid"]
            if grids:
                problems.append(
                    f"space: {{grid: ...}} ({', '.join(grids)}) needs search.type: grid; use choice with {self.search.type}"
                )
        if self.scheduler.type == "pbt":
            fixed = [k for k in self.space if k not in PBT_MUTABLE]
            if fixed:
                problems.append(
                    f"space: pbt restarts trials from each other's checkpoints, so it can search only "
                    f"{', '.join(PBT_MUTABLE)}; {', '.join(fixed)} would change the model or the data "
                    "(use asha or fifo)"
                )
            if self.search.type == "optuna":
                problems.append("search: pbt draws its own mutations; use search.type random or grid")
            stray = [k for k in self.scheduler.mutations if k not in self.space]
            if stray:
                problems.append(
                    f"scheduler.mutations: {', '.join(stray)} not in space (mutate only searched keys)"
                )
            if self.population < 2:
                problems.append("num_samples: pbt needs a population of at least 2 trials")
            if self.max_concurrent_trials is not None and self.max_concurrent_trials < self.population:
                problems.append(
                    f"max_concurrent_trials: pbt trains its population of {self.population} trials together "
                    f"(a trial exploits the others' checkpoints as they train); set it to {self.population} "
                    "or leave it out"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def population(self) -> int:
        """How many trials the search runs: num_samples, times every grid combination."""
        combinations = 1
        if self.search.type == "grid":
            for distribution in self.space.values():
                combinations *= len(distribution.values)
        return self.num_samples * combinations

    @property
    def concurrency(self) -> int:
        """Trials at once: PBT's whole population trains together."""
        if self.scheduler.type == "pbt":
            return max(self.max_concurrent_trials or 0, self.population)
        return self.max_concurrent_trials or 1


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# -- trial specs ----------------------------------------------------------------------
def _technique_fields(technique_type: str) -> set[str]:
    spec_class = registry.techniques().get(technique_type)
    return set(spec_class.model_fields) if spec_class else set()


def apply_params(document: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The spec mapping of one trial: ``document`` with each dotted key set.

    Setting ``technique.type`` (or the whole ``technique`` section) switches technique: the
    base spec's technique fields the new type does not have are dropped, and searched
    ``technique.*`` keys apply only to the types that have them (``technique.r`` shapes the
    LoRA trials and is ignored by the full ones).
    """
    document = copy.deepcopy(document)
    document.pop("tune", None)
    order = sorted(params, key=lambda key: (key not in ("technique", "technique.type"), key))
    for key in order:
        value = copy.deepcopy(params[key])
        path = key.split(".")
        if path == ["technique"] and isinstance(value, dict):
            document["technique"] = value
            continue
        if path == ["technique", "type"]:
            old = document.get("technique") or {}
            keep = _technique_fields(value)
            document["technique"] = {k: v for k, v in old.items() if k in keep} | {"type": value}
            continue
        if path[0] == "technique" and len(path) == 2:
            current = (document.get("technique") or {}).get("type", "full")
            if path[1] not in _technique_fields(current):
                continue
        node = document
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return document


def space_problems(document: dict[str, Any], tune: TuneSection) -> list[str]:
    """Check every search dimension against the spec schema, before any trial starts.

    Each value of a choice (and both ends of a range) is set into the base spec alone, and
    the result validated; a problem is reported under ``tune.space.<key>``.
    """
    from raft.spec import SpecError, validate  # spec imports this module

    problems = []
    base_technique = (document.get("technique") or {}).get("type", "full")
    technique_types = {base_technique}
    for key in ("technique.type", "technique"):
        if key in tune.space:
            for value in tune.space[key].values:
                technique_types.add(value.get("type", "full") if isinstance(value, dict) else value)
    for key, distribution in tune.space.items():
        path = key.split(".")
        if path[0] == "tune":
            problems.append(f"tune.space.{key}: the search cannot search itself")
            continue
        if path[0] == "technique" and len(path) == 2 and path[1] != "type":
            owners = sorted(t for t in technique_types if path[1] in _technique_fields(t))
            if not owners:
                problems.append(
                    f"tune.space.{key}: no technique in this search has a field {path[1]!r} "
                    f"(techniques searched: {', '.join(sorted(technique_types))})"
                )
                continue
            base = (
                apply_params(document, {"technique.type": owners[0]})
                if base_technique not in owners
                else document
            )
        else:
            base = document
        for value in distribution.corners():
            if key_unknown := _unknown_key(base, key, value):
                problems.append(f"tune.space.{key}: {key_unknown}")
                break
            try:
                validate(apply_params(base, {key: value}))
            except SpecError as error:
                for problem in error.problems:
                    problems.append(f"tune.space.{key} = {value!r}: {_drop_path(problem, key)}")
            except Exception as error:  # a value of an impossible type, e.g. a list for a number
                problems.append(f"tune.space.{key} = {value!r}: {error}")
    return sorted(set(problems), key=problems.index)


def _unknown_key(document: dict[str, Any], key: str, value: Any) -> str | None:
    from raft.spec import SpecError, validate

    try:
        validate(apply_params(document, {key: value}))
    except SpecError as error:
        if any(p.startswith(f"{key}: unknown key") for p in error.problems):
            return "not a key of the spec (check the spelling; see the spec reference)"
    return None


def _drop_path(problem: str, key: str) -> str:
    # "train.lrr: unknown key (...)" under tune.space.train.lrr reads better without the path.
    return problem.removeprefix(f"{key}: ")


# -- metrics --------------------------------------------------------------------------
def reported_metrics(spec: Any) -> list[str]:
    """Every metric a run of ``spec`` reports each epoch (what a search may optimise)."""
    from raft.labels import LabelMap

    task = registry.get_task(spec.task.type)
    labels = LabelMap(("a", "b"))  # the names do not depend on the label set
    names = task.metrics_for(task.empty_stats(labels), labels, spec.task)
    return sorted({"val_loss", "train_loss"} | {f"val_{name}" for name in names})


def default_metric(spec: Any) -> str:
    return f"val_{registry.get_task(spec.task.type).primary_metric}"


def default_mode(metric: str) -> str:
    return "min" if any(part in metric for part in _LOWER_IS_BETTER) else "max"


def metric_problems(spec: Any, tune: TuneSection) -> list[str]:
    metric = tune.metric or default_metric(spec)
    known = reported_metrics(spec)
    if metric not in known:
        return [f"tune.metric: {spec.task.type} runs never report {metric!r}; they report {', '.join(known)}"]
    return []


# -- the leaderboard ------------------------------------------------------------------
def best_epoch(history: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any] | None:
    """The epoch result with the best ``metric``, the latest of equals (NaN never wins;
    None if no epoch has it). Latest, because that is the checkpoint a score-ranked
    checkpoint store keeps when scores tie."""
    scored = [h for h in history if _is_number(h.get(metric)) and not math.isnan(h[metric])]
    if not scored:
        return None
    sign = 1 if mode == "max" else -1
    return max(enumerate(scored), key=lambda item: (sign * item[1][metric], item[0]))[1]


def rank(rows: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """Leaderboard order: best metric first, trials without one last."""

    def key(row: dict[str, Any]) -> tuple:
        value = row.get("best")
        if value is None:
            return (1, 0.0)
        return (0, -value if mode == "max" else value)

    return sorted(rows, key=key)


LEADERBOARD_COLUMNS = [
    "rank",
    "trial",
    "status",
    "best",
    "best_epoch",
    "epochs",
    "stopped_early",
    "attempts",
    "wall_s",
    "error",
]


def leaderboard_csv(rows: list[dict[str, Any]], params: list[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=LEADERBOARD_COLUMNS + params, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, **{k: _show(v) for k, v in row.get("params", {}).items()}})
    return out.getvalue()


def leaderboard_table(rows: list[dict[str, Any]], params: list[str], metric: str) -> str:
    """A fixed-width table for the terminal."""
    header = ["#", "trial", *params, metric, "epochs", "early stop", "status", "attempts", "wall s"]
    lines = [header]
    for row in rows:
        best = row.get("best")
        lines.append(
            [
                str(row["rank"]),
                row["trial"],
                *(_show(row["params"].get(p, "")) for p in params),
                "—" if best is None else f"{best:.4f}",
                str(row["epochs"]),
                "yes" if row["stopped_early"] else "no",
                row["status"],
                str(row.get("attempts", "")),
                f"{row['wall_s']:.0f}",
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)) for line in lines]
    text.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(text)


def trials_table(trials: list[dict[str, Any]], params: list[str], metric: str) -> str:
    """The live table of a running search: each trial's state, params, last epoch and
    metric so far ({trial, status, params, epoch, value, best})."""
    header = ["trial", "status", *params, "epoch", metric, "best so far"]
    lines = [header]
    for trial in trials:
        value, best = trial.get("value"), trial.get("best")
        lines.append(
            [
                trial["trial"],
                trial["status"].lower(),
                *(_show(trial["params"].get(p, "")) for p in params),
                "—" if trial.get("epoch") is None else str(trial["epoch"]),
                "—" if value is None else f"{value:.4f}",
                "—" if best is None else f"{best:.4f}",
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)) for line in lines]
    text.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(text)


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)
