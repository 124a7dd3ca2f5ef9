"""A node lost mid-run, for real: a 3-node `ray start` cluster on this machine (a head with
1 CPU and two worker nodes with 2 each), an elastic run with one 2-CPU Train worker on each
worker node, and every process of one worker node SIGKILLed after a checkpoint. The run
goes on with the one worker the cluster still has room for and finishes.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import base_spec
from tests.integration.test_training_faults import complete_checkpoints, step_of
from tests.multinode.local_cluster import BIN, cluster_script, env, local_cluster

pytestmark = [pytest.mark.multinode, pytest.mark.slow]

GCS_PORT, DASHBOARD_PORT = 6392, 8277


@pytest.fixture(scope="module")
def cluster():
    with local_cluster(head_cpus=1, worker_cpus=2, port=GCS_PORT, dashboard_port=DASHBOARD_PORT):
        yield


def kill_node(index: int) -> list[int]:
    """SIGKILL every process of worker node ``index`` (its raylet, agents and workers):
    what a preempted machine looks like to the rest of the cluster."""
    marker = f"/tmp/raft-node-{GCS_PORT}-{index}"
    pids = [
        int(p) for p in subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()
    ]
    subprocess.run(["kill", "-9", *map(str, pids)], check=False)
    return pids


def raft_lines(output: str) -> str:
    """The driver's own lines: Ray's dump of the lost raylet's log would fill a tail."""
    return "\n".join(line for line in output.splitlines() if "[raft]" in line)[-6000:]


def train_until_a_checkpoint(
    tiny_bert, toy_data, tmp_path, name: str, scaling: dict
) -> tuple[subprocess.Popen, Path, int]:
    """`raft train` against the cluster, left running once its first checkpoint is complete:
    returns the driver, the run folder and the newest complete checkpoint's step."""
    document = base_spec(
        tiny_bert,
        toy_data,
        tmp_path,
        output={"name": name},
        train={"epochs": 1, "batch_size": 8, "checkpoint_every_n_steps": 5, "log_every_n_steps": 5},
        scaling=scaling,
    )
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(document))
    run_dir = tmp_path / "runs" / name
    driver = subprocess.Popen(
        [f"{BIN}/raft", "train", str(spec_file), "--address", f"127.0.0.1:{GCS_PORT}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env(),
    )
    deadline = time.monotonic() + 400
    while not complete_checkpoints(run_dir) and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert complete_checkpoints(run_dir), "no checkpoint before the deadline"
    return driver, run_dir, step_of(complete_checkpoints(run_dir)[-1])


def test_an_elastic_run_goes_on_with_the_workers_left_after_a_node_is_lost(
    cluster, tiny_bert, toy_data, tmp_path
):
    scaling = {"num_workers": [1, 2], "cpus_per_worker": 2, "max_failures": 1}
    driver, run_dir, killed_after = train_until_a_checkpoint(
        tiny_bert, toy_data, tmp_path, "node-loss", scaling
    )
    lost_at = time.monotonic()
    assert kill_node(2), "found no process of worker node 2"
    output, _ = driver.communicate(timeout=600)
    finished_at = time.monotonic()

    assert driver.returncode == 0, raft_lines(output)
    assert "workers on 2 node(s)" in output
    assert "saved by 2 workers, resuming with 1" in output, raft_lines(output)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert len(summary["worker_nodes"]) == 1
    resumed = summary["resumed_from"]
    assert resumed is not None and resumed["global_step"] >= killed_after >= 5
    # One worker now takes every batch: its steps are whole-data steps, twice as many.
    history = summary["history"]
    assert history[-1]["epoch"] == 1 and history[-1]["global_step"] > 38
    assert 0 < history[-1]["train_loss"] < 10 and history[-1]["val_rows"] == 120  # trained on, scored all
    # The learning-rate schedule, recounted at one worker's rate, ends with the run.
    schedule = f"learning-rate schedule: {history[-1]['global_step']} steps in all with 1 workers"
    assert schedule in output, raft_lines(output)
    print(
        f"\n[fault] node loss: checkpoint at step {killed_after}, resumed at step {resumed['global_step']} "
        f"with 1 worker; {finished_at - lost_at:.1f} s from the kill to the finished run"
    )


def start_node(index: int, cpus: int = 2) -> None:
    """Another worker node joins, as a replacement machine would."""
    started = cluster_script(
        "worker", f"127.0.0.1:{GCS_PORT}", "--ip", "127.0.0.1", "--cpus", str(cpus), "--ray-start-args",
        f"--temp-dir=/tmp/raft-node-{GCS_PORT}-{index} --dashboard-agent-listen-port={DASHBOARD_PORT + 100 + index} "
        f"--min-worker-port={11000 + 1000 * index} --max-worker-port={11999 + 1000 * index}",
    )  # fmt: skip
    assert started.returncode == 0, started.stdout + started.stderr


def test_a_fixed_size_run_waits_for_capacity_and_resumes_when_a_node_returns(
    cluster, tiny_bert, toy_data, tmp_path
):
    """Without elasticity, a run that lost a node waits (Ray Train retries placing its
    workers) and resumes from its last checkpoint once a replacement node joins."""
    start_node(3)  # node 2 was lost in the test above: node 1 and node 3 hold a worker each
    scaling = {"num_workers": 2, "cpus_per_worker": 1.5, "max_failures": 1}
    driver, run_dir, killed_after = train_until_a_checkpoint(
        tiny_bert, toy_data, tmp_path, "node-returns", scaling
    )
    lost_at = time.monotonic()
    assert kill_node(3), "found no process of worker node 3"
    time.sleep(10)  # no room for 2 workers now: the run waits
    assert driver.poll() is None, "the run gave up instead of waiting for capacity"
    start_node(4)
    output, _ = driver.communicate(timeout=600)
    finished_at = time.monotonic()

    assert driver.returncode == 0, raft_lines(output)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert len(summary["worker_nodes"]) == 2 and len(set(summary["worker_nodes"])) == 2
    resumed = summary["resumed_from"]
    assert resumed is not None and resumed["global_step"] >= killed_after >= 5
    assert summary["history"][-1]["global_step"] == 38  # 2 workers throughout: no step twice
    print(
        f"\n[fault] node lost, fixed size: checkpoint at step {killed_after}, resumed at step "
        f"{resumed['global_step']} on the returned capacity; {finished_at - lost_at:.1f} s from the kill to the finished run"
    )
