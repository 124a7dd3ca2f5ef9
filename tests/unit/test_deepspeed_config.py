from __future__ import annotations

import pytest
import torch

from raft.deepspeed_config import (
    accumulation_step,
    build_deepspeed_config,
    parameter_groups,
    reschedule,
    resolve_precision,
    resumed_total_steps,
    size_buckets,
    steps_per_epoch,
    total_steps,
    uses_client_optimizer,
    warmup_steps,
)
from raft.spec import validate

BASE = {"model": {"path": "m"}, "task": {"type": "sequence_classification"}, "data": {"train": "t.jsonl"}}


def spec_with(**sections):
    return validate({**BASE, **sections})


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_zero_stage_and_batch_sizes(stage):
    spec = spec_with(
        deepspeed={"zero_stage": stage},
        train={"batch_size": 8, "gradient_accumulation_steps": 4},
        scaling={"num_workers": 3},
    )
    config = build_deepspeed_config(spec, "fp32")
    assert config["zero_optimization"]["stage"] == stage
    assert config["train_micro_batch_size_per_gpu"] == 8
    assert config["gradient_accumulation_steps"] == 4
    # DeepSpeed checks train_batch = micro * accumulation * world size.
    assert config["train_batch_size"] == 8 * 4 * 3
    assert uses_client_optimizer(config)
    assert ("stage3_gather_16bit_weights_on_model_save" in config["zero_optimization"]) == (stage == 3)


def test_offload_keeps_raft_optimizer_unless_the_config_declares_one():
    spec = spec_with(
        deepspeed={"zero_stage": 3, "offload_optimizer": True, "offload_params": True},
        train={"lr": 2e-4, "weight_decay": 0.1},
    )
    config = build_deepspeed_config(spec, "fp32")
    zero = config["zero_optimization"]
    assert zero["offload_optimizer"]["device"] == "cpu"
    assert zero["offload_param"]["device"] == "cpu"
    # raft's fused AdamW steps the offloaded state; DeepSpeed must not insist on CPU Adam.
    assert uses_client_optimizer(config) and config["zero_force_ds_cpu_optimizer"] is False
    declared = spec_with(
        deepspeed={
            "zero_stage": 2,
            "offload_optimizer": True,
            "config": {"optimizer": {"type": "AdamW", "params": {"lr": 2e-4}}},
        }
    )
    assert not uses_client_optimizer(build_deepspeed_config(declared, "fp32"))


def test_precision_and_clipping():
    spec = spec_with(train={"max_grad_norm": None})
    config = build_deepspeed_config(spec, "bf16")
    assert config["bf16"]["enabled"] and not config["fp16"]["enabled"]
    assert "gradient_clipping" not in config
    assert build_deepspeed_config(spec_with(), "fp32")["gradient_clipping"] == 1.0
    assert resolve_precision("auto", use_gpu=False, bf16_supported=True) == "fp32"
    assert resolve_precision("auto", use_gpu=True, bf16_supported=True) == "bf16"
    assert resolve_precision("auto", use_gpu=True, bf16_supported=False) == "fp32"
    assert resolve_precision("fp16", use_gpu=True, bf16_supported=True) == "fp16"


def test_raw_config_passes_through_deep_merged():
    spec = spec_with(
        deepspeed={
            "zero_stage": 2,
            "config": {"zero_optimization": {"reduce_bucket_size": 123}, "steps_per_print": 5},
        }
    )
    config = build_deepspeed_config(spec, "fp32")
    assert config["zero_optimization"]["reduce_bucket_size"] == 123
    assert config["zero_optimization"]["stage"] == 2  # kept from raft's config
    assert config["steps_per_print"] == 5


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_buckets_are_capped_at_the_trainable_parameters(stage):
    spec = spec_with(deepspeed={"zero_stage": stage})
    config = build_deepspeed_config(spec, "fp32")
    sized = size_buckets(config, 22_713_604, spec.deepspeed.config)
    zero = sized["zero_optimization"]
    if stage == 0:
        assert sized == config  # DDP's buckets are not DeepSpeed's
        return
    # rounded up to a multiple of 512: DeepSpeed wants the all-gather bucket aligned (an odd
    # size failed with "must be a multiple of nccl_start_alignment_factor")
    assert zero["reduce_bucket_size"] == 22_713_856 and 22_713_856 % 512 == 0
    assert ("allgather_bucket_size" in zero) == (stage in (1, 2))  # ZeRO-3 gathers by prefetch size
    assert size_buckets(config, 12_345, {})["zero_optimization"]["reduce_bucket_size"] == 12_800
    assert "reduce_bucket_size" not in config["zero_optimization"]  # the input is left as it was
    # A model over DeepSpeed's default keeps the default.
    assert size_buckets(config, 7_000_000_000, {})["zero_optimization"]["reduce_bucket_size"] == 500_000_000


def test_bucket_sizes_the_user_wrote_are_kept():
    spec = spec_with(
        deepspeed={"zero_stage": 2, "config": {"zero_optimization": {"reduce_bucket_size": 123}}}
    )
    config = build_deepspeed_config(spec, "fp32")
    zero = size_buckets(config, 22_713_604, spec.deepspeed.config)["zero_optimization"]
    assert zero["reduce_bucket_size"] == 123 and zero["allgather_bucket_size"] == 22_713_856


def test_parameter_groups_skip_decay_on_bias_and_norms():
    model = torch.nn.Sequential()
    model.add_module("dense", torch.nn.Linear(4, 4))
    model.add_module("LayerNorm", torch.nn.LayerNorm(4))
    frozen = torch.nn.Linear(2, 2)
    frozen.requires_grad_(False)
    model.add_module("frozen", frozen)
    groups = parameter_groups(model.named_parameters(), 0.01)
    decayed = {id(p) for p in groups[0]["params"]}
    plain = {id(p) for p in groups[1]["params"]}
    assert decayed == {id(model.dense.weight)}
    assert plain == {id(model.dense.bias), id(model.LayerNorm.weight), id(model.LayerNorm.bias)}
    assert groups[1]["weight_decay"] == 0.0


def test_step_arithmetic():
    assert steps_per_epoch(100, 16, 1) == 7  # 6 full batches and a partial one
    assert steps_per_epoch(100, 16, 2) == 4  # the 7th batch alone makes the epoch's last step
    assert steps_per_epoch(3, 16, 4) == 1  # never zero
    spec = spec_with(train={"epochs": 3, "batch_size": 10, "warmup_ratio": 0.1})
    assert total_steps(100, spec) == 30
    assert warmup_steps(spec, 30) == 3
    capped = spec_with(train={"epochs": 3, "batch_size": 10, "max_steps": 12, "warmup_steps": 2})
    assert total_steps(100, capped) == 12
    assert warmup_steps(capped, 12) == 2


def test_a_run_resumed_with_other_workers_gets_a_schedule_as_long_as_its_steps():
    """1,000 rows, batch 10, 3 epochs: 100 steps an epoch on 1 worker, 50 on 2."""
    spec = spec_with(train={"epochs": 3, "batch_size": 10})
    assert total_steps(1000, spec) == 300 and total_steps(500, spec) == 150
    assert resumed_total_steps(100, 1, 0, 500, spec) == 200  # 1 → 2 workers after epoch 1
    assert resumed_total_steps(50, 1, 0, 1000, spec) == 250  # 2 → 1
    assert resumed_total_steps(130, 1, 30, 500, spec) == 130 + 20 + 50  # mid-epoch: 30 of 50 done
    assert resumed_total_steps(100, 1, 0, 1000, spec) == total_steps(1000, spec)  # same workers
    capped = spec_with(train={"epochs": 3, "batch_size": 10, "max_steps": 180})
    assert resumed_total_steps(100, 1, 0, 500, capped) == 180


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_a_rescheduled_lr_goes_on_from_where_it_was_to_the_new_end(kind):
    from transformers import get_scheduler

    spec = spec_with(train={"lr_scheduler": kind, "warmup_steps": 0})
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = get_scheduler(kind, optimizer, num_warmup_steps=0, num_training_steps=100)
    for _ in range(50):
        optimizer.step()
        scheduler.step()
    reschedule(scheduler, spec, 200)
    longer = get_scheduler(
        kind,
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0),
        num_warmup_steps=0,
        num_training_steps=200,
    )
    for step in (50, 150, 199, 200):
        assert scheduler.lr_lambdas[0](step) == pytest.approx(longer.lr_lambdas[0](step))
    assert scheduler.lr_lambdas[0](50) > 0.7  # not 0.5, where the 100-step schedule was
    assert scheduler.last_epoch == 50


def test_every_epoch_ends_on_a_step_and_a_short_last_group_is_a_mean():
    plan = [accumulation_step(index, 7, 3) for index in range(7)]
    assert [ends for ends, _ in plan] == [False, False, True, False, False, True, True]
    assert [scale for _, scale in plan] == [1.0] * 6 + [3.0]
    assert [accumulation_step(index, 6, 3) for index in range(6)] == [
        (False, 1.0),
        (False, 1.0),
        (True, 1.0),
    ] * 2
    assert all(accumulation_step(index, 5, 1) == (True, 1.0) for index in range(5))


DEEPSPEED_ACCUMULATION = r"""
import json, os, torch, torch.distributed as dist
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29679", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0",
                  DS_ACCELERATOR="cpu")
dist.init_process_group("gloo")
import deepspeed
from transformers import get_scheduler
from raft.deepspeed_config import accumulation_step, micro_batches_per_epoch, steps_per_epoch

rows, batch, accumulation, epochs = 20, 4, 2, 2  # 5 batches an epoch: steps of 2, 2 and 1 batches
micro = micro_batches_per_epoch(rows, batch)
total = steps_per_epoch(rows, batch, accumulation) * epochs
torch.manual_seed(0)
data = [[(torch.randn(batch, 3), torch.randn(batch, 1)) for _ in range(micro)] for _ in range(epochs)]
model = torch.nn.Linear(3, 1, bias=False)
start = model.weight.detach().clone()
engine, *_ = deepspeed.initialize(
    model=model,
    optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
    lr_scheduler=lambda o: get_scheduler("constant", o),
    config={"train_micro_batch_size_per_gpu": batch, "gradient_accumulation_steps": accumulation,
            "train_batch_size": batch * accumulation, "zero_allow_untested_optimizer": True, "gradient_clipping": 0.0,
            "steps_per_print": 10**9},
)
steps = 0
for epoch in range(epochs):
    for index, (x, y) in enumerate(data[epoch]):
        ends, scale = accumulation_step(index, micro, accumulation)
        engine.set_gradient_accumulation_boundary(ends)
        loss = torch.nn.functional.mse_loss(engine(x), y)
        engine.backward(loss * scale)
        engine.step()
        steps += ends

# The same by hand: each group's gradient is the mean of its batches' gradients.
weight = start.clone().requires_grad_(True)
for epoch in range(epochs):
    groups = [data[epoch][i : i + accumulation] for i in range(0, micro, accumulation)]
    for group in groups:
        loss = sum(torch.nn.functional.mse_loss(x @ weight.T, y) for x, y in group) / len(group)
        (grad,) = torch.autograd.grad(loss, weight)
        weight = (weight - 0.1 * grad).detach().requires_grad_(True)
print(json.dumps({"total": total, "steps": steps, "deepspeed_steps": engine.global_steps,
                  "error": float((model.weight - weight).abs().max())}))
"""


def test_deepspeed_steps_where_raft_counts_them_with_the_mean_gradient():
    """A real DeepSpeed engine, 5 batches an epoch in groups of 2: 3 steps an epoch, none
    straddling two epochs, each the mean gradient of its group (the last, of one batch,
    is not halved). Without the boundary DeepSpeed stepped 5 times over the 2 epochs while
    raft counted 4 and its schedule held 4."""
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", DEEPSPEED_ACCUMULATION], capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["total"] == result["steps"] == result["deepspeed_steps"] == 6
    assert result["error"] < 1e-6


def test_workers_do_not_build_deepspeeds_shared_memory_op(tmp_path):
    """The op costs a minute of C++ compile per fresh environment; training never uses it."""
    import os
    import subprocess
    import sys

    child = (
        "import os, torch.distributed as dist\n"
        "os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT='29677', RANK='0', WORLD_SIZE='1',"
        " LOCAL_RANK='0', DS_ACCELERATOR='cpu')\n"
        "dist.init_process_group('gloo')\n"
        "from raft.worker import _init_deepspeed_comm\n"
        "_init_deepspeed_comm()\n"
        "import deepspeed.comm as comm\n"
        "print('COMM', comm.is_initialized())\n"
    )
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "COMM True" in out.stdout
    assert list(tmp_path.iterdir()) == []  # nothing was compiled


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_an_elastic_run_sizes_batches_by_the_workers_running(stage):
    spec = spec_with(
        deepspeed={"zero_stage": stage}, train={"batch_size": 8}, scaling={"num_workers": [1, 4]}
    )
    assert build_deepspeed_config(spec, "fp32")["train_batch_size"] == 8 * 4  # the most it may have
    config = build_deepspeed_config(spec, "fp32", world_size=3)
    assert config["train_batch_size"] == 8 * 3
    # ZeRO 1/2 partition optimizer state by worker: an elastic run must load it into another count.
    assert config["zero_optimization"].get("elastic_checkpoint", False) == (stage in (1, 2))
