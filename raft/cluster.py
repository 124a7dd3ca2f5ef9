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

from raft import storage
from raft.nodes import VERSIONED, NodeReport, storage_problems
from raft.resources import LOCAL_SYSTEM_CONFIG, local_cluster_cpus, resource_problems, use_local_env


class ClusterError(RuntimeError):
    """The cluster cannot run the spec as written (unreachable, or too small)."""


@contextlib.contextmanager
def connect(
    spec: Any, address: str | None = None, verbose: bool = False, concurrent_runs: int = 1
) -> Iterator[None]:
    """Make sure Ray is up and big enough for ``spec`` (``concurrent_runs`` of it at once:
    a search's trials); shut down only what we started."""
    address = address or os.environ.get("RAY_ADDRESS")
    started = False
    if not ray.is_initialized():
        settings: dict[str, Any] = {"logging_level": "INFO" if verbose else "WARNING"}
        if address:
            use_token_if_available()
            try:
                ray.init(address=address, **settings)
            except Exception as error:
                raise ClusterError(f"cannot connect to the Ray cluster at {address}: {error}") from None
        else:
            # The dashboard (on 127.0.0.1 only) serves Ray's state API, which Ray Train's
            # placement-group cleaner polls every second; without it every run logs a
            # warning a second and orphaned placement groups are never cleaned up.
            use_local_env()
            ray.init(
                num_cpus=local_cluster_cpus(spec, concurrent_runs),
                include_dashboard=True,
                _system_config=LOCAL_SYSTEM_CONFIG,
                **settings,
            )
        started = True
    _quiet_data(verbose)
    try:
        problems = resource_problems(spec, ray.cluster_resources(), concurrent_runs)
        if problems:
            raise ClusterError("the cluster is too small for this spec: " + "; ".join(problems))
        check_shared_storage(spec.output.dir)
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


def use_token_if_available() -> None:
    """Joining a cluster: send the Ray auth token when this machine has one (RAY_AUTH_TOKEN,
    RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token). Ray's client only loads it in token mode."""
    from raft.submission import auth_token

    if "RAY_AUTH_MODE" not in os.environ and auth_token() is not None:
        os.environ["RAY_AUTH_MODE"] = "token"
        try:  # Ray read its config when imported: make it see token mode now
            from ray._raylet import Config

            Config.initialize("")
        except ImportError:
            pass


def check_shared_storage(location: str) -> None:
    """On a multi-node cluster, prove every node sees ``location`` before a run starts, so a
    node-local path fails now with a clear message instead of at the first checkpoint."""
    if len(_alive_nodes()) < 2:
        return
    problems = storage_problems(probe_nodes(location, versions=False), location)
    if problems:
        raise ClusterError("; ".join(problems))


def probe_nodes(storage_location: str | None = None, versions: bool = True) -> list[NodeReport]:
    """Run one small task pinned to each alive node: its versions and, given a storage
    location, whether it can read a marker this process writes there."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = _alive_nodes()
    marker = storage.write_marker(storage_location) if storage_location else None
    probe = ray.remote(num_cpus=0, max_retries=0)(_probe)
    try:
        found = ray.get(
            [
                probe.options(
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
                ).remote(marker, versions)
                for node in nodes
            ],
            timeout=300,
        )
    finally:
        if marker:
            storage.delete(marker)
    head = _head_node_id()
    return [
        NodeReport(
            node_id=node["NodeID"],
            address=node["NodeManagerAddress"],
            cpus=float(node["Resources"].get("CPU", 0)),
            gpus=float(node["Resources"].get("GPU", 0)),
            is_head=node["NodeID"] == head,
            versions=probe_versions,
            sees_storage=sees,
        )
        for node, (probe_versions, sees) in zip(nodes, found, strict=True)
    ]


def _probe(marker: str | None, versions: bool) -> tuple[tuple[tuple[str, str], ...], bool | None]:
    found: tuple[tuple[str, str], ...] = ()
    if versions:
        import importlib.metadata
        import platform

        def version(package: str) -> str:
            if package == "python":
                return platform.python_version()
            try:
                return importlib.metadata.version(package)
            except importlib.metadata.PackageNotFoundError:
                return "missing"

        found = tuple((package, version(package)) for package in VERSIONED)
    return found, (storage.sees(marker) if marker else None)


def _alive_nodes() -> list[dict[str, Any]]:
    return [node for node in ray.nodes() if node.get("Alive")]


def _head_node_id() -> str | None:
    for node in _alive_nodes():
        if any(key.startswith("node:__internal_head__") for key in node.get("Resources", {})):
            return node["NodeID"]
    return None
