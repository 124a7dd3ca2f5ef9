"""Checkpoint manifests: every kind of damage is found and named; the newest complete
checkpoint is chosen. No Ray: local folders through pyarrow's filesystem."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from raft import checkpoints

FS = pafs.LocalFileSystem()


def write_checkpoint(
    root: Path, name: str, world_size: int = 2, publish: tuple[int, ...] | None = None
) -> Path:
    """A checkpoint as raft writes one: each rank's files, then each rank's manifest."""
    checkpoint = root / name
    for rank in range(world_size):
        part = root.parent / f"staging-{root.name}-{name}-rank{rank}"  # a worker's temp folder
        (part / "deepspeed" / "state").mkdir(parents=True)
        (part / "deepspeed" / "state" / f"optim_rank{rank}.pt").write_bytes(bytes([rank]) * 1000)
        if rank == 0:
            (part / "model").mkdir()
            (part / "model" / "model.safetensors").write_bytes(b"weights" * 100)
            (part / "trainer_state.json").write_text(json.dumps({"global_step": 7}))
        manifest = checkpoints.build_manifest(part, rank, world_size)
        pafs.copy_files(str(part), str(checkpoint))  # as Ray uploads each rank's part
        if publish is None or rank in publish:
            checkpoints.publish_manifest(manifest, FS, str(checkpoint), rank)
    return checkpoint


def test_a_complete_checkpoint_has_no_problems(tmp_path):
    checkpoint = write_checkpoint(tmp_path, "checkpoint_2026-01-01_00-00-00.000001")
    assert checkpoints.problems(FS, str(checkpoint)) == []
    manifest = json.loads((checkpoint / ".raft/manifest-rank-00000.json").read_text())
    assert set(manifest["files"]) == {
        "deepspeed/state/optim_rank0.pt",
        "model/model.safetensors",
        "trainer_state.json",
    }
    assert not list(checkpoint.glob(".raft/*.tmp"))  # published by rename, no leftovers


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (
            lambda c: (c / "model/model.safetensors").write_bytes(b"weights"),
            "model/model.safetensors: 7 bytes, the manifest says 700",
        ),
        (
            lambda c: (c / "deepspeed/state/optim_rank1.pt").unlink(),
            "deepspeed/state/optim_rank1.pt: missing",
        ),
        (
            lambda c: (c / "trainer_state.json").write_text(json.dumps({"global_step": 8})),
            "trainer_state.json: sha256",
        ),
        (lambda c: (c / ".raft/manifest-rank-00001.json").unlink(), "no manifest from rank(s) [1] of 2"),
        (lambda c: [p.unlink() for p in (c / ".raft").iterdir()], "no manifest"),
    ],
    ids=["truncated", "missing", "mismatched", "one-rank-unpublished", "unpublished"],
)
def test_damage_is_found_and_named(tmp_path, damage, expected):
    checkpoint = write_checkpoint(tmp_path, "checkpoint_a")
    damage(checkpoint)
    found = checkpoints.problems(FS, str(checkpoint))
    assert any(expected in problem for problem in found), found


def test_a_killed_upload_never_published_its_manifest(tmp_path):
    checkpoint = write_checkpoint(tmp_path, "checkpoint_a", publish=(0,))
    assert checkpoints.problems(FS, str(checkpoint)) == [
        "no manifest from rank(s) [1] of 2 (their upload never finished)"
    ]


def test_the_newest_complete_checkpoint_is_chosen_and_the_damaged_ones_named(tmp_path):
    old = write_checkpoint(tmp_path, "checkpoint_2026-01-01_00-00-01.000000")
    good = write_checkpoint(tmp_path, "checkpoint_2026-01-01_00-00-02.000000")
    newest = write_checkpoint(tmp_path, "checkpoint_2026-01-01_00-00-03.000000")
    (newest / "model/model.safetensors").write_bytes(b"x")
    partial = write_checkpoint(tmp_path, "checkpoint_2026-01-01_00-00-04.000000", publish=())

    folders = checkpoints.checkpoint_folders(FS, str(tmp_path))
    assert {Path(f).name for f in folders} == {old.name, good.name, newest.name, partial.name}
    choice = checkpoints.newest_complete(FS, folders)
    assert choice.path == str(good)
    assert [Path(path).name for path, _ in choice.rejected] == [partial.name, newest.name]
    text = checkpoints.describe_rejected(choice)
    assert f"{partial.name} is damaged (no manifest" in text
    assert f"{newest.name} is damaged (model/model.safetensors: 1 bytes" in text


def test_no_complete_checkpoint_leaves_no_choice(tmp_path):
    write_checkpoint(tmp_path, "checkpoint_a", publish=())
    choice = checkpoints.newest_complete(FS, checkpoints.checkpoint_folders(FS, str(tmp_path)))
    assert choice.path is None and len(choice.rejected) == 1
