"""Turn the final checkpoint into a model folder that plain transformers/peft can load.

Layout of ``<output.dir>/<run>/model``: the weights in safetensors (the full model, or the
peft adapter alone unless ``output.merge_adapter``), ``config.json`` carrying the label
names, the tokenizer, ``labels.json`` and the resolved ``raft_spec.yaml``. Pure of Ray.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from raft import registry
from raft.labels import LabelMap
from raft.spec import dump_spec

SPEC_FILE = "raft_spec.yaml"


def export_model(
    checkpoint_model_dir: str | Path, destination: str | Path, spec: Any, labels: LabelMap | None
) -> Path:
    """Write the exported model to ``destination`` (built in a temp folder, then moved)."""
    destination = Path(destination)
    staging = destination.with_name(destination.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    task = registry.get_task(spec.task.type)
    is_adapter = type(spec.technique).is_adapter
    if is_adapter and spec.output.merge_adapter:
        _merge_adapter(checkpoint_model_dir, staging, spec, task, labels)
    else:
        shutil.copytree(checkpoint_model_dir, staging)
        if is_adapter:
            # The adapter needs the base model's config with this run's label names.
            _base_config(spec, labels).save_pretrained(staging)
    task.save_preprocessor(spec.model.path, staging)
    generation = task.generation_config(spec.task, spec.model.path)
    if generation is not None:  # the spec's decoding settings, read by generate() and serving
        generation.save_pretrained(staging)
    if labels is not None:
        labels.save(staging)
    (staging / SPEC_FILE).write_text(dump_spec(spec))
    (staging / "README.md").write_text(
        _model_card(spec, labels, is_adapter and not spec.output.merge_adapter)
    )
    if destination.exists():
        shutil.rmtree(destination)
    staging.rename(destination)
    return destination


def _base_config(spec: Any, labels: LabelMap | None) -> Any:
    from transformers import AutoConfig

    extra = {}
    if labels is not None:
        extra = {"num_labels": labels.num_labels, "id2label": labels.id2label, "label2id": labels.label2id}
    return AutoConfig.from_pretrained(
        spec.model.path, trust_remote_code=spec.model.trust_remote_code, **extra
    )


def _merge_adapter(
    adapter_dir: str | Path, staging: Path, spec: Any, task: Any, labels: LabelMap | None
) -> None:
    from peft import PeftModel

    base = task.load_pretrained(spec, labels)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(staging, safe_serialization=True)


def _model_card(spec: Any, labels: LabelMap | None, is_adapter: bool) -> str:
    task = registry.get_task(spec.task.type)
    auto, preprocessor = task.auto_class, task.preprocessor_class
    if is_adapter:
        load = (
            "from peft import PeftModel\n"
            f"from transformers import AutoConfig, {preprocessor}, {auto}\n\n"
            "config = AutoConfig.from_pretrained(MODEL_DIR)  # carries the label names\n"
            f"base = {auto}.from_pretrained({spec.model.path!r}, config=config)\n"
            "model = PeftModel.from_pretrained(base, MODEL_DIR)\n"
        )
    else:
        load = (
            f"from transformers import {preprocessor}, {auto}\n\nmodel = {auto}.from_pretrained(MODEL_DIR)\n"
        )
    classes = json.dumps(list(labels.names)) if labels else "n/a"
    return (
        f"# Fine-tuned with raft\n\n"
        f"- base model: `{spec.model.path}`\n- task: {spec.task.type}\n"
        f"- technique: {spec.technique.type}{' (adapter only)' if is_adapter else ''}\n"
        f"- classes: {classes}\n\n"
        "```python\n"
        f"{load}"
        f"preprocessor = {preprocessor}.from_pretrained(MODEL_DIR)\n"
        "```\n\nThe full training spec is in `raft_spec.yaml`.\n"
    )
