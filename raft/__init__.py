"""raft: fine-tune pretrained Transformers on Ray (Data, Train + DeepSpeed, Tune, Serve)."""

__version__ = "0.1.0"
