"""``raft eval MODEL_DIR --data FILE``: score an exported model on labelled rows.

Runs in one process (no cluster): loads the model exactly as a user would, with plain
transformers/peft, reads the data with the ``datasets`` loaders, and computes the task
family's metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from raft import registry, sources
from raft.export import SPEC_FILE
from raft.labels import LABELS_FILE, LabelMap
from raft.sources import DataError
from raft.spec import load_spec
from raft.tasks.base import EvalContext


class EvalError(ValueError):
    """The model folder is not a raft export, or does not match the data."""


def load_exported(model_dir: str | Path) -> tuple[Any, Any, LabelMap | None]:
    """(spec, model, labels) of an exported run, the model in eval mode on CPU."""
    model_dir = Path(model_dir)
    if not (model_dir / SPEC_FILE).is_file():
        raise EvalError(f"{model_dir} is not a model exported by raft (no {SPEC_FILE})")
    spec = load_spec(model_dir / SPEC_FILE)
    labels = LabelMap.load(model_dir) if (model_dir / LABELS_FILE).is_file() else None
    import transformers

    auto_class = getattr(transformers, registry.get_task(spec.task.type).auto_class)
    if (model_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        config = transformers.AutoConfig.from_pretrained(model_dir)
        base = auto_class.from_pretrained(spec.model.path, config=config)
        model = PeftModel.from_pretrained(base, str(model_dir))
    else:
        model = auto_class.from_pretrained(model_dir)
    return spec, model.eval(), labels


def read_rows(data_path: str, split: str = "train") -> Any:
    """A ``datasets.Dataset`` over jsonl/csv/parquet files or a saved dataset."""
    import datasets

    source = sources.resolve(data_path, "auto", "--data")
    if source.is_hf:
        return sources.load_hf(source, split)
    builder = {"jsonl": "json", "csv": "csv", "parquet": "parquet"}[source.format]
    parts = []
    for uri in source.file_uris:  # each row keeps its file: media paths are relative to it
        part = datasets.load_dataset(builder, data_files=[uri], split="train")
        if "path" not in part.column_names:
            part = part.add_column("path", [uri] * len(part))
        parts.append(part)
    return datasets.concatenate_datasets(parts)


@torch.no_grad()
def evaluate_model(model_dir: str | Path, data_path: str, batch_size: int = 64) -> dict[str, Any]:
    spec, model, labels = load_exported(model_dir)
    task = registry.get_task(spec.task.type)
    rows = read_rows(data_path)
    missing = [c for c in task.required_columns(spec.task) if c not in rows.column_names]
    if missing:
        raise DataError(f"--data {data_path!r} has no column(s) {missing}; it has {rows.column_names}")
    if len(rows) == 0:
        raise DataError(f"--data {data_path!r} has no rows")
    stats, loss_sum = task.empty_stats(labels), 0.0
    tokenizer_path = str(model_dir)
    context = EvalContext(model=model, spec=spec.task, model_path=tokenizer_path)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = {key: np.asarray(value, dtype=object) for key, value in chunk.items()}
        for index in range(len(chunk[next(iter(chunk))])):
            problem = task.row_problem(
                {key: values[index] for key, values in chunk.items()}, spec.task, tokenizer_path
            )
            if problem:
                raise DataError(f"--data {data_path!r}, row {start + index + 1}: {problem}")
        try:
            features = task.preprocess(batch, spec.task, tokenizer_path, labels)
        except ValueError as error:
            raise DataError(f"--data {data_path!r}, rows {start + 1}-{start + batch_size}: {error}") from None
        tensors = task.collate(features)
        outputs = model(**task.model_inputs(tensors))
        loss_sum += float(outputs.loss) * len(chunk[next(iter(chunk))])
        stats = task.combine_stats(stats, task.eval_stats(outputs, tensors, labels, context))
    metrics = {f"val_{k}": v for k, v in task.metrics_for(stats, labels, spec.task).items()}
    metrics.setdefault("val_loss", loss_sum / len(rows))
    return {"rows": len(rows), **metrics}
