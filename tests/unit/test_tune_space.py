"""raft.tune's translation of the tune: section into Ray Tune's space and searchers. No
cluster: Tune's searchers suggest configs without one, and each suggestion must decode
into a valid single-run spec."""

from __future__ import annotations

import pytest

from raft import search
from raft.spec import validate
from raft.tune import decode, param_space

BASE = {
    "model": {"path": "model"},
    "task": {"type": "sequence_classification"},
    "technique": {"type": "lora", "r": 8},
    "data": {"train": "train.jsonl"},
}
SPACE = {
    "train.lr": {"loguniform": [1e-5, 1e-2]},
    "train.batch_size": {"choice": [8, 16]},
    "train.seed": {"randint": [0, 5]},
    "technique.type": {"choice": ["lora", "full"]},
    "technique.r": {"choice": [4, 16]},
    # sections go by index: Tune and Optuna sample plain values
    "deepspeed.config": {"choice": [{}, {"gradient_clipping": 0.5}]},
}


def _check_trial(spec, config):
    params = decode(config, spec.tune)
    trial = validate(search.apply_params(spec.model_dump(mode="json"), params))
    assert 1e-5 <= trial.train.lr <= 1e-2 and trial.train.batch_size in (8, 16) and 0 <= trial.train.seed < 5
    assert trial.deepspeed.config in ({}, {"gradient_clipping": 0.5})
    if trial.technique.type == "lora":
        assert trial.technique.r == params["technique.r"]
    return trial


def _variants(space: dict, count: int, seed: int) -> list[dict]:
    """What Tune's BasicVariantGenerator draws: ``count`` samples (each a full grid)."""
    import numpy as np
    from ray.tune.search.variant_generator import generate_variants

    rng = np.random.RandomState(seed)
    return [
        resolved["config"]
        for _ in range(count)
        for _, resolved in generate_variants({"config": space}, random_state=rng)
    ]


def test_optuna_suggestions_decode_into_valid_trial_specs():
    from ray.tune.search.optuna import OptunaSearch

    spec = validate(
        {**BASE, "tune": {"metric": "val_accuracy", "search": {"type": "optuna"}, "space": SPACE}}
    )
    searcher = OptunaSearch(seed=0)
    assert searcher.set_search_properties("val_accuracy", "max", param_space(spec.tune))
    trials = [_check_trial(spec, searcher.suggest(f"trial{i}")) for i in range(12)]
    assert {t.technique.type for t in trials} == {"lora", "full"}
    assert len({t.train.lr for t in trials}) == 12


def test_random_search_is_seeded_and_grid_search_covers_every_combination():
    def draw(document, count):
        spec = validate(document)
        return spec, _variants(param_space(spec.tune), count, spec.tune.search.seed)

    random_doc = {**BASE, "tune": {"search": {"type": "random", "seed": 3}, "space": SPACE}}
    spec, first = draw(random_doc, 6)
    _, again = draw(random_doc, 6)
    assert first == again and len(first) == 6
    for config in first:
        _check_trial(spec, config)

    grid = {
        "train.batch_size": {"grid": [8, 16]},
        "technique.type": {"grid": ["lora", "full"]},
        "deepspeed.config": {"grid": [{}, {"gradient_clipping": 0.5}]},
    }
    spec, configs = draw({**BASE, "tune": {"search": {"type": "grid"}, "space": grid}}, 1)
    combos = {
        (p["train.batch_size"], p["technique.type"], str(p["deepspeed.config"]))
        for p in map(lambda c: decode(c, spec.tune), configs)
    }
    assert len(configs) == len(combos) == 8


@pytest.mark.parametrize("kind", ["uniform", "loguniform", "randint"])
def test_ranges_stay_within_their_bounds(kind):

    spec = (
        validate({**BASE, "tune": {"space": {"train.epochs": {kind: [1, 4]}}}}) if kind == "randint" else None
    )
    spec = spec or validate({**BASE, "tune": {"space": {"train.warmup_ratio": {kind: [0.01, 0.5]}}}})
    values = [v for c in _variants(param_space(spec.tune), 20, 0) for v in decode(c, spec.tune).values()]
    low, high = (1, 4) if kind == "randint" else (0.01, 0.5)
    assert len(values) == 20 and all(
        low <= v < high if kind == "randint" else low <= v <= high for v in values
    )
