from __future__ import annotations

import os

from raft.resources import DATA_CPUS, local_cluster_cpus, required_cpus, resource_problems
from raft.spec import validate

BASE = {"model": {"path": "m"}, "task": {"type": "sequence_classification"}, "data": {"train": "t.jsonl"}}


def test_local_cluster_leaves_room_for_ray_data():
    spec = validate({**BASE, "scaling": {"num_workers": 2, "cpus_per_worker": 1}})
    assert required_cpus(spec) == 2 + DATA_CPUS
    assert local_cluster_cpus(spec) == 4
    half = validate({**BASE, "scaling": {"num_workers": 3, "cpus_per_worker": 0.5}})
    assert local_cluster_cpus(half) == 4  # ceil(1.5 + 2)


def test_too_small_cluster_names_what_is_missing():
    spec = validate({**BASE, "scaling": {"num_workers": 4, "cpus_per_worker": 2, "use_gpu": True}})
    problems = resource_problems(spec, {"CPU": 8.0, "GPU": 2.0})
    assert len(problems) == 2
    assert "has 8 CPUs" in problems[0] and "needs 10" in problems[0]
    assert "has 2 GPUs" in problems[1] and "needs 4" in problems[1]
    assert resource_problems(spec, {"CPU": 10.0, "GPU": 4.0}) == []


def test_local_clusters_start_without_the_preemption_watcher_unless_the_user_says(monkeypatch):
    from raft.resources import use_local_env

    monkeypatch.delenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", raising=False)
    use_local_env()
    assert os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0"
    monkeypatch.setenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "1")
    use_local_env()
    assert os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "1"
