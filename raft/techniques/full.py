"""Full fine-tuning: every parameter of the pretrained model trains."""

from __future__ import annotations

from typing import Literal

import torch

from raft.registry import TechniqueSpec, register_technique
from raft.tasks.base import Task


class FullSpec(TechniqueSpec):
    type: Literal["full"] = "full"


@register_technique(FullSpec)
def apply(model: torch.nn.Module, spec: FullSpec, task: Task) -> torch.nn.Module:
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model
