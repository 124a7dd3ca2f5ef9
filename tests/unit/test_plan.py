"""raft.plan: per-worker memory under each ZeRO setting, against DeepSpeed's estimators and
a cluster's workers; `raft plan` on a real (tiny) model folder. No Ray."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from raft import plan
from raft.cli import main
from raft.plan import Budget, GiB, ModelFacts, Setting
from raft.spec import validate
from raft.testing import make_tiny_model

# A Llama-7B-like shape.
SEVEN_B = ModelFacts(7_000_000_000, 7_000_000_000, layers=32, hidden=4096, heads=32, source="counted")
H100 = Budget(host=200 * GiB, accelerator=80 * GiB, where="test")


def test_activations_follow_korthikanti():
    # MiniLM, batch 16 × 128 tokens, fp32: per layer s·b·h·(34 + 5·a·s/h) · 2 bytes... ×2 for fp32
    per_layer = 128 * 16 * 384 * (34 + 5 * 12 * 128 / 384) * 2
    assert plan.activation_bytes(16, 128, 384, 6, 12, "fp32") == int(6 * per_layer)
    assert plan.activation_bytes(16, 128, 384, 6, 12, "bf16") == int(6 * per_layer / 2)
    with pytest.raises(ValueError, match="bad shape"):
        plan.activation_bytes(0, 128, 384, 6, 12, "fp32")


@pytest.mark.parametrize(
    ("setting", "tolerance"),
    [
        (Setting(2), 0),
        (Setting(2, offload_optimizer=True), 0),
        (Setting(3), 0.12),  # DeepSpeed leaves ZeRO-3's 16-bit gradient partition out: 18 vs 20 bytes
        (Setting(3, offload_optimizer=True), 0),
        (Setting(3, offload_optimizer=True, offload_params=True), 0),
    ],
    ids=lambda value: value.label if isinstance(value, Setting) else str(value),
)
def test_model_states_on_the_gpu_agree_with_deepspeeds_estimators(setting, tolerance):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    n, world = 500_000_000, 8
    facts = ModelFacts(n, n, layers=24, hidden=2048, heads=16, source="counted")
    mine = plan.estimate(
        facts, setting, world_size=world, batch=1, seq_len=512, precision="bf16", use_gpu=True
    )
    if setting.stage == 2:
        _, theirs = estimate_zero2_model_states_mem_needs(
            n, num_gpus_per_node=world, cpu_offload=setting.offload_optimizer
        )
    else:
        _, theirs, _ = estimate_zero3_model_states_mem_needs(
            n,
            largest_layer_params=0,  # DeepSpeed's working buffer for one gathered layer: not a model state
            num_gpus_per_node=world,
            cpu_offload=setting.offload_optimizer,
            cpu_offload_params=setting.offload_params,
        )
    assert mine.states["device"] == pytest.approx(theirs, rel=tolerance, abs=1)
    # On the GPU: the states that stay there, the activations and the CUDA context.
    assert mine.accelerator == mine.states["device"] + mine.activations + plan.GPU_OVERHEAD


def test_the_fastest_setting_that_fits_is_recommended_and_the_technique_counts():
    shape = {"world_size": 8, "batch": 1, "seq_len": 2048, "precision": "bf16", "use_gpu": True}
    full = plan.plan(SEVEN_B, budget=H100, **shape)
    assert [e.setting for e in full] == list(plan.SETTINGS)
    assert full[0].fits is False and "GPU" in full[0].why[0]  # 20 bytes a parameter: 130 GiB
    assert plan.recommend(full).setting == Setting(1)
    # LoRA trains 0.1%: gradients and optimizer state vanish, ZeRO 0 fits.
    lora = ModelFacts(7_000_000_000, 7_000_000, 32, 4096, 32, "counted")
    assert plan.recommend(plan.plan(lora, budget=H100, **shape)).setting == Setting(0)
    # A 24 GiB GPU: at 2048 tokens a row the activations alone (28.5 GiB, no recomputation)
    # do not fit; at 512, the optimizer goes to the host, or with little host memory ZeRO 3.
    small = Budget(host=200 * GiB, accelerator=24 * GiB)
    assert plan.recommend(plan.plan(SEVEN_B, budget=small, **shape)) is None
    short = shape | {"seq_len": 512}
    assert plan.recommend(plan.plan(SEVEN_B, budget=small, **short)).setting == Setting(
        2, offload_optimizer=True
    )
    little_host = Budget(host=10 * GiB, accelerator=24 * GiB)
    assert plan.recommend(plan.plan(SEVEN_B, budget=little_host, **short)).setting == Setting(3)
    # Nothing fits a 4 GiB GPU with 8 GiB of host memory.
    tiny = plan.plan(SEVEN_B, budget=Budget(host=8 * GiB, accelerator=4 * GiB), **shape)
    assert plan.recommend(tiny) is None and all(e.fits is False for e in tiny)
    # GPU memory unknown (its probe timed out): fit unknown, unless the host already rules it out.
    unknown = plan.plan(SEVEN_B, budget=Budget(host=10**15), **shape)
    assert unknown[0].fits is None and unknown[0].why == [] and plan.recommend(unknown) is None
    starved = plan.plan(SEVEN_B, budget=Budget(host=GiB), **shape)
    assert starved[0].fits is False and starved[0].why[0].startswith("host")


def test_cpu_workers_count_everything_as_host_memory():
    minilm = ModelFacts(22_713_986, 22_713_986, 6, 384, 12, "counted")
    shape = {"world_size": 2, "batch": 16, "seq_len": 128, "precision": "fp32", "use_gpu": False}
    zero0 = plan.estimate(minilm, Setting(0), **shape)
    assert zero0.accelerator is None
    assert zero0.host == zero0.states["total"] + zero0.activations + plan.CPU_OVERHEAD
    # Offloading on a CPU moves nothing out of the process: the same bytes.
    offloaded = plan.estimate(minilm, Setting(3, True, True), **shape)
    assert offloaded.host == plan.estimate(minilm, Setting(3), **shape).host
    assert plan.estimate(minilm, Setting(0), budget=Budget(host=GiB), **shape).fits is False
    assert plan.estimate(minilm, Setting(0), budget=Budget(host=4 * GiB), **shape).fits is True


def test_per_worker_budget_from_the_cluster_nodes():
    nodes = [
        {"memory": 64 * GiB, "cpus": 16, "gpus": 0},  # head: CPUs only
        {"memory": 120 * GiB, "cpus": 32, "gpus": 4, "gpu_memory": 80 * GiB},
        {"memory": 60 * GiB, "cpus": 32, "gpus": 2, "gpu_memory": 40 * GiB},
    ]
    gpu = plan.budget_from_nodes(nodes, workers=8, cpus_per_worker=1, use_gpu=True)
    assert gpu.accelerator == 40 * GiB and gpu.host == 30 * GiB  # 60 GiB shared by 2 workers
    cpu = plan.budget_from_nodes(nodes, workers=2, cpus_per_worker=4, use_gpu=False)
    assert cpu.accelerator is None and cpu.host == 30 * GiB  # at most 2 workers share a node
    with pytest.raises(ValueError, match="no node of the cluster can hold one worker"):
        plan.budget_from_nodes(nodes[:1], workers=2, cpus_per_worker=1, use_gpu=True)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("plan") / "tiny-bert")


def tiny_spec(model, technique="full", **train):
    return validate(
        {
            "model": {"path": str(model)},
            "task": {"type": "sequence_classification", "max_length": 32},
            "technique": {"type": technique},
            "data": {"train": "unused.jsonl"},
            "train": {"batch_size": 8, **train},
        }
    )


def test_counts_come_from_the_model_folder_without_loading_weights(tiny_model):
    from transformers import AutoModelForSequenceClassification

    real = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2)
    full = plan.counted_facts(tiny_spec(tiny_model))
    assert full.params == full.trainable == sum(p.numel() for p in real.parameters())
    assert (full.layers, full.hidden) == (real.config.num_hidden_layers, real.config.hidden_size)
    lora = plan.counted_facts(tiny_spec(tiny_model, "lora"))
    assert full.params < lora.params and 0 < lora.trainable < full.params / 5
    # The weight files alone: the base model's weights (no head yet), every one trainable.
    bound = plan.upper_bound_facts(str(tiny_model))
    base = sum(p.numel() for name, p in real.named_parameters() if not name.startswith("classifier"))
    assert bound.params == bound.trainable == base


def test_raft_plan_prints_every_setting_and_a_recommendation(tiny_model, tmp_path):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(
        yaml.safe_dump(
            {
                "model": {"path": str(tiny_model)},
                "task": {"type": "sequence_classification", "max_length": 32},
                "technique": {"type": "lora"},
                "data": {"train": "unused.jsonl"},
                "deepspeed": {"zero_stage": 2},
            }
        )
    )
    result = CliRunner().invoke(main, ["plan", str(spec_file), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert [s["setting"] for s in report["settings"]] == [s.label for s in plan.SETTINGS]
    assert report["asked"] == "ZeRO 2" and report["recommended"] == "ZeRO 0"  # a tiny model fits anywhere
    assert all(s["fits"] for s in report["settings"])
    assert report["model"]["trainable"] < report["model"]["params"]
    text = CliRunner().invoke(main, ["plan", str(spec_file), "train.batch_size=4"])
    assert text.exit_code == 0, text.output
    assert "| ZeRO 2 (the spec's) |" in text.output
    assert "recommended: ZeRO 0, the fastest setting that fits (the spec asks for ZeRO 2)" in text.output


def test_raft_plan_names_a_missing_model(tmp_path):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(
        "model: {path: %s}\ntask: {type: sequence_classification}\ndata: {train: x.jsonl}\n"
        % (tmp_path / "nope")
    )
    result = CliRunner().invoke(main, ["plan", str(spec_file)])
    assert result.exit_code == 2 and "is not a folder" in result.output


def test_positions_of_fixed_size_inputs_come_from_the_config():
    assert plan.config_positions({"image_size": 224, "patch_size": 16}) == 197  # ViT-B/16
    assert plan.config_positions({"vision_config": {"image_size": 224, "patch_size": 32}}) == 50  # CLIP
    assert plan.config_positions({"max_source_positions": 1500, "d_model": 384}) == 1500  # Whisper
    assert plan.config_positions({"hidden_size": 384, "num_hidden_layers": 6}) is None  # text
    assert plan.config_shape(
        {
            "d_model": 384,
            "encoder_layers": 4,
            "decoder_layers": 4,
            "is_encoder_decoder": True,
            "encoder_attention_heads": 6,
        }
    ) == (8, 384, 6)
    with pytest.raises(ValueError, match="names no layer count"):
        plan.config_shape({"vocab_size": 10})
