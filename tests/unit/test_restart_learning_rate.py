"""A run restarted from another run's checkpoint with a new train.lr (population-based
training) goes on along the restored schedule, scaled to the new peak."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import get_scheduler

from raft.worker import _apply_learning_rate


def _engine(lr: float, kind: str) -> SimpleNamespace:
    optimizer = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=lr)
    schedule = get_scheduler(kind, optimizer, num_warmup_steps=2, num_training_steps=10)
    return SimpleNamespace(lr_scheduler=schedule, optimizer=optimizer)


@pytest.mark.parametrize("kind", ["linear", "constant_with_warmup", "cosine"])
def test_the_restored_schedule_goes_on_at_the_new_peak(kind):
    restored, fresh = _engine(1e-3, kind), _engine(4e-3, kind)
    for engine in (restored, fresh):
        for _ in range(5):
            engine.optimizer.step()
            engine.lr_scheduler.step()
    _apply_learning_rate(restored, 4e-3)  # the checkpoint was saved at peak 1e-3
    for _ in range(3):
        assert restored.optimizer.param_groups[0]["lr"] == pytest.approx(
            fresh.optimizer.param_groups[0]["lr"]
        )
        for engine in (restored, fresh):
            engine.optimizer.step()
            engine.lr_scheduler.step()
    assert restored.lr_scheduler.get_last_lr() == pytest.approx(fresh.lr_scheduler.get_last_lr())


def test_a_plain_resume_is_left_as_it_was():
    engine = _engine(1e-3, "linear")
    for _ in range(4):
        engine.optimizer.step()
        engine.lr_scheduler.step()
    before = engine.optimizer.param_groups[0]["lr"]
    _apply_learning_rate(engine, 1e-3)
    assert engine.optimizer.param_groups[0]["lr"] == pytest.approx(before)
