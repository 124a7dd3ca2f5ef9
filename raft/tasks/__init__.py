"""Task families. Each module registers itself; importing this package loads them all."""

from raft.tasks import (  # noqa: F401
    causal_lm,
    image_classification,
    image_text,
    seq2seq,
    sequence_classification,
    speech_recognition,
    token_classification,
)
