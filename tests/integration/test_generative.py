"""Generative families end to end: a tiny Llama (causal LM) and a tiny T5 (seq2seq), built
from configs with a byte-level BPE tokenizer, trained by 2 Ray Train workers under ZeRO-2;
the export loads with plain transformers/peft and generates."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from raft.spec import validate
from raft.testing import (
    make_tiny_generative_model,
    toy_sft_rows,
    toy_text_rows,
    toy_translation_rows,
    write_jsonl,
)
from raft.train import fit

pytestmark = pytest.mark.slow

GENERATE = """
import json, sys, torch
from pathlib import Path
import transformers
model_dir, auto, prompt = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
auto = getattr(transformers, auto)
if (model_dir / "adapter_config.json").exists():
    from peft import PeftModel
    base = json.loads((model_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    model = PeftModel.from_pretrained(auto.from_pretrained(base), model_dir)
else:
    model = auto.from_pretrained(model_dir)
tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
encoded = tokenizer(prompt, return_tensors="pt")
with torch.no_grad():
    out = model.eval().generate(**encoded, generation_config=transformers.GenerationConfig.from_pretrained(model_dir))
if not model.config.is_encoder_decoder:
    out = out[:, encoded["input_ids"].shape[1]:]
print(json.dumps(tokenizer.decode(out[0], skip_special_tokens=True)))
"""


def generate_with_plain_transformers(model_dir, auto_class: str, prompt: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", GENERATE, str(model_dir), auto_class, prompt],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("generative")
    return {
        "causal_lm": make_tiny_generative_model(root / "tiny-llama", "causal_lm"),
        "seq2seq": make_tiny_generative_model(root / "tiny-t5", "seq2seq"),
    }


def run(model, task, technique, train, validation, tmp_path, lr, epochs=3, **extra):
    spec = validate(
        {
            "model": {"path": str(model)},
            "task": task,
            "technique": technique,
            "data": {"train": str(train), "validation": str(validation)},
            "train": {"epochs": epochs, "batch_size": 16, "lr": lr, "lr_scheduler": "constant", **extra},
            "scaling": {"num_workers": 2},
            "deepspeed": {"zero_stage": 2},
            "output": {"dir": str(tmp_path / "runs")},
        }
    )
    return fit(spec)


def test_chat_sft_with_lora_learns_the_assistant_turns(models, tmp_path):
    train = write_jsonl(toy_sft_rows(600, seed=0, chat=True), tmp_path / "train.jsonl")
    validation = write_jsonl(toy_sft_rows(60, seed=1, chat=True), tmp_path / "val.jsonl")
    outcome = run(
        models["causal_lm"],
        {"type": "causal_lm", "format": "chat", "max_length": 48, "generation": {"max_new_tokens": 4}},
        {"type": "lora", "r": 8, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        train,
        validation,
        tmp_path,
        lr=1e-2,
    )
    first, last = outcome.history[0], outcome.history[-1]
    assert last["val_loss"] < first["val_loss"] - 0.5, outcome.history
    assert last["val_perplexity"] < first["val_perplexity"]
    # Only assistant tokens are scored: each reply is one label word and the end-of-turn.
    assert first["val_tokens"] == 60 * 2
    samples = last["generations"]
    assert len(samples) == 3 and all(s["prompt"].endswith("<|assistant|>") for s in samples)
    files = {p.name for p in Path(outcome.model_dir).iterdir()}
    assert {"adapter_model.safetensors", "generation_config.json", "tokenizer.json"} <= files
    prompt = "<|system|>answer in one word</s><|user|>the film was great</s><|assistant|>"
    reply = generate_with_plain_transformers(outcome.model_dir, "AutoModelForCausalLM", prompt)
    assert reply in {"positive", "negative"}, reply


def test_continued_pretraining_packs_text_into_blocks(models, tmp_path):
    train = write_jsonl(toy_text_rows(400, seed=0), tmp_path / "train.jsonl")
    validation = write_jsonl(toy_text_rows(60, seed=1), tmp_path / "val.jsonl")
    outcome = run(
        models["causal_lm"],
        {"type": "causal_lm", "format": "text", "max_length": 32, "generation": {"max_new_tokens": 8}},
        {"type": "full"},
        train,
        validation,
        tmp_path,
        lr=3e-3,
    )
    first, last = outcome.history[0], outcome.history[-1]
    assert last["val_loss"] < first["val_loss"] - 0.5, outcome.history
    # Packed: every validation token of every block is scored (32 per block, minus the shift).
    assert last["val_tokens"] == last["val_rows"] * 31
    assert "model.safetensors" in {p.name for p in Path(outcome.model_dir).iterdir()}
    # After a word comes its toy translation: the one certain next token in this corpus.
    reply = generate_with_plain_transformers(outcome.model_dir, "AutoModelForCausalLM", "good bon the")
    assert reply.split()[0] == "le", reply


def test_seq2seq_learns_a_toy_translation(models, tmp_path):
    train = write_jsonl(toy_translation_rows(600, seed=0), tmp_path / "train.jsonl")
    validation = write_jsonl(toy_translation_rows(60, seed=1), tmp_path / "val.jsonl")
    outcome = run(
        models["seq2seq"],
        {
            "type": "seq2seq",
            "source_prefix": "translate: ",
            "max_source_length": 32,
            "max_target_length": 24,
            "generation": {"max_new_tokens": 24, "num_beams": 2},
        },
        {"type": "full"},
        train,
        validation,
        tmp_path,
        lr=3e-3,
        epochs=10,
    )
    first, last = outcome.history[0], outcome.history[-1]
    assert last["val_loss"] < first["val_loss"] - 1.0, outcome.history
    # Scored from generated text (beam search, 2 beams), over both workers' shards. Corpus
    # BLEU needs 4-gram matches, which these 2-5 word sentences give only late and unevenly
    # (a CI run went 0, 0, ..., 26.5, 18.5 over 8 epochs), so its bar is low.
    assert last["val_rougeL"] > 0.6 and last["val_bleu"] > 10, outcome.history
    assert last["val_rows"] == 60
    reply = generate_with_plain_transformers(
        outcome.model_dir, "AutoModelForSeq2SeqLM", "translate: good movie"
    )
    assert reply == "bon filmo", reply


# Virtual-token techniques under ZeRO-2 on the generative families (the other techniques'
# invariants on these families are in tests/unit/test_techniques.py).
def test_prompt_completion_sft_with_prompt_tuning(models, tmp_path):
    train = write_jsonl(toy_sft_rows(400, seed=0), tmp_path / "train.jsonl")
    validation = write_jsonl(toy_sft_rows(60, seed=1), tmp_path / "val.jsonl")
    outcome = run(
        models["causal_lm"],
        {
            "type": "causal_lm",
            "format": "prompt_completion",
            "max_length": 32,
            "generation": {"max_new_tokens": 3},
        },
        {"type": "prompt_tuning", "num_virtual_tokens": 8},
        train,
        validation,
        tmp_path,
        lr=0.3,  # prompt tuning's usual rate: only the 8 virtual embeddings train
        epochs=4,
    )
    first, last = outcome.history[0], outcome.history[-1]
    assert last["val_loss"] < first["val_loss"] - 0.3, outcome.history
    assert first["val_tokens"] == 60 * 2  # " positive"/" negative" and EOS: the prompt is masked
    assert {"adapter_model.safetensors", "adapter_config.json"} <= {
        p.name for p in Path(outcome.model_dir).iterdir()
    }
    reply = generate_with_plain_transformers(
        outcome.model_dir, "AutoModelForCausalLM", "review: good film sentiment:"
    )
    assert isinstance(reply, str)
