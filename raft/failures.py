"""What a failed run's error means to a user: which worker was lost, and what to do. Pure.

Ray Train reports a worker that died (SIGKILL, out of memory, its node gone) deep inside a
``WorkerGroupError``; raft leads with the rank, pid and node of the lost worker and with
the setting that would have saved the run.
"""

from __future__ import annotations

import re
from typing import Any


def training_failure(error: BaseException, spec: Any) -> str:
    """Ray Train's error, led by what a user needs: which worker was lost, and what to do."""
    text = str(error)
    lost = lost_worker(text)
    if lost is None:
        return f"training failed: {text}"
    retries = spec.scaling.max_failures
    advice = (
        "set scaling.max_failures to restart from the last checkpoint instead"
        if retries == 0
        else f"it was lost after the run had used its scaling.max_failures={retries} restarts"
    )
    return f"training failed: {lost}; {advice}. Rerun the same command to resume from the last checkpoint.\n{text}"


def lost_worker(text: str) -> str | None:
    """'worker rank 1 (pid 123, node 1a2b3c4d) was lost' from Ray's error text, if a worker
    process died (killed, out of memory, its node gone) rather than raised an error."""
    if not re.search(
        r"actor died|ActorDiedError|ActorUnavailableError|node .* (dead|died)|SYSTEM_ERROR", text
    ):
        return None
    rank = re.search(r"[Ww]orker(?: rank)?[ =:]*(\d+)|rank[ =:]+(\d+)", text)
    pid = re.search(r"pid[=: ]+(\d+)", text)
    node = re.search(r"node(?:_id)?[=: ]+([0-9a-f]{8,})", text, re.IGNORECASE)
    parts = [f"pid {pid.group(1)}" if pid else None, f"node {node.group(1)[:8]}" if node else None]
    where = ", ".join(p for p in parts if p)
    who = f"worker rank {rank.group(1) or rank.group(2)}" if rank else "a training worker"
    return f"{who}{f' ({where})' if where else ''} was lost"
