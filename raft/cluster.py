"""Connect to Ray: join the cluster at ``--address`` / ``RAY_ADDRESS``, or start a local one.

The local cluster is the embedded default (``raft train`` on a laptop just works); its size
follows the resource model in ``raft.resources``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import ray

from raft.resources import local_cluster_cpus, resource_problems


class ClusterError(RuntimeError):
    """The cluster cannot run the spec as written (unreachable, or too small)."""


@contextlib.contextmanager
def connect(spec: Any, address: str | None = None, verbose: bool = False) -> Iterator[None]:
    """Make sure Ray is up and big enough for ``spec``; shut down only what we started."""
    address = address or os.environ.get("RAY_ADDRESS")
    started = False
    if not ray.is_initialized():
        settings: dict[str, Any] = {"logging_level": "INFO" if verbose else "WARNING"}
        if address:
            try:
                ray.init(address=address, **settings)
            except Exception as error:
                raise ClusterError(f"cannot connect to the Ray cluster at {address}: {error}") from None
        else:
            ray.init(num_cpus=local_cluster_cpus(spec), include_dashboard=False, **settings)
        started = True
    _quiet_data(verbose)
    try:
        problems = resource_problems(spec, ray.cluster_resources())
        if problems:
            raise ClusterError("the cluster is too small for this spec: " + "; ".join(problems))
        yield
    finally:
        if started:
            ray.shutdown()


def _quiet_data(verbose: bool) -> None:
    """Ray Data's per-operator progress bars interleave badly with training progress."""
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = verbose
    context.print_on_execution_start = verbose
