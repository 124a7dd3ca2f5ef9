"""ASHA against FIFO on the same search: total training epochs each spends, whether each
finds a trial that reaches the target metric, and the search's own overhead.
Results: benchmarks/results/tune_asha_vs_fifo.json (read by `python -m benchmarks`).

    python benchmarks/tune_asha_vs_fifo.py                # 8 trials × 9 epochs each way (~20 min here)
    python benchmarks/tune_asha_vs_fifo.py --metric val_accuracy --target 0.95

Both searches draw the same trials (random search, same seed) over the learning rate
(log-uniform 1e-6..1e-2) and the technique (LoRA or full) of a tiny BERT on the toy
sentiment task, one worker per trial, one trial at a time. FIFO runs every trial to the
end; ASHA (grace period 1, reduction factor 3: rungs at epochs 1, 3 and 9) stops trials
that trail at each rung. With one trial at a time ASHA is at its weakest: the first trials
meet empty rungs and run on, so the saving comes from the trials after them.

The default metric is val_loss (target 0.1): on this toy task accuracy ties at the
majority class (0.408) for every trial that has not learned yet, and ASHA only stops a
trial strictly below a rung's cutoff, so it cannot tell those trials apart by accuracy.

Overhead: the search's wall time against the sum of its trials' own times divided by the
concurrency (what a perfect scheduler with no start-up or bookkeeping would take).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(scheduler: str, args: argparse.Namespace, root: Path, model: Path, data: dict) -> dict:
    from raft import search
    from raft.spec import validate
    from raft.tune import run_search

    spec = validate(
        {
            "model": {"path": str(model)},
            "task": {"type": "sequence_classification", "max_length": 16},
            "data": {"train": str(data["train"]), "validation": str(data["validation"])},
            "train": {"epochs": args.epochs, "batch_size": 16, "log_every_n_steps": 1000},
            "scaling": {"num_workers": 1},
            "output": {"dir": str(root / "runs"), "name": scheduler},
            "tune": {
                "metric": args.metric,
                "mode": search.default_mode(args.metric),
                "num_samples": args.trials,
                "max_concurrent_trials": 1,
                "scheduler": {
                    "type": scheduler,
                    **(
                        {"grace_period": 1, "reduction_factor": args.reduction_factor}
                        if scheduler == "asha"
                        else {}
                    ),
                },
                "search": {"type": "random", "seed": args.seed},
                "space": {"train.lr": {"loguniform": [1e-6, 1e-2]}, "technique.type": ["lora", "full"]},
            },
        }
    )
    started = time.perf_counter()
    outcome = run_search(spec)
    wall = time.perf_counter() - started
    board = outcome.leaderboard
    trial_seconds = sum(row["wall_s"] for row in board)
    return {
        "scheduler": scheduler,
        "trials": len(board),
        "total_epochs": sum(row["epochs"] for row in board),
        "stopped_early": sum(row["stopped_early"] for row in board),
        "best": board[0]["best"],
        "reached_target": board[0]["best"] is not None
        and (
            board[0]["best"] >= args.target
            if search.default_mode(args.metric) == "max"
            else board[0]["best"] <= args.target
        ),
        "wall_s": round(wall, 1),
        "sum_trial_s": round(trial_seconds, 1),
        "overhead_ratio": round(wall / (trial_seconds / 1), 2),  # one trial at a time
        "configs": sorted((round(r["params"]["train.lr"], 8), r["params"]["technique.type"]) for r in board),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=9)
    parser.add_argument("--reduction-factor", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--metric", default="val_loss", help="what ASHA compares trials by")
    parser.add_argument("--target", type=float, default=0.1, help="the metric's value a search must reach")
    parser.add_argument("--output", default=str(ROOT / "benchmarks/results/tune_asha_vs_fifo.json"))
    args = parser.parse_args()

    import ray

    from raft.resources import LOCAL_SYSTEM_CONFIG
    from raft.testing import make_tiny_model, toy_sentiment_rows, write_jsonl

    root = Path(tempfile.mkdtemp(prefix="raft-tune-bench-"))
    model = make_tiny_model(root / "tiny-bert")
    data = {
        "train": write_jsonl(toy_sentiment_rows(600, seed=0), root / "train.jsonl"),
        "validation": write_jsonl(toy_sentiment_rows(120, seed=1), root / "validation.jsonl"),
    }
    ray.init(
        address="local",
        num_cpus=3,
        include_dashboard=True,
        logging_level="WARNING",
        _system_config=LOCAL_SYSTEM_CONFIG,
    )
    results = [run(name, args, root, model, data) for name in ("fifo", "asha")]
    ray.shutdown()

    fifo, asha = results
    assert fifo["configs"] == asha["configs"], "the two searches drew different trials"
    print(
        f"\nmetric {args.metric}, target {args.target}; {args.trials} trials × {args.epochs} epochs; "
        f"ASHA grace 1, reduction factor {args.reduction_factor:g}"
    )
    print("scheduler  trials  epochs  stopped  best    target  wall s  Σ trial s  wall/Σ")
    for r in results:
        print(
            f"{r['scheduler']:<9}  {r['trials']:>6}  {r['total_epochs']:>6}  {r['stopped_early']:>7}  "
            f"{r['best']:.4f}  {'yes' if r['reached_target'] else 'no':<6}  {r['wall_s']:>6.0f}  "
            f"{r['sum_trial_s']:>9.0f}  {r['overhead_ratio']:>6.2f}"
        )
    ratio = asha["total_epochs"] / fifo["total_epochs"]
    print(
        f"\nASHA used {asha['total_epochs']} epochs, FIFO {fifo['total_epochs']}: ratio {ratio:.2f} (target ≤ 0.50)"
    )
    result = {
        "metric": args.metric,
        "target": args.target,
        "trials": args.trials,
        "epochs": args.epochs,
        "reduction_factor": args.reduction_factor,
        "seed": args.seed,
        "results": results,
        "epoch_ratio": round(ratio, 3),
    }
    print("RESULT " + json.dumps(result))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
