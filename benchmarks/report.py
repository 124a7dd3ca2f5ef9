"""The suite's report: figures, targets, the markdown table, the JSON file and the plots.

The parts at the top are pure (no I/O, no matplotlib) and unit-tested in
tests/unit/test_bench_report.py: a figure is a dict built by ``figure()``; its ratio, its
target check and its table row follow from it alone. ``write_report`` at the bottom
writes ``<stem>.json``, ``<stem>.md`` and ``<stem>-*.png``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

OPS = {
    ">=": lambda a, b: a >= b,
    ">": lambda a, b: a > b,
    "<=": lambda a, b: a <= b,
    "<": lambda a, b: a < b,
}
SYMBOLS = {">=": "≥", ">": ">", "<=": "≤", "<": "<"}
# What a target is checked on: the ratio raft/baseline, raft's value itself, or the
# difference raft − baseline.
TARGET_ON = ("ratio", "value", "difference")


# -- pure: figures and targets ----------------------------------------------------------
def ratio(raft: float | None, baseline: float | None) -> float | None:
    """raft / baseline; None when either is missing or the baseline is 0 or not finite."""
    if raft is None or baseline is None:
        return None
    if baseline == 0 or not math.isfinite(baseline) or not math.isfinite(raft):
        return None
    return raft / baseline


def repeated(values: list[float]) -> dict[str, Any]:
    """One config's rate over repeated runs: median, min, max and spread ((max − min) /
    median), so a ratio can be read against the noise between runs of the same thing."""
    if not values:
        raise ValueError("no runs to summarise")
    ordered = sorted(values)
    middle = len(ordered) // 2
    median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    return {
        "values": list(values),
        "median": median,
        "min": ordered[0],
        "max": ordered[-1],
        "spread": (ordered[-1] - ordered[0]) / median if median else None,
    }


def paired_ratios(raft: list[float], baseline: list[float]) -> dict[str, Any]:
    """raft / baseline round by round (runs of one round ran back to back), summarised as
    ``repeated`` does: drift over the suite's run cancels within a round."""
    if len(raft) != len(baseline):
        raise ValueError(f"{len(raft)} raft runs against {len(baseline)} baseline runs")
    return repeated([r / b for r, b in zip(raft, baseline, strict=True)])


def target(on: str, op: str, value: float, text: str | None = None) -> dict[str, Any]:
    """A target: ``on`` one of TARGET_ON, ``op`` one of OPS; ``text`` overrides how it reads."""
    if on not in TARGET_ON:
        raise ValueError(f"target on {on!r}: expected one of {TARGET_ON}")
    if op not in OPS:
        raise ValueError(f"target op {op!r}: expected one of {sorted(OPS)}")
    return {"on": on, "op": op, "value": value} | ({"text": text} if text else {})


def target_subject(fig: dict[str, Any]) -> float | None:
    """The number a figure's target is checked on."""
    goal = fig.get("target")
    if not goal:
        return None
    if goal["on"] == "ratio":
        return fig.get("ratio")
    if goal["on"] == "value":
        return fig.get("raft")
    if fig.get("raft") is None or fig.get("baseline") is None:
        return None
    return fig["raft"] - fig["baseline"]


def check_target(fig: dict[str, Any]) -> bool | None:
    """True/False when the figure has a target and the number it is checked on; else None."""
    goal = fig.get("target")
    subject = target_subject(fig)
    if not goal or subject is None or not math.isfinite(subject):
        return None
    return bool(OPS[goal["op"]](subject, goal["value"]))


def figure(
    section: str,
    name: str,
    raft: float | None,
    baseline: float | None = None,
    *,
    unit: str = "",
    baseline_label: str | None = None,
    goal: dict[str, Any] | None = None,
    note: str = "",
) -> dict[str, Any]:
    """One row of the report. ``unit`` formats the values ("%" shows fractions as percent)."""
    fig = {
        "section": section,
        "name": name,
        "raft": raft,
        "baseline": baseline,
        "baseline_label": baseline_label,
        "unit": unit,
        "ratio": ratio(raft, baseline),
        "target": goal,
        "note": note,
    }
    fig["met"] = check_target(fig)
    return fig


def describe_target(goal: dict[str, Any] | None, unit: str = "") -> str:
    if not goal:
        return "—"
    if goal.get("text"):
        return goal["text"]
    symbol = SYMBOLS[goal["op"]]
    if goal["on"] == "ratio":
        return f"ratio {symbol} {goal['value']:g}"
    shown = format_value(goal["value"], unit)
    if goal["on"] == "difference":
        return f"raft − baseline {symbol} {shown}"
    return f"{symbol} {shown}"


def format_value(value: Any, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if unit == "%":
        return f"{100 * value:.1f}%"
    if unit == "FLOP/s":
        return f"{value / 1e9:.2f} GFLOP/s"
    magnitude = abs(value)
    digits = 0 if magnitude >= 1000 else 1 if magnitude >= 100 else 2 if magnitude >= 1 else 3
    text = f"{value:,}" if isinstance(value, int) else f"{value:,.{digits}f}"
    return f"{text} {unit}".rstrip() if unit else text


def format_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def format_met(met: bool | None) -> str:
    return "—" if met is None else "yes" if met else "**no**"


TABLE_HEADER = ["section", "figure", "raft", "baseline", "ratio", "target", "met"]


def table_rows(figures: list[dict[str, Any]]) -> list[list[str]]:
    """The markdown table's rows (strings), one per figure, in order."""
    rows = []
    for fig in figures:
        name = fig["name"] + (f" (baseline: {fig['baseline_label']})" if fig.get("baseline_label") else "")
        raft = format_value(fig["raft"], fig["unit"])
        if fig["raft"] is None and fig.get("note"):
            raft = fig["note"]
        rows.append(
            [
                fig["section"],
                name,
                raft,
                format_value(fig["baseline"], fig["unit"]),
                format_ratio(fig["ratio"]),
                describe_target(fig["target"], fig["unit"]),
                format_met(fig["met"]),
            ]
        )
    return rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    def cell(text: Any) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def figure_line(fig: dict[str, Any]) -> str:
    """One figure as a console line (printed as soon as it is measured)."""
    section, name, raft, baseline, ratio_text, goal, met = table_rows([fig])[0]
    parts = [f"[{section}] {name}: raft {raft}"]
    if fig["baseline"] is not None:
        parts.append(f"baseline {baseline}")
    if fig["ratio"] is not None:
        parts.append(f"ratio {ratio_text}")
    if fig["target"]:
        parts.append(f"target {goal}: {'met' if fig['met'] else 'NOT met' if fig['met'] is False else '—'}")
    return ", ".join(parts)


def all_figures(sections: dict[str, dict[str, Any]], order: list[str]) -> list[dict[str, Any]]:
    """Every section's figures in ``order`` (then any other section), plus one row per
    section that failed."""
    figures = []
    for name in order + sorted(set(sections) - set(order)):
        section = sections.get(name)
        if section is None:
            continue
        figures += section.get("figures", [])
        if section.get("error"):
            figures.append(
                figure(name, "section failed", None, note=f"error: {section['error'].splitlines()[0]}")
            )
    return figures


def summary_counts(figures: list[dict[str, Any]]) -> dict[str, int]:
    met = [f["met"] for f in figures]
    return {"targets": sum(m is not None for m in met), "met": met.count(True), "missed": met.count(False)}


def merge_sections(
    previous: dict[str, dict[str, Any]], current: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Sections of an earlier report of the same day, replaced by those measured now."""
    return {**previous, **current}


def markdown(report: dict[str, Any], plots: dict[str, str] | None = None) -> str:
    """The whole markdown report: machine, the figures table, per-section details, plots."""
    machine = report.get("machine", {})
    versions = machine.get("versions", {})
    lines = [
        f"# raft benchmarks — {report['stem']}",
        "",
        f"Measured {report.get('finished_at', '?')} on {machine.get('device', '?')}, "
        f"{machine.get('cpu_count', '?')} CPUs ({machine.get('cpu_model', '?')}), "
        f"{machine.get('memory_gb', '?')} GB memory; "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
        + (f"; git {machine['git']}" if machine.get("git") else "")
        + ".",
        "",
        f"Command: `{report.get('command', 'python -m benchmarks')}` (the last one; a report merges"
        " the day's runs, and each section below says when it was measured)",
        "",
    ]
    counts = summary_counts(report["figures"])
    lines += [
        f"{counts['met']} of {counts['targets']} targets met"
        + (f", {counts['missed']} missed" if counts["missed"] else "")
        + ". Ratio = raft / baseline; per-worker rates are the second (steady-state) epoch's.",
        "",
        markdown_table(TABLE_HEADER, table_rows(report["figures"])),
        "",
    ]
    for name, section in report["sections"].items():
        details = section_details(name, section)
        if details:
            lines += [f"## {name}", "", *details, ""]
    for title, path in (plots or {}).items():
        lines += [f"![{title}]({Path(path).name})", ""]
    return "\n".join(lines).rstrip() + "\n"


def section_details(name: str, section: dict[str, Any]) -> list[str]:
    """Extra tables and notes under the main table (pure)."""
    lines: list[str] = []
    if section.get("measured_at"):
        lines.append(f"Measured {section['measured_at']}.")
    if section.get("error"):
        lines += ["", "```", section["error"].strip()[-2000:], "```"]
    for note in section.get("notes", []):
        lines.append(f"- {note}")
    if name == "first_step" and section.get("raft_stages"):
        rows = [[stage, f"{seconds:.1f}"] for stage, seconds in section["raft_stages"].items()]
        rows.append(["total (command start → first step)", f"{section.get('raft_seconds', 0):.1f}"])
        header = ["raft stage", "seconds"]
        if section.get("cluster_stages"):  # the same run on a running cluster, stage by stage
            cluster = section["cluster_stages"]
            header.append("on a running cluster")
            for row in rows[:-1]:
                row.append(f"{cluster[row[0]]:.1f}" if row[0] in cluster else "—")
            rows[-1].append(f"{section.get('cluster_seconds', 0):.1f}")
        if section.get("no_eval_stages"):  # the like-for-like run: no evaluation before training
            bare = section["no_eval_stages"]
            header.append("eval_before_training: false")
            for row in rows[:-1]:
                row.append(f"{bare[row[0]]:.1f}" if row[0] in bare else "—")
            rows[-1].append(f"{section.get('no_eval_seconds', 0):.1f}")
        lines += ["", markdown_table(header, rows)]
    if name == "throughput" and section.get("repeats"):
        rows = []
        for key, metrics in section["repeats"].items():
            summary = metrics["samples_per_second"]
            rows.append(
                [
                    key,
                    ", ".join(format_value(v) for v in summary["values"]),
                    format_value(summary["median"]),
                    "—" if summary["spread"] is None else f"{100 * summary['spread']:.1f}%",
                ]
            )
        for key, summary in (section.get("paired") or {}).items():
            rows.append(
                [
                    key,
                    ", ".join(format_ratio(v) for v in summary["values"]),
                    format_ratio(summary["median"]),
                    f"{format_ratio(summary['min'])}–{format_ratio(summary['max'])}",
                ]
            )
        lines += [
            "",
            markdown_table(["config or pair", "samples/s per worker, run by run", "median", "spread"], rows),
        ]
    if name == "memory" and section.get("configs"):
        rows = [
            [
                c["label"],
                _join(c.get("model_state_mb")),
                _join(c.get("tensor_mb")),
                _join(c.get("peak_rss_mb")),
                format_value(c.get("estimate_mb")),
                format_value(c.get("deepspeed_per_gpu_mb")),
                format_value(c.get("deepspeed_per_cpu_mb")),
                format_value(c.get("plan_mb")),
            ]
            for c in section["configs"]
        ]
        lines += [
            "",
            markdown_table(
                [
                    "config",
                    "model states MiB per rank",
                    "live tensors MiB per rank",
                    "peak RSS MiB per rank",
                    "raft.perf estimate MiB",
                    "DeepSpeed per-GPU MiB",
                    "DeepSpeed per-CPU MiB",
                    "raft plan MiB (peak RSS estimate)",
                ],
                rows,
            ),
        ]
    if section.get("runs"):
        columns = [c for c in RUN_COLUMNS if any(r.get(c[0]) is not None for r in section["runs"])]
        rows = [
            [r["label"]]
            + [format_value(r.get(key), unit) for key, _title, unit in columns]
            + [r.get("log", "")]
            for r in section["runs"]
        ]
        lines += ["", markdown_table(["run"] + [title for _key, title, _unit in columns] + ["log"], rows)]
    while lines and lines[0] == "":
        lines.pop(0)
    return lines


# The per-run table's columns, each shown when some run has it: (key, title, unit).
RUN_COLUMNS = [
    ("samples_per_second", "samples/s/worker", ""),
    ("total_samples_per_second", "total samples/s", ""),
    ("nodes", "nodes", ""),
    ("tokens_per_second", "tokens/s/worker", ""),
    ("padded_tokens_per_second", "padded tokens/s/worker", ""),
    ("data_wait_fraction", "data wait", "%"),
    ("mean_seq_len", "mean fed length", ""),
    ("flops_per_token", "FLOP/token", ""),
    ("achieved_flops", "achieved", "FLOP/s"),
    ("mfu", "MFU", "%"),
    ("device_peak_mb", "device peak MiB", ""),
    ("estimate_mb", "estimate MiB", ""),
    ("first_step_seconds", "s to first step", ""),
]


def _join(values: list[Any] | None) -> str:
    return "—" if not values else ", ".join(format_value(v) for v in values)


# -- writing ----------------------------------------------------------------------------
def write_report(report: dict[str, Any], output_dir: str | Path) -> dict[str, Path]:
    """Write ``<stem>.json``, the plots and ``<stem>.md``; returns the paths by kind."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = report["stem"]
    plots = write_plots(report, output_dir, stem)
    report = report | {"plots": {title: path.name for title, path in plots.items()}}
    paths = {"json": output_dir / f"{stem}.json", "markdown": output_dir / f"{stem}.md"}
    paths["json"].write_text(json.dumps(report, indent=2, default=str) + "\n")
    paths["markdown"].write_text(markdown(report, {t: str(p) for t, p in plots.items()}))
    return paths | {f"plot:{title}": path for title, path in plots.items()}


def write_plots(report: dict[str, Any], output_dir: Path, stem: str) -> dict[str, Path]:
    """PNG plots of whatever sections the report has (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sections = report["sections"]
    made: dict[str, Path] = {}
    for title, key, draw in (
        ("throughput per config", "throughput", _plot_throughput),
        ("MFU", "mfu", _plot_mfu),
        ("memory per worker vs estimate", "memory", _plot_memory),
        ("time to first step", "first_step", _plot_first_step),
        ("GPU throughput and memory", "gpu", _plot_gpu),
    ):
        section = sections.get(key)
        if not section or section.get("error"):
            continue
        figure_ = draw(plt, section)
        if figure_ is None:
            continue
        path = output_dir / f"{stem}-{key.replace('_', '-')}.png"
        figure_.tight_layout()
        figure_.savefig(path, dpi=110)
        plt.close(figure_)
        made[title] = path
    return made


def _bars(ax: Any, labels: list[str], series: dict[str, list[float | None]], ylabel: str) -> None:
    width = 0.8 / max(len(series), 1)
    for index, (name, values) in enumerate(series.items()):
        xs = [i + (index - (len(series) - 1) / 2) * width for i in range(len(labels))]
        heights = [v if v is not None else 0 for v in values]
        bars = ax.bar(xs, heights, width, label=name)
        for bar, value in zip(bars, values, strict=True):
            if value is not None:
                ax.annotate(
                    format_value(value),
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    if len(series) > 1:
        ax.legend(fontsize=8)


def _plot_throughput(plt: Any, section: dict[str, Any]) -> Any:
    runs = section.get("runs") or []
    if not runs:
        return None
    labels = [r["label"] for r in runs]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    _bars(axes[0], labels, {"samples/s": [r.get("samples_per_second") for r in runs]}, "samples/s per worker")
    _bars(
        axes[1],
        labels,
        {
            "tokens/s": [r.get("tokens_per_second") for r in runs],
            "padded tokens/s": [r.get("padded_tokens_per_second") for r in runs],
        },
        "tokens/s per worker",
    )
    fig.suptitle("Training throughput, second epoch, per worker")
    return fig


def _plot_mfu(plt: Any, section: dict[str, Any]) -> Any:
    runs = section.get("runs") or []
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    _bars(ax, [r["label"] for r in runs], {"MFU": [r.get("mfu") for r in runs]}, "achieved / matmul peak")
    ax.set_title(f"MFU per worker (peak {format_value(section.get('peak_flops'), 'FLOP/s')} per process)")
    return fig


def _plot_memory(plt: Any, section: dict[str, Any]) -> Any:
    configs = section.get("configs") or []
    if not configs:
        return None

    def mean(values: list[float | None] | None) -> float | None:
        values = [v for v in values or [] if v is not None]
        return sum(values) / len(values) if values else None

    fig, ax = plt.subplots(figsize=(9, 4.5))
    _bars(
        ax,
        [c["label"] for c in configs],
        {
            "model states (measured)": [mean(c.get("model_state_mb")) for c in configs],
            "live tensors (measured)": [mean(c.get("tensor_mb")) for c in configs],
            "peak RSS (measured)": [mean(c.get("peak_rss_mb")) for c in configs],
            "raft.perf estimate": [c.get("estimate_mb") for c in configs],
            "DeepSpeed per-GPU estimate": [c.get("deepspeed_per_gpu_mb") for c in configs],
        },
        "MiB per worker",
    )
    ax.set_title("Memory per worker vs estimates (mean over ranks)")
    return fig


def _plot_first_step(plt: Any, section: dict[str, Any]) -> Any:
    stages = section.get("raft_stages") or {}
    if not stages:
        return None
    fig, ax = plt.subplots(figsize=(10, 3))
    left = 0.0
    colors = plt.get_cmap("tab10")
    for index, (stage, seconds) in enumerate(stages.items()):
        ax.barh(["raft"], [seconds], left=left, color=colors(index % 10), label=stage)
        if seconds > 1.5:
            ax.text(left + seconds / 2, 0, f"{seconds:.1f}", ha="center", va="center", fontsize=7)
        left += seconds
    if section.get("plain_seconds") is not None:
        ax.barh(["plain DDP"], [section["plain_seconds"]], color="grey", label="plain DDP (all)")
        ax.text(section["plain_seconds"], 1, f" {section['plain_seconds']:.1f} s", va="center", fontsize=8)
    ax.set_xlabel("seconds from command start to the first optimizer step")
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.35))
    return fig


def _plot_gpu(plt: Any, section: dict[str, Any]) -> Any:
    runs = section.get("runs") or []
    if not runs:
        return None
    labels = [r["label"] for r in runs]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    _bars(axes[0], labels, {"tokens/s": [r.get("tokens_per_second") for r in runs]}, "tokens/s")
    _bars(axes[1], labels, {"MFU": [r.get("mfu") for r in runs]}, "MFU")
    _bars(
        axes[2],
        labels,
        {
            "device peak": [r.get("device_peak_mb") for r in runs],
            "raft.perf estimate": [r.get("estimate_mb") for r in runs],
        },
        "MiB",
    )
    fig.suptitle("GPU: second epoch, one worker")
    return fig
