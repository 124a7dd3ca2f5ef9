"""``raft submit / status / stop``: raft runs as Ray jobs on a remote cluster (Jobs API).

raft submit jobs/topics_lora.yaml --address http://HEAD:8265            # tail logs, exit as the job
raft submit jobs/topics_lora.yaml --address http://HEAD:8265 --no-wait  # print the id and return
raft status raft-topics-lora-20261130-101500 --address http://HEAD:8265
raft stop   raft-topics-lora-20261130-101500 --address http://HEAD:8265

The spec is validated here, before anything is sent; the job itself runs ``raft train``
from an uploaded copy of the working directory, and that checks data paths, columns and
the cluster's size before a Train worker starts.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass
from typing import Any

from raft import submission
from raft.cluster import ClusterError
from raft.resources import resource_problems

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


@dataclass
class JobState:
    job_id: str
    status: str
    message: str | None
    exit_code: int | None  # what `raft submit` exits with once the job is done
    entrypoint: str | None


def connect(address: str, token: str | None = None) -> Any:
    """A JobSubmissionClient, with errors that say what is wrong (address or token)."""
    import requests
    from ray.job_submission import JobSubmissionClient

    url = submission.dashboard_address(address)
    token = submission.auth_token(token)
    try:
        return JobSubmissionClient(url, headers=submission.auth_headers(token))
    except (ConnectionError, requests.exceptions.RequestException) as error:
        raise ClusterError(
            f"cannot reach the Ray Jobs API at {url}: {_first_line(error)}. Is the head node up, "
            "and can this machine reach its dashboard port (8265)?"
        ) from None
    except Exception as error:  # the Jobs API answers 401/403 as a RuntimeError
        text = str(error)
        if "401" in text or "403" in text or "authenticat" in text.lower() or "token" in text.lower():
            how = "the token given was refused" if token else "no token was found"
            raise ClusterError(
                f"the Ray cluster at {url} requires token authentication and {how}: pass --token, "
                "set RAY_AUTH_TOKEN, or copy the head node's ~/.ray/auth_token to this machine"
            ) from None
        raise ClusterError(f"cannot use the Ray Jobs API at {url}: {_first_line(error)}") from None


def check_resources(client: Any, spec: Any, concurrent_runs: int = 1) -> None:
    """Refuse a spec the cluster cannot place, instead of a job that pends forever
    (``concurrent_runs``: a search's trials at once)."""
    totals: dict[str, float] = {}
    for node in _alive_nodes(client):
        for key, value in (node.get("resources_total") or {}).items():
            totals[key] = totals.get(key, 0.0) + float(value)
    problems = resource_problems(spec, totals, concurrent_runs)
    if problems:
        raise ClusterError("the cluster is too small for this spec: " + "; ".join(problems))


def submit(
    client: Any,
    spec: Any,
    spec_in_working_dir: str,
    overrides: list[str],
    runtime_env: dict[str, Any],
    command: str = "train",
) -> str:
    job_id = submission.submission_id(spec.run_name)
    return client.submit_job(
        entrypoint=submission.entrypoint(spec_in_working_dir, overrides, command),
        submission_id=job_id,
        runtime_env=runtime_env,
        metadata={"raft_run": spec.run_name},
    )


def state(client: Any, job_id: str) -> JobState:
    try:
        info = client.get_job_info(job_id)
    except RuntimeError as error:
        raise ClusterError(f"no job {job_id!r} on this cluster ({_first_line(error)})") from None
    status = str(getattr(info.status, "value", info.status))
    code = (
        submission.exit_code(status, getattr(info, "driver_exit_code", None)) if status in TERMINAL else None
    )
    return JobState(job_id, status, info.message, code, info.entrypoint)


def follow(client: Any, job_id: str, out: Any = None) -> JobState:
    """Print the job's logs as they come, then return its final state."""
    out = out or sys.stdout

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            out.write(lines)
            out.flush()

    try:
        asyncio.run(tail())
    except Exception as error:  # the log stream can drop (head restart); the status still tells
        out.write(f"[raft] log stream ended early: {_first_line(error)}\n")
    final = state(client, job_id)
    while final.status not in TERMINAL:  # logs end a moment before the status is final
        time.sleep(1.0)
        final = state(client, job_id)
    return final


def stop(client: Any, job_id: str) -> bool:
    state(client, job_id)  # a clear error for an unknown id
    return bool(client.stop_job(job_id))


def _alive_nodes(client: Any) -> list[dict[str, Any]]:
    """Nodes as the dashboard's state API lists them (the Jobs client's own session and auth)."""
    response = client._do_request("GET", "/api/v0/nodes?limit=10000&detail=true")
    if response.status_code != 200:
        raise ClusterError(f"the dashboard did not list the cluster's nodes: HTTP {response.status_code}")
    nodes = response.json()["data"]["result"]["result"]
    return [node for node in nodes if node.get("state") == "ALIVE"]


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0].rstrip(".") if text else type(error).__name__
