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


def peek_columns(source: Source, split: str | None = None) -> list[str]:
    """Column names, read from the first file only (cheap even for large data)."""
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
        try:
            parse_conll(complete, first)
        except ValueError as error:
            raise DataError(str(error)) from None
        return list(CONLL_COLUMNS)
    if source.format == "csv":
        import csv

        header = next(csv.reader([text.splitlines()[0] if text else ""]), [])
        return [h.strip() for h in header]
    columns: dict[str, None] = {}
    lines = text.splitlines()[:-1] if len(head) == 1 << 20 else text.splitlines()
    for number, line in enumerate(lines[:100], start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{first}, line {number}: not valid JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{first}, line {number}: each line must be a JSON object")
        columns.update(dict.fromkeys(row))
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


def check_columns(source: Source, required: list[str], role: str, split: str | None = None) -> None:
    columns = peek_columns(source, split)
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
    sentence's first line number, for error messages."""
    rows: list[dict] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("-DOCSTART-"):
            if tokens:
                rows.append({"tokens": tokens, "tags": tags, "line": start})
            tokens, tags = [], []
            continue
        fields = line.split()
        if len(fields) < 2:
            raise ValueError(f"{name}, line {number}: expected a token and a tag, got {line!r:.60}")
        if not tokens:
            start = number
        tokens.append(fields[0])
        tags.append(fields[-1])
    if tokens:
        rows.append({"tokens": tokens, "tags": tags, "line": start})
    return rows
