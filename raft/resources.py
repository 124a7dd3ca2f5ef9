"""The resource model: what a run reserves, decided before anything is scheduled. Pure.

A Train worker reserves ``scaling.cpus_per_worker`` logical CPUs (and one GPU with
``use_gpu``) for the whole run. Ray Data's read and tokenize tasks need CPU slots of their
own while training runs: if the workers hold every logical CPU, the data pipeline never
gets scheduled and the run waits forever without an error. So raft always keeps
``DATA_CPUS`` logical CPUs beside the workers:

* a local cluster that raft starts declares workers + ``DATA_CPUS`` logical CPUs, even on
  a laptop with fewer cores: logical CPUs are reservations, not cores, and tokenizing is
  light next to the training step;
* on an existing cluster, raft checks the same total is there before it submits anything
  and names what is missing, instead of leaving a run pending forever.
"""

from __future__ import annotations

import math
import os
from typing import Any

DATA_CPUS = 2


def train_cpus(spec: Any, workers: int | None = None) -> float:
    return (workers or spec.scaling.max_workers) * spec.scaling.cpus_per_worker


def required_cpus(spec: Any, concurrent_runs: int = 1, workers: int | None = None) -> float:
    """Logical CPUs a run needs: its workers (times the trials a search runs at once) plus
    room for the data pipeline, which the concurrent trials share. An elastic run needs
    room for its minimum to start; a local cluster is sized for its maximum."""
    return concurrent_runs * train_cpus(spec, workers) + max(DATA_CPUS, spec.data.cpus_per_task)


def workers_text(spec: Any) -> str:
    workers = spec.scaling.num_workers
    return f"[{workers[0]}, {workers[1]}]" if spec.scaling.elastic else str(workers)


# Ray kills a worker process once it has idled for a second while more idle workers exist
# than logical CPUs. raft's data tasks import torch and transformers (seconds per process
# on a small machine), so every run — and every trial of a search — paid those imports
# again in fresh processes. Keeping idle workers for 10 minutes lets the next run reuse
# them: on a 2-core machine a second run in the same cluster started 40 s sooner (86 s →
# 47 s end to end for a tiny LoRA job). Ray's own ``_system_config`` keys; set the same
# with ``ray start --system-config`` on a real cluster (see cluster/raft-cluster.sh).
WORKER_REUSE_SYSTEM_CONFIG = {"idle_worker_killing_time_threshold_ms": 600_000, "num_workers_soft_limit": 8}
# A local cluster exports no metrics: a CI run here lost a worker to a segfault inside
# Ray's OpenTelemetry metrics thread (Meter::Collect), failing a run; nothing local reads them.
LOCAL_SYSTEM_CONFIG = {**WORKER_REUSE_SYSTEM_CONFIG, "enable_metrics_collection": False}
# Ray Train starts a PreemptionWatcher actor per run to notice nodes being drained (spot
# reclaims). A one-machine local cluster is never drained, and the actor's process start
# competes with the workers' model load: without it three tiny runs in one warm cluster
# took 91 s against 96 (benchmarks/fit_timeline.py). Read by the Train controller, which
# inherits the environment of the process that starts the local cluster. Real clusters
# (cluster/raft-cluster.sh) keep the watcher.
LOCAL_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def use_local_env() -> None:
    """Set LOCAL_ENV (where the user has not) before a local cluster starts."""
    for key, value in LOCAL_ENV.items():
        os.environ.setdefault(key, value)


def local_cluster_cpus(spec: Any, concurrent_runs: int = 1) -> int:
    return math.ceil(required_cpus(spec, concurrent_runs))


def resource_problems(spec: Any, available: dict[str, float], concurrent_runs: int = 1) -> list[str]:
    """What the cluster lacks for ``spec`` (empty when it fits), in the user's terms;
    ``concurrent_runs`` is a search's tune.max_concurrent_trials."""
    problems = []
    cpus = available.get("CPU", 0.0)
    trials = f"{concurrent_runs} concurrent trials × " if concurrent_runs > 1 else ""
    least = spec.scaling.min_workers
    needed_cpus = required_cpus(spec, concurrent_runs, least)
    if cpus < needed_cpus:
        problems.append(
            f"the cluster has {cpus:g} CPUs; {trials}scaling.num_workers={workers_text(spec)} × "
            f"cpus_per_worker={spec.scaling.cpus_per_worker:g} plus {max(DATA_CPUS, spec.data.cpus_per_task):g} "
            f"for Ray Data needs {needed_cpus:g}"
        )
    if spec.scaling.use_gpu:
        gpus = available.get("GPU", 0.0)
        needed = concurrent_runs * least
        if gpus < needed:
            problems.append(
                f"the cluster has {gpus:g} GPUs; {trials}scaling.use_gpu with num_workers="
                f"{workers_text(spec)} needs {needed}"
            )
    return problems


# The share of the cluster's object store that data.materialize: auto may fill.
MATERIALIZE_SHARE = 0.25
# Token-id columns a text family's preprocessed row holds at most (ids, mask, labels, and
# token type ids or a second mask), 8 bytes each.
TOKEN_COLUMNS, TOKEN_BYTES = 4, 8
# Families whose preprocessed rows are token ids (the others hold pixels or audio features).
TEXT_FAMILIES = ("sequence_classification", "token_classification", "causal_lm", "seq2seq")


def token_row_bytes(task_spec: Any) -> int | None:
    """An upper bound on one preprocessed row of a text family (token ids padded or packed
    to its longest length); None for families whose rows are pixels or audio features."""
    lengths = [
        getattr(task_spec, name, None)
        for name in ("max_length", "max_source_length", "max_target_length")
        if isinstance(getattr(task_spec, name, None), int)
    ]
    if not lengths or task_spec.type not in TEXT_FAMILIES:
        return None
    return TOKEN_COLUMNS * TOKEN_BYTES * max(lengths)


def should_materialize(
    setting: str | bool,
    *,
    epochs: int,
    elastic: bool,
    rows: int,
    row_bytes: int | None,
    object_store_bytes: float,
) -> tuple[bool, str]:
    """(materialize?, why) for data.materialize. ``rows``: preprocessed rows (after
    packing), ``row_bytes``: raft.resources.token_row_bytes."""
    if setting is True:
        return True, "data.materialize: true"
    if setting is False:
        return False, "data.materialize: false"
    if epochs < 2:
        return False, "one epoch: every row is tokenized once anyway"
    if elastic:
        return False, "an elastic run: a lost node would take its cached blocks along"
    if row_bytes is None:
        return False, "not a text family: its rows (pixels, audio features) are large"
    needed = rows * row_bytes
    budget = MATERIALIZE_SHARE * object_store_bytes
    if needed > budget:
        return False, f"up to {needed / 2**20:,.0f} MiB tokenized, over {budget / 2**20:,.0f} MiB"
    return True, f"at most {needed / 2**20:,.1f} MiB tokenized, kept for {epochs} epochs"
