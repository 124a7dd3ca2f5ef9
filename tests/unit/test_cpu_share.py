"""benchmarks/cpu_share.py's naming of processes: which group a process's CPU counts in."""

from __future__ import annotations

import pytest

from benchmarks import cpu_share


@pytest.mark.parametrize(
    ("command", "group"),
    [
        ("ray::RayTrainWorker.init_train_context", "Train workers"),
        ("/venv/bin/python3.11 /venv/bin/raft train spec.yaml", "raft driver"),
        ("ray::SplitCoordinator.__init__", "Ray Data"),
        ("ray::ReadBinary->SplitBlocks(8)", "Ray Data"),
        ("ray::MapBatches(_preprocess)", "Ray Data"),
        ("ray::IDLE", "Ray Data"),
        ("ray::reduce", "Ray Data"),
        ("ray::_split_single_block", "Ray Data"),
        ("ray::TrainController.__init__", "Ray control plane"),
        ("ray::ProgressBoard", "Ray control plane"),
        ("/venv/lib/ray/core/src/ray/raylet/raylet --raylet_socket_name=x", "Ray control plane"),
        ("python benchmarks/plain_ddp.py", "other"),
    ],
)
def test_processes_are_grouped_by_what_they_run(command: str, group: str) -> None:
    assert cpu_share.group_of(command) == group


def test_a_process_is_named_by_its_most_telling_title() -> None:
    seen = [
        "/venv/bin/python3.11 /venv/lib/ray/_private/workers/setup_worker.py --worker-type=x",
        "ray::RayTrainWorker.init_train_context",
        "ray::IDLE",  # the title an actor's process takes as it exits
        "ray::RayTrainWo",  # its 15-byte name, once the title is gone
    ]
    assert max(seen, key=cpu_share._telling) == "ray::RayTrainWorker.init_train_context"
    assert max(seen[:1] + ["ray::IDLE"], key=cpu_share._telling) == "ray::IDLE"
