"""Ray Data: read the spec's data, hold out validation, find the labels, preprocess.

Tokenization is a ``map_batches`` stage, so it streams: blocks are read, tokenized and
handed to the Train workers as they train; each worker pulls its own shard through
``ray.train.get_dataset_shard``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray
import ray.data

from raft import registry, sources
from raft.labels import LabelMap, infer_label_map
from raft.sources import DataError, Source

DEFAULT_VALIDATION_FRACTION = 0.1


@dataclass
class PreparedData:
    train: ray.data.Dataset
    validation: ray.data.Dataset
    labels: LabelMap | None
    train_rows: int
    validation_rows: int


def read(source: Source, split: str | None = None) -> ray.data.Dataset:
    """A Ray Dataset over ``source`` (files stream; a saved HF dataset is handed over)."""
    files = list(source.files)
    if source.format == "jsonl":
        # Ray's line-delimited reader resolves the filesystem from the URI itself.
        return ray.data.read_json(source.file_uris, lines=True)
    if source.format == "csv":
        return ray.data.read_csv(files, filesystem=source.filesystem)
    if source.format == "parquet":
        return ray.data.read_parquet(files, filesystem=source.filesystem)
    return ray.data.from_huggingface(sources.load_hf(source, split))


def _count(dataset: ray.data.Dataset, role: str, uri: str) -> int:
    try:
        rows = dataset.count()
    except Exception as error:  # a malformed file surfaces here, from inside a read task
        raise DataError(f"{role} {uri!r}: cannot be read ({_root_cause(error)})") from None
    if rows == 0:
        raise DataError(f"{role} {uri!r} has no rows")
    return rows


def _root_cause(error: BaseException) -> str:
    while error.__cause__ is not None:
        error = error.__cause__
    return str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__


def resolve_sources(spec: Any) -> tuple[Source, Source | None, str | None]:
    """Resolve and column-check the training and validation sources (no Ray needed)."""
    task = registry.get_task(spec.task.type)
    required = task.required_columns(spec.task)
    train = sources.resolve(spec.data.train, spec.data.format, "data.train")
    sources.check_columns(train, required, "data.train", spec.data.train_split)
    validation, validation_split = None, None
    if spec.data.validation:
        validation = sources.resolve(spec.data.validation, spec.data.format, "data.validation")
        validation_split = spec.data.validation_split
    elif (
        train.is_hf
        and spec.data.validation_fraction is None
        and sources.has_split(train, spec.data.validation_split)
    ):
        validation, validation_split = train, spec.data.validation_split
    if validation is not None:
        sources.check_columns(validation, required, "data.validation", validation_split)
    return train, validation, validation_split


def prepare(spec: Any) -> PreparedData:
    """Read, split, label and preprocess. Raises DataError naming the bad input."""
    task = registry.get_task(spec.task.type)
    train_source, validation_source, validation_split = resolve_sources(spec)

    train = read(train_source, spec.data.train_split)
    train_rows = _count(train, "data.train", train_source.uri)
    if validation_source is not None:
        validation = read(validation_source, validation_split)
        validation_rows = _count(validation, "data.validation", validation_source.uri)
    else:
        fraction = spec.data.validation_fraction or DEFAULT_VALIDATION_FRACTION
        if train_rows < 2:
            raise DataError(
                f"data.train {train_source.uri!r} has {train_rows} row; cannot hold out validation"
            )
        train, validation = train.train_test_split(test_size=fraction, shuffle=True, seed=spec.train.seed)
        train_rows, validation_rows = train.count(), validation.count()
        if validation_rows == 0 or train_rows == 0:
            raise DataError(
                f"data.validation_fraction {fraction} leaves an empty split of {train_rows + validation_rows} rows"
            )

    labels = None
    label_column = task.label_column(spec.task)
    if label_column is not None:
        sequence = getattr(task, "label_is_sequence", False)
        observed = _unique_labels(train, label_column, sequence)
        try:
            labels = infer_label_map(observed, spec.task.labels)
            labels.encode(_unique_labels(validation, label_column, sequence))
        except ValueError as error:
            raise DataError(f"column {label_column!r}: {error}") from None

    preprocess_args = {
        "task_name": task.name,
        "task_spec": spec.task,
        "model_path": spec.model.path,
        "labels": labels,
    }
    train, validation = (
        dataset.map_batches(
            _preprocess, fn_kwargs=preprocess_args, batch_format="numpy", num_cpus=spec.data.cpus_per_task
        )
        for dataset in (train, validation)
    )
    return PreparedData(train, validation, labels, train_rows, validation_rows)


def _unique_labels(dataset: ray.data.Dataset, column: str, sequence: bool) -> list[Any]:
    """The distinct labels of a column; for a list column (one tag per token), of its items."""
    if not sequence:
        return dataset.unique(column)
    tags = dataset.select_columns([column]).flat_map(lambda row: [{"tag": str(t)} for t in row[column]])
    return tags.unique("tag")


def _preprocess(
    batch: dict, task_name: str, task_spec: Any, model_path: str, labels: LabelMap | None
) -> dict:
    return registry.get_task(task_name).preprocess(batch, task_spec, model_path, labels)
