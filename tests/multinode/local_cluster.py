"""A real multi-node Ray cluster on this machine, as `cluster/raft-cluster.sh local` starts
one: a head and worker nodes with separate raylets, node ids and temp dirs, token auth on."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = str(Path(sys.executable).parent)


def env(**extra: str) -> dict[str, str]:
    environment = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", **extra}
    for key in ("RAY_ADDRESS", "RAY_JOBS_ADDRESS", "RAY_AUTH_TOKEN"):
        environment.pop(key, None)
    return environment | extra


def cluster_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ROOT / "cluster/raft-cluster.sh"), *args], capture_output=True, text=True, timeout=300, env=env()
    )


@contextlib.contextmanager
def local_cluster(*, head_cpus: int, worker_cpus: int, port: int, dashboard_port: int) -> Iterator[None]:
    """Up for the block, then `ray stop --force` (which stops every Ray process here)."""
    import ray

    if ray.is_initialized():  # the integration tests' in-process cluster would be stopped too
        ray.shutdown()
    up = cluster_script(
        "local", "--workers", "2", "--head-cpus", str(head_cpus), "--worker-cpus", str(worker_cpus),
        "--port", str(port), "--dashboard-port", str(dashboard_port),
    )  # fmt: skip
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        yield
    finally:
        cluster_script("down")
