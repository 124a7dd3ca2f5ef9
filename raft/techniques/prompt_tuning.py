"""Prompt tuning (peft): learn virtual token embeddings; the pretrained model stays frozen.

For classification the new task head trains as well, since it starts random.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, PositiveInt, model_validator

from raft.registry import TechniqueSpec, register_technique
from raft.tasks.base import Task


class PromptTuningSpec(TechniqueSpec):
    type: Literal["prompt_tuning"] = "prompt_tuning"
    is_adapter = True
    num_virtual_tokens: PositiveInt = Field(20, description="Learned prompt length in tokens.")
    init: Literal["random", "text"] = Field(
        "random", description="Start from random vectors or from the embedding of init_text."
    )
    init_text: str | None = Field(None, description="Text whose tokens seed the prompt (init: text).")

    @model_validator(mode="after")
    def _text_when_text_init(self) -> PromptTuningSpec:
        if self.init == "text" and not self.init_text:
            raise ValueError("init: text needs init_text")
        return self


@register_technique(PromptTuningSpec)
def apply(model: torch.nn.Module, spec: PromptTuningSpec, task: Task) -> torch.nn.Module:
    from peft import PromptTuningConfig, PromptTuningInit, get_peft_model

    text_init = spec.init == "text"
    config = PromptTuningConfig(
        task_type=task.peft_task_type,
        num_virtual_tokens=spec.num_virtual_tokens,
        prompt_tuning_init=PromptTuningInit.TEXT if text_init else PromptTuningInit.RANDOM,
        prompt_tuning_init_text=spec.init_text if text_init else None,
        tokenizer_name_or_path=model.name_or_path if text_init else None,
    )
    return get_peft_model(model, config)
