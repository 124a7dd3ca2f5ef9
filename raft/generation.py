"""Text generation settings and the one function that generates, for every generative family.

The same ``generation:`` block of a causal-LM or seq2seq spec drives the generations logged
at each validation, the ROUGE/BLEU scoring of seq2seq runs, and the export's
``generation_config.json`` (which ``model.generate`` and serving read). Pure: no Ray import.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveInt, confloat

from raft.registry import SectionModel


class GenerationSpec(SectionModel):
    max_new_tokens: PositiveInt = Field(64, description="Most tokens generated per prompt.")
    temperature: NonNegativeFloat = Field(
        0.0, description="Sampling temperature; 0 means greedy (or beam) decoding."
    )
    top_p: confloat(gt=0.0, le=1.0) = Field(1.0, description="Nucleus sampling mass (with temperature > 0).")
    num_beams: PositiveInt = Field(1, description="Beam search width (greedy/sampling when 1).")
    repetition_penalty: confloat(gt=0.0) = Field(1.0, description="Penalty on repeated tokens (1 = none).")
    logged_samples: NonNegativeInt = Field(
        3, description="Validation prompts whose generations are logged at each evaluation."
    )

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``model.generate`` (and ``GenerationConfig``)."""
        sampling = self.temperature > 0
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": sampling,
            "num_beams": self.num_beams,
        }
        if sampling:
            kwargs.update(temperature=self.temperature, top_p=self.top_p)
        if self.repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = self.repetition_penalty
        return kwargs


def generation_config(settings: GenerationSpec, tokenizer: Any, model_config: Any) -> Any:
    """A ``transformers.GenerationConfig`` carrying ``settings`` and the special token ids."""
    from transformers import GenerationConfig

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return GenerationConfig(
        **settings.generate_kwargs(),
        pad_token_id=pad,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        decoder_start_token_id=getattr(model_config, "decoder_start_token_id", None),
    )


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of ``prompts`` padded on the left, as decoder-only
    generation needs (the next token follows the last real one in every row)."""
    longest = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), longest), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if prompt:
            ids[row, longest - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[row, longest - len(prompt) :] = 1
    return ids, mask


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    settings: GenerationSpec,
    *,
    decoder_only: bool,
    synced: bool = False,
    **inputs: torch.Tensor,
) -> list[str]:
    """Generate one continuation per row and decode it (the prompt itself left out).

    ``inputs``: the model's inputs (``input_ids`` and ``attention_mask`` for text,
    ``input_features`` for speech) and any model-specific option (Whisper's ``language``). ``synced``: every worker calls this at once under
    ZeRO-3, where each forward pass gathers parameters from all ranks; workers that finish
    early keep stepping until all are done (transformers' ``synced_gpus``)."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    output = model.generate(
        **{key: value.to(device) if torch.is_tensor(value) else value for key, value in inputs.items()},
        pad_token_id=pad,
        eos_token_id=tokenizer.eos_token_id,
        synced_gpus=synced,
        **settings.generate_kwargs(),
    )
    if decoder_only:
        output = output[:, inputs["input_ids"].shape[1] :]
    return [text.strip() for text in tokenizer.batch_decode(output, skip_special_tokens=True)]
