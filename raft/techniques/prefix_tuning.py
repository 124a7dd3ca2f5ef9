"""Prefix tuning (peft, P-tuning v2): learned key/value prefixes in every attention layer;
the pretrained model stays frozen. For classification the new task head trains as well.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, PositiveInt

from raft.registry import TechniqueSpec, register_technique
from raft.tasks.base import Task


class PrefixTuningSpec(TechniqueSpec):
    type: Literal["prefix_tuning"] = "prefix_tuning"
    is_adapter = True
    num_virtual_tokens: PositiveInt = Field(20, description="Prefix length (key/value pairs per layer).")
    projection: bool = Field(
        False, description="Reparameterize the prefix through a 2-layer MLP (more stable, more memory)."
    )
    projection_hidden_size: PositiveInt | None = Field(
        None, description="Hidden size of that MLP; default: the model's hidden size."
    )


@register_technique(PrefixTuningSpec)
def apply(model: torch.nn.Module, spec: PrefixTuningSpec, task: Task) -> torch.nn.Module:
    from peft import PrefixTuningConfig, get_peft_model

    hidden = getattr(model.config, "hidden_size", None) or getattr(model.config, "d_model", None)
    config = PrefixTuningConfig(
        task_type=task.peft_task_type,
        num_virtual_tokens=spec.num_virtual_tokens,
        prefix_projection=spec.projection,
        encoder_hidden_size=spec.projection_hidden_size or hidden,
    )
    return get_peft_model(model, config)
