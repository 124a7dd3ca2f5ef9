"""Runs written to a storage URI (any pyarrow filesystem: here file://) instead of a path."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForSequenceClassification

from raft.spec import validate
from raft.train import fit
from tests.helpers import base_spec

pytestmark = pytest.mark.slow


def test_run_to_a_uri_checkpoints_and_exports_there(tiny_bert, toy_data, tmp_path):
    uri = f"file://{tmp_path}/bucket/runs"
    spec = validate(
        base_spec(tiny_bert, toy_data, tmp_path, train={"epochs": 1}, output={"dir": uri, "name": "to-uri"})
    )
    outcome = fit(spec)
    assert outcome.model_dir == f"{uri}/to-uri/model"
    run_dir = tmp_path / "bucket" / "runs" / "to-uri"
    assert json.loads((run_dir / "summary.json").read_text())["model_dir"] == outcome.model_dir
    assert (run_dir / "spec.yaml").is_file()
    assert any(p.name.startswith("checkpoint_") and p.is_dir() for p in run_dir.iterdir())
    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "model")
    assert model.config.num_labels == 2
    assert not list(run_dir.glob("model.partial*"))
