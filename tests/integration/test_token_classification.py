"""Token classification (NER) end to end: tag lists through Ray Data, 2 workers, ZeRO-2;
the export loads with plain transformers and tags tokens."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from raft.spec import validate
from raft.testing import make_tiny_model, toy_ner_rows, write_jsonl
from raft.train import fit

pytestmark = pytest.mark.slow

PREDICT = """
import json, sys, torch
from pathlib import Path
from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer
model_dir = Path(sys.argv[1])
if (model_dir / "adapter_config.json").exists():
    from peft import PeftModel
    base_path = json.loads((model_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    base = AutoModelForTokenClassification.from_pretrained(base_path, config=AutoConfig.from_pretrained(model_dir))
    model = PeftModel.from_pretrained(base, model_dir)
else:
    model = AutoModelForTokenClassification.from_pretrained(model_dir)
tokenizer = AutoTokenizer.from_pretrained(model_dir)
encoded = tokenizer([["the", "movie", "was", "great"]], is_split_into_words=True, return_tensors="pt")
with torch.no_grad():
    ids = model(**encoded).logits.argmax(-1)[0].tolist()
print(json.dumps([model.config.id2label[i] for i in ids[1:-1]]))
"""


@pytest.fixture(scope="module")
def ner(tmp_path_factory):
    root = tmp_path_factory.mktemp("ner")
    return {
        "model": make_tiny_model(root / "tiny-bert", "token_classification"),
        "train": write_jsonl(toy_ner_rows(600, seed=0), root / "train.jsonl"),
        "validation": write_jsonl(toy_ner_rows(120, seed=1), root / "validation.jsonl"),
    }


# All weights through the whole run path (Ray Data, evaluation, export). Every technique
# on this family, LoRA included, trains, evaluates and exports under ZeRO-2 on 2 workers
# in tests/integration/test_technique_matrix.py, without paying a run's start-up each
# (a full run costs about a minute here).
TECHNIQUES = {
    "full": ({"type": "full"}, 3e-3),
}


@pytest.mark.parametrize("name", list(TECHNIQUES))
def test_ner_trains_with_zero2_and_exports(ner, tmp_path, name):
    technique, lr = TECHNIQUES[name]
    spec = validate(
        {
            "model": {"path": str(ner["model"])},
            "task": {"type": "token_classification", "max_length": 16},
            "technique": technique,
            "data": {"train": str(ner["train"]), "validation": str(ner["validation"])},
            "train": {
                "epochs": 3,
                "batch_size": 16,
                "lr": lr,
                "lr_scheduler": "constant",
                "log_every_n_steps": 50,
            },
            "scaling": {"num_workers": 2},
            "deepspeed": {"zero_stage": 2},
            "output": {"dir": str(tmp_path / "runs")},
        }
    )
    outcome = fit(spec)
    first, last = outcome.history[0], outcome.history[-1]
    assert last["val_loss"] < first["val_loss"] - 0.02, outcome.history
    assert set(json.loads((Path(outcome.model_dir) / "labels.json").read_text())["labels"]) == {
        "B-NEG",
        "B-POS",
        "O",
    }
    if name == "full":  # the easy task is learned, not just nudged
        assert last["val_f1"] > 0.8 and last["val_token_accuracy"] > 0.9
    tags = json.loads(
        subprocess.run(
            [sys.executable, "-c", PREDICT, str(outcome.model_dir)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert len(tags) == 4 and set(tags) <= {"B-NEG", "B-POS", "O"}
    if name == "full":
        assert tags == ["O", "O", "O", "B-POS"]
