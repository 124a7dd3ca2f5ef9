"""One real local Ray cluster for the whole integration session (never mocked)."""

from __future__ import annotations

import pytest
import ray

from raft.resources import LOCAL_SYSTEM_CONFIG, use_local_env


@pytest.fixture(scope="session", autouse=True)
def ray_cluster():
    # 4 logical CPUs on a 2-core machine: 2 Train workers + room for Ray Data (see
    # raft.resources for why the data pipeline needs CPUs of its own).
    use_local_env()
    ray.init(  # as raft.cluster does
        # "local": a cluster of its own even when a `ray start` cluster runs on this
        # machine (without it Ray joins that one and refuses num_cpus).
        address="local",
        num_cpus=4,
        include_dashboard=True,
        logging_level="WARNING",
        _system_config=LOCAL_SYSTEM_CONFIG,
    )
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()
