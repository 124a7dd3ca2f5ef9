"""raft.perf's arithmetic against what torch counts and what DeepSpeed estimates (no Ray)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertConfig, BertModel, CLIPConfig, LlamaConfig, LlamaForCausalLM, T5Config

from raft import perf


def tiny_llama(tied: bool = False, layers: int = 2) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        tie_word_embeddings=tied,
        attn_implementation="eager",
    )
    return LlamaForCausalLM(config)


def counted_flops_per_token(model: torch.nn.Module, batch: int = 2, seq_len: int = 48) -> float:
    """What torch's own counter sees in one forward and backward, per token."""
    ids = torch.randint(0, 96, (batch, seq_len))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, labels=ids).loss.backward()
    return counter.get_total_flops() / (batch * seq_len)


def predicted(model: torch.nn.Module, seq_len: int = 48) -> float:
    params, trainable = perf.non_embedding_parameters(model)
    layers, hidden = perf.model_shape(model.config)
    return perf.training_flops_per_token(params, trainable, layers, hidden, seq_len)


def test_full_fine_tuning_is_6n_plus_attention_as_torch_counts_it():
    model = tiny_llama()
    params, trainable = perf.non_embedding_parameters(model)
    assert params == trainable
    assert predicted(model) == 6 * params + 12 * 2 * 48 * 64
    assert predicted(model) == pytest.approx(counted_flops_per_token(model), rel=0.03)


def test_lora_counts_activation_gradients_through_the_frozen_base():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(layers=8), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    params, trainable = perf.non_embedding_parameters(model)
    assert 0 < trainable < params / 10
    # The count is an upper bound by the first layer: no activation gradient flows below
    # the lowest adapter (here the input of layer 0's q, k and v), 2% of this model.
    counted = counted_flops_per_token(model)
    assert counted < predicted(model) < 1.03 * counted
    assert predicted(model) < 0.75 * predicted(tiny_llama(layers=8))  # no weight gradients for the base


def test_embedding_tables_are_not_multiplies_unless_tied_to_the_lm_head():
    untied, tied = tiny_llama(), tiny_llama(tied=True)
    embedding = 96 * 64
    assert perf.non_embedding_parameters(untied)[0] == sum(p.numel() for p in untied.parameters()) - embedding
    assert perf.non_embedding_parameters(tied)[0] == sum(p.numel() for p in tied.parameters())
    bert = BertModel(
        BertConfig(
            vocab_size=50,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=16,
        )
    )
    lookups = sum(m.weight.numel() for m in bert.modules() if isinstance(m, torch.nn.Embedding))
    assert lookups == (50 + 16 + 2) * 32
    assert perf.non_embedding_parameters(bert)[0] == sum(p.numel() for p in bert.parameters()) - lookups


def test_model_shapes():
    assert perf.model_shape(BertConfig(num_hidden_layers=6, hidden_size=384)) == (6, 384)
    assert perf.model_shape(T5Config(num_layers=3, num_decoder_layers=2, d_model=64)) == (5, 64)
    with pytest.raises(ValueError, match="CLIPConfig names no layer count"):
        perf.model_shape(CLIPConfig())
    with pytest.raises(ValueError, match="bad shape"):
        perf.training_flops_per_token(10, 11, 1, 1, 1)


def test_zero_memory_per_worker():
    n = 1_000_000
    plain = perf.zero_memory_estimate(n, n, world_size=4, stage=0)
    assert plain["total"] == plain["device"] == 16 * n  # fp32 weights, grads, Adam's two moments
    stage3 = perf.zero_memory_estimate(n, n, world_size=4, stage=3)
    assert stage3["total"] == (4 + 4 + 16) * n // 4  # everything partitioned, plus the fp32 copy
    lora = perf.zero_memory_estimate(n, n // 100, world_size=4, stage=2)
    assert lora["params"] == 4 * n and lora["optimizer"] == 16 * (n // 100) // 4
    offload = perf.zero_memory_estimate(
        n, n, world_size=4, stage=3, offload_optimizer=True, offload_params=True
    )
    assert offload["device"] == 0 and offload["host"] == stage3["total"]
    optimizer_only = perf.zero_memory_estimate(n, n, world_size=4, stage=2, offload_optimizer=True)
    assert optimizer_only["device"] == optimizer_only["params"] == 4 * n  # gradients go with the optimizer
    with pytest.raises(ValueError, match="offload_params needs ZeRO 3"):
        perf.zero_memory_estimate(n, n, 2, 2, offload_params=True)


def test_mixed_precision_estimates_agree_with_deepspeeds_own():
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    n, world = 500_000_000, 8
    _, zero2 = estimate_zero2_model_states_mem_needs(n, num_gpus_per_node=world, cpu_offload=False)
    assert perf.zero_memory_estimate(n, n, world, 2, precision="bf16")["device"] == zero2
    _, zero3, _ = estimate_zero3_model_states_mem_needs(
        n, largest_layer_params=0, num_gpus_per_node=world, cpu_offload=False, cpu_offload_params=False
    )
    # DeepSpeed leaves the 16-bit gradient partition out of its ZeRO-3 count: 18 vs 20 bytes.
    assert perf.zero_memory_estimate(n, n, world, 3, precision="bf16")["device"] == pytest.approx(
        zero3, rel=0.12
    )


def test_live_tensor_bytes_counts_each_storage_once():
    before = perf.live_tensor_bytes()
    block = torch.zeros(1024, 1024)  # 4 MiB
    views = [block[:10], block.view(-1), block.t()]
    grown = perf.live_tensor_bytes() - before
    assert 4 * perf.MiB <= grown < 4.5 * perf.MiB, grown
    del block, views
    assert perf.peak_rss_bytes() > 50 * perf.MiB


def test_first_step_breakdown():
    stamps = {
        "fit_started": 100.0,
        "cluster_ready": 104.5,
        "data_ready": 105.0,
        "evaluated": 127.0,
        "first_batch": 128.5,
        "first_step": 130.0,
    }
    assert perf.first_step_breakdown(stamps, command_started=98.0) == {
        "imports": 2.0,
        "checks and cluster start": 4.5,
        "data check": 0.5,
        "evaluation before training": 22.0,
        "first training batch": 1.5,
        "first optimizer step": 1.5,
    }
    assert list(perf.first_step_breakdown(stamps)) == [
        "checks and cluster start",
        "data check",
        "evaluation before training",
        "first training batch",
        "first optimizer step",
    ]
