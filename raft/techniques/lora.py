"""LoRA (peft): low-rank adapters on chosen linear layers; the task head trains too."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, PositiveInt, confloat

from raft.registry import TechniqueSpec, register_technique
from raft.tasks.base import Task


class LoraSpec(TechniqueSpec):
    type: Literal["lora"] = "lora"
    mergeable = True
    is_adapter = True
    r: PositiveInt = Field(8, description="Rank of the low-rank update.")
    alpha: PositiveInt | None = Field(None, description="Scaling numerator; default 2 * r.")
    dropout: confloat(ge=0.0, lt=1.0) = Field(0.05, description="Dropout on the adapter input.")
    target_modules: list[str] | None = Field(
        None,
        min_length=1,
        description="Module names to adapt, e.g. [query, value]. Default: the task "
        "family's choice for the architecture (peft's table).",
    )
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases train.")


@register_technique(LoraSpec)
def apply(model: torch.nn.Module, spec: LoraSpec, task: Task) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    targets = spec.target_modules or task.lora_targets(model)
    config = LoraConfig(
        task_type=task.peft_task_type,
        modules_to_save=task.peft_modules_to_save,
        r=spec.r,
        lora_alpha=spec.alpha or 2 * spec.r,
        lora_dropout=spec.dropout,
        target_modules=targets,
        bias=spec.bias,
    )
    try:
        return get_peft_model(model, config)
    except ValueError as error:
        raise ValueError(f"technique.target_modules {targets}: {error}") from error
