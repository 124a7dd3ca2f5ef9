"""Techniques. Each module registers itself; importing this package loads them all."""

from raft.techniques import freeze, full, ia3, lora, prefix_tuning, prompt_tuning  # noqa: F401
