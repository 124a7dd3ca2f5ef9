"""Layer freezing: train the top of the network, keep the embeddings and lower layers.

Layers are found by name (``...layer.3.``, ``...layers.3.``, ``...h.3.``, ``...block.3.``),
which covers BERT, GPT-2, Llama, T5 and ViT style models without a per-architecture table.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Literal

import torch
from pydantic import Field, NonNegativeInt, model_validator

from raft.registry import TechniqueSpec, register_technique
from raft.tasks.base import Task

_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")


class FreezeSpec(TechniqueSpec):
    type: Literal["freeze"] = "freeze"
    embeddings: bool = Field(True, description="Freeze the token/position embeddings.")
    lowest_layers: NonNegativeInt = Field(0, description="Freeze this many of the lowest transformer layers.")
    patterns: list[str] = Field(
        default_factory=list,
        description="Also freeze parameters whose names match any of these glob patterns, "
        "e.g. 'bert.encoder.layer.*.attention.*'.",
    )
    parts: list[str] = Field(
        default_factory=list,
        description="Also freeze these named parts of the model: 'vision' or 'text' (the "
        "towers of an image-text model), 'encoder' or 'decoder' (speech and seq2seq models).",
    )

    @model_validator(mode="after")
    def _freezes_something(self) -> FreezeSpec:
        if not self.embeddings and self.lowest_layers == 0 and not self.patterns and not self.parts:
            raise ValueError(
                "freeze freezes nothing: set embeddings, lowest_layers, patterns or parts (or use 'full')"
            )
        return self


def frozen_parameter_names(model: torch.nn.Module, spec: FreezeSpec, task: Task | None = None) -> set[str]:
    """Names of the parameters ``spec`` freezes (pure; used by apply and by tests).
    ``parts`` are looked up in ``task.model_parts``."""
    patterns = list(spec.patterns)
    for part in spec.parts:
        known = getattr(task, "model_parts", {})
        if part not in known:
            raise ValueError(f"technique.parts: {part!r} is not a part of this model; known: {sorted(known)}")
        patterns += known[part]
    embedding_ids: set[int] = set()
    get_embeddings = getattr(model, "get_input_embeddings", None)
    try:  # two-tower models (CLIP) have no single input embedding
        embeddings = get_embeddings() if spec.embeddings and get_embeddings is not None else None
    except NotImplementedError:
        embeddings = None
    if embeddings is not None:
        embedding_ids = {id(p) for p in embeddings.parameters()}
    frozen = set()
    for name, parameter in model.named_parameters():
        match = _LAYER_INDEX.search(name)
        if (
            (spec.embeddings and (id(parameter) in embedding_ids or ".embeddings." in f".{name}"))
            or (match is not None and int(match.group(1)) < spec.lowest_layers)
            or any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
        ):
            frozen.add(name)
    return frozen


@register_technique(FreezeSpec)
def apply(model: torch.nn.Module, spec: FreezeSpec, task: Task) -> torch.nn.Module:
    frozen = frozen_parameter_names(model, spec, task)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name not in frozen)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("technique.freeze froze every parameter; nothing would train")
    return model
