"""Technique invariants after real optimizer steps (TRL-style): what must change, what must not."""

from __future__ import annotations

import pytest
import torch

from raft.labels import LabelMap
from raft.registry import apply_technique, get_task
from raft.spec import validate
from raft.techniques.freeze import frozen_parameter_names
from raft.testing import toy_sentiment_rows

TASK = get_task("sequence_classification")
LABELS = LabelMap(("negative", "positive"))


def build(tiny_bert, technique: dict):
    spec = validate(
        {
            "model": {"path": str(tiny_bert)},
            "task": {"type": "sequence_classification", "max_length": 16},
            "technique": technique,
            "data": {"train": "t.jsonl"},
        }
    )
    torch.manual_seed(0)
    model = TASK.build_model(str(tiny_bert), spec.task, LABELS, False)
    return spec, apply_technique(model, spec.technique, TASK)


def train_steps(model, spec, tiny_bert, steps: int = 5):
    """A few AdamW steps on toy rows; returns parameters before and after, by name."""
    import numpy as np

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    rows = toy_sentiment_rows(16 * steps, seed=3)
    model.train()
    for i in range(steps):
        chunk = rows[16 * i : 16 * (i + 1)]
        batch = {k: np.array([r[k] for r in chunk], dtype=object) for k in ("text", "label")}
        tensors = TASK.collate(TASK.preprocess(batch, spec.task, str(tiny_bert), LABELS))
        model(**tensors).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = dict(model.named_parameters())
    return before, after


def changed(before, after, name) -> bool:
    return not torch.equal(before[name], after[name].detach())


def test_full_changes_every_trainable_parameter(tiny_bert):
    spec, model = build(tiny_bert, {"type": "full"})
    assert all(p.requires_grad for p in model.parameters())
    before, after = train_steps(model, spec, tiny_bert)
    # The pooler feeds only the classifier; every parameter, embeddings included, moves.
    unchanged = [n for n in before if not changed(before, after, n)]
    assert unchanged == []


def test_freeze_keeps_frozen_parameters_bit_identical(tiny_bert):
    spec, model = build(tiny_bert, {"type": "freeze", "embeddings": True, "lowest_layers": 1})
    frozen = frozen_parameter_names(model, spec.technique)
    assert any(".embeddings." in n for n in frozen)
    assert any(".layer.0." in n for n in frozen)
    assert not any(".layer.1." in n for n in frozen)
    before, after = train_steps(model, spec, tiny_bert)
    for name in before:
        if name in frozen:
            assert not changed(before, after, name), name
        else:
            assert changed(before, after, name), name


def test_freeze_by_pattern(tiny_bert):
    spec, model = build(tiny_bert, {"type": "freeze", "embeddings": False, "patterns": ["*.attention.*"]})
    frozen = frozen_parameter_names(model, spec.technique)
    assert frozen and all(".attention." in n for n in frozen)
    assert not any(p.requires_grad for n, p in model.named_parameters() if n in frozen)


def test_lora_changes_only_adapters_and_the_head(tiny_bert):
    spec, model = build(tiny_bert, {"type": "lora", "r": 4})
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "classifier" in n for n in trainable)
    assert any("query" in n for n in trainable) and any("value" in n for n in trainable)
    before, after = train_steps(model, spec, tiny_bert)
    for name in before:
        if name in trainable:
            if "lora_A" not in name:  # lora_B starts at zero; A gets no gradient until B moves
                assert changed(before, after, name), name
        else:
            assert not changed(before, after, name), name


def test_lora_target_modules_override(tiny_bert):
    _, model = build(tiny_bert, {"type": "lora", "target_modules": ["key"]})
    adapted = {n for n, _ in model.named_parameters() if "lora_" in n}
    assert adapted and all(".key." in n for n in adapted)
    with pytest.raises(ValueError, match="nonexistent"):
        build(tiny_bert, {"type": "lora", "target_modules": ["nonexistent"]})


@pytest.mark.parametrize(
    ("technique", "marker"),
    [
        ({"type": "prompt_tuning", "num_virtual_tokens": 4}, "prompt_encoder"),
        ({"type": "prefix_tuning", "num_virtual_tokens": 4}, "prompt_encoder"),
        ({"type": "ia3"}, "ia3_l"),
    ],
    ids=lambda value: value["type"] if isinstance(value, dict) else value,
)
def test_peft_technique_trains_only_its_weights_and_the_head(tiny_bert, technique, marker):
    spec, model = build(tiny_bert, technique)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(marker in n for n in trainable)
    assert all(marker in n or "classifier" in n for n in trainable)
    before, after = train_steps(model, spec, tiny_bert)
    for name in before:
        assert changed(before, after, name) == (name in trainable), name


def test_prompt_tuning_text_init(tiny_bert):
    _, model = build(
        tiny_bert,
        {"type": "prompt_tuning", "num_virtual_tokens": 3, "init": "text", "init_text": "good or bad"},
    )
    assert model.peft_config["default"].prompt_tuning_init == "TEXT"


@pytest.mark.parametrize(
    ("technique", "message"),
    [
        ({"type": "ia3", "feedforward_modules": ["output.dense"]}, "needs target_modules"),
        ({"type": "ia3", "target_modules": ["key"]}, "list feedforward_modules too"),
        (
            {"type": "ia3", "target_modules": ["key"], "feedforward_modules": ["value"]},
            "not in target_modules",
        ),
    ],
)
def test_ia3_module_lists_are_checked(tiny_bert, technique, message):
    from raft.spec import SpecError

    with pytest.raises(SpecError, match=message):
        build(tiny_bert, technique)


NER_TECHNIQUES = [
    {"type": "full"},
    {"type": "freeze", "embeddings": True, "lowest_layers": 1},
    {"type": "lora", "r": 4},
    {"type": "ia3"},
    {"type": "prefix_tuning", "num_virtual_tokens": 4},
]


def test_prompt_tuning_is_refused_for_token_classification_with_the_reason():
    from raft.spec import SpecError

    with pytest.raises(SpecError, match="prompt tuning prepends virtual tokens"):
        validate(
            {
                "model": {"path": "m"},
                "task": {"type": "token_classification"},
                "technique": {"type": "prompt_tuning"},
                "data": {"train": "t.jsonl"},
            }
        )


@pytest.mark.parametrize("technique", NER_TECHNIQUES, ids=lambda t: t["type"])
def test_every_technique_on_token_classification(tiny_bert, technique):
    """On the NER family too: trainable parameters move, the others stay bit-identical."""
    import numpy as np

    from raft.testing import toy_ner_rows

    ner = get_task("token_classification")
    tags = LabelMap(("B-NEG", "B-POS", "O"))
    spec = validate(
        {
            "model": {"path": str(tiny_bert)},
            "task": {"type": "token_classification", "max_length": 16},
            "technique": technique,
            "data": {"train": "t.jsonl"},
        }
    )
    torch.manual_seed(0)
    model = apply_technique(ner.build_model(str(tiny_bert), spec.task, tags, False), spec.technique, ner)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    rows = toy_ner_rows(48, seed=3)
    for i in range(3):
        chunk = rows[16 * i : 16 * (i + 1)]
        batch = {k: np.array([r[k] for r in chunk], dtype=object) for k in ("tokens", "tags")}
        model(**ner.collate(ner.preprocess(batch, spec.task, str(tiny_bert), tags))).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = dict(model.named_parameters())
    assert trainable and len(trainable) <= len(before)
    for name in before:
        if name in trainable and "lora_A" not in name:  # lora_A moves only once lora_B has
            assert changed(before, after, name), name
        elif name not in trainable:
            assert not changed(before, after, name), name


# -- generative families: every technique, in process ----------------------------------
GENERATIVE_TECHNIQUES = [
    {"type": "full"},
    {"type": "freeze", "embeddings": True, "lowest_layers": 1},
    {"type": "lora", "r": 4},
    {"type": "ia3"},
    {"type": "prefix_tuning", "num_virtual_tokens": 4},
    {"type": "prompt_tuning", "num_virtual_tokens": 4},
]


@pytest.fixture(scope="module")
def generative_models(tmp_path_factory):
    from raft.testing import make_tiny_generative_model

    root = tmp_path_factory.mktemp("generative")
    return {
        "causal_lm": make_tiny_generative_model(root / "llama", "causal_lm"),
        "seq2seq": make_tiny_generative_model(root / "t5", "seq2seq"),
    }


def generative_batches(family: str, spec, model_path: str, count: int = 3):
    import numpy as np

    from raft.testing import toy_sft_rows, toy_translation_rows

    task = get_task(family)
    if family == "causal_lm":
        rows, columns = toy_sft_rows(16 * count, seed=3), ("prompt", "completion")
    else:
        rows, columns = toy_translation_rows(16 * count, seed=3), ("source", "target")
    for i in range(count):
        chunk = rows[16 * i : 16 * (i + 1)]
        batch = {k: np.array([r[k] for r in chunk], dtype=object) for k in columns}
        yield task.collate(task.preprocess(batch, spec.task, model_path, None))


@pytest.mark.parametrize("technique", GENERATIVE_TECHNIQUES, ids=lambda t: t["type"])
@pytest.mark.parametrize("family", ["causal_lm", "seq2seq"])
def test_every_technique_on_generative_families(generative_models, tmp_path, family, technique):
    """Trainable parameters move and the rest stay bit-identical; the saved result loads
    with plain transformers/peft, gives the same logits, and generates."""
    import transformers

    from raft.generation import GenerationSpec, generate

    task, model_path = get_task(family), str(generative_models[family])
    task_section = {"type": family, "max_length": 48} if family == "causal_lm" else {"type": family}
    if family == "causal_lm":
        task_section["format"] = "prompt_completion"
    spec = validate(
        {
            "model": {"path": model_path},
            "task": task_section,
            "technique": technique,
            "data": {"train": "t.jsonl"},
        }
    )
    torch.manual_seed(0)
    model = apply_technique(task.build_model(model_path, spec.task, None, False), spec.technique, task)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    batches = list(generative_batches(family, spec, model_path))
    for batch in batches:
        loss = model(**batch).loss
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = dict(model.named_parameters())
    assert trainable and all(changed(before, after, n) for n in trainable), sorted(
        n for n in trainable if not changed(before, after, n)
    )
    assert not any(changed(before, after, n) for n in before if n not in trainable)
    if technique["type"] not in ("full", "freeze"):
        assert len(trainable) < len(before) / 2  # an adapter, not the model

    # Save as raft's export does and load back with plain transformers/peft.
    model.eval()
    model.save_pretrained(tmp_path / "out", safe_serialization=True)
    auto = getattr(transformers, task.auto_class)
    if (tmp_path / "out" / "adapter_config.json").exists():
        from peft import PeftModel

        reloaded = PeftModel.from_pretrained(auto.from_pretrained(model_path), tmp_path / "out")
    else:
        reloaded = auto.from_pretrained(tmp_path / "out")
    reloaded.eval()
    with torch.no_grad():
        assert torch.allclose(model(**batches[0]).logits, reloaded(**batches[0]).logits, atol=1e-5)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_path)
    prompt = batches[0]["input_ids"][:2, :4]
    texts = generate(
        reloaded,
        tokenizer,
        GenerationSpec(max_new_tokens=3),
        input_ids=prompt,
        attention_mask=torch.ones_like(prompt),
        decoder_only=family == "causal_lm",
    )
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
