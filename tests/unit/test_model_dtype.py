"""An fp32 run trains fp32 weights even when the checkpoint was saved in bf16, as most
LLMs are (raft.worker._build_model). Before, ``from_pretrained`` kept the checkpoint's
bf16 and DeepSpeed (which casts only for bf16/fp16 runs) left it so: AdamW stepped the
16-bit weights in place, with no fp32 copy."""

from __future__ import annotations

import pytest
import torch

from raft.deepspeed_config import build_deepspeed_config
from raft.registry import get_task
from raft.spec import validate
from raft.testing import make_tiny_generative_model, toy_text_rows, write_jsonl
from raft.worker import _build_model


@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bf16-llm")
    make_tiny_generative_model(folder, "causal_lm")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True)
    reloaded = AutoModelForCausalLM.from_pretrained(folder)
    assert {p.dtype for p in reloaded.parameters()} == {torch.bfloat16}, "the checkpoint is not bf16"
    data = write_jsonl(toy_text_rows(4), folder / "train.jsonl")
    return folder, data, {name: p.detach().clone() for name, p in reloaded.named_parameters()}


def _spec(folder, data, technique):
    return validate(
        {
            "model": {"path": str(folder)},
            "task": {"type": "causal_lm", "format": "text", "max_length": 32},
            "technique": technique,
            "data": {"train": str(data)},
        }
    )


@pytest.mark.parametrize("technique", [{"type": "full"}, {"type": "lora", "r": 4}], ids=["full", "lora"])
def test_an_fp32_run_trains_fp32_weights_from_a_bf16_checkpoint(bf16_checkpoint, technique):
    folder, data, saved = bf16_checkpoint
    spec = _spec(folder, data, technique)
    model = _build_model(spec, get_task("causal_lm"), None, build_deepspeed_config(spec, "fp32"))
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    assert set(dtypes.values()) == {torch.float32}, {n: d for n, d in dtypes.items() if d != torch.float32}
    # The upcast is exact: the weights are the checkpoint's.
    for name, parameter in model.named_parameters():
        base = name.replace("base_model.model.", "").replace(".base_layer", "")
        if base in saved:
            assert torch.equal(parameter.detach(), saved[base].float()), name


def test_a_bf16_run_leaves_the_cast_to_deepspeed(bf16_checkpoint):
    """No fp32 copy of a bf16 checkpoint for a bf16 run: DeepSpeed keeps its own fp32
    master weights, and loading in bf16 halves the host memory the load takes."""
    folder, data, _ = bf16_checkpoint
    spec = _spec(folder, data, {"type": "full"})
    model = _build_model(spec, get_task("causal_lm"), None, build_deepspeed_config(spec, "bf16"))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
