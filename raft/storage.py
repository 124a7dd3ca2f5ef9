"""Where runs are written: a local path or a URI any pyarrow filesystem takes (s3://, gs://,
file://...). Pure (pyarrow only).

On one machine ``output.dir`` is a folder. On a cluster it must be storage every node
sees, because each Train worker writes its part of every checkpoint from its own node:
a shared URI, or a path every node mounts (NFS, a cluster filesystem). ``marker_path``
and friends let raft prove that before a run starts (see ``raft.cluster``).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pyarrow.fs as pafs

MARKER_PREFIX = ".raft-storage-check-"


def is_uri(location: str) -> bool:
    return "://" in str(location)


def normalize(location: str) -> str:
    """Local paths become absolute (every process agrees on them); URIs are kept."""
    if is_uri(location):
        return location.rstrip("/")
    return str(Path(location).expanduser().absolute())


def join(location: str, *parts: str) -> str:
    if is_uri(location):
        return "/".join([location.rstrip("/"), *parts])
    return str(Path(location, *parts))


def _resolve(location: str) -> tuple[pafs.FileSystem, str]:
    if is_uri(location):
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), str(Path(location).absolute())


def exists(location: str) -> bool:
    filesystem, path = _resolve(location)
    return filesystem.get_file_info(path).type != pafs.FileType.NotFound


def write_text(location: str, text: str) -> None:
    write_bytes(location, text.encode())


def write_bytes(location: str, content: bytes) -> None:
    filesystem, path = _resolve(location)
    filesystem.create_dir(os.path.dirname(path), recursive=True)
    with filesystem.open_output_stream(path) as stream:
        stream.write(content)


def read_text(location: str) -> str:
    filesystem, path = _resolve(location)
    with filesystem.open_input_stream(path) as stream:
        return stream.read().decode()


def delete(location: str) -> None:
    filesystem, path = _resolve(location)
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        filesystem.delete_dir(path)
    elif info.type == pafs.FileType.File:
        filesystem.delete_file(path)


def upload_dir(local_dir: str | os.PathLike, location: str) -> None:
    """Copy a local folder to ``location`` (a no-op when they are the same folder)."""
    if not is_uri(location) and Path(local_dir).absolute() == Path(location).absolute():
        return
    filesystem, path = _resolve(location)
    filesystem.create_dir(path, recursive=True)
    pafs.copy_files(
        str(local_dir), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=filesystem
    )


def download_dir(location: str, local_dir: str | os.PathLike) -> None:
    """Copy the folder at ``location`` (a path or URI) into a local folder."""
    filesystem, path = _resolve(location)
    Path(local_dir).mkdir(parents=True, exist_ok=True)
    pafs.copy_files(
        path, str(local_dir), source_filesystem=filesystem, destination_filesystem=pafs.LocalFileSystem()
    )


def marker_path(location: str) -> str:
    return join(location, f"{MARKER_PREFIX}{uuid.uuid4().hex}")


def write_marker(location: str) -> str:
    """A small file whose visibility from every node proves ``location`` is shared."""
    marker = marker_path(location)
    write_text(marker, "raft storage check\n")
    return marker


def sees(marker: str) -> bool:
    """Called on each node: can this node read the marker the driver wrote?"""
    try:
        return read_text(marker).startswith("raft storage check")
    except (OSError, ValueError):
        return False
