"""``raft report RUN_DIR``: one self-contained HTML file with the plots of a run or a search.

A run (``raft train``): loss per step and per epoch, the validation metrics per epoch,
the learning rate, throughput, and for classifiers the last evaluation's confusion
matrix. A search (``raft tune``): every trial's metric per epoch, a parallel-coordinates
view of the hyperparameters against the metric, the leaderboard, and each trial's
training loss. Plotly draws them; its JavaScript is inlined, so the file opens offline.

Pure (no Ray): reads what the run wrote (``summary.json``, ``metrics.jsonl``,
``leaderboard.json``) from a local folder or a URI.
"""

from __future__ import annotations

import html
import json
from typing import Any

from raft import storage
from raft.progress import METRICS_FILE, read_events
from raft.search import TRIALS_DIR

REPORT_FILE = "report.html"


class ReportError(ValueError):
    """The folder is not a raft run or search, or holds nothing to plot yet."""


# -- reading a run --------------------------------------------------------------------
def _read_json(location: str) -> Any:
    return json.loads(storage.read_text(location)) if storage.exists(location) else None


def kind_of(run_dir: str) -> str:
    if storage.exists(storage.join(run_dir, "leaderboard.json")):
        return "search"
    if storage.exists(storage.join(run_dir, "summary.json")) or storage.exists(
        storage.join(run_dir, METRICS_FILE)
    ):
        return "run"
    raise ReportError(
        f"{run_dir} is not a finished raft run or search: it has no summary.json, metrics.jsonl "
        "or leaderboard.json"
    )


# -- figures --------------------------------------------------------------------------
def _figure(title: str, x_title: str, y_title: str) -> Any:
    import plotly.graph_objects as go

    figure = go.Figure()
    figure.update_layout(
        title=title,
        xaxis_title=x_title,
        yaxis_title=y_title,
        template="plotly_white",
        height=380,
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
    )
    return figure


def _line(figure: Any, xs: list, ys: list, name: str, markers: bool = False) -> None:
    import plotly.graph_objects as go

    figure.add_trace(go.Scatter(x=xs, y=ys, name=name, mode="lines+markers" if markers else "lines"))


def run_figures(summary: dict[str, Any] | None, events: list[dict[str, Any]]) -> list[Any]:
    """The figures of one run, from its summary (epoch history) and its step events."""
    history = (summary or {}).get("history") or [e for e in events if e.get("event") == "epoch"]
    # A resumed run retrains the steps after its checkpoint: the latest record of each.
    steps = sorted(
        {e["global_step"]: e for e in events if e.get("event") == "step"}.values(),
        key=lambda e: e["global_step"],
    )
    figures = []

    loss = _figure("Loss", "optimizer step", "loss")
    if steps:
        _line(loss, [s["global_step"] for s in steps], [s["loss"] for s in steps], "train loss (per step)")
    trained = [h for h in history if "train_loss" in h]
    if trained:
        xs = [h.get("global_step") for h in trained]
        _line(loss, xs, [h["train_loss"] for h in trained], "train loss (epoch mean)", markers=True)
    evaluated = [h for h in history if "val_loss" in h]
    if evaluated:
        xs = [h.get("global_step") for h in evaluated]
        _line(loss, xs, [h["val_loss"] for h in evaluated], "validation loss", markers=True)
    if loss.data:
        figures.append(loss)

    names = sorted(
        {k for h in history for k, v in h.items() if k.startswith("val_") and _number(v)}
        - {"val_loss", "val_rows"}
    )
    if names:
        metrics = _figure("Validation metrics per epoch", "epoch", "value")
        for name in names:
            points = [(h["epoch"], h[name]) for h in history if _number(h.get(name))]
            _line(metrics, [p[0] for p in points], [p[1] for p in points], name, markers=True)
        figures.append(metrics)

    if steps:
        rate = _figure("Learning rate", "optimizer step", "learning rate")
        _line(rate, [s["global_step"] for s in steps], [s["lr"] for s in steps], "learning rate")
        figures.append(rate)
        world = next((e.get("world_size") for e in events if e.get("event") == "start"), 1) or 1
        speed = _figure("Throughput", "optimizer step", "samples/s (all workers)")
        _line(
            speed,
            [s["global_step"] for s in steps],
            [s["samples_per_second"] * world for s in steps],
            "between progress reports",
        )
        per_epoch = [h for h in history if _number(h.get("samples_per_second"))]
        if per_epoch:
            _line(
                speed,
                [h.get("global_step") for h in per_epoch],
                [h["samples_per_second"] * world for h in per_epoch],
                "epoch mean",
                markers=True,
            )
        figures.append(speed)

    confusion = next((h["confusion_matrix"] for h in reversed(history) if h.get("confusion_matrix")), None)
    if confusion:
        figures.append(confusion_figure(confusion, (summary or {}).get("labels")))
    return figures


def confusion_figure(matrix: list[list[int]], labels: list[str] | None) -> Any:
    import plotly.graph_objects as go

    names = list(labels) if labels and len(labels) == len(matrix) else [str(i) for i in range(len(matrix))]
    figure = _figure("Confusion matrix (last evaluation)", "predicted", "true")
    figure.add_trace(
        go.Heatmap(
            z=matrix,
            x=names,
            y=names,
            colorscale="Blues",
            text=matrix,
            texttemplate="%{text}",
            showscale=True,
        )
    )
    figure.update_yaxes(autorange="reversed")
    figure.update_layout(height=max(380, 40 * len(names) + 150))
    return figure


def search_figures(rows: list[dict[str, Any]], metric: str, trial_events: dict[str, list]) -> list[Any]:
    import plotly.graph_objects as go

    figures = []
    curves = _figure(f"{metric} per epoch, every trial", "epoch", metric)
    for row in rows:
        points = [(h["epoch"], h[metric]) for h in row.get("history", []) if _number(h.get(metric))]
        if points:
            label = f"{row['trial']}" + (" (stopped early)" if row.get("stopped_early") else "")
            _line(curves, [p[0] for p in points], [p[1] for p in points], label, markers=True)
    if curves.data:
        figures.append(curves)

    scored = [row for row in rows if _number(row.get("best"))]
    params = sorted({key for row in scored for key in row.get("params", {})})
    if scored and params:
        dimensions = [_dimension(key, [row["params"].get(key) for row in scored]) for key in params]
        values = [row["best"] for row in scored]
        dimensions.append({"label": metric, "values": values})
        parallel = go.Figure(
            go.Parcoords(
                line={"color": values, "colorscale": "Viridis", "showscale": True}, dimensions=dimensions
            )
        )
        parallel.update_layout(
            title=f"Hyperparameters against the best {metric} of each trial",
            template="plotly_white",
            height=420,
            margin={"l": 80, "r": 80, "t": 80, "b": 40},
        )
        figures.append(parallel)

    losses = _figure("Training loss per step, every trial", "optimizer step", "loss")
    for trial, events in trial_events.items():
        steps = [e for e in events if e.get("event") == "step"]
        if steps:
            _line(losses, [s["global_step"] for s in steps], [s["loss"] for s in steps], trial)
    if losses.data:
        figures.append(losses)
    return figures


def _dimension(label: str, values: list[Any]) -> dict[str, Any]:
    """A parallel-coordinates axis: numbers as they are (log-spaced ones on a log10
    axis), anything else as categories."""
    import math

    if all(_number(v) for v in values):
        positive = all(v > 0 for v in values)
        if positive and max(values) / min(values) >= 100:
            return {"label": f"log10 {label}", "values": [math.log10(v) for v in values]}
        return {"label": label, "values": values}
    shown = [json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else str(v) for v in values]
    categories = sorted(set(shown))
    return {
        "label": label,
        "values": [categories.index(v) for v in shown],
        "tickvals": list(range(len(categories))),
        "ticktext": categories,
    }


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# -- the page -------------------------------------------------------------------------
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; }
table { border-collapse: collapse; font-size: 0.9em; margin: 1em 0; }
td, th { border: 1px solid #ddd; padding: 4px 8px; text-align: left; }
th { background: #f4f4f4; } .figure { margin: 1.5em 0; }
"""


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            value = f"{value:.4g}"
        return f"<td>{html.escape(str(value))}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, facts: list[tuple[str, Any]], figures: list[Any], tables: list[tuple[str, str]]) -> str:
    from plotly.offline import get_plotlyjs

    divs = "".join(
        f'<div class="figure">{figure.to_html(full_html=False, include_plotlyjs=False, div_id=f"figure-{i}")}</div>'
        for i, figure in enumerate(figures)
    )
    fact_rows = (
        "<table>"
        + "".join(
            f"<tr><th>{html.escape(str(name))}</th><td>{html.escape(str(value))}</td></tr>"
            for name, value in facts
            if value is not None
        )
        + "</table>"
    )
    extra = "".join(f"<h2>{html.escape(name)}</h2>{table}" for name, table in tables)
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style><script type='text/javascript'>{get_plotlyjs()}</script></head>"
        f"<body><h1>{html.escape(title)}</h1>{fact_rows}{divs}{extra}</body></html>"
    )


def run_report(run_dir: str) -> str:
    summary = _read_json(storage.join(run_dir, "summary.json"))
    events = read_events(run_dir)
    figures = run_figures(summary, events)
    if not figures:
        raise ReportError(f"{run_dir} has no metrics to plot yet")
    summary = summary or {}
    key = summary.get("primary_metric")
    history = summary.get("history") or []
    facts = [
        ("run", summary.get("run") or run_dir.rstrip("/").rsplit("/", 1)[-1]),
        ("folder", run_dir),
        (
            key,
            f"{_show(summary.get('before')) or '—'} before → {_show(summary.get('after'))} after"
            if key
            else None,
        ),
        ("model", summary.get("model_dir")),
        ("parameters", _parameters(summary.get("parameters"))),
        ("wall time", f"{summary['wall_seconds']:.1f} s" if _number(summary.get("wall_seconds")) else None),
        (
            "samples/s per worker",
            f"{summary['samples_per_second_per_worker']:.1f}"
            if _number(summary.get("samples_per_second_per_worker"))
            else None,
        ),
        ("MLflow run", (summary.get("tracking") or {}).get("mlflow", {}).get("run_id")),
    ]
    columns = [k for k in _ordered_keys(history) if any(_number(h.get(k)) for h in history)]
    tables = [("Every evaluation", _table(columns, [[h.get(k, "") for k in columns] for h in history]))]
    return page(f"raft run {facts[0][1]}", facts, figures, tables if history else [])


def search_report(run_dir: str) -> str:
    rows = _read_json(storage.join(run_dir, "leaderboard.json")) or []
    best = _read_json(storage.join(run_dir, "best", "summary.json")) or {}
    metric = best.get("primary_metric") or _metric_of(rows)
    trial_events = {
        row["trial"]: read_events(storage.join(run_dir, TRIALS_DIR, row["trial"])) for row in rows
    }
    figures = search_figures(rows, metric, trial_events)
    params = sorted({key for row in rows for key in row.get("params", {})})
    header = ["#", "trial", *params, metric, "best epoch", "epochs", "stopped early", "status"]
    table = _table(
        header,
        [
            [
                row.get("rank"),
                row["trial"],
                *(_show(row.get("params", {}).get(p)) for p in params),
                row.get("best") if row.get("best") is not None else "—",
                row.get("best_epoch") or "—",
                row.get("epochs"),
                "yes" if row.get("stopped_early") else "no",
                row.get("status"),
            ]
            for row in rows
        ],
    )
    facts = [
        ("search", run_dir.rstrip("/").rsplit("/", 1)[-1]),
        ("folder", run_dir),
        ("trials", len(rows)),
        ("best", f"trial {best['trial']}: {metric} {best['best']:.4f}" if best.get("trial") else None),
        ("best model", best.get("model_dir")),
    ]
    return page(f"raft search {facts[0][1]}", facts, figures, [("Leaderboard", table)])


def write_report(run_dir: str, out: str | None = None) -> str:
    """Write the report of the run or search at ``run_dir``; returns where it went."""
    run_dir = storage.normalize(run_dir)
    document = search_report(run_dir) if kind_of(run_dir) == "search" else run_report(run_dir)
    target = out or storage.join(run_dir, REPORT_FILE)
    storage.write_text(target, document)
    return target


def _metric_of(rows: list[dict[str, Any]]) -> str:
    for row in rows:
        for point in row.get("history", []):
            for key in point:
                if key not in ("epoch", "checkpoint"):
                    return key
    return "metric"


def _ordered_keys(history: list[dict[str, Any]]) -> list[str]:
    keys = ["epoch", "global_step"]
    for point in history:
        keys += [k for k in point if k not in keys and k != "confusion_matrix" and k != "generations"]
    return keys


def _parameters(counted: dict[str, int] | None) -> str | None:
    if not counted:
        return None
    return f"{counted['total']:,} ({counted['trainable']:,} trainable)"


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return "" if value is None else str(value)
