"""IA3 (peft): learned vectors that rescale attention keys/values and feed-forward
activations — far fewer trainable weights than LoRA. The task head trains as well.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from raft.registry import TechniqueSpec, register_technique
from raft.tasks.base import Task


class Ia3Spec(TechniqueSpec):
    type: Literal["ia3"] = "ia3"
    mergeable = True
    is_adapter = True
    target_modules: list[str] | None = Field(
        None,
        min_length=1,
        description="Modules whose outputs IA3 rescales. Default: peft's table for the architecture.",
    )
    feedforward_modules: list[str] | None = Field(
        None,
        description="Those of target_modules that are feed-forward layers (IA3 rescales their "
        "input instead). Default: peft's table; required when target_modules is given.",
    )

    @model_validator(mode="after")
    def _feedforward_within_targets(self) -> Ia3Spec:
        if self.feedforward_modules and not self.target_modules:
            raise ValueError("feedforward_modules needs target_modules")
        if self.target_modules and self.feedforward_modules is None:
            raise ValueError("with target_modules, list feedforward_modules too (may be [])")
        extra = set(self.feedforward_modules or []) - set(self.target_modules or [])
        if extra:
            raise ValueError(f"feedforward_modules {sorted(extra)} are not in target_modules")
        return self


@register_technique(Ia3Spec)
def apply(model: torch.nn.Module, spec: Ia3Spec, task: Task) -> torch.nn.Module:
    from peft import IA3Config, get_peft_model

    targets, feedforward = spec.target_modules, spec.feedforward_modules
    if targets is None:  # peft's table, unless the family knows better for this model
        targets, feedforward = task.ia3_targets(model) or (None, None)
    config = IA3Config(
        task_type=task.peft_task_type,
        modules_to_save=task.peft_modules_to_save,
        target_modules=targets,
        feedforward_modules=feedforward,
    )
    try:
        return get_peft_model(model, config)
    except ValueError as error:
        raise ValueError(f"technique ia3 on {model.config.model_type}: {error}") from error
