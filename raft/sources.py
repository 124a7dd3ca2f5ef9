"""Where data lives: format detection, existence and column checks, without Ray.

These run in the driver before any cluster work, so a typo in a path or a column name is
caught in a second with a message naming it. Local paths and any URI pyarrow's
filesystems open (s3://, gs://, hdfs://, file://) are accepted.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass

import pyarrow.fs as pafs

from raft.labels import id_of

EXTENSIONS = {
    "jsonl": (".jsonl", ".json", ".jsonl.gz", ".json.gz"),
    "csv": (".csv", ".csv.gz", ".tsv"),
    "parquet": (".parquet", ".pq"),
    "conll": (".conll", ".iob", ".bio"),
}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# CoNLL files become rows with these two list columns (one sentence a row).
CONLL_COLUMNS = ["tokens", "tags"]


class DataError(ValueError):
    """Data that cannot be used as the spec says. The message names the file and problem."""


SKIP_HINT = (
    "; fix the data, or set data.on_bad_rows: skip to drop and count such rows "
    "(up to data.max_bad_fraction of them)"
)


@dataclass(frozen=True)
class Source:
    """A resolved data location: its format and the files it holds."""

    uri: str
    format: str  # jsonl | csv | parquet | conll | imagefolder | hf
    files: tuple[str, ...]
    filesystem: pafs.FileSystem
    root: str = ""  # the folder given, for imagefolder (class = first folder below it)

    @property
    def files_root(self) -> str:
        return self.root

    @property
    def is_hf(self) -> bool:
        return self.format == "hf"

    @property
    def file_uris(self) -> list[str]:
        """The files as URIs (for readers that resolve the filesystem themselves)."""
        scheme = {"gcs": "gs"}.get(self.filesystem.type_name, self.filesystem.type_name)
        if scheme == "local":
            return list(self.files)
        return [f"{scheme}://{path}" for path in self.files]


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" in uri:
        try:
            return pafs.FileSystem.from_uri(uri)
        except Exception as error:  # pyarrow raises several types for bad URIs
            raise DataError(f"{uri}: cannot open this URI ({error})") from None
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def resolve(uri: str, declared_format: str = "auto", role: str = "data") -> Source:
    """Find the files behind ``uri`` and decide their format; raise DataError if none."""
    filesystem, path = _filesystem(uri)
    if isinstance(filesystem, pafs.LocalFileSystem) and any(ch in path for ch in "*?["):
        files = sorted(p for p in glob.glob(path) if os.path.isfile(p))
        if not files:
            raise DataError(f"{role} {uri!r}: no files match this pattern")
        return Source(uri, _format_of(files, declared_format, uri, role), tuple(files), filesystem)
    try:
        info = filesystem.get_file_info(path)
    except Exception as error:
        raise DataError(f"{role} {uri!r}: cannot read ({error})") from None
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"{role} {uri!r} does not exist")
    if info.type == pafs.FileType.File:
        return Source(uri, _format_of([path], declared_format, uri, role), (path,), filesystem)
    # A folder: a saved Hugging Face dataset, or a folder of data files.
    children = filesystem.get_file_info(pafs.FileSelector(path, recursive=True))
    names = {os.path.basename(c.path) for c in children}
    if declared_format == "hf" or {"dataset_info.json", "state.json", "dataset_dict.json"} & names:
        return Source(uri, "hf", (path,), filesystem)
    files = sorted(
        c.path
        for c in children
        if c.type == pafs.FileType.File and not os.path.basename(c.path).startswith((".", "_"))
    )
    if not files:
        raise DataError(f"{role} {uri!r} is an empty folder")
    if declared_format == "imagefolder" or (
        declared_format == "auto" and all(f.lower().endswith(IMAGE_EXTENSIONS) for f in files)
    ):
        return _image_folder(uri, path, files, filesystem, role)
    return Source(uri, _format_of(files, declared_format, uri, role), tuple(files), filesystem)


def _image_folder(uri: str, root: str, files: list[str], filesystem: pafs.FileSystem, role: str) -> Source:
    """A folder tree of images, one subfolder per class."""
    images = [f for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    loose = [f for f in images if os.path.dirname(f.rstrip("/")) == root.rstrip("/")]
    if not images:
        raise DataError(f"{role} {uri!r} has no image files ({', '.join(IMAGE_EXTENSIONS)})")
    if loose:
        raise DataError(
            f"{role} {uri!r}: images must sit in one subfolder per class (e.g. cats/1.png), "
            f"but {os.path.basename(loose[0])!r} and {len(loose) - 1} more are directly in the folder"
        )
    classes = {class_of(f, root) for f in images}
    if len(classes) < 2:
        raise DataError(
            f"{role} {uri!r} has one class folder ({classes.pop()!r}); classification needs two or more"
        )
    return Source(uri, "imagefolder", tuple(images), filesystem, root=root)


def class_of(path: str, root: str) -> str:
    """The class of an image in an imagefolder tree: the first folder below ``root``."""
    relative = os.path.relpath(path, root) if "://" not in path else path[len(root) :].lstrip("/")
    return relative.replace("\\", "/").split("/")[0]


def _format_of(files: list[str], declared: str, uri: str, role: str) -> str:
    if declared != "auto":
        return declared
    found = set()
    for name in files:
        lowered = name.lower()
        match = [fmt for fmt, exts in EXTENSIONS.items() if lowered.endswith(exts)]
        if not match:
            raise DataError(
                f"{role} {uri!r}: cannot tell the format of {os.path.basename(name)!r}; "
                "use .jsonl, .csv, .parquet or .conll, or set data.format"
            )
        found.add(match[0])
    if len(found) > 1:
        raise DataError(f"{role} {uri!r} mixes formats {sorted(found)}; keep one per location")
    return found.pop()


def peek_columns(source: Source, split: str | None = None, strict: bool = True) -> list[str]:
    """Column names, read from the first file only (cheap even for large data). ``strict``
    (data.on_bad_rows: error) refuses a bad jsonl/CoNLL line seen here at once; otherwise
    such lines are left to the row check, which counts them."""
    if source.format == "imagefolder":
        return ["image", "label"]
    first = source.files[0]
    try:
        if source.format == "parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(first, filesystem=source.filesystem).names)
        if source.format == "hf":
            return list(_hf_split(source, split).column_names)
        with source.filesystem.open_input_stream(first, compression="detect") as stream:
            head = stream.read(1 << 20)
    except DataError:
        raise
    except Exception as error:
        raise DataError(f"{source.uri}: cannot read {os.path.basename(first)!r} ({error})") from None
    text = head.decode("utf-8", errors="replace")
    if not text.strip():
        raise DataError(f"{source.uri}: {os.path.basename(first)!r} is empty (no rows)")
    if source.format == "conll":
        complete = text if len(head) < 1 << 20 else text[: text.rfind("\n\n") + 1]
        if strict:
            try:
                parse_conll(complete, first)
            except ValueError as error:
                raise DataError(f"{error} [{BAD_LINE}]{SKIP_HINT}") from None
        return list(CONLL_COLUMNS)
    if source.format == "csv":
        import csv

        header = next(csv.reader([text.splitlines()[0] if text else ""]), [])
        return [h.strip() for h in header]
    if len(head) == 1 << 20:  # the last line may be cut off
        head = head[: head.rfind(b"\n") + 1]
    columns: dict[str, None] = {}
    rows, first_fault = 0, None
    for record in jsonl_records(head, first):
        row, fault = decode_json_line(record[JSON_COLUMN])
        if fault is not None:
            if strict:
                raise DataError(
                    f"{first}, line {record['line']}: {fault.message} [{fault.reason}]{SKIP_HINT}"
                )
            first_fault = first_fault or f"line {record['line']}: {fault.message}"
            continue
        columns.update(dict.fromkeys(row))
        rows += 1
        if rows == 100:
            break
    if not rows and first_fault:
        raise DataError(f"{first}: no line of its first MiB is a JSON object ({first_fault})")
    return list(columns)


def _hf_split(source: Source, split: str | None):
    import datasets

    loaded = datasets.load_from_disk(source.uri)
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"{source.uri}: no split {split!r}; it has {sorted(loaded)}")
        return loaded[split]
    return loaded


def has_split(source: Source, split: str) -> bool:
    import datasets

    loaded = datasets.load_from_disk(source.uri)
    return isinstance(loaded, datasets.DatasetDict) and split in loaded


def class_label_names(source: Source, split: str | None, column: str) -> list[str] | None:
    """The class names a saved Hugging Face dataset declares for ``column`` (a ClassLabel,
    or a sequence of them: conll2003's ner_tags), whose cells hold ids; None otherwise."""
    if not source.is_hf:
        return None
    import datasets

    feature = _hf_split(source, split).features.get(column)
    while isinstance(feature, (datasets.Sequence, datasets.LargeList, list)):
        feature = feature[0] if isinstance(feature, list) else feature.feature
    if isinstance(feature, datasets.ClassLabel) and len(feature.names) >= 2:
        return list(feature.names)
    return None


def load_hf(source: Source, split: str | None):
    """The ``datasets.Dataset`` saved at ``source`` (one split of a DatasetDict)."""
    return _hf_split(source, split)


def read_media(value: object, data_file: object = None) -> bytes:
    """The encoded bytes of an image or audio cell: bytes, HF datasets' ``{"bytes", "path"}``
    dict, a URI any pyarrow filesystem opens (s3://, gs://, file://), or a local path
    (relative paths are relative to ``data_file``'s folder)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, dict) and value.get("bytes") is not None:
        return bytes(value["bytes"])
    if isinstance(value, dict) and value.get("path"):
        value = value["path"]
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected bytes or a path, got {type(value).__name__}")
    if "://" in value:
        filesystem, path = _filesystem(value)
        with filesystem.open_input_stream(path) as stream:
            return stream.read()
    path = os.path.expanduser(value)
    if not os.path.isabs(path) and data_file:
        path = os.path.join(os.path.dirname(str(data_file)), path)
    with open(path, "rb") as handle:
        return handle.read()


def check_columns(
    source: Source, required: list[str], role: str, split: str | None = None, strict: bool = True
) -> None:
    columns = peek_columns(source, split, strict)
    missing = [c for c in required if c not in columns]
    if missing:
        raise DataError(
            f"{role} {source.uri!r} has no column(s) {missing}; it has {columns}. "
            "Set the task's *_column fields to match."
        )


def parse_conll(text: str, name: str = "<conll>") -> list[dict]:
    """CoNLL-style text → rows {tokens, tags, line}: one token per line with its tag in the
    last whitespace-separated field (CoNLL-2003's middle POS/chunk fields are ignored),
    sentences separated by blank lines, ``-DOCSTART-`` lines skipped. ``line`` is the
    sentence's first line number, for error messages. A malformed line raises ValueError."""
    rows = []
    for row in conll_records(text):
        if row[FAULT_COLUMN]:
            raise ValueError(f"{name}, line {row['line']}: {row[MESSAGE_COLUMN]}")
        rows.append({"tokens": row["tokens"], "tags": row["tags"], "line": row["line"]})
    return rows


def conll_records(text: str) -> list[dict]:
    """``parse_conll`` that goes on past a malformed line: the sentence holding it becomes
    a record marked ``bad_line`` (``line`` is then the malformed line's number). Every
    record has the same columns, fault or not, so they share Arrow blocks."""
    rows: list[dict] = []
    tokens: list[str] = []
    tags: list[str] = []
    start, fault = 0, None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("-DOCSTART-"):
            if tokens or fault:
                rows.append(_conll_record(tokens, tags, start, fault))
            tokens, tags, fault = [], [], None
            continue
        if not tokens and not fault:
            start = number
        fields = line.split()
        if len(fields) < 2:
            if fault is None:
                fault = (number, f"expected a token and a tag, got {line!r:.60}")
            continue
        tokens.append(fields[0])
        tags.append(fields[-1])
    if tokens or fault:
        rows.append(_conll_record(tokens, tags, start, fault))
    return rows


def _conll_record(tokens: list[str], tags: list[str], start: int, fault: tuple[int, str] | None) -> dict:
    if fault is None:
        return {"tokens": tokens, "tags": tags, "line": start, FAULT_COLUMN: "", MESSAGE_COLUMN: ""}
    return {
        "tokens": tokens,
        "tags": tags,
        "line": fault[0],
        FAULT_COLUMN: BAD_LINE,
        MESSAGE_COLUMN: fault[1],
    }


# -- row faults: what makes one row unusable, as a stable reason key and a message ----------
# The keys are counted per data role under ``data.on_bad_rows: skip`` (``PreparedData.skipped``,
# summary.json's ``skipped_rows``) and named in every error; keep them stable.
BAD_JSON = "bad_json"
BAD_LINE = "bad_line"
MISSING_COLUMN = "missing_column"
WRONG_TYPE = "wrong_type"
EMPTY_TEXT = "empty_text"
BAD_LABEL = "bad_label"
LENGTH_MISMATCH = "length_mismatch"
BAD_CONVERSATION = "bad_conversation"
BAD_MEDIA = "bad_media"
TOO_LONG = "too_long"
REASONS = {
    BAD_JSON: "a jsonl line that is not UTF-8, does not parse as JSON, or is not a JSON object",
    BAD_LINE: "a CoNLL line without a token and a tag (its whole sentence is dropped)",
    MISSING_COLUMN: "a column the task needs is absent or null (None/NaN) in the row",
    WRONG_TYPE: "a column holds the wrong kind of value: text that is a number, list or dict; "
    "words that are not a list of strings; tags or a label that are not names or integer ids; "
    "messages that are not a list of {role, content} turns",
    EMPTY_TEXT: "a text is blank (a text column, a word, an empty word list, every assistant turn)",
    BAD_LABEL: "a label outside task.labels, or a negative integer id",
    LENGTH_MISMATCH: "token classification: the number of tags differs from the number of words",
    BAD_CONVERSATION: "chat: an empty conversation, a turn without role and content, a role outside "
    "task.roles, no assistant turn, or a conversation the chat template cannot render",
    BAD_MEDIA: "an image or audio cell that cannot be read or decoded, or an empty clip",
    TOO_LONG: "a row that cannot fit (see the README's data faults)",
}
# The generic guard against absurd rows, before anything parses or tokenizes them: a jsonl
# line over this many bytes, or a text (characters) or bytes cell over it, is ``too_long``.
MAX_ROW_BYTES = 32 << 20

# Columns a reader adds to its records: a jsonl line travels unparsed (so one row's odd
# types never meet another's in an Arrow block) and is decoded where it is used; a reader
# that finds a fault itself (a malformed CoNLL line) marks the record with it.
JSON_COLUMN = "_raft_json"
FAULT_COLUMN = "_raft_fault"
MESSAGE_COLUMN = "_raft_message"
_UTF8_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class RowFault:
    """Why one row cannot be used: a key of ``REASONS`` and a message naming the column."""

    reason: str
    message: str

    def __str__(self) -> str:
        return self.message


def jsonl_records(data: bytes, path: str):
    """The records of one jsonl file's bytes (gzip is opened here if the reader has not):
    ``{path, line, _raft_json}`` per non-blank line, the line unparsed. Lines end at ``\\n``
    only (JSON strings may hold U+2028 and friends, which ``str.splitlines`` would cut at)."""
    if data[:2] == b"\x1f\x8b":
        import gzip

        data = gzip.decompress(data)
    start = len(_UTF8_BOM) if data.startswith(_UTF8_BOM) else 0
    number = 0
    while start < len(data):
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end
        number += 1
        line = data[start:end]
        start = end + 1
        if line.strip():
            yield {"path": path, "line": number, JSON_COLUMN: line}


def decode_json_line(line: bytes | str) -> tuple[dict | None, RowFault | None]:
    """One jsonl line → (its object, None), or (None, the fault: bad_json or too_long)."""
    if len(line) > MAX_ROW_BYTES:
        return None, RowFault(
            TOO_LONG, f"the line is {len(line) / 2**20:.0f} MiB, over raft's 32 MiB row limit"
        )
    if isinstance(line, (bytes, bytearray, memoryview)):
        try:
            line = bytes(line).decode("utf-8")
        except UnicodeDecodeError as error:
            return None, RowFault(
                BAD_JSON, f"the line is not UTF-8 text ({error.reason} at byte {error.start})"
            )
    try:
        value = json.loads(line)
    except json.JSONDecodeError as error:
        return None, RowFault(BAD_JSON, f"not valid JSON ({error.msg} at column {error.colno})")
    if not isinstance(value, dict):
        return None, RowFault(
            BAD_JSON, f"a JSON {_json_kind(value)}, not an object (each line must be one row)"
        )
    return value, None


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    return "boolean" if isinstance(value, bool) else "number"


def record_row(record: dict) -> tuple[dict | None, RowFault | None]:
    """A reader's record → (the row a task sees, None), or (None, the fault the reader found).
    A jsonl row gets its file as ``path`` unless it has a ``path`` of its own."""
    if record.get(FAULT_COLUMN):
        reason = str(record[FAULT_COLUMN])
        return None, RowFault(reason, str(record.get(MESSAGE_COLUMN) or reason))
    if JSON_COLUMN in record:
        value, fault = decode_json_line(record[JSON_COLUMN])
        if fault is not None:
            return None, fault
        return {"path": record.get("path"), **value}, None
    return {k: v for k, v in record.items() if not k.startswith("_raft_")}, None


def decode_batch(batch: dict) -> dict:
    """A batch of reader records → a batch of row columns (numpy object arrays; a column a
    row lacks is None there). jsonl rows are parsed here, as preprocessing streams: by then
    every row passed the row check, so each parses."""
    import numpy as np

    if JSON_COLUMN not in batch:
        return {k: v for k, v in batch.items() if not k.startswith("_raft_")}
    size = len(batch[JSON_COLUMN])
    rows = []
    for i in range(size):
        row, fault = record_row({k: v[i] for k, v in batch.items()})
        if fault is not None:
            raise DataError(f"{batch['path'][i]}, line {batch['line'][i]}: {fault.message}")
        rows.append(row)
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    decoded = {}
    for column in columns:
        values = np.empty(size, dtype=object)  # filled one by one: a list stays one cell
        for i, row in enumerate(rows):
            values[i] = row.get(column)
        decoded[column] = values
    return decoded


def count_faults(parts: list[dict[str, int]]) -> dict[str, int]:
    """Sum per-reason counts; the result is sorted by reason and holds no zero counts."""
    total: dict[str, int] = {}
    for part in parts:
        for reason, count in part.items():
            total[reason] = total.get(reason, 0) + int(count)
    return {reason: total[reason] for reason in sorted(total) if total[reason]}


def describe_counts(counts: dict[str, int]) -> str:
    """``'3 bad_json, 1 too_long'``: the most frequent reason first."""
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{count} {reason}" for reason, count in ranked)


def bad_fraction_problem(counts: dict[str, int], usable: int, limit: float) -> str | None:
    """Why skipping these bad rows is not acceptable (their share of the rows read is over
    ``limit``, data.max_bad_fraction), or None."""
    bad = sum(counts.values())
    if bad == 0:
        return None
    fraction = bad / (bad + usable)
    if fraction <= limit:
        return None
    return (
        f"{bad} of {bad + usable} rows are bad ({fraction:.1%}), more than "
        f"data.max_bad_fraction={limit:g}: {describe_counts(counts)}"
    )


# -- row checks the task families share (pure; ``Task.row_fault`` runs them) ----------------
def is_null(value: object) -> bool:
    return value is None or (isinstance(value, float) and value != value)  # NaN: pandas' null


def missing_fault(row: dict, columns: list[str]) -> RowFault | None:
    for column in columns:
        if column not in row:
            return RowFault(MISSING_COLUMN, f"the row has no column {column!r}")
        if is_null(row[column]):
            return RowFault(MISSING_COLUMN, f"column {column!r} is empty")
    return None


def oversized_fault(row: dict) -> RowFault | None:
    for column, value in row.items():
        if isinstance(value, (str, bytes, bytearray)) and len(value) > MAX_ROW_BYTES:
            return RowFault(
                TOO_LONG,
                f"column {column!r} holds {len(value) / 2**20:.0f} Mi "
                f"{'characters' if isinstance(value, str) else 'bytes'}, over raft's 32 MiB row limit",
            )
    return None


def _kind(value: object) -> str:
    if isinstance(value, dict):
        return "dict"
    if is_list(value):
        return "list"
    return type(value).__name__


def is_list(value: object) -> bool:
    """A list-like cell: a list, tuple or numpy array (Ray hands list columns over as arrays)."""
    return value is not None and not isinstance(value, (str, bytes, dict)) and hasattr(value, "__len__")


def text_fault(value: object, column: str) -> RowFault | None:
    """A text cell: present, a string, not blank."""
    if is_null(value):
        return RowFault(MISSING_COLUMN, f"column {column!r} is empty")
    if not isinstance(value, str):
        return RowFault(WRONG_TYPE, f"column {column!r} must hold text, got {_kind(value)} {value!r:.40}")
    if not value.strip():
        return RowFault(EMPTY_TEXT, f"column {column!r} is blank")
    return None


def label_fault(value: object, column: str, declared: list[str] | None = None) -> RowFault | None:
    """A class label: a name or an integer id (an integral float, as csv/pandas give ints
    next to nulls, counts as one), at least 0, and one of ``declared`` (task.labels) if set."""
    if is_null(value):
        return RowFault(MISSING_COLUMN, f"column {column!r} is empty")
    if hasattr(value, "item") and not isinstance(value, (list, dict)) and getattr(value, "ndim", 0) == 0:
        value = value.item()  # a numpy scalar
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return RowFault(
            WRONG_TYPE,
            f"column {column!r} must hold a class name or integer id, got {_kind(value)} {value!r:.40}",
        )
    if isinstance(value, float) and not value.is_integer():
        return RowFault(WRONG_TYPE, f"column {column!r} must hold a class name or integer id, got {value!r}")
    if isinstance(value, str) and not value.strip():
        return RowFault(EMPTY_TEXT, f"column {column!r} is blank")
    if isinstance(value, (int, float)) and value < 0:
        return RowFault(BAD_LABEL, f"column {column!r}: integer label ids must be 0 or more, got {value!r}")
    key = str(int(value)) if isinstance(value, (int, float)) else value
    if declared is not None and key not in declared and id_of(key, declared) is None:
        return RowFault(BAD_LABEL, f"column {column!r}: {value!r} is not one of task.labels {list(declared)}")
    return None


def strings_fault(value: object, column: str, what: str = "strings") -> RowFault | None:
    """A list of non-blank strings (a row's words)."""
    if is_null(value):
        return RowFault(MISSING_COLUMN, f"column {column!r} is empty")
    if not is_list(value):
        return RowFault(
            WRONG_TYPE, f"column {column!r} must hold a list of {what}, got {_kind(value)} {value!r:.40}"
        )
    if len(value) == 0:
        return RowFault(EMPTY_TEXT, f"column {column!r} is an empty list")
    for number, item in enumerate(value, start=1):
        if not isinstance(item, str):
            return RowFault(
                WRONG_TYPE,
                f"column {column!r}: item {number} must be a string, got {_kind(item)} {item!r:.40}",
            )
        if not item.strip():
            return RowFault(EMPTY_TEXT, f"column {column!r}: item {number} is blank")
    return None


def media_type_fault(value: object, column: str) -> RowFault | None:
    """An image/audio cell is bytes, a path or URI, or HF datasets' {bytes, path} dict."""
    if isinstance(value, (bytes, bytearray, memoryview, dict)) or (isinstance(value, str) and value.strip()):
        return None
    if isinstance(value, str):
        return RowFault(EMPTY_TEXT, f"column {column!r} is blank")
    return RowFault(
        WRONG_TYPE, f"column {column!r} must hold bytes or a path, got {_kind(value)} {value!r:.40}"
    )
