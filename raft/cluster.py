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
    quiet_driver(verbose)
    started = False
    if not ray.is_initialized():
        # Workers' output (Ray's, DeepSpeed's, raft's own lines) stays in Ray's log files
        # unless --verbose: raft's progress reaches the driver through raft.monitor.
        settings: dict[str, Any] = {"logging_level": "INFO" if verbose else "ERROR", "log_to_driver": verbose}
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
                # "local": a cluster of its own even when `ray start` runs one on this
                # machine (Ray would join that one, and then refuse num_cpus).
                address="local",
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
    import logging

    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = verbose
    context.print_on_execution_start = verbose
    if not verbose:
        logging.getLogger("ray.data").setLevel(logging.ERROR)


def quiet_driver(verbose: bool) -> None:
    """Keep the driver's terminal for raft's progress: libraries' info lines and bars
    only with --verbose (they are still in Ray's logs on disk)."""
    import logging

    if verbose:
        return
    import torch

    if not torch.cuda.is_available():  # DeepSpeed would warn that it picked the CPU
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # mlflow sets its level on import
    for name in ("mlflow", "alembic", "DeepSpeed"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # "Writing model shards" on every export


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


# -- memory per worker (raft plan, and raft train's warning) ---------------------------------
def worker_budget(spec: Any) -> Any:
    """Memory each worker of ``spec`` may use on the connected cluster (raft.plan.Budget):
    Ray's ``memory`` resource of each node that can hold a worker, shared by the workers it
    holds, and for GPU runs the smallest GPU's memory (read by one task per GPU node)."""
    from raft.plan import budget_from_nodes

    nodes = []
    for node in _alive_nodes():
        resources = node.get("Resources", {})
        nodes.append(
            {
                "id": node["NodeID"],
                "memory": resources.get("memory", 0),
                "cpus": resources.get("CPU", 0),
                "gpus": resources.get("GPU", 0),
                "gpu_memory": None,
            }
        )
    if spec.scaling.use_gpu:
        _probe_gpu_memory([n for n in nodes if n["gpus"]])
    budget = budget_from_nodes(
        nodes, spec.scaling.max_workers, spec.scaling.cpus_per_worker, spec.scaling.use_gpu
    )
    budget_where = f"the cluster: {budget.where}, Ray's memory resource"
    return type(budget)(budget.host, budget.accelerator, budget_where)


def _probe_gpu_memory(nodes: list[dict[str, Any]]) -> None:
    """Fill in each GPU node's smallest GPU memory; a node whose GPUs are all busy for
    60 s keeps None (its GPU memory is then unknown, not assumed)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_gpus=1, num_cpus=0, max_retries=0)(_gpu_memory)
    pending = {
        probe.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["id"], soft=False)
        ).remote(): node
        for node in nodes
    }
    ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=60)
    for ref in ready:
        try:
            pending[ref]["gpu_memory"] = ray.get(ref)
        except Exception:  # a probe that fails leaves the memory unknown
            continue


def _gpu_memory() -> int:
    import torch

    return min(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count()))


def memory_warning(spec: Any) -> str | None:
    """A warning when the spec's own setting will not fit each worker's memory (None when
    it fits). The weight files' upper bound (everything trainable) settles most specs in
    milliseconds; only when that does not fit is the model counted exactly."""
    from raft import plan

    budget = worker_budget(spec)
    try:
        bound = plan.upper_bound_facts(spec.model.path)
    except ValueError:  # no safetensors header to read (pickle weights): count the model
        bound = None
    if bound is not None and plan.spec_estimate(bound, spec, budget).fits is not False:
        return None  # fits, or cannot be told (GPU memory unknown): no warning
    facts = plan.counted_facts(spec)
    estimate = plan.spec_estimate(facts, spec, budget)
    if estimate.fits is not False:
        return None
    best = plan.recommend(plan.plan(facts, budget=budget, **plan.run_shape(spec, facts)))
    advice = (
        f"{best.setting.label} fits"
        if best
        else "no ZeRO stage or offload fits: add workers, cut the batch or use LoRA"
    )
    return (
        f"{estimate.setting.label} needs about {plan.gib(estimate.accelerator or estimate.host)} per worker "
        f"({'; '.join(estimate.why)}) on {budget.where}; {advice}. `raft plan` compares every setting."
    )


@contextlib.contextmanager
def joined(address: str) -> Iterator[None]:
    """Join the cluster at ``address`` for a quick look (no size check), then leave."""
    use_token_if_available()
    try:
        ray.init(address=address, logging_level="WARNING")
    except Exception as error:
        raise ClusterError(f"cannot connect to the Ray cluster at {address}: {error}") from None
    try:
        yield
    finally:
        ray.shutdown()
