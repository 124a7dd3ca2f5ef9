"""Techniques. Each module registers itself; importing this package loads them all."""

from raft.techniques import freeze, full, lora, prompt_tuning  # noqa: F401
