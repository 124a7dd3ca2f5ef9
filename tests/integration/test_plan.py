"""`raft train`'s memory warning, read against the real local cluster's workers."""

from __future__ import annotations

import pytest
import ray

from raft.cluster import memory_warning, worker_budget
from raft.spec import validate
from tests.helpers import base_spec

pytestmark = pytest.mark.slow


def test_a_run_that_will_not_fit_is_warned_about_and_one_that_fits_is_not(tiny_bert, toy_data, tmp_path):
    fits = validate(base_spec(tiny_bert, toy_data, tmp_path))
    budget = worker_budget(fits)
    # One node with 4 logical CPUs holds both workers: they share Ray's memory resource.
    assert budget.accelerator is None and budget.host == int(ray.cluster_resources()["memory"]) // 2
    assert memory_warning(fits) is None
    # A million rows a batch: activations alone need terabytes per worker.
    huge = validate(base_spec(tiny_bert, toy_data, tmp_path, train={"batch_size": 1_000_000}))
    warning = memory_warning(huge)
    assert warning is not None
    assert warning.startswith("ZeRO 0 needs about") and "host" in warning
    assert "no ZeRO stage or offload fits" in warning and "`raft plan`" in warning
