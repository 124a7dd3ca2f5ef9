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


def _decide(setting="auto", epochs=3, elastic=False, rows=10_000, row_bytes=4 * 8 * 128, store=2 * 2**30):
    from raft.resources import should_materialize

    return should_materialize(
        setting, epochs=epochs, elastic=elastic, rows=rows, row_bytes=row_bytes, object_store_bytes=store
    )


def test_auto_keeps_tokenized_text_that_fits_and_streams_otherwise():
    keep, why = _decide()
    assert keep and "kept for 3 epochs" in why
    assert _decide(epochs=1) == (False, "one epoch: every row is tokenized once anyway")
    assert _decide(elastic=True)[0] is False
    assert _decide(row_bytes=None)[0] is False  # pixels, audio: not bounded, stream
    # 10,000 rows × 4 KiB = 39 MiB: over a quarter of a 128 MiB store, under a quarter of 2 GiB.
    assert _decide(store=128 * 2**20)[0] is False
    assert "over 32 MiB" in _decide(store=128 * 2**20)[1]
    assert _decide("auto", epochs=1, elastic=True, row_bytes=None, store=0)[0] is False
    assert _decide(True, epochs=1, elastic=True, row_bytes=None, store=0)[0] is True
    assert _decide(False)[0] is False


def test_a_text_rows_bound_is_its_longest_length_and_other_families_have_none():
    from raft.resources import token_row_bytes

    def task(**fields):
        return validate({"model": {"path": "m"}, "task": fields, "data": {"train": "t.jsonl"}}).task

    assert token_row_bytes(task(type="sequence_classification", max_length=64)) == 4 * 8 * 64
    seq2seq = task(type="seq2seq", max_source_length=256, max_target_length=512)
    assert token_row_bytes(seq2seq) == 4 * 8 * 512
    assert token_row_bytes(task(type="image_classification")) is None
