"""Spec builders shared by the tests."""

from __future__ import annotations

from pathlib import Path


def base_spec(model: Path, data: dict[str, Path], tmp_path: Path, **sections) -> dict:
    """A spec mapping for the toy task; keyword sections replace or extend the defaults."""
    spec = {
        "model": {"path": str(model)},
        "task": {"type": "sequence_classification", "max_length": 16},
        "technique": {"type": "full"},
        "data": {"train": str(data["train"]), "validation": str(data["validation"])},
        "train": {"epochs": 3, "batch_size": 16, "lr": 3e-3, "log_every_n_steps": 50},
        "scaling": {"num_workers": 2},
        "output": {"dir": str(tmp_path / "runs")},
    }
    for name, value in sections.items():
        spec[name] = {**spec.get(name, {}), **value} if isinstance(value, dict) else value
    return spec


def export_tiny(model_path: Path, root: Path, task: dict, labels: tuple[str, ...] | None = None) -> Path:
    """A tiny model exported the way ``raft train`` exports a run (the head, if any, fresh):
    what ``raft serve`` and ``raft eval`` load."""
    from raft import registry
    from raft.export import export_model
    from raft.labels import LabelMap
    from raft.spec import validate

    spec = validate(
        {
            "model": {"path": str(model_path)},
            "task": task,
            "data": {"train": "unused.jsonl"},
            "output": {"dir": str(root), "name": "served"},
        }
    )
    label_map = LabelMap(labels) if labels else None
    model = registry.get_task(spec.task.type).build_model(str(model_path), spec.task, label_map)
    model.save_pretrained(root / "checkpoint")
    return export_model(root / "checkpoint", root / "served" / "model", spec, label_map)


def render_in_chromium(page: Path) -> str:
    """The page's DOM after headless Chromium ran its scripts (plotly draws then)."""
    import re
    import shutil
    import subprocess

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "headless Chromium is not installed: `make browser` installs Debian's package"
    done = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000",
         "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0 and "<body" in done.stdout, done.stderr[-2000:]
    return re.sub(r"\s+", " ", done.stdout)


def drawn_titles(dom: str) -> list[str]:
    """The titles plotly drew into the page's SVG, in page order."""
    import html
    import re

    return [html.unescape(t) for t in re.findall(r'class="gtitle"[^>]*data-unformatted="([^"]*)"', dom)]
