"""Every supported family × technique pair under Ray Train + DeepSpeed ZeRO-2, 2 workers.

One TorchTrainer run walks the whole matrix, so Ray and DeepSpeed start once: each worker
builds the pair's tiny model through the family's ``build_model`` and the technique's
``apply``, hands it to raft's own ``_deepspeed_engine``, takes a few steps on toy batches,
and rank 0 checks the invariant — exactly the parameters the technique trains have
changed, every other one is bit-identical. Each worker then evaluates one batch as raft's
loop does (the family's statistics and metrics; generations for the generative families)
and saves the model as raft's checkpoint does. The driver loads each save with plain
transformers/peft, runs it, and has the generative ones generate. (Ray Data and the full
run path are covered per family by the other integration tests.)
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from raft import registry
from raft.testing import (
    make_tiny_clip_model,
    make_tiny_generative_model,
    make_tiny_model,
    make_tiny_speech_model,
    make_tiny_vision_model,
)

pytestmark = pytest.mark.slow

FAMILIES = [
    "sequence_classification",
    "token_classification",
    "causal_lm",
    "seq2seq",
    "image_classification",
    "speech_recognition",
    "image_text",
]
TECHNIQUES = {
    "full": {"type": "full"},
    "freeze": {"type": "freeze", "embeddings": True, "lowest_layers": 1},
    "lora": {"type": "lora", "r": 4, "dropout": 0.0},
    "ia3": {"type": "ia3"},
    "prefix_tuning": {"type": "prefix_tuning", "num_virtual_tokens": 4},
    "prompt_tuning": {"type": "prompt_tuning", "num_virtual_tokens": 4},
}
LABELS = {
    "sequence_classification": ["negative", "positive"],
    "token_classification": ["B-NEG", "B-POS", "O"],
    "image_classification": ["horizontal", "vertical"],
}
TASKS = {
    "sequence_classification": {"type": "sequence_classification", "max_length": 16},
    "token_classification": {"type": "token_classification", "max_length": 16},
    "causal_lm": {
        "type": "causal_lm",
        "format": "prompt_completion",
        "max_length": 32,
        "generation": {"max_new_tokens": 4},
    },
    "seq2seq": {
        "type": "seq2seq",
        "max_source_length": 16,
        "max_target_length": 16,
        "generation": {"max_new_tokens": 4},
    },
    "image_classification": {"type": "image_classification"},
    "speech_recognition": {
        "type": "speech_recognition",
        "max_target_length": 8,
        "generation": {"max_new_tokens": 4},
    },
    "image_text": {"type": "image_text", "max_length": 16},
}


def supported_pairs() -> list[tuple[str, str]]:
    return [
        (family, name)
        for family in FAMILIES
        for name in TECHNIQUES
        if registry.unsupported_reason(name, registry.get_task(family)) is None
    ]


def toy_image_rows(count: int, seed: int) -> list[dict]:
    import io
    import random

    from raft.testing import TOY_IMAGE_CLASSES, toy_image

    rng, rows = random.Random(seed), []
    for i in range(count):
        kind = TOY_IMAGE_CLASSES[i % 2]
        buffer = io.BytesIO()
        toy_image(kind, rng).save(buffer, format="PNG")
        rows.append({"image": buffer.getvalue(), "label": kind})
    return rows


def toy_rows(family: str, count: int, seed: int) -> tuple[list[dict], tuple[str, ...]]:
    from raft import testing

    rows, columns = {
        "image_classification": (toy_image_rows, ("image", "label")),
        "sequence_classification": (testing.toy_sentiment_rows, ("text", "label")),
        "token_classification": (testing.toy_ner_rows, ("tokens", "tags")),
        "causal_lm": (testing.toy_sft_rows, ("prompt", "completion")),
        "seq2seq": (testing.toy_translation_rows, ("source", "target")),
        "speech_recognition": (testing.toy_speech_rows, ("audio", "text")),
        "image_text": (testing.toy_caption_rows, ("image", "caption")),
    }[family]
    return rows(count, seed=seed), columns


def toy_batches(family: str, spec, model_path: str, labels, seed: int, count: int = 3):
    import numpy as np

    task = registry.get_task(family)
    rows, columns = toy_rows(family, 8 * count, seed)
    for i in range(count):
        chunk = rows[8 * i : 8 * (i + 1)]
        batch = {key: np.array([row[key] for row in chunk], dtype=object) for key in columns}
        yield task.collate(task.preprocess(batch, spec.task, model_path, labels))


def matrix_loop(config: dict) -> dict:
    """Runs in each Ray Train worker."""
    import os

    import ray.train
    import torch

    from raft import worker
    from raft.deepspeed_config import build_deepspeed_config
    from raft.labels import LabelMap
    from raft.spec import validate
    from raft.tasks.base import EvalContext

    context = ray.train.get_context()
    worker._set_process_env(context)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    worker._init_deepspeed_comm()
    rank = context.get_world_rank()
    results = {}
    for family, name in config["pairs"]:
        model_path = config["models"][family]
        spec = validate(
            {
                "model": {"path": model_path},
                "task": TASKS[family],
                "technique": TECHNIQUES[name],
                "data": {"train": "unused.jsonl"},
                "train": {"batch_size": 8, "lr": 1e-2, "lr_scheduler": "constant"},
                "deepspeed": {"zero_stage": 2},
            }
        )
        task = registry.get_task(family)
        labels = LabelMap(tuple(LABELS[family])) if family in LABELS else None
        ds_config = build_deepspeed_config(spec, "fp32")
        torch.manual_seed(0)  # the same initial weights (and prompt/prefix vectors) on every rank
        model = worker._build_model(spec, task, labels, ds_config)
        engine = worker._deepspeed_engine(model, spec, task, ds_config, steps=3)
        module = worker._hf_model(engine)
        trainable = {n for n, p in module.named_parameters() if p.requires_grad}
        before = {n: p.detach().clone() for n, p in module.named_parameters()}
        losses = []
        for batch in toy_batches(family, spec, model_path, labels, seed=rank):
            loss = engine(**task.model_inputs(batch)).loss
            worker._backward(engine, loss)
            engine.step()
            losses.append(float(loss))
        changed = {n for n, p in module.named_parameters() if not torch.equal(before[n], p.detach())}
        # Evaluation as raft's loop runs it: the family's statistics (generating, for the
        # generative families) and its logged generations, from the wrapped model.
        engine.eval()
        with torch.no_grad():
            batch = next(toy_batches(family, spec, model_path, labels, seed=rank, count=1))
            context = EvalContext(model=module, spec=spec.task, model_path=model_path)
            stats = task.eval_stats(engine(**task.model_inputs(batch)), batch, labels, context)
            metrics = task.metrics_for(stats, labels, spec.task)
            samples = task.sample_generations(toy_rows(family, 2, seed=rank)[0], context)
        engine.train()
        out = os.path.join(config["out"], f"{family}-{name}")
        worker._save_hf_model(engine, out, rank)
        results[f"{family}/{name}"] = {
            "trainable": len(trainable),
            "total": len(before),
            "missed": sorted(trainable - changed)[:5],
            "leaked": sorted(changed - trainable)[:5],
            "losses": losses,
            "metrics": {k: float(v) for k, v in metrics.items()},
            "generations": [sample["output"] for sample in samples],
        }
        del engine, model, module
    return results if rank == 0 else None


# Plain transformers/peft (no raft import): load every saved pair and run a forward pass.
LOAD = """
import json, sys, torch, transformers
from pathlib import Path
report = {}
for job in json.loads(sys.argv[1]):
    folder, auto = Path(job["folder"]), getattr(transformers, job["auto"])
    extra = {"num_labels": job["num_labels"]} if job["num_labels"] else {}
    if (folder / "adapter_config.json").exists():
        from peft import PeftModel
        model = PeftModel.from_pretrained(auto.from_pretrained(job["base"], **extra), folder)
    else:
        model = auto.from_pretrained(folder)
    kind, encoded = job["kind"], {}
    if kind in ("vision", "image_text"):
        from PIL import Image
        image = Image.new("RGB", (24, 24), (200, 30, 30))
        encoded = dict(transformers.AutoImageProcessor.from_pretrained(job["base"])(images=[image], return_tensors="pt"))
    if kind not in ("vision", "speech_recognition"):
        encoded.update(transformers.AutoTokenizer.from_pretrained(job["base"])(["good movie"], return_tensors="pt"))
        encoded.pop("token_type_ids", None)
    if kind == "speech_recognition":
        extractor = transformers.AutoFeatureExtractor.from_pretrained(job["base"])
        encoded = dict(extractor([0.1] * 8000, sampling_rate=16000, return_tensors="pt"))
    if kind in ("seq2seq", "speech_recognition"):
        encoded["decoder_input_ids"] = torch.ones((1, 1), dtype=torch.long)
    with torch.no_grad():
        outputs = model.eval()(**encoded)
        if kind in ("causal_lm", "seq2seq", "speech_recognition"):  # and the export generates
            inputs = {k: v for k, v in encoded.items() if k != "decoder_input_ids"}
            generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    logits = outputs.logits_per_image if kind == "image_text" else outputs.logits
    if kind in ("causal_lm", "seq2seq", "speech_recognition"):
        # One row back. Its length is the model's business: a barely trained Whisper may
        # end at once (its generate returns the new tokens without the start prefix).
        report[job["key"] + "/generated"] = generated.shape[0] == 1
    report[job["key"]] = bool(torch.isfinite(logits).all())
print(json.dumps({"report": report, "raft": sorted(m for m in sys.modules if m.split(".")[0] == "raft")}))
"""


def test_every_supported_pair_trains_under_zero2_on_two_workers(tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    bert = make_tiny_model(tmp_path / "bert")
    models = {
        "sequence_classification": str(bert),
        "token_classification": str(bert),
        "causal_lm": str(make_tiny_generative_model(tmp_path / "llama", "causal_lm")),
        "seq2seq": str(make_tiny_generative_model(tmp_path / "t5", "seq2seq")),
        "image_classification": str(make_tiny_vision_model(tmp_path / "vit")),
        "speech_recognition": str(make_tiny_speech_model(tmp_path / "whisper")),
        "image_text": str(make_tiny_clip_model(tmp_path / "clip")),
    }
    pairs = supported_pairs()
    # 7 families × 6 techniques, less the refused: NER prompt tuning, and prompt/prefix
    # tuning on the vision, speech and image-text families.
    assert len(pairs) == 35
    result = TorchTrainer(
        matrix_loop,
        train_loop_config={"pairs": pairs, "models": models, "out": str(tmp_path / "out")},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name="matrix", storage_path=str(tmp_path / "ray")),
    ).fit()
    assert result.error is None, result.error
    results = result.return_value
    assert sorted(results) == sorted(f"{f}/{t}" for f, t in pairs)
    for key, found in results.items():
        assert found["trainable"] > 0 and not found["missed"] and not found["leaked"], (key, found)
        assert all(loss == loss and loss < 100 for loss in found["losses"]), (key, found)
        if not key.endswith(("/full", "/freeze")):
            assert found["trainable"] < found["total"] / 2, (key, found)  # an adapter, not the model
        family = key.split("/")[0]
        primary = registry.get_task(family).primary_metric
        assert found["metrics"][primary] == found["metrics"][primary], (key, found)  # present, not NaN
        if family in ("causal_lm", "seq2seq", "speech_recognition"):  # generations were logged
            assert len(found["generations"]) == 2 and all(isinstance(g, str) for g in found["generations"])
    jobs = [
        {
            "key": f"{family}/{name}",
            "folder": str(tmp_path / "out" / f"{family}-{name}"),
            "base": models[family],
            "auto": registry.get_task(family).auto_class,
            "num_labels": len(LABELS.get(family, [])),
            "kind": {"seq2seq": "seq2seq", "image_classification": "vision"}.get(family, family),
        }
        for family, name in pairs
    ]
    out = subprocess.run([sys.executable, "-c", LOAD, json.dumps(jobs)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    generative = [job["key"] for job in jobs if job["kind"] in ("causal_lm", "seq2seq", "speech_recognition")]
    expected = {job["key"]: True for job in jobs} | {f"{key}/generated": True for key in generative}
    assert len(generative) == 16 and loaded["raft"] == [] and loaded["report"] == expected
