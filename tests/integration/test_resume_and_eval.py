"""Resuming a run from its checkpoint; merged-adapter export scored by `raft eval`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from raft.cli import main
from raft.spec import validate
from raft.train import fit
from tests.helpers import base_spec

pytestmark = pytest.mark.slow


def test_same_run_name_resumes_from_the_last_checkpoint(tiny_bert, toy_data, tmp_path):
    # ZeRO-2 partitions the optimizer state into per-rank files, which raft reads back with
    # torch's weights-only unpickler like the rest of DeepSpeed's state. (ZeRO 0's resume by
    # run name, mid-epoch, is the driver-kill test in test_training_faults.py.)
    document = base_spec(
        tiny_bert,
        toy_data,
        tmp_path,
        output={"name": "resume-me"},
        train={"epochs": 1},
        deepspeed={"zero_stage": 2},
    )
    first = fit(validate(document))
    assert first.summary["resumed_from"] is None
    shutil.rmtree(first.model_dir)  # as if the driver died before export

    document["train"]["epochs"] = 2
    second = fit(validate(document))
    steps = first.history[-1]["global_step"]
    resumed = second.summary["resumed_from"]
    assert {k: resumed[k] for k in ("epoch", "global_step")} == {"epoch": 1, "global_step": steps}
    assert resumed["checkpoint"].startswith("checkpoint_")
    assert second.history[:2] == first.history  # restored, not recomputed
    assert [h["epoch"] for h in second.history] == [0, 1, 2]
    assert second.history[-1]["global_step"] == 2 * steps


def test_merged_lora_export_loads_plainly_and_raft_eval_scores_it(tiny_bert, toy_data, tmp_path):
    document = base_spec(
        tiny_bert,
        toy_data,
        tmp_path,
        technique={"type": "lora", "r": 8, "dropout": 0.0},
        train={"epochs": 3, "lr": 1e-2, "lr_scheduler": "constant", "eval_before_training": False},
        deepspeed={"zero_stage": 1},
        output={"merge_adapter": True},
    )
    outcome = fit(validate(document))
    # No evaluation before training: the history starts at the first epoch, with no baseline.
    assert [h["epoch"] for h in outcome.history] == [1, 2, 3]
    # The validation pass then begins after the first step (raft.worker), yet every epoch has it.
    assert all(h["val_accuracy"] is not None and h["val_loss"] > 0 for h in outcome.history)
    assert outcome.summary["before"] is None and outcome.summary["after"] is not None
    # Checkpoints hold the adapter alone (with the trained classifier head); the export merges.
    saved = {p.name for p in next(Path(outcome.run_dir).glob("checkpoint_*/model")).iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= saved and "model.safetensors" not in saved
    files = {p.name for p in Path(outcome.model_dir).iterdir()}
    assert "model.safetensors" in files and "adapter_config.json" not in files

    from transformers import AutoModelForSequenceClassification

    merged = AutoModelForSequenceClassification.from_pretrained(outcome.model_dir)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert merged.config.id2label == {0: "negative", 1: "positive"}

    result = CliRunner().invoke(
        main, ["eval", str(outcome.model_dir), "--data", str(toy_data["validation"]), "--json"]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["rows"] == 120
    assert metrics["val_accuracy"] == pytest.approx(outcome.history[-1]["val_accuracy"], abs=0.02)
    assert metrics["val_loss"] == pytest.approx(outcome.history[-1]["val_loss"], rel=0.05)


def test_raft_eval_refuses_a_folder_that_is_not_an_export(tmp_path, toy_data):
    result = CliRunner().invoke(main, ["eval", str(tmp_path), "--data", str(toy_data["validation"])])
    assert result.exit_code == 2 and "not a model exported by raft" in result.output
