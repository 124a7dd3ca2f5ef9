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

from raft import registry, resources, sources
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
    # bad rows dropped (data.on_bad_rows: skip): {role: {reason: count}}, e.g.
    # {"data.train": {"bad_json": 2, "too_long": 1}}; only roles that dropped rows appear
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)  # validation rows for generations
    materialized: str | None = None  # why the tokenized rows are kept (data.materialize), if they are


def read(source: Source, split: str | None = None, with_paths: bool = True) -> ray.data.Dataset:
    """A Ray Dataset over ``source`` (files stream; a saved HF dataset is handed over).
    ``with_paths`` adds each csv/parquet row's file as a ``path`` column, for error
    messages; jsonl and CoNLL records always carry their file and line. jsonl records hold
    the line unparsed (``sources.record_row`` / ``decode_batch`` turn them into rows)."""
    files = list(source.files)
    if source.format == "jsonl":
        # Not ray.data.read_json: one line that does not parse, or one row whose column has
        # another type than the rest, fails its whole file there. Lines travel unparsed
        # (with their file and line number) and are parsed where they are checked and
        # preprocessed, so a bad line is one bad row. Trade-off: each file is read whole by
        # one read task, as read_json did too (pyarrow's JSON reader does not stream), so a
        # file must fit in a worker's memory and is read by one task; split very large
        # data into many files, which also spreads the reading over the cluster. Rows then
        # stream on in blocks of Ray's target size, and .gz files are opened by Ray.
        binary = ray.data.read_binary_files(files, filesystem=source.filesystem, include_paths=True)
        return binary.flat_map(_jsonl_rows)
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
    """Whether Ray may add its ``path`` column (not when the data has a column of that name;
    jsonl and CoNLL rows always know their file)."""
    if source.format not in ("csv", "parquet"):
        return not source.is_hf
    return "path" not in sources.peek_columns(source, split)


def _imagefolder_row(item: dict[str, Any], root: str) -> dict[str, Any]:
    """An image file → {image bytes, label: its class folder, path}."""
    return {"image": item["bytes"], "label": sources.class_of(item["path"], root), "path": item["path"]}


def _conll_rows(item: dict[str, Any]) -> list[dict[str, Any]]:
    text = item["bytes"].decode("utf-8")
    return [row | {"path": item["path"]} for row in sources.conll_records(text)]


def _jsonl_rows(item: dict[str, Any]):
    yield from sources.jsonl_records(item["bytes"], item["path"])


def _root_cause(error: BaseException) -> str:
    while error.__cause__ is not None:
        error = error.__cause__
    return str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__


def resolve_sources(spec: Any) -> tuple[Source, Source | None, str | None]:
    """Resolve and column-check the training and validation sources (no Ray needed)."""
    task = registry.get_task(spec.task.type)
    required = task.required_columns(spec.task)
    strict = spec.data.on_bad_rows == "error"  # a bad line seen while peeking stops here
    train = sources.resolve(spec.data.train, spec.data.format, "data.train")
    sources.check_columns(train, required, "data.train", spec.data.train_split, strict)
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
        sources.check_columns(validation, required, "data.validation", validation_split, strict)
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

    # The shuffle goes before tokenizing, where rows are smallest (far smaller than the
    # pixels or audio features of other families), unless the tokenized rows are kept (it
    # then reshuffles the kept rows each epoch) or packing makes the examples (it then
    # shuffles the packed blocks, so that every epoch has the same number of them).
    packs = task.changes_row_count(spec.task)
    if not packs:
        materialize, why = _should_materialize(spec, train_rows + validation_rows)
        if not materialize:
            train = _shuffled(train, spec)
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
    if packs:  # count the examples, not the rows
        train_rows, validation_rows = train.count(), validation.count()
        for role, count in (("data.train", train_rows), ("data.validation", validation_rows)):
            if count == 0:
                raise DataError(
                    f"{role}: packing makes no block of task.max_length={spec.task.max_length} tokens; "
                    "lower max_length or add text"
                )
        materialize, why = _should_materialize(spec, train_rows + validation_rows)
    if materialize:  # tokenized once, here; every epoch then reads the kept blocks
        train, validation = train.materialize(), validation.materialize()
    if materialize or packs:
        train = _shuffled(train, spec)
    if task.augments(spec.task):  # training batches only, drawn afresh as each epoch streams
        train = train.map_batches(
            _augment,
            fn_kwargs={"task_name": task.name, "task_spec": spec.task},
            batch_format="numpy",
            num_cpus=spec.data.cpus_per_task,
        )
    return PreparedData(
        train, validation, labels, train_rows, validation_rows, skipped, samples, why if materialize else None
    )


def _should_materialize(spec: Any, rows: int) -> tuple[bool, str]:
    """data.materialize for ``rows`` examples, as tokenized (after packing)."""
    return resources.should_materialize(
        spec.data.materialize,
        epochs=spec.train.epochs,
        elastic=spec.scaling.elastic,
        rows=rows,
        row_bytes=resources.token_row_bytes(spec.task),
        object_store_bytes=ray.cluster_resources().get("object_store_memory", 0.0),
    )


def _shuffled(train: ray.data.Dataset, spec: Any) -> ray.data.Dataset:
    """data.shuffle, done afresh for every epoch. Files are often sorted (an image folder
    is, class by class): without a shuffle each worker would see long runs of one class and
    training would swing between them. Ray Train runs the dataset's plan once per epoch; a
    plain integer seed would give every epoch the same order, so the seed is train.seed
    combined with the execution's index (Ray Data's ``reseed_after_execution``)."""
    from ray.data import RandomSeedConfig

    seed = RandomSeedConfig(seed=spec.train.seed, reseed_after_execution=True)
    if spec.data.shuffle == "global":
        return train.random_shuffle(seed=seed)
    if spec.data.shuffle == "local":  # the workers add a shuffle buffer (raft.worker)
        return train.randomize_block_order(seed=seed)
    return train


# -- the row check: one pass per source, before training -----------------------------------
@dataclass
class Scan:
    rows: int  # usable rows
    bad: dict[str, int]  # rows the task cannot use, per reason (raft.sources.REASONS)
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
    """Check every row with ``task.row_fault`` (a jsonl line that does not parse is a
    ``bad_json`` row), count rows, bad rows per reason, and collect labels, in one Ray Data
    pass. A bad row stops the run here, naming its file and line or row and the reason;
    with ``data.on_bad_rows: skip`` bad rows are counted, and stop the run only when more
    than ``data.max_bad_fraction`` of the source's rows are bad."""
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
    counts = sources.count_faults([json.loads(str(p["counts"])) for p in parts])
    bad = sum(counts.values())

    def first_bad() -> str:  # '<file>, line N: <message> [<reason>]', for an error message
        first = min((p for p in parts if p["reason"]), key=lambda p: (str(p["path"]), int(p["line"])))
        where, fault = locate_row(source, split, str(first["path"]), int(first["line"]), task, spec)
        fault = fault or sources.RowFault(str(first["reason"]), str(first["problem"]))
        return f"{where}: {fault.message} [{fault.reason}]"  # parts come in no set order: min

    if bad and spec.data.on_bad_rows == "error":
        raise DataError(
            f"{role} {first_bad()}"
            + (f" ({bad} bad rows in all: {sources.describe_counts(counts)})" if bad > 1 else "")
            + sources.SKIP_HINT
        )
    too_many = sources.bad_fraction_problem(counts, rows, spec.data.max_bad_fraction)
    if too_many:
        raise DataError(
            f"{role} {source.uri!r}: {too_many}. The first: {first_bad()}. Fix the data, or raise "
            "data.max_bad_fraction to train on the rest"
        )
    if rows == 0:
        raise DataError(
            f"{role} {source.uri!r} has no rows"
            if not bad
            else f"{role} {source.uri!r}: all {bad} rows are bad ({sources.describe_counts(counts)})"
        )
    labels: set[Any] = set()
    kept: list[dict[str, Any]] = []
    for part in parts:
        labels.update(json.loads(str(part["labels"])))
        kept.extend(json.loads(str(part["samples"]), object_hook=_bytes_from_json))
    return Scan(rows, counts, sorted(labels, key=lambda v: (str(type(v)), v)), kept[:samples])


def _fault(record: dict[str, Any], task: Any, task_spec: Any, model_path: str) -> tuple[dict | None, Any]:
    """(the row, its fault or None) of one reader record: the reader's own fault (a jsonl
    line that does not parse, a malformed CoNLL line) or the task's row check."""
    row, fault = sources.record_row(record)
    if fault is None:
        fault = task.row_fault(row, task_spec, model_path)
    return row, fault


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
    good = 0
    counts: dict[str, int] = {}
    reason, problem, path, line = "", "", "", -1
    labels: set[Any] = set()
    kept: list[dict[str, Any]] = []
    for i in range(size):
        record = {column: _plain(values[i]) for column, values in batch.items()}
        row, fault = _fault(record, task, task_spec, model_path)
        if fault is not None:
            counts[fault.reason] = counts.get(fault.reason, 0) + 1
            if not reason:
                reason, problem = fault.reason, fault.message
                path, line = str(record.get("path") or ""), int(record.get("line") or -1)
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
        "counts": [json.dumps(counts)],
        "reason": [reason],
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
            _fault({c: _plain(v[i]) for c, v in batch.items()}, task, task_spec, model_path)[1] is None
            for i in range(size)
        ],
        dtype=bool,
    )
    return {column: values[keep] for column, values in batch.items()}


def locate_row(
    source: Source, split: str | None, path: str, line: int, task: Any, spec: Any
) -> tuple[str, Any]:
    """(``'<file>, line N'`` / ``'<file>, row N'``, its fault) of the first row ``task``
    refuses in ``path``. jsonl and CoNLL rows carry their line; csv, parquet and saved
    datasets are read again here, on the error path only (the fault is None when the row
    is not found again)."""
    if line > 0:
        return f"{path}, line {line}", None
    if source.format == "imagefolder":  # each row is its own file
        return path, None
    try:
        if source.is_hf:
            rows = iter(sources.load_hf(source, split))
            for number, row in enumerate(rows, start=1):
                fault = task.row_fault(row, spec.task, spec.model.path)
                if fault is not None:
                    return f"{source.uri!r}, row {number}", fault
            return repr(source.uri), None
        import pyarrow as pa
        import pyarrow.csv
        import pyarrow.parquet

        with source.filesystem.open_input_stream(path, compression="detect") as stream:
            buffer = pa.BufferReader(stream.read())
        table = pa.csv.read_csv(buffer) if source.format == "csv" else pa.parquet.read_table(buffer)
        for number, row in enumerate(table.to_pylist(), start=1):
            fault = task.row_fault({"path": path} | row, spec.task, spec.model.path)
            if fault is not None:
                return f"{path}, row {number}", fault
    except Exception:  # locating is a courtesy; the problem itself is still reported
        pass
    return path or repr(source.uri), None


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


def _plain_row(record: dict[str, Any]) -> dict[str, Any]:
    row, _ = sources.record_row({k: _plain(v) for k, v in record.items()})
    return {k: v for k, v in (row or {}).items() if k != "line"}


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
    batch = sources.decode_batch(batch)  # jsonl lines → columns; reader-only columns dropped
    return registry.get_task(task_name).preprocess(batch, task_spec, model_path, labels)
