"""Who uses the CPU while raft trains: every process's CPU time over a window of a run,
grouped into Train workers, Ray Data, Ray's control plane and the rest.

    python benchmarks/cpu_share.py SPEC.yaml [--after 90] [--seconds 20] [--top 6]

Starts ``raft train SPEC.yaml``, waits ``--after`` seconds (pick a time inside the steady
epoch: the run's log, printed at the end, says when epochs ran), samples the CPU time of
every process on the machine for ``--seconds``, prints the cores each group used, then
waits for the run to finish. On a machine with as many cores as Train workers, whatever
the other groups use is taken from the workers: this is how the gap between raft and a
plain DDP loop (which has no other processes) was traced to Ray's own processes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import psutil

GROUPS = (
    ("Train workers", ("ray::RayTrainWorker",)),
    (
        "Ray Data",
        (
            "ray::SplitCoordinator",
            "ray::DatasetManager",
            "ray::MapBatches",
            "ray::ReadFiles",
            "ray::_StatsActor",
        ),
    ),
    (
        "Ray control plane",
        (
            "gcs_server",
            "raylet",
            "dashboard",
            "log_monitor",
            "monitor.py",
            "ray::TrainController",
            "ray::PlacementGroupCleaner",
            "ray::SynchronizationActor",
            "ray::_AutoscalingCoordinatorActor",
            "ray::IDLE",
            "ray::",
            "raft train",
        ),
    ),
)


def group_of(command: str) -> str:
    for name, markers in GROUPS:
        if any(marker in command for marker in markers):
            return name
    return "other"


def cpu_times() -> dict[int, tuple[float, str]]:
    """pid → (user + system CPU seconds, its command line) for every process we may read."""
    out = {}
    for process in psutil.process_iter(["pid", "cmdline", "name", "cpu_times"]):
        info = process.info
        times = info.get("cpu_times")
        if times is None:
            continue
        command = " ".join(info.get("cmdline") or []) or (info.get("name") or "")
        out[info["pid"]] = (times.user + times.system, command)
    return out


def share(before: dict, after: dict, seconds: float) -> dict[str, dict]:
    """Cores used per group (and its busiest processes) between two cpu_times snapshots."""
    groups: dict[str, dict] = {}
    for pid, (used, command) in after.items():
        delta = used - before.get(pid, (0.0, command))[0]
        if delta <= 0:
            continue
        group = groups.setdefault(group_of(command), {"cores": 0.0, "processes": []})
        group["cores"] += delta / seconds
        group["processes"].append((delta / seconds, pid, command[:120]))
    for group in groups.values():
        group["processes"].sort(reverse=True)
    return groups


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("spec", type=Path)
    parser.add_argument("--after", type=float, default=90.0, help="seconds from the start to the window")
    parser.add_argument("--seconds", type=float, default=20.0, help="the window's length")
    parser.add_argument("--top", type=int, default=6, help="processes listed per group")
    args = parser.parse_args()
    raft = [str(Path(sys.executable).parent / "raft"), "train", str(args.spec)]
    log_path = Path("/tmp") / f"cpu_share-{int(time.time())}.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(raft, stdout=log, stderr=subprocess.STDOUT)
        time.sleep(args.after)
        if process.poll() is not None:
            print(f"the run ended before the window (exit {process.returncode}); log {log_path}")
            return 1
        before = cpu_times()
        time.sleep(args.seconds)
        groups = share(before, cpu_times(), args.seconds)
        code = process.wait()
    total = sum(g["cores"] for g in groups.values())
    print(
        f"{total:.2f} cores used from {args.after:.0f} s to {args.after + args.seconds:.0f} s "
        f"({psutil.cpu_count()} on the machine)"
    )
    for name, group in sorted(groups.items(), key=lambda item: -item[1]["cores"]):
        print(f"{name:18s} {group['cores']:5.2f} cores")
        for cores, pid, command in group["processes"][: args.top]:
            print(f"    {cores:5.3f}  {pid:>7}  {command}")
    epochs = [line.strip() for line in log_path.read_text().splitlines() if "[raft] epoch" in line]
    print(f"run exit {code}; log {log_path}")
    print("\n".join(epochs))
    return code


if __name__ == "__main__":
    sys.exit(main())
