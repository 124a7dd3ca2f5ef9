"""Ray Data: read the spec's data, hold out validation, find the labels, preprocess.

Tokenization is a ``map_batches`` stage, so it streams: blocks are read, tokenized and
handed to the Train workers as they train; each worker pulls its own shard through
``ray.train.get_dataset_shard``.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
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
    train_rows: int  # examples after preprocessing (packed blocks, for a packing task)
    validation_rows: int
    skipped: dict[str, int] = field(default_factory=dict)  # bad rows dropped, per role
    samples: list[dict[str, Any]] = field(default_factory=list)  # validation rows for generations


def read(source: Source, split: str | None = None, with_paths: bool = True) -> ray.data.Dataset:
    """A Ray Dataset over ``source`` (files stream; a saved HF dataset is handed over).
    ``with_paths`` adds each row's file as a ``path`` column, for error messages."""
    files = list(source.files)
    if source.format == "jsonl":
        # Ray's line-delimited reader resolves the filesystem from the URI itself.
        return ray.data.read_json(source.file_uris, lines=True, include_paths=with_paths)
    if source.format == "csv":
        return ray.data.read_csv(files, filesystem=source.filesystem, include_paths=with_paths)
    if source.format == "parquet":
        return ray.data.read_parquet(files, filesystem=source.filesystem, include_paths=with_paths)
    if source.format == "conll":
        binary = ray.data.read_binary_files(files, filesystem=source.filesystem, include_paths=True)
        return binary.flat_map(_conll_rows)
    if source.format == "imagefolder":
        binary = ray.data.read_binary_files(files, filesystem=source.filesystem, include_paths=True)
        return binary.map(_imagefolder_row, fn_kwargs={"root": source.files_root})
    return ray.data.from_huggingface(sources.load_hf(source, split))


def _paths_fit(source: Source, split: str | None) -> bool:
    """Whether Ray may add its ``path`` column (not when the data has a column of that name)."""
    return not source.is_hf and "path" not in sources.peek_columns(source, split)


def _imagefolder_row(item: dict[str, Any], root: str) -> dict[str, Any]:
    """An image file → {image bytes, label: its class folder, path}."""
    return {"image": item["bytes"], "label": sources.class_of(item["path"], root), "path": item["path"]}


def _conll_rows(item: dict[str, Any]) -> list[dict[str, Any]]:
    text = item["bytes"].decode("utf-8")
    return [row | {"path": item["path"]} for row in sources.parse_conll(text, item["path"])]


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
    """Read, check every row, split, label and preprocess. Raises DataError naming the bad
    input (file and row) before any training starts."""
    task = registry.get_task(spec.task.type)
    train_source, validation_source, validation_split = resolve_sources(spec)
    wanted_samples = getattr(getattr(spec.task, "generation", None), "logged_samples", 0)

    train = read(train_source, spec.data.train_split, _paths_fit(train_source, spec.data.train_split))
    train_scan = _scan(train, "data.train", train_source, spec.data.train_split, spec, task, samples=0)
    train, train_rows = _drop_bad(train, train_scan, spec, task), train_scan.rows
    skipped = {"data.train": train_scan.bad} if train_scan.bad else {}
    observed = list(train_scan.labels)
    if validation_source is not None:
        validation = read(
            validation_source, validation_split, _paths_fit(validation_source, validation_split)
        )
        validation_scan = _scan(
            validation, "data.validation", validation_source, validation_split, spec, task, wanted_samples
        )
        validation, validation_rows = _drop_bad(validation, validation_scan, spec, task), validation_scan.rows
        if validation_scan.bad:
            skipped["data.validation"] = validation_scan.bad
        validation_labels, samples = validation_scan.labels, validation_scan.samples
    else:
        fraction = spec.data.validation_fraction or DEFAULT_VALIDATION_FRACTION
        if train_rows < 2:
            raise DataError(
                f"data.train {train_source.uri!r} has {train_rows} usable row; cannot hold out validation"
            )
        train, validation = train.train_test_split(test_size=fraction, shuffle=True, seed=spec.train.seed)
        train_rows, validation_rows = train.count(), validation.count()
        if validation_rows == 0 or train_rows == 0:
            raise DataError(
                f"data.validation_fraction {fraction} leaves an empty split of {train_rows + validation_rows} rows"
            )
        validation_labels = []
        samples = [_plain_row(row) for row in validation.take(wanted_samples)] if wanted_samples else []

    labels = None
    label_column = task.label_column(spec.task)
    if label_column is not None:
        try:
            labels = infer_label_map(observed, spec.task.labels)
            labels.encode(validation_labels)
        except ValueError as error:
            raise DataError(f"column {label_column!r}: {error}") from None

    # Files are often sorted (an image folder is, class by class): without a shuffle each
    # worker would see long runs of one class and training would swing between them.
    if spec.data.shuffle == "global":
        train = train.random_shuffle(seed=spec.train.seed)
    elif spec.data.shuffle == "local":  # the workers add a shuffle buffer (raft.worker)
        train = train.randomize_block_order(seed=spec.train.seed)

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
    if task.augments(spec.task):  # training batches only, drawn afresh as each epoch streams
        train = train.map_batches(
            _augment,
            fn_kwargs={"task_name": task.name, "task_spec": spec.task},
            batch_format="numpy",
            num_cpus=spec.data.cpus_per_task,
        )
    if task.changes_row_count(spec.task):  # packing: count the examples, not the rows
        train_rows, validation_rows = train.count(), validation.count()
        for role, count in (("data.train", train_rows), ("data.validation", validation_rows)):
            if count == 0:
                raise DataError(
                    f"{role}: packing makes no block of task.max_length={spec.task.max_length} tokens; "
                    "lower max_length or add text"
                )
    return PreparedData(train, validation, labels, train_rows, validation_rows, skipped, samples)


# -- the row check: one pass per source, before training -----------------------------------
@dataclass
class Scan:
    rows: int  # usable rows
    bad: int  # rows the task cannot use
    labels: list[Any]  # distinct labels of the usable rows (label-learning families)
    samples: list[dict[str, Any]]  # the first few usable rows


def _scan(
    dataset: ray.data.Dataset,
    role: str,
    source: Source,
    split: str | None,
    spec: Any,
    task: Any,
    samples: int,
) -> Scan:
    """Check every row with ``task.row_problem``, count rows and collect labels, in one
    Ray Data pass. A bad row stops the run here (naming its file and row), unless
    ``data.bad_rows: skip``."""
    label_column = task.label_column(spec.task)
    try:
        parts = dataset.map_batches(
            _scan_batch,
            fn_kwargs={
                "task_name": task.name,
                "task_spec": spec.task,
                "model_path": spec.model.path,
                "label_column": label_column,
                "sequence": getattr(task, "label_is_sequence", False),
                "samples": samples,
            },
            batch_format="numpy",
            num_cpus=spec.data.cpus_per_task,
        ).take_all()
    except Exception as error:  # a malformed file surfaces here, from inside a read task
        raise DataError(f"{role} {source.uri!r}: cannot be read ({_root_cause(error)})") from None
    rows = sum(int(p["good"]) for p in parts)
    bad = sum(int(p["bad"]) for p in parts)
    if bad and spec.data.bad_rows == "error":
        first = next(p for p in parts if p["problem"])
        where = locate_row(source, split, str(first["path"]), int(first["line"]), task, spec)
        raise DataError(
            f"{role} {where}: {first['problem']}"
            + (f" ({bad} bad rows in all)" if bad > 1 else "")
            + "; fix the data, or set data.bad_rows: skip to drop and count such rows"
        )
    if rows == 0:
        raise DataError(
            f"{role} {source.uri!r} has no rows"
            if not bad
            else f"{role} {source.uri!r}: all {bad} rows are bad"
        )
    labels: set[Any] = set()
    kept: list[dict[str, Any]] = []
    for part in parts:
        labels.update(json.loads(str(part["labels"])))
        kept.extend(json.loads(str(part["samples"]), object_hook=_bytes_from_json))
    return Scan(rows, bad, sorted(labels, key=lambda v: (str(type(v)), v)), kept[:samples])


def _scan_batch(
    batch: dict[str, np.ndarray],
    task_name: str,
    task_spec: Any,
    model_path: str,
    label_column: str | None,
    sequence: bool,
    samples: int,
) -> dict[str, list]:
    task = registry.get_task(task_name)
    size = len(next(iter(batch.values()))) if batch else 0
    good = bad = 0
    problem, path, line = "", "", -1
    labels: set[Any] = set()
    kept: list[dict[str, Any]] = []
    for i in range(size):
        row = {column: _plain(values[i]) for column, values in batch.items()}
        why = task.row_problem(row, task_spec, model_path)
        if why is not None:
            bad += 1
            if not problem:
                problem, path, line = why, str(row.get("path") or ""), int(row.get("line") or -1)
            continue
        good += 1
        if label_column is not None and sequence:
            labels.update(str(v) for v in row[label_column])
        elif label_column is not None:
            labels.add(row[label_column])
        if len(kept) < samples:  # with its file: relative media paths resolve against it
            kept.append({k: v for k, v in row.items() if k != "line"})
    return {
        "good": [good],
        "bad": [bad],
        "problem": [problem],
        "path": [path],
        "line": [line],
        "labels": [json.dumps(sorted(labels, key=lambda v: (str(type(v)), v)))],
        "samples": [json.dumps(kept, default=_bytes_to_json)],
    }


def _drop_bad(dataset: ray.data.Dataset, scan: Scan, spec: Any, task: Any) -> ray.data.Dataset:
    if not scan.bad:
        return dataset
    return dataset.map_batches(
        _keep_good,
        fn_kwargs={"task_name": task.name, "task_spec": spec.task, "model_path": spec.model.path},
        batch_format="numpy",
        num_cpus=spec.data.cpus_per_task,
    )


def _keep_good(batch: dict[str, np.ndarray], task_name: str, task_spec: Any, model_path: str) -> dict:
    task = registry.get_task(task_name)
    size = len(next(iter(batch.values()))) if batch else 0
    keep = np.array(
        [
            task.row_problem({c: _plain(v[i]) for c, v in batch.items()}, task_spec, model_path) is None
            for i in range(size)
        ],
        dtype=bool,
    )
    return {column: values[keep] for column, values in batch.items()}


def locate_row(source: Source, split: str | None, path: str, line: int, task: Any, spec: Any) -> str:
    """``'<file>, line N'`` / ``'<file>, row N'`` of the first row ``task`` refuses in
    ``path``: the file is read again here, on the error path only."""
    if line > 0:  # CoNLL rows carry the line their sentence starts on
        return f"{path}, line {line}"
    if source.format == "imagefolder":  # each row is its own file
        return path
    try:
        if source.is_hf:
            rows = iter(sources.load_hf(source, split))
            for number, row in enumerate(rows, start=1):
                if task.row_problem(row, spec.task, spec.model.path):
                    return f"{source.uri!r}, row {number}"
            return repr(source.uri)
        with source.filesystem.open_input_stream(path, compression="detect") as stream:
            raw = stream.read()
        if source.format == "jsonl":
            for number, text in enumerate(raw.decode("utf-8").splitlines(), start=1):
                if text.strip() and task.row_problem(
                    {"path": path} | json.loads(text), spec.task, spec.model.path
                ):
                    return f"{path}, line {number}"
        else:
            import pyarrow as pa
            import pyarrow.csv
            import pyarrow.parquet

            buffer = pa.BufferReader(raw)
            table = pa.csv.read_csv(buffer) if source.format == "csv" else pa.parquet.read_table(buffer)
            for number, row in enumerate(table.to_pylist(), start=1):
                if task.row_problem({"path": path} | row, spec.task, spec.model.path):
                    return f"{path}, row {number}"
    except Exception:  # locating is a courtesy; the problem itself is still reported
        pass
    return path or repr(source.uri)


def _plain(value: Any) -> Any:
    """numpy values (as Ray Data hands them over) → plain Python, recursively."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _plain_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: _plain(v) for k, v in row.items() if k != "line"}


def _bytes_to_json(value: Any) -> Any:
    """Sample rows travel as JSON; media bytes (audio, images) go as base64."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"__bytes__": base64.b64encode(bytes(value)).decode("ascii")}
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _bytes_from_json(value: dict[str, Any]) -> Any:
    return base64.b64decode(value["__bytes__"]) if set(value) == {"__bytes__"} else value


def _augment(batch: dict, task_name: str, task_spec: Any) -> dict:
    return registry.get_task(task_name).augment(batch, task_spec)


def _preprocess(
    batch: dict, task_name: str, task_spec: Any, model_path: str, labels: LabelMap | None
) -> dict:
    return registry.get_task(task_name).preprocess(batch, task_spec, model_path, labels)
