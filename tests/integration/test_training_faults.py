"""Training faults injected for real on the local Ray cluster: a Train worker SIGKILLed
mid-epoch, the `raft train` driver SIGKILLed after a checkpoint, a damaged checkpoint.

Each test asserts what is lost: at most the steps since the last complete checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from raft.spec import validate
from raft.train import TrainingFailed, fit
from tests.helpers import base_spec

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def complete_checkpoints(run_dir: Path, world_size: int = 2) -> list[Path]:
    """Checkpoints whose every rank has published its manifest, oldest first."""
    return sorted(
        p
        for p in run_dir.glob("checkpoint_*")
        if len(list(p.glob(".raft/manifest-rank-*.json"))) == world_size
    )


def step_of(checkpoint: Path) -> int:
    return json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]


def train_worker_pids() -> list[int]:
    import ray
    from ray.util.state import list_actors

    actors = list_actors(
        address=ray.get_runtime_context().gcs_address,  # this cluster, even beside another
        filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
        detail=True,
    )
    return sorted(int(a.pid) for a in actors)


class KillAtFirstCheckpoint(threading.Thread):
    """Waits for the run's first complete checkpoint, then SIGKILLs one Train worker; then
    times the recovery: how long until the restarted run publishes a later checkpoint."""

    def __init__(self, run_dir: Path):
        super().__init__(daemon=True)
        self.run_dir, self.killed_pid, self.checkpoint_step, self.killed_at = run_dir, None, None, None
        self.first_checkpoint_at: float | None = None  # since the thread started
        self.next_checkpoint_after_kill: float | None = None  # seconds from the kill
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            self._kill_at_first_checkpoint()
            self._time_the_recovery()
        except Exception as error:  # reported by the test's assertions, not lost in a thread
            self.error = error

    def _kill_at_first_checkpoint(self) -> None:
        started = time.monotonic()
        deadline = started + 300
        while time.monotonic() < deadline:
            done = complete_checkpoints(self.run_dir)
            if done:
                pids = train_worker_pids()
                if pids:
                    self.checkpoint_step = step_of(done[0])
                    self.killed_pid = pids[-1]
                    os.kill(self.killed_pid, signal.SIGKILL)
                    self.killed_at = time.monotonic()
                    self.first_checkpoint_at = self.killed_at - started
                    return
            time.sleep(0.05)

    def _time_the_recovery(self) -> None:
        seen = {p.name for p in complete_checkpoints(self.run_dir)}
        while time.monotonic() < self.killed_at + 300:
            new = [p for p in complete_checkpoints(self.run_dir) if p.name not in seen]
            if new:
                self.next_checkpoint_after_kill = time.monotonic() - self.killed_at
                return
            time.sleep(0.1)


def fault_spec(tiny_bert, toy_data, tmp_path, name: str, **sections) -> dict:
    # 600 rows, 2 workers, batch 8: 38 steps in the one epoch, a checkpoint every 5 steps.
    return base_spec(
        tiny_bert,
        toy_data,
        tmp_path,
        output={"name": name},
        train={"epochs": 1, "batch_size": 8, "checkpoint_every_n_steps": 5, "log_every_n_steps": 5},
        **sections,
    )


def test_worker_killed_mid_epoch_resumes_from_its_last_checkpoint(tiny_bert, toy_data, tmp_path):
    # The training file also has three bad rows, skipped and reported with the metrics.
    noisy = tmp_path / "train.jsonl"
    bad = ['{"text": "great fun", "label":', '{"text": "a fine film"}', '{"text": "  ", "label": "positive"}']
    noisy.write_text(toy_data["train"].read_text() + "\n".join(bad) + "\n")
    document = fault_spec(
        tiny_bert, {**toy_data, "train": noisy}, tmp_path, "worker-kill", scaling={"max_failures": 1}
    )
    document["data"]["on_bad_rows"] = "skip"
    # Two epochs: the toy task is learned late in the first, and a restart's dropout draws
    # differ from an unbroken run's, so one epoch may end before it clicks.
    document["train"]["epochs"] = 2
    killer = KillAtFirstCheckpoint(tmp_path / "runs" / "worker-kill")
    killer.start()
    outcome = fit(validate(document))
    killer.join(timeout=5)
    assert killer.killed_pid is not None, f"no worker was killed ({killer.error})"
    assert killer.killed_pid not in train_worker_pids()

    resumed = outcome.summary["resumed_from"]
    assert resumed is not None, "the run restarted from scratch"
    # Resumed mid-epoch 1 from a step checkpoint at or after the one seen at the kill
    # (a later one may have landed before the worker died), never from step 0.
    assert resumed["epoch"] == 0 and resumed["global_step"] >= killer.checkpoint_step > 0
    # No step trained twice and none skipped: the step counter ends where an unbroken run ends.
    assert [h["epoch"] for h in outcome.history] == [0, 1, 2]
    assert outcome.history[-1]["global_step"] == 2 * 38
    assert outcome.history[-1]["val_loss"] < outcome.history[0]["val_loss"]
    skipped = {"bad_json": 1, "missing_column": 1, "empty_text": 1}
    assert outcome.summary["skipped_rows"] == {"data.train": skipped}
    assert {k: v for k, v in outcome.history[-1].items() if k.startswith("skipped_")} == {
        f"skipped_train_{reason}": count for reason, count in skipped.items()
    }
    print(
        f"\n[fault] worker kill: checkpoint at step {killer.checkpoint_step}, resumed at step "
        f"{resumed['global_step']}; the next checkpoint came {killer.next_checkpoint_after_kill:.1f} s "
        f"after the kill (the first took {killer.first_checkpoint_at:.1f} s from the start of fit); "
        f"{outcome.summary['wall_seconds']:.1f} s wall in all"
    )


def test_lost_worker_without_restarts_fails_naming_it(tiny_bert, toy_data, tmp_path):
    document = fault_spec(tiny_bert, toy_data, tmp_path, "no-restarts", scaling={"max_failures": 0})
    killer = KillAtFirstCheckpoint(tmp_path / "runs" / "no-restarts")
    killer.start()
    with pytest.raises(TrainingFailed) as failure:
        fit(validate(document))
    killer.join(timeout=5)
    message = str(failure.value)
    assert killer.killed_pid is not None, f"no worker was killed ({killer.error})"
    assert f"pid {killer.killed_pid}" in message and "was lost" in message, message
    assert "scaling.max_failures" in message
    assert not (tmp_path / "runs" / "no-restarts" / "model").exists()
    print(f"\n[fault] max_failures 0: {message.splitlines()[0]}")


def raft_train(spec_file: Path, *args: str) -> list[str]:
    import ray

    return [
        str(BIN / "raft"),
        "train",
        str(spec_file),
        "--address",
        ray.get_runtime_context().gcs_address,
        *args,
    ]


def test_driver_killed_the_same_command_resumes_past_a_damaged_checkpoint(tiny_bert, toy_data, tmp_path):
    """`raft train` SIGKILLed after two checkpoints; the newest is then damaged on disk.
    The same command resumes from the older, complete one; once finished, it trains no more."""
    document = fault_spec(tiny_bert, toy_data, tmp_path, "driver-kill")
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(document))
    run_dir = tmp_path / "runs" / "driver-kill"

    driver = subprocess.Popen(raft_train(spec_file), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while len(complete_checkpoints(run_dir)) < 2 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    older, newest = complete_checkpoints(run_dir)[-2:]
    # (read now: once the resumed run checkpoints past them, retention deletes both)
    older_step, newest_step = step_of(older), step_of(newest)
    assert older_step < newest_step < 38 and not (run_dir / "model").exists()
    for _ in range(120):  # the killed driver's workers go with it
        if not train_worker_pids():
            break
        time.sleep(0.5)
    assert not train_worker_pids()

    weights = newest / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated, as by a full disk

    started = time.monotonic()
    again = subprocess.run(raft_train(spec_file), capture_output=True, text=True, timeout=600)
    output = again.stdout + again.stderr
    assert again.returncode == 0, output[-3000:]
    assert f"{newest.name} is damaged (model/model.safetensors: 100 bytes" in output, output[-3000:]
    assert f"resumed from {older.name}: epoch 0, step {older_step}" in output
    # Live progress on the driver; Ray's and the workers' own output stays in Ray's logs.
    assert re.search(
        r"\[raft\] epoch 1/1 · step \d+/38 \(\d+%\) · loss [\d.]+ · lr [\d.e+-]+ · [\d.]+ samples/s · ETA",
        output,
    ), output[-3000:]
    assert "(RayTrainWorker" not in output and "(TrainController" not in output, output[-3000:]
    # metrics.jsonl keeps what the killed driver recorded (its start and the evaluation
    # before training) and goes on with the rerun's.
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events].count("start") == 2
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [0, 1]
    logs = re.search(r"\[raft\] Ray's and DeepSpeed's logs: (\S+) \(--verbose shows them here\)", output)
    assert logs and list(Path(logs.group(1)).glob("worker-*.out")), output[-3000:]  # the full logs, on disk
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed_from"] == {"epoch": 0, "global_step": older_step, "checkpoint": older.name}
    assert summary["history"][-1]["global_step"] == 38
    print(
        f"\n[fault] driver kill: killed after step {newest_step}, newest damaged, resumed at step "
        f"{older_step}; the rerun took {time.monotonic() - started:.1f} s"
    )

    exported = sorted(p.name for p in (run_dir / "model").iterdir())
    finished = subprocess.run(raft_train(spec_file), capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0 and "already finished" in finished.stdout, (
        finished.stdout + finished.stderr
    )
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    assert sorted(p.name for p in (run_dir / "model").iterdir()) == exported
