"""Task families. Each module registers itself; importing this package loads them all."""

from raft.tasks import sequence_classification, token_classification  # noqa: F401
