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
