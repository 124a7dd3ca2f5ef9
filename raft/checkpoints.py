"""Checkpoint integrity: a manifest of every file's size and sha256, written last. Pure
(pyarrow filesystems only, no Ray).

Each Train worker writes its part of a checkpoint into a temporary folder, uploads it into
the checkpoint's place in storage, and only then writes ``.raft/manifest-rank-NNNNN.json``
listing the files it uploaded. A checkpoint is *complete* when the manifest of every rank
is there and every file it lists has the listed size and sha256. A driver or worker killed
mid-upload, a truncated file, a deleted file or a flipped byte all show up as a named
problem, and raft resumes from the newest checkpoint that is complete instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

MANIFEST_DIR = ".raft"
MANIFEST_PATTERN = re.compile(r"manifest-rank-(\d+)\.json$")
CHECKPOINT_PREFIX = "checkpoint_"
_CHUNK = 1 << 20


class CheckpointDamaged(RuntimeError):
    """No complete checkpoint to load; the message lists what is wrong with each."""


def manifest_name(rank: int) -> str:
    return f"{MANIFEST_DIR}/manifest-rank-{rank:05d}.json"


def sha256_of(stream) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    while chunk := stream.read(_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def build_manifest(directory: str | os.PathLike, rank: int, world_size: int) -> dict:
    """The manifest of the files under a local ``directory`` (one rank's part)."""
    root = Path(directory)
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        if relative.startswith(f"{MANIFEST_DIR}/"):
            continue
        with path.open("rb") as stream:
            digest, size = sha256_of(stream)
        files[relative] = {"sha256": digest, "size": size}
    return {"rank": rank, "world_size": world_size, "files": files}


def publish_manifest(manifest: dict, filesystem: pafs.FileSystem, checkpoint_path: str, rank: int) -> str:
    """Write ``manifest`` into the uploaded checkpoint: the last file of this rank's part.
    Written under a temporary name and moved into place, so a reader sees it whole or not
    at all (object stores' single PUT is atomic already)."""
    final = f"{checkpoint_path.rstrip('/')}/{manifest_name(rank)}"
    filesystem.create_dir(os.path.dirname(final), recursive=True)
    temporary = f"{final}.tmp"
    with filesystem.open_output_stream(temporary) as stream:
        stream.write(json.dumps(manifest, indent=1, sort_keys=True).encode())
    filesystem.move(temporary, final)
    return final


def problems(filesystem: pafs.FileSystem, checkpoint_path: str, verify_hashes: bool = True) -> list[str]:
    """What is wrong with the checkpoint at ``checkpoint_path`` (empty: complete)."""
    root = checkpoint_path.rstrip("/")
    manifest_dir = f"{root}/{MANIFEST_DIR}"
    info = filesystem.get_file_info(manifest_dir)
    if info.type != pafs.FileType.Directory:
        return ["no manifest (the checkpoint was never finished)"]
    manifests = {}
    for entry in filesystem.get_file_info(pafs.FileSelector(manifest_dir)):
        match = MANIFEST_PATTERN.search(entry.base_name)
        if match and entry.type == pafs.FileType.File:
            try:
                with filesystem.open_input_stream(entry.path) as stream:
                    manifests[int(match.group(1))] = json.loads(stream.read().decode())
            except (OSError, ValueError) as error:
                return [f"{manifest_name(int(match.group(1)))}: unreadable ({error})"]
    if not manifests:
        return ["no manifest (the checkpoint was never finished)"]
    world_size = max(int(m.get("world_size", 0)) for m in manifests.values())
    found: list[str] = []
    missing_ranks = sorted(set(range(world_size)) - set(manifests))
    if missing_ranks:
        found.append(
            f"no manifest from rank(s) {missing_ranks} of {world_size} (their upload never finished)"
        )
    for rank in sorted(manifests):
        for relative, expected in sorted(manifests[rank]["files"].items()):
            found += _file_problems(filesystem, f"{root}/{relative}", relative, expected, verify_hashes)
    return found


def _file_problems(
    filesystem: pafs.FileSystem, path: str, relative: str, expected: dict, verify_hashes: bool
) -> list[str]:
    info = filesystem.get_file_info(path)
    if info.type != pafs.FileType.File:
        return [f"{relative}: missing"]
    if info.size != expected["size"]:
        return [
            f"{relative}: {info.size} bytes, the manifest says {expected['size']} (truncated or rewritten)"
        ]
    if verify_hashes:
        with filesystem.open_input_stream(path) as stream:
            digest, _ = sha256_of(stream)
        if digest != expected["sha256"]:
            return [
                f"{relative}: sha256 {digest[:12]}… does not match the manifest's {expected['sha256'][:12]}…"
            ]
    return []


@dataclass(frozen=True)
class Choice:
    path: str | None  # the newest complete checkpoint (None: none is)
    rejected: tuple[tuple[str, tuple[str, ...]], ...]  # newer ones that are not, with why


def newest_complete(filesystem: pafs.FileSystem, candidates: list[str]) -> Choice:
    """The newest complete checkpoint of ``candidates`` (checkpoint folders of one run,
    in any order; Ray Train names them by time, so the name orders them)."""
    rejected = []
    for path in sorted(candidates, key=lambda p: p.rstrip("/").rsplit("/", 1)[-1], reverse=True):
        found = problems(filesystem, path)
        if not found:
            return Choice(path, tuple(rejected))
        rejected.append((path, tuple(found)))
    return Choice(None, tuple(rejected))


def checkpoint_folders(filesystem: pafs.FileSystem, run_path: str) -> list[str]:
    """The ``checkpoint_*`` folders directly under a run's folder in storage."""
    info = filesystem.get_file_info(run_path)
    if info.type != pafs.FileType.Directory:
        return []
    return [
        entry.path
        for entry in filesystem.get_file_info(pafs.FileSelector(run_path))
        if entry.type == pafs.FileType.Directory and entry.base_name.startswith(CHECKPOINT_PREFIX)
    ]


def describe_rejected(choice: Choice) -> str:
    return "; ".join(
        f"{path.rstrip('/').rsplit('/', 1)[-1]} is damaged ({', '.join(why[:3])}"
        + (f", and {len(why) - 3} more" if len(why) > 3 else "")
        + ")"
        for path, why in choice.rejected
    )
