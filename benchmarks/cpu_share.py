"""Who uses the CPU while raft trains: every process's CPU time over a window of a run,
grouped into Train workers, Ray Data, Ray's control plane and the rest.

    python benchmarks/cpu_share.py SPEC.yaml [--after 90] [--seconds 20] [--top 6]

Starts ``raft train SPEC.yaml``, waits ``--after`` seconds (pick a time inside the steady
epoch: the run's log, printed at the end, says when epochs ran), samples the CPU time of
every process on the machine for ``--seconds``, prints the cores each group used, then
waits for the run to finish. On a machine with as many cores as Train workers, whatever
the other groups use is taken from the workers: this is how the gap between raft and a
plain DDP loop (which has no other processes) was traced to Ray's own processes.

    python benchmarks/cpu_share.py SPEC.yaml --to-first-step [--top 30]

Start-up instead: samples every process started after the command, every 0.2 s, until the
run ends, and counts each one's CPU time up to the run's first optimizer step (the
``timeline`` in its summary.json; use a spec with ``train.eval_before_training: false`` to
compare with the plain script). Set against the wall time to the first step, the total says
how much of the start-up a machine of this many cores spends computing rather than waiting.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import psutil

GROUPS = (
    ("Train workers", ("ray::RayTrainWorker",)),
    ("raft driver", ("bin/raft train",)),
    (
        "Ray Data",
        (
            # Pooled workers run Ray Data's read and preprocessing tasks (named after the
            # task while it runs, ray::IDLE between tasks).
            "ray::IDLE",
            "ray::Read",
            "ray::Map",
            "ray::SplitCoordinator",
            "ray::DatasetManager",
            "ray::MapBatches",
            "ray::ReadFiles",
            "ray::_StatsActor",
            # A random_shuffle's map and reduce tasks (data.shuffle: global, each epoch),
            # and streaming_split's equalizing of the shards.
            "ray::map",
            "ray::reduce",
            "ray::_split_single_block",
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
            "ray::",
        ),
    ),
)


def group_of(command: str) -> str:
    for name, markers in GROUPS:
        if any(marker in command for marker in markers):
            return name
    return "other"


def cpu_times(since: float = 0.0) -> dict[int, tuple[float, str]]:
    """pid → (user + system CPU seconds, its command line) for every process we may read
    (``since``: only those created after that time)."""
    out = {}
    for process in psutil.process_iter(["pid", "cmdline", "name", "cpu_times", "create_time"]):
        info = process.info
        times = info.get("cpu_times")
        if times is None or (info.get("create_time") or 0.0) < since:
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
    parser.add_argument(
        "--to-first-step",
        action="store_true",
        help="count every new process's CPU from the start to the first optimizer step instead",
    )
    args = parser.parse_args()
    raft = [str(Path(sys.executable).parent / "raft"), "train", str(args.spec)]
    log_path = Path("/tmp") / f"cpu_share-{int(time.time())}.log"
    if args.to_first_step:
        return to_first_step(raft, log_path, args.top)
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


def _telling(command: str) -> tuple[bool, bool, int]:
    return (
        command.startswith("ray::") and not command.startswith("ray::IDLE"),
        command.startswith("ray::"),
        len(command),
    )


def to_first_step(raft: list[str], log_path: Path, top: int) -> int:
    """CPU seconds of every process the run started, from the command to its first step."""
    started = time.time()
    samples: dict[int, list[tuple[float, float]]] = {}  # pid → [(when, CPU seconds)]
    commands: dict[int, str] = {}
    own = psutil.Process().pid
    with open(log_path, "w") as log:
        process = subprocess.Popen(raft, stdout=log, stderr=subprocess.STDOUT)
        while process.poll() is None:
            now = time.time()
            for pid, (used, command) in cpu_times(since=started - 1).items():
                if pid == own:
                    continue
                samples.setdefault(pid, []).append((now, used))
                # The most telling name seen: an actor's or task's title (ray::<name>) over
                # ray::IDLE (a worker between tasks, or an actor's as it exits) over the
                # command line a worker starts with; the longest, as an exiting process's
                # title shrinks to its 15-byte name.
                commands[pid] = max(commands.get(pid, ""), command, key=_telling)
            time.sleep(0.2)
    text = log_path.read_text()
    if process.returncode != 0:
        print(f"run exit {process.returncode}; log {log_path}")
        return process.returncode
    run_dir = next(
        line.split("→")[-1].strip() for line in text.splitlines() if line.startswith("[raft] run ")
    )
    timeline = json.loads((Path(run_dir) / "summary.json").read_text())["timeline"]
    if "first_step" not in timeline:
        print(f"the run's timeline has no first step: {sorted(timeline)}; log {log_path}")
        return 1
    cut = timeline["first_step"]
    used = {
        pid: max(cpu for when, cpu in series if when <= cut)
        for pid, series in samples.items()
        if any(when <= cut for when, _ in series)
    }
    total = sum(used.values())
    wall = cut - started
    print(
        f"command start → first step: {wall:.1f} s; {total:.1f} CPU seconds in {len(used)} processes "
        f"started by the run ({total / wall:.2f} of {psutil.cpu_count()} cores on average)"
    )
    print("stages:", {name: round(stamp - started, 1) for name, stamp in timeline.items()})
    groups: dict[str, list[tuple[float, int, str]]] = {}
    for pid, cpu in used.items():
        command = commands[pid]
        groups.setdefault(group_of(command), []).append((cpu, pid, command[:110]))
    for name, members in sorted(groups.items(), key=lambda item: -sum(m[0] for m in item[1])):
        print(f"{name:18s} {sum(m[0] for m in members):6.1f} CPU s in {len(members)} processes")
        for cpu, pid, command in sorted(members, reverse=True)[:top]:
            print(f"    {cpu:6.2f}  {pid:>7}  {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
