"""The tune: section and the pure logic of a search (no Ray)."""

from __future__ import annotations

import csv
import io
import math

import pytest

from raft import search
from raft.spec import SpecError, validate

BASE = {
    "model": {"path": "model"},
    "task": {"type": "sequence_classification"},
    "technique": {"type": "lora", "r": 8, "dropout": 0.0},
    "data": {"train": "train.jsonl"},
}


def _problems(tune: dict) -> list[str]:
    with pytest.raises(SpecError) as caught:
        validate({**BASE, "tune": tune})
    return caught.value.problems


def test_a_valid_search_space_parses_every_distribution():
    spec = validate(
        {
            **BASE,
            "tune": {
                "metric": "val_accuracy",
                "scheduler": {"type": "asha"},
                "space": {
                    "train.lr": {"loguniform": [1e-5, 1e-3]},
                    "train.weight_decay": {"uniform": [0.0, 0.1]},
                    "train.batch_size": {"choice": [8, 16]},
                    "train.seed": {"randint": [0, 10]},
                    "technique.type": ["lora", "full"],  # a bare list is a choice
                },
            },
        }
    )
    space = spec.tune.space
    assert {k: d.kind for k, d in space.items()} == {
        "train.lr": "loguniform",
        "train.weight_decay": "uniform",
        "train.batch_size": "choice",
        "train.seed": "randint",
        "technique.type": "choice",
    }
    assert space["train.seed"].corners() == [0, 9]  # randint's high is excluded


@pytest.mark.parametrize(
    ("tune", "expected"),
    [
        ({"space": {"train.lrr": {"choice": [1e-3]}}}, "tune.space.train.lrr: not a key of the spec"),
        ({"space": {"train.lr": {"loguniform": [1e-3, 1e-5]}}}, "low must be below high"),
        ({"space": {"train.lr": {"loguniform": [0, 1e-3]}}}, "bounds must be positive"),
        ({"space": {"train.lr": {"normal": [0, 1]}}}, "unknown distribution 'normal'"),
        ({"space": {"train.batch_size": {"choice": [8, -1]}}}, "tune.space.train.batch_size = -1: "),
        ({"space": {"train.epochs": {"randint": [1.5, 3]}}}, "bounds must be integers"),
        (
            {"space": {"technique.type": ["lora", "bogus"]}},
            "tune.space.technique.type = 'bogus': technique: unknown type",
        ),
        (
            {"space": {"technique.num_virtual_tokens": [4, 8]}},
            "no technique in this search has a field 'num_virtual_tokens'",
        ),
        ({"space": {"train.lr": [1e-3]}, "metric": "val_bleu"}, "never report 'val_bleu'"),
        (
            {"space": {"train.lr": [1e-3]}, "scheduler": {"type": "asha"}},
            "asha acts on a metric; set tune.metric",
        ),
        ({"space": {"train.lr": [1e-3]}, "search": {"type": "optuna"}}, "optuna acts on a metric"),
        (
            {"space": {"train.lr": {"uniform": [0.1, 0.2]}}, "search": {"type": "grid"}},
            "grid search needs choice/grid",
        ),
        ({"space": {"train.lr": {"grid": [0.1, 0.2]}}}, "needs search.type: grid"),
        ({"space": {}}, "name at least one spec key"),
        ({"space": {"train.lr": [1e-3]}, "scheduler": {"type": "pbt"}}, "pbt acts on a metric"),
        (
            {"space": {"train.batch_size": [8, 16]}, "metric": "val_loss", "scheduler": {"type": "pbt"}},
            "pbt restarts trials from each other's checkpoints, so it can search only train.lr, train.max_grad_norm",
        ),
        (
            {
                "space": {"train.lr": [1e-3]},
                "metric": "val_loss",
                "scheduler": {"type": "pbt"},
                "search": {"type": "optuna"},
            },
            "pbt draws its own mutations",
        ),
        (
            {
                "space": {"train.lr": [1e-3]},
                "metric": "val_loss",
                "num_samples": 1,
                "scheduler": {"type": "pbt"},
            },
            "num_samples: pbt needs a population of at least 2 trials",
        ),
        (
            {
                "space": {"train.lr": [1e-3]},
                "metric": "val_loss",
                "max_concurrent_trials": 2,
                "scheduler": {"type": "pbt"},
            },
            "max_concurrent_trials: pbt trains its population of 4 trials together",
        ),
        (
            {
                "space": {"train.lr": [1e-3]},
                "metric": "val_loss",
                "scheduler": {"type": "pbt", "mutations": {"train.max_grad_norm": [0.5, 1.0]}},
            },
            "scheduler.mutations: train.max_grad_norm not in space",
        ),
    ],
)
def test_bad_searches_are_refused_with_the_key_and_the_reason(tune, expected):
    problems = _problems(tune)
    assert any(expected in p for p in problems), problems


def test_pbt_trains_its_whole_population_at_once():
    pbt = {"type": "pbt", "mutations": {"train.lr": {"loguniform": [1e-6, 1e-2]}}}
    grid = validate(
        {
            **BASE,
            "tune": {
                "metric": "val_loss",
                "num_samples": 2,
                "scheduler": pbt,
                "search": {"type": "grid"},
                "space": {"train.lr": {"grid": [1e-3, 1e-4, 1e-5]}},
            },
        }
    ).tune
    assert grid.population == 6 and grid.concurrency == 6  # max_concurrent_trials left out
    asha = grid.model_copy(update={"scheduler": search.AshaScheduler()})
    assert asha.population == 6 and asha.concurrency == 1
    assert grid.scheduler.mutations["train.lr"].kind == "loguniform"


def test_an_unknown_key_is_named_once_not_once_per_value():
    assert _problems({"space": {"train.lrr": {"loguniform": [1e-5, 1e-3]}}}) == [
        "tune.space.train.lrr: not a key of the spec (check the spelling; see the spec reference)"
    ]


def test_switching_technique_keeps_only_the_new_types_fields():
    document = validate({**BASE}).model_dump(mode="json")
    full = search.apply_params(document, {"technique.type": "full", "technique.r": 4, "train.lr": 1e-3})
    assert full["technique"] == {"type": "full"} and full["train"]["lr"] == 1e-3
    lora = search.apply_params(document, {"technique.type": "lora", "technique.r": 4})
    assert lora["technique"]["r"] == 4 and lora["technique"]["dropout"] == 0.0
    prompt = search.apply_params(document, {"technique": {"type": "prompt_tuning", "num_virtual_tokens": 4}})
    assert prompt["technique"] == {"type": "prompt_tuning", "num_virtual_tokens": 4}
    for trial in (full, lora, prompt):
        validate(trial)  # every one is a valid single-run spec
        assert "tune" not in trial
    assert document["technique"]["r"] == 8  # the base is not changed


def test_reported_metrics_follow_the_task():
    spec = validate(BASE)
    assert search.reported_metrics(spec) == ["train_loss", "val_accuracy", "val_loss", "val_macro_f1"]
    assert search.default_metric(spec) == "val_accuracy"
    assert [search.default_mode(m) for m in ("val_loss", "val_wer", "val_perplexity", "val_f1")] == [
        "min",
        "min",
        "min",
        "max",
    ]


def test_best_epoch_prefers_the_latest_of_equal_scores_and_skips_nan():
    history = [
        {"epoch": 1, "val_accuracy": 0.5},
        {"epoch": 2, "val_accuracy": 0.9},
        {"epoch": 3, "val_accuracy": 0.9},
        {"epoch": 4, "val_accuracy": math.nan},
    ]
    assert search.best_epoch(history, "val_accuracy", "max")["epoch"] == 3
    assert search.best_epoch(history, "val_accuracy", "min")["epoch"] == 1
    assert search.best_epoch([{"epoch": 1}], "val_accuracy", "max") is None


def test_leaderboard_ranks_best_first_and_errored_last():
    rows = [
        {"trial": "a", "best": 0.7, "params": {"train.lr": 1e-3}},
        {"trial": "b", "best": None, "params": {"train.lr": 1e-2}},
        {"trial": "c", "best": 0.9, "params": {"train.lr": 1e-4}},
    ]
    assert [r["trial"] for r in search.rank(rows, "max")] == ["c", "a", "b"]
    assert [r["trial"] for r in search.rank(rows, "min")] == ["a", "c", "b"]
    ranked = search.rank(rows, "max")
    for place, row in enumerate(ranked, start=1):
        row.update(rank=place, status="finished", epochs=2, stopped_early=False, attempts=1, wall_s=1.0)
    table = search.leaderboard_table(ranked, ["train.lr"], "val_accuracy")
    assert table.splitlines()[2].split()[:4] == ["1", "c", "0.0001", "0.9000"]
    parsed = list(csv.DictReader(io.StringIO(search.leaderboard_csv(ranked, ["train.lr"]))))
    assert [(r["rank"], r["trial"], r["train.lr"]) for r in parsed] == [
        ("1", "c", "0.0001"),
        ("2", "a", "0.001"),
        ("3", "b", "0.01"),
    ]
