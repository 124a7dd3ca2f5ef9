"""Decoder-only language models (GPT, Llama, Qwen, Mistral): continued pre-training,
supervised fine-tuning on prompt/completion pairs, and chat.

Three input formats (``task.format``):

- ``text``: raw documents. Each is tokenized and ended with EOS; documents are then
  concatenated and cut into blocks of ``max_length`` tokens (packing: no padding, every
  token trains). The last partial block of each preprocessing batch is dropped.
- ``prompt_completion``: the loss covers the completion (and its EOS) only; prompt tokens
  get label -100. A row longer than ``max_length`` loses prompt tokens from the left first,
  so every row keeps something to learn; a completion that fills ``max_length`` by itself
  would keep no prompt, and is a bad row (``too_long``).
- ``chat``: a list of ``{role, content}`` turns rendered by the tokenizer's chat template
  (or ``chat_template`` from the spec). The loss covers the assistant turns only: each
  assistant span is found by rendering the conversation up to that turn with and without
  the generation prompt, so it is exactly the text the model must produce at inference
  (including the template's end-of-turn marker), whatever the template. A conversation
  whose first assistant token lies beyond ``max_length`` is a bad row (``too_long``).

Metrics: token-weighted loss and perplexity, next-token accuracy; a few greedy
generations from validation prompts are logged at each evaluation.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, PositiveInt, field_validator, model_validator

from raft.generation import GenerationSpec, generate, generation_config, left_pad
from raft.labels import LabelMap
from raft.registry import TaskSpec, register_task
from raft.serving import GenerationOptions
from raft.sources import BAD_CONVERSATION, EMPTY_TEXT, TOO_LONG, WRONG_TYPE, RowFault, text_fault
from raft.tasks.base import EvalContext, Task, load_tokenizer, safetensors_only
from raft.tasks.sequence_classification import trim_padding

IGNORE = -100
DEFAULT_ROLES = ["system", "user", "assistant", "tool"]


class CompletionOptions(GenerationOptions):
    """A serve request's decoding overrides, and OpenAI's stop strings."""

    stop: list[str] | None = Field(None, max_length=4, description="Generation ends before any of these.")


class CausalLmSpec(TaskSpec):
    type: Literal["causal_lm"] = "causal_lm"
    format: Literal["text", "prompt_completion", "chat"] = Field(
        "text",
        description="text: raw documents, packed (continued pre-training); prompt_completion: "
        "loss on the completion only; chat: a messages column, loss on assistant turns only.",
    )
    text_column: str = Field("text", description="Column of documents (format: text).")
    prompt_column: str = Field("prompt", description="Column of prompts (format: prompt_completion).")
    completion_column: str = Field(
        "completion", description="Column of completions (format: prompt_completion)."
    )
    messages_column: str = Field(
        "messages", description="Column of conversations: lists of {role, content} (format: chat)."
    )
    max_length: PositiveInt = Field(
        512, description="Tokens per example: the block size when packing, else the cut-off."
    )
    pack: bool = Field(
        True, description="Pack documents into full blocks (format: text); false pads each one."
    )
    chat_template: str | None = Field(
        None, description="Jinja chat template; default: the tokenizer's own (format: chat)."
    )
    roles: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ROLES),
        min_length=1,
        description="Chat roles a conversation may use; any other is a bad row.",
    )
    generation: GenerationSpec = Field(
        default_factory=GenerationSpec, description="Decoding for logged samples and serving."
    )

    @field_validator("chat_template")
    @classmethod
    def _template_compiles(cls, template: str | None) -> str | None:
        if template is not None:
            import jinja2

            try:
                jinja2.Environment().parse(template)
            except jinja2.TemplateSyntaxError as error:
                raise ValueError(f"chat_template is not valid Jinja: {error}") from None
        return template

    @model_validator(mode="after")
    def _format_fields(self) -> CausalLmSpec:
        if "assistant" not in self.roles:
            raise ValueError("roles must include 'assistant' (its turns are what trains)")
        if self.format != "chat" and self.chat_template is not None:
            raise ValueError("chat_template is for format: chat")
        return self


class CausalLm(Task):
    name = "causal_lm"
    spec_class = CausalLmSpec
    auto_class = "AutoModelForCausalLM"
    peft_task_type = "CAUSAL_LM"
    primary_metric = "perplexity"
    primary_mode = "min"

    def required_columns(self, spec: CausalLmSpec) -> list[str]:
        return {
            "text": [spec.text_column],
            "prompt_completion": [spec.prompt_column, spec.completion_column],
            "chat": [spec.messages_column],
        }[spec.format]

    def packs(self, spec: CausalLmSpec) -> bool:
        return spec.format == "text" and spec.pack

    def changes_row_count(self, spec: CausalLmSpec) -> bool:
        return self.packs(spec)

    def check_model(self, spec: CausalLmSpec, model_path: str) -> None:
        tokenizer = load_tokenizer(model_path)
        if tokenizer.eos_token_id is None:
            raise ValueError(
                f"the tokenizer in {model_path} has no EOS token; set one in its tokenizer_config"
            )
        if spec.format == "chat" and spec.chat_template is None and not tokenizer.chat_template:
            raise ValueError(
                f"format: chat, but the tokenizer in {model_path} has no chat template; "
                "set task.chat_template"
            )

    # -- rows -----------------------------------------------------------------------
    def check_row(self, row: dict[str, Any], spec: CausalLmSpec, model_path: str) -> RowFault | None:
        # Text longer than max_length is packed into blocks or cut (format: text), and a long
        # prompt loses tokens from the left (prompt_completion): neither is a fault.
        if spec.format == "text":
            return text_fault(row[spec.text_column], spec.text_column)
        if spec.format == "prompt_completion":
            completion = row[spec.completion_column]
            return (
                text_fault(row[spec.prompt_column], spec.prompt_column)
                or text_fault(completion, spec.completion_column)
                or completion_fits(load_tokenizer(model_path), completion, spec.max_length)
            )
        fault = conversation_fault(row[spec.messages_column], spec.roles)
        if fault is not None:
            return fault
        tokenizer = load_tokenizer(model_path)
        try:
            segments = chat_segments(tokenizer, _turns(row[spec.messages_column]), spec.chat_template)
        except Exception as error:  # the template's own raise_exception, or inconsistency
            return RowFault(BAD_CONVERSATION, f"the chat template cannot render this conversation: {error}")
        return assistant_fits(tokenizer, segments, spec.max_length)

    def preprocess(
        self, batch: dict[str, np.ndarray], spec: CausalLmSpec, model_path: str, labels: LabelMap | None
    ) -> dict[str, np.ndarray]:
        tokenizer = load_tokenizer(model_path)
        pad = _pad_id(tokenizer)
        if spec.format == "text":
            documents = [_document_ids(tokenizer, str(t)) for t in batch[spec.text_column]]
            if spec.pack:
                return pack_blocks(documents, spec.max_length)
            examples = [
                (ids[: spec.max_length], [True] * min(len(ids), spec.max_length)) for ids in documents
            ]
        elif spec.format == "prompt_completion":
            examples = [
                prompt_completion_example(tokenizer, str(p), str(c), spec.max_length)
                for p, c in zip(batch[spec.prompt_column], batch[spec.completion_column], strict=True)
            ]
        else:
            examples = []
            for messages in batch[spec.messages_column]:
                segments = chat_segments(tokenizer, _turns(messages), spec.chat_template)
                examples.append(tokenize_segments(tokenizer, segments, spec.max_length))
        return pad_examples(examples, spec.max_length, pad)

    def collate(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return drop_full_mask(
            trim_padding({key: torch.from_numpy(np.array(value)) for key, value in batch.items()})
        )

    # -- model ----------------------------------------------------------------------
    def build_model(
        self,
        model_path: str,
        spec: CausalLmSpec,
        labels: LabelMap | None,
        trust_remote_code: bool = False,
        *,
        allow_pickle: bool = False,
    ) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            model_path, trust_remote_code=trust_remote_code, use_safetensors=safetensors_only(allow_pickle)
        )
        if model.config.pad_token_id is None:
            model.config.pad_token_id = _pad_id(load_tokenizer(model_path))
        return model

    def generation_config(self, spec: CausalLmSpec, model_path: str) -> Any:
        from transformers import AutoConfig

        return generation_config(
            spec.generation, load_tokenizer(model_path), AutoConfig.from_pretrained(model_path)
        )

    # -- evaluation -----------------------------------------------------------------
    # Statistics: [summed token loss, scored tokens, correctly predicted tokens].
    def empty_stats(self, labels: LabelMap | None) -> np.ndarray:
        return np.zeros(3, dtype=np.float64)

    def eval_stats(
        self,
        outputs: Any,
        batch: dict[str, torch.Tensor],
        labels: LabelMap | None,
        context: EvalContext | None = None,
    ) -> np.ndarray:
        return token_stats(outputs.logits, batch["labels"])

    def metrics(self, stats: np.ndarray, labels: LabelMap | None) -> dict[str, float]:
        loss_sum, tokens, correct = (float(v) for v in stats)
        loss = loss_sum / tokens if tokens else float("nan")
        return {
            "loss": loss,
            "perplexity": math.exp(min(loss, 50.0)) if tokens else float("nan"),
            "token_accuracy": correct / tokens if tokens else 0.0,
            "tokens": tokens,
        }

    def sample_generations(self, rows: list[dict[str, Any]], context: EvalContext) -> list[dict[str, str]]:
        spec: CausalLmSpec = context.spec
        if not rows or spec.generation.logged_samples == 0:
            return []
        tokenizer = load_tokenizer(context.model_path)
        prompts = [generation_prompt(tokenizer, row, spec) for row in rows[: spec.generation.logged_samples]]
        input_ids, attention_mask = left_pad([ids for ids, _ in prompts], _pad_id(tokenizer))
        outputs = generate(
            context.model,
            tokenizer,
            spec.generation,
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_only=True,
            synced=context.synced,
        )
        return [
            {"prompt": tokenizer.decode(ids, skip_special_tokens=False), "output": out, "reference": ref}
            for (ids, ref), out in zip(prompts, outputs, strict=True)
        ]

    # -- serving --------------------------------------------------------------------
    # An input is a prompt (text, tokenized with the tokenizer's own BOS as in training) or
    # a conversation {"messages": [{role, content}...]} rendered by the chat template with
    # the generation prompt (as chat training rendered it). The OpenAI routes of raft
    # serve feed both; the answer carries OpenAI's token counts and finish reason.
    serves = True
    options_model = CompletionOptions

    def request_input(self, item: Any, spec: CausalLmSpec, model_dir: str | None = None) -> Any:
        """A prompt or a conversation, checked; with the served export, also that it fits
        the model's context (a longer one would fail its whole batch)."""
        checked = self._request_item(item, spec)
        if model_dir is not None and (window := context_length(model_dir)) is not None:
            length = len(self.prompt_ids(load_tokenizer(model_dir), checked, spec))
            if length >= window:
                raise ValueError(f"the prompt is {length} tokens; this model reads at most {window}")
        return checked

    def _request_item(self, item: Any, spec: CausalLmSpec) -> Any:
        if isinstance(item, str):
            return item
        if isinstance(item, dict) and set(item) == {"messages"}:
            messages = item["messages"]
            if not isinstance(messages, list) or not messages:
                raise ValueError("messages must be a non-empty list of {role, content} turns")
            for number, turn in enumerate(messages, start=1):
                if not (isinstance(turn, dict) and isinstance(turn.get("content"), str) and "role" in turn):
                    raise ValueError(f"turn {number} is not a {{role, content}} object with text content")
                if turn["role"] not in spec.roles:
                    raise ValueError(f"turn {number} has role {turn['role']!r}, not one of {spec.roles}")
            return {"messages": _turns(messages)}
        raise ValueError('give a prompt (text) or {"messages": [{"role": ..., "content": ...}]}')

    def prompt_ids(self, tokenizer: Any, item: Any, spec: CausalLmSpec) -> list[int]:
        """Token ids of a request input (from ``request_input``)."""
        if isinstance(item, str):
            return list(tokenizer(item)["input_ids"])
        if spec.chat_template is None and not tokenizer.chat_template:
            raise ValueError("this model has no chat template; send a prompt (/v1/completions) instead")
        text = _render(tokenizer, item["messages"], spec.chat_template, True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    @torch.no_grad()
    def predict(
        self, model: Any, model_dir: str, spec: CausalLmSpec, inputs: list[Any], **options: Any
    ) -> list[dict[str, Any]]:
        """Each prompt → {generated_text, finish_reason, prompt_tokens, completion_tokens}."""
        tokenizer = load_tokenizer(model_dir)
        stop = options.pop("stop", None) or []
        settings = spec.generation.model_copy(update=options)
        prompts = [self.prompt_ids(tokenizer, item, spec) for item in inputs]
        window = context_length(model_dir)
        if window is not None:  # generation ends at the context's end ("length")
            room = window - max(len(p) for p in prompts)
            settings = settings.model_copy(
                update={"max_new_tokens": max(1, min(settings.max_new_tokens, room))}
            )
        return complete(model, tokenizer, prompts, settings, stop)

    def tiny_config(self, **overrides: Any) -> Any:
        from transformers import LlamaConfig

        settings = dict(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
        )
        settings.update(overrides)
        return LlamaConfig(**settings)


# -- pure preprocessing (unit-tested) -------------------------------------------------
def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _document_ids(tokenizer: Any, text: str) -> list[int]:
    ids = list(tokenizer(text)["input_ids"])  # with the tokenizer's own BOS, if it adds one
    if not ids or ids[-1] != tokenizer.eos_token_id:
        ids.append(tokenizer.eos_token_id)
    return ids


def pack_blocks(documents: list[list[int]], block: int) -> dict[str, np.ndarray]:
    """Concatenate token lists and cut them into full blocks of ``block`` tokens; the
    remainder shorter than a block is dropped. Labels equal the inputs (the model shifts)."""
    stream = np.fromiter((t for ids in documents for t in ids), dtype=np.int64)
    count = len(stream) // block
    ids = stream[: count * block].reshape(count, block)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": ids.copy()}


def drop_full_mask(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Leave out an attention mask with no padding in it (packed blocks, a batch of rows of
    one length): a decoder given none attends causally to every token, the same as with an
    all-ones mask, but transformers checks a given mask for padding on every forward pass
    (``mask.all()``), which on a GPU waits for the device to drain. Checked here, on the host."""
    mask = batch.get("attention_mask")
    if mask is None or not bool(mask.all()):
        return batch
    return {key: value for key, value in batch.items() if key != "attention_mask"}


def prompt_completion_example(
    tokenizer: Any, prompt: str, completion: str, max_length: int
) -> tuple[list[int], list[bool]]:
    """(token ids, trains-on-token) for one pair: prompt tokens masked, completion + EOS
    trained; over-long rows drop prompt tokens from the left, then cut the completion."""
    prompt_ids = list(tokenizer(prompt)["input_ids"])
    completion_ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    completion_ids.append(tokenizer.eos_token_id)
    completion_ids = completion_ids[:max_length]
    room = max_length - len(completion_ids)
    prompt_ids = prompt_ids[max(0, len(prompt_ids) - room) :] if room > 0 else []
    return prompt_ids + completion_ids, [False] * len(prompt_ids) + [True] * len(completion_ids)


def _render(tokenizer: Any, messages: list[dict], template: str | None, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=generation_prompt
    )


def chat_segments(
    tokenizer: Any, messages: list[dict[str, str]], template: str | None = None
) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, is_assistant) pieces, in order.

    For each assistant turn i: ``render(turns[:i], generation prompt)`` is what the model
    is given at inference; ``render(turns[:i+1])`` extends it by exactly the text the model
    must produce. Templates that do not render prefix-consistently are refused."""
    segments: list[tuple[str, bool]] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        try:
            prompt = _render(tokenizer, messages[:i], template, True)
        except Exception:
            if i:
                raise
            prompt = ""  # a conversation opening with the assistant, and a template that needs a turn
        full = _render(tokenizer, messages[: i + 1], template, False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise ValueError(
                "the chat template does not render this conversation prefix-consistently (the "
                "text up to an assistant turn changes when the turn is added), so raft cannot "
                "find the assistant tokens; set task.chat_template to one that does"
            )
        if len(prompt) > len(done):
            segments.append((prompt[len(done) :], False))
        segments.append((full[len(prompt) :], True))
        done = full
    rest = _render(tokenizer, messages, template, False)
    if not rest.startswith(done):
        raise ValueError("the chat template does not render this conversation prefix-consistently")
    if len(rest) > len(done):
        segments.append((rest[len(done) :], False))
    return segments


def tokenize_segments(
    tokenizer: Any, segments: list[tuple[str, bool]], max_length: int
) -> tuple[list[int], list[bool]]:
    """Token ids and the trains-on-token mask of rendered chat pieces, cut at max_length."""
    ids: list[int] = []
    trains: list[bool] = []
    encoded = tokenizer([text for text, _ in segments], add_special_tokens=False)["input_ids"]
    for (_, is_assistant), piece in zip(segments, encoded, strict=True):
        ids.extend(piece)
        trains.extend([is_assistant] * len(piece))
    return ids[:max_length], trains[:max_length]


def pad_examples(
    examples: list[tuple[list[int], list[bool]]], max_length: int, pad_id: int
) -> dict[str, np.ndarray]:
    """Right-pad to max_length: labels are the ids where the mask trains, -100 elsewhere."""
    ids = np.full((len(examples), max_length), pad_id, dtype=np.int64)
    mask = np.zeros((len(examples), max_length), dtype=np.int64)
    labels = np.full((len(examples), max_length), IGNORE, dtype=np.int64)
    for row, (tokens, trains) in enumerate(examples):
        n = len(tokens)
        ids[row, :n] = tokens
        mask[row, :n] = 1
        labels[row, :n] = np.where(np.asarray(trains, dtype=bool), tokens, IGNORE)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def generation_prompt(tokenizer: Any, row: dict[str, Any], spec: CausalLmSpec) -> tuple[list[int], str]:
    """(prompt token ids, reference text) of a validation row, for the logged samples."""
    if spec.format == "prompt_completion":
        return list(tokenizer(str(row[spec.prompt_column]))["input_ids"]), str(row[spec.completion_column])
    if spec.format == "chat":
        turns = _turns(row[spec.messages_column])
        last = max(i for i, t in enumerate(turns) if t["role"] == "assistant")
        text = _render(tokenizer, turns[:last], spec.chat_template, True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"]), turns[last]["content"]
    ids = _document_ids(tokenizer, str(row[spec.text_column]))[:-1]  # without the EOS
    half = max(1, min(len(ids) // 2, 32))
    return ids[:half], tokenizer.decode(ids[half:], skip_special_tokens=True)


def token_stats(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """[summed next-token loss, scored tokens, correct argmax tokens] of one batch. Logits
    may carry extra leading positions (prompt tuning's virtual tokens); the last
    ``labels.shape[1]`` positions line up with the labels."""
    logits = logits[:, -labels.shape[1] :, :][:, :-1, :].float()
    targets = labels[:, 1:].to(logits.device)
    scored = targets != IGNORE
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    correct = ((logits.argmax(-1) == targets) & scored).sum()
    return np.array([float(loss), float(scored.sum()), float(correct)], dtype=np.float64)


# -- serving (pure; raft.serve calls these) --------------------------------------------
@functools.lru_cache(maxsize=8)
def context_length(model_dir: str) -> int | None:
    """Positions the model in ``model_dir`` reads (None when its config does not say)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    return None


def _cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """``text`` up to the first of ``stop`` (and whether one was found)."""
    cuts = [text.index(s) for s in stop if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


def complete(
    model: Any, tokenizer: Any, prompts: list[list[int]], settings: GenerationSpec, stop: list[str]
) -> list[dict[str, Any]]:
    """Generate a continuation of each prompt (one batch, left-padded), with OpenAI's
    accounting: tokens generated up to EOS, and finish_reason "stop" (EOS or a stop
    string) or "length" (max_new_tokens reached)."""
    pad = _pad_id(tokenizer)
    input_ids, attention_mask = left_pad(prompts, pad)
    device = next(model.parameters()).device
    output = model.generate(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        pad_token_id=pad,
        eos_token_id=tokenizer.eos_token_id,
        **settings.generate_kwargs(),
    )[:, input_ids.shape[1] :].cpu()
    answers = []
    for prompt, row in zip(prompts, output.tolist(), strict=True):
        ended = tokenizer.eos_token_id in row
        tokens = row[: row.index(tokenizer.eos_token_id)] if ended else row
        text, stopped = _cut_at_stop(tokenizer.decode(tokens, skip_special_tokens=True), stop)
        answers.append(
            {
                "generated_text": text,
                "finish_reason": "stop" if ended or stopped else "length",
                "prompt_tokens": len(prompt),
                "completion_tokens": len(tokens) + int(ended),
            }
        )
    return answers


def stream_completion(
    model: Any,
    tokenizer: Any,
    prompt: list[int],
    settings: GenerationSpec,
    stop: list[str],
    cancel: Any = None,
) -> Any:
    """Generate a continuation of one prompt, yielding text pieces as tokens arrive, then a
    last item {finish_reason, prompt_tokens, completion_tokens}. ``model.generate`` runs in
    a thread and hands each new token over through a streamer; it stops early once a stop
    string is seen, the consumer goes away (the generator is closed), or ``cancel`` (a
    ``threading.Event``) is set from another thread."""
    import queue
    import threading

    from transformers import StoppingCriteria, StoppingCriteriaList
    from transformers.generation.streamers import BaseStreamer

    tokens: queue.Queue = queue.Queue()
    cancel = cancel if cancel is not None else threading.Event()

    class _Cancelled(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            return torch.full(
                (input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device
            )

    class _Tokens(BaseStreamer):
        first = True

        def put(self, value: torch.Tensor) -> None:
            if self.first:  # generate() hands the prompt over first
                self.first = False
                return
            for token in value.reshape(-1).tolist():
                tokens.put(token)

        def end(self) -> None:
            tokens.put(None)

    failure: list[BaseException] = []

    def _run() -> None:
        try:
            device = next(model.parameters()).device
            with torch.no_grad():
                model.generate(
                    input_ids=torch.tensor([prompt], device=device),
                    attention_mask=torch.ones((1, len(prompt)), dtype=torch.long, device=device),
                    pad_token_id=_pad_id(tokenizer),
                    eos_token_id=tokenizer.eos_token_id,
                    streamer=_Tokens(),
                    stopping_criteria=StoppingCriteriaList([_Cancelled()]),
                    **settings.generate_kwargs(),
                )
        except BaseException as error:  # handed to the consumer, raised there
            failure.append(error)
            tokens.put(None)

    thread = threading.Thread(target=_run, daemon=True)
    thread.start()
    generated: list[int] = []
    sent, ended, stopped = "", False, False
    try:
        while (token := tokens.get()) is not None:
            if token == tokenizer.eos_token_id:
                ended = True
                break
            generated.append(token)
            text, stopped = _cut_at_stop(tokenizer.decode(generated, skip_special_tokens=True), stop)
            # hold back what may be the start of a stop string, or a partial character
            safe = text if stopped else text[: len(text) - _held_back(text, stop)]
            if len(safe) > len(sent) and not safe.endswith("\ufffd"):
                yield safe[len(sent) :]
                sent = safe
            if stopped:
                break
    finally:
        cancel.set()
        thread.join()
    if failure:
        raise failure[0]
    if not stopped:
        text, _ = _cut_at_stop(tokenizer.decode(generated, skip_special_tokens=True), stop)
        if len(text) > len(sent):
            yield text[len(sent) :]
    yield {
        "finish_reason": "stop" if ended or stopped else "length",
        "prompt_tokens": len(prompt),
        "completion_tokens": len(generated) + int(ended),
    }


def _held_back(text: str, stop: list[str]) -> int:
    """Length of the longest end of ``text`` that begins one of ``stop``."""
    return max((n for s in stop for n in range(1, len(s)) if text.endswith(s[:n])), default=0)


def _turns(messages: Any) -> list[dict[str, str]]:
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]


def conversation_fault(messages: Any, roles: list[str]) -> RowFault | None:
    """Why a ``messages`` value cannot train, or None."""
    if messages is None or isinstance(messages, (str, bytes, dict)) or not hasattr(messages, "__len__"):
        return RowFault(
            WRONG_TYPE, f"messages must be a list of {{role, content}} turns, got {messages!r:.60}"
        )
    if len(messages) == 0:
        return RowFault(BAD_CONVERSATION, "messages is an empty conversation")
    has_assistant, assistant_text = False, False
    for number, turn in enumerate(messages, start=1):
        if not isinstance(turn, dict):
            return RowFault(WRONG_TYPE, f"turn {number} is not a {{role, content}} object: {turn!r:.60}")
        if "role" not in turn or "content" not in turn:
            return RowFault(
                BAD_CONVERSATION, f"turn {number} is not a {{role, content}} object: {turn!r:.60}"
            )
        if turn["role"] not in roles:
            return RowFault(
                BAD_CONVERSATION, f"turn {number} has role {turn['role']!r}, which is not one of {roles}"
            )
        content = turn["content"]
        if content is None:
            return RowFault(BAD_CONVERSATION, f"turn {number} ({turn['role']}) has no content")
        if not isinstance(content, str):
            return RowFault(
                WRONG_TYPE,
                f"turn {number} ({turn['role']}): content must be text, got {type(content).__name__}",
            )
        if turn["role"] == "assistant":
            has_assistant, assistant_text = True, assistant_text or bool(content.strip())
    if not has_assistant:
        return RowFault(BAD_CONVERSATION, "the conversation has no assistant turn (nothing to train on)")
    if not assistant_text:
        return RowFault(EMPTY_TEXT, "every assistant turn is blank (nothing to train on)")
    return None


def completion_fits(tokenizer: Any, completion: str, max_length: int) -> RowFault | None:
    """``too_long`` when a completion and its EOS take all ``max_length`` tokens: the prompt
    (cut from the left to make room) would lose every token, and the row would teach the
    completion without its prompt."""
    count = len(tokenizer(completion, add_special_tokens=False)["input_ids"]) + 1
    if count < max_length:
        return None
    return RowFault(
        TOO_LONG,
        f"the completion and its EOS take {count} tokens: task.max_length={max_length} leaves no "
        "room for a single prompt token (raise task.max_length, or shorten the completion)",
    )


def assistant_fits(tokenizer: Any, segments: list[tuple[str, bool]], max_length: int) -> RowFault | None:
    """``too_long`` when no assistant token falls within the first ``max_length`` tokens of a
    rendered conversation: the prompt before the first assistant turn fills the context, and
    the row, cut there, would train on nothing."""
    _, trains = tokenize_segments(tokenizer, segments, 1 << 62)
    first = next((i for i, t in enumerate(trains) if t), None)
    if first is None:
        return RowFault(EMPTY_TEXT, "the assistant turns render to no tokens (nothing to train on)")
    if first < max_length:
        return None
    return RowFault(
        TOO_LONG,
        f"the first assistant token comes after {first} tokens, beyond task.max_length={max_length}: "
        "nothing in the row would train (raise task.max_length, or shorten what comes before it)",
    )


register_task(CausalLm())
