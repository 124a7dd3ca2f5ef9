"""A real multi-node Ray cluster on this machine: a head and two worker nodes started with
``cluster/raft-cluster.sh local`` (``ray start``: separate raylets, separate node ids, token
auth on), and raft driven through it the way a user would: ``raft submit`` / ``status`` /
``stop`` / ``doctor`` as subprocesses against the Jobs API.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import base_spec
from tests.multinode.local_cluster import env, local_cluster

pytestmark = [pytest.mark.multinode, pytest.mark.slow]

GCS_PORT, DASHBOARD_PORT = 6391, 8276
JOBS = f"http://127.0.0.1:{DASHBOARD_PORT}"


def run(*args, timeout: float = 600, cwd: Path | None = None, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=env(**extra), cwd=cwd
    )


@pytest.fixture(scope="module")
def cluster():
    with local_cluster(head_cpus=2, worker_cpus=1, port=GCS_PORT, dashboard_port=DASHBOARD_PORT):
        yield


@pytest.fixture(scope="module")
def job_dir(tmp_path_factory, tiny_bert, toy_data):
    """A working directory to submit: the spec; the model and data sit at shared paths."""
    root = tmp_path_factory.mktemp("job")
    shared = tmp_path_factory.mktemp("shared-storage")
    spec = base_spec(
        tiny_bert,
        toy_data,
        shared,
        train={"epochs": 4, "log_every_n_steps": 10},
        output={"dir": str(shared / "runs"), "name": "mn"},
    )
    (root / "job.yaml").write_text(f"# raft submit job.yaml --address {JOBS}\n" + yaml.safe_dump(spec))
    return root


def submit(job_dir: Path, *args: str, **extra: str) -> subprocess.CompletedProcess:
    return run(
        "raft", "submit", "job.yaml", "--address", JOBS, "--runtime-env", "", *args, cwd=job_dir, **extra
    )


def node_ids() -> set[str]:
    from raft import jobs

    client = jobs.connect(JOBS)
    return {node["node_id"] for node in jobs._alive_nodes(client)}


def job_ids() -> list[str]:
    from raft import jobs

    return [job.submission_id for job in jobs.connect(JOBS).list_jobs()]


def test_doctor_sees_three_nodes_and_shared_storage(cluster, tmp_path):
    result = run("raft", "doctor", "--address", f"127.0.0.1:{GCS_PORT}", "--storage", tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = result.stdout.splitlines()
    assert [row.split()[2] for row in rows[1:4]] == ["head", "worker", "worker"]
    assert all(row.endswith("shared") for row in rows[1:4])
    assert "3 node(s), versions agree" in result.stdout


def test_job_trains_on_two_nodes_and_checkpoints_to_shared_storage(cluster, job_dir):
    result = submit(job_dir, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "SUCCEEDED" in result.stdout and "workers on 2 node(s)" in result.stdout
    # The job's live progress, as raft submit streams it: the driver's lines, every 10 steps.
    assert re.search(r"\[raft\] epoch 4/4 · step 70/76 \(92%\) · loss [\d.]+ · .* · ETA ", result.stdout), (
        result.stdout[-3000:]
    )
    assert "(RayTrainWorker" not in result.stdout

    run_dir = Path(yaml.safe_load((job_dir / "job.yaml").read_text())["output"]["dir"]) / "mn"
    summary = json.loads((run_dir / "summary.json").read_text())
    workers = summary["worker_nodes"]
    assert len(workers) == 2 and len(set(workers)) == 2, workers
    assert set(workers) <= node_ids()
    assert summary["history"][-1]["val_loss"] < summary["history"][0]["val_loss"]

    # The newest checkpoint in shared storage holds both workers' parts and loads.
    from transformers import AutoModelForSequenceClassification

    checkpoint = max(p for p in run_dir.glob("checkpoint_*") if p.is_dir())
    assert (checkpoint / "trainer_state.json").is_file() and (checkpoint / "deepspeed").is_dir()
    restored = AutoModelForSequenceClassification.from_pretrained(checkpoint / "model")
    exported = AutoModelForSequenceClassification.from_pretrained(run_dir / "model")
    for (name, a), (_, b) in zip(restored.state_dict().items(), exported.state_dict().items(), strict=True):
        assert (a == b).all(), name


def test_status_and_stop(cluster, job_dir):
    result = submit(job_dir, "--no-wait", "output.name=to-stop", "train.epochs=50")
    assert result.returncode == 0, result.stdout + result.stderr
    job_id = result.stdout.split("submitted job ")[1].split()[0]
    assert job_id.startswith("raft-to-stop-")

    state = json.loads(run("raft", "status", job_id, "--address", JOBS, "--json").stdout)
    assert state["job_id"] == job_id and state["status"] in {"PENDING", "RUNNING"}
    stopped = run("raft", "stop", job_id, "--address", JOBS)
    assert stopped.returncode == 0 and "stop requested" in stopped.stdout
    for _ in range(60):
        state = json.loads(run("raft", "status", job_id, "--address", JOBS, "--json").stdout)
        if state["status"] == "STOPPED":
            break
        time.sleep(2)
    assert state["status"] == "STOPPED" and state["exit_code"] is not None and state["exit_code"] != 0


@pytest.mark.parametrize(
    ("args", "extra", "message"),
    [
        (("train.lr=-1",), {}, "train.lr"),
        (("scaling.num_workers=6",), {}, "the cluster has 4 CPUs; scaling.num_workers=6"),
        (("--token", "not-the-token"), {}, "the token given was refused"),
        ((), {"HOME": "/nonexistent-home"}, "no token was found"),
    ],
)
def test_bad_submissions_are_refused_before_a_job_exists(cluster, job_dir, args, extra, message):
    before = job_ids()
    result = submit(job_dir, *args, **extra)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert job_ids() == before


def test_unreachable_address_is_named(job_dir):
    result = run(
        "raft", "submit", "job.yaml", "--address", "http://127.0.0.1:9", "--runtime-env", "", cwd=job_dir
    )
    assert result.returncode == 2
    assert "cannot reach the Ray Jobs API at http://127.0.0.1:9" in result.stderr
