"""Causal LM preprocessing: packing, loss masks for prompt/completion and chat, bad rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raft.spec import SpecError, validate
from raft.tasks.causal_lm import (
    IGNORE,
    CausalLm,
    CausalLmSpec,
    chat_segments,
    conversation_fault,
    pack_blocks,
    token_stats,
)
from raft.testing import make_byte_tokenizer, make_tiny_generative_model

TASK = CausalLm()
CHAT = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "the movie was good"},
    {"role": "assistant", "content": "positive"},
    {"role": "user", "content": "the film was bad"},
    {"role": "assistant", "content": "negative"},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(make_tiny_generative_model(tmp_path_factory.mktemp("llama"), "causal_lm"))


@pytest.fixture(scope="module")
def tokenizer():
    return make_byte_tokenizer()


def trained_text(tokenizer, features, row=0) -> str:
    """The text of the tokens the loss covers in ``row``."""
    labels = features["labels"][row]
    return tokenizer.decode(labels[labels != IGNORE])


def test_packing_fills_every_block_and_drops_only_the_tail():
    documents = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10]]
    packed = pack_blocks(documents, block=4)
    assert packed["input_ids"].tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]  # 9, 10 dropped
    assert packed["attention_mask"].all()
    assert (packed["labels"] == packed["input_ids"]).all()


def test_packed_batches_leave_out_the_all_ones_mask_and_give_the_same_loss(model_dir):
    """A full mask is dropped on the host (transformers would check it on the device every
    forward pass); the model's loss is the same without it. A padded batch keeps its mask."""
    from transformers import AutoModelForCausalLM

    spec = CausalLmSpec(format="text", max_length=16)
    batch = {"text": np.array(["good movie " * 9, "bad film " * 11], dtype=object)}
    packed = TASK.collate(TASK.preprocess(batch, spec, model_dir, None))
    assert set(packed) == {"input_ids", "labels"}
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        without = model(**packed).loss
        with_mask = model(**packed, attention_mask=torch.ones_like(packed["input_ids"])).loss
    assert float(without) == pytest.approx(float(with_mask), rel=1e-6)

    # What the mask cost: transformers reads a given mask back (a device sync on a GPU)
    # on every forward pass; a packed batch's training step now reads nothing.
    reads = []
    real_bool = torch.Tensor.__bool__

    def counted(tensor):
        reads.append(tuple(tensor.shape))
        return real_bool(tensor)

    model.train()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.Tensor, "__bool__", counted)
        model(**packed).loss.backward()
        assert reads == []
        model(**packed, attention_mask=torch.ones_like(packed["input_ids"])).loss.backward()
        assert reads  # the check this change avoids

    padded = TASK.collate(
        TASK.preprocess(batch, CausalLmSpec(format="text", pack=False, max_length=64), model_dir, None)
    )
    assert "attention_mask" in padded and not bool(padded["attention_mask"].all())


def test_text_format_packs_documents_ended_with_eos(model_dir, tokenizer):
    spec = CausalLmSpec(format="text", max_length=8)
    batch = {"text": np.array(["good movie " * 5, "bad film " * 7], dtype=object)}
    features = TASK.preprocess(batch, spec, model_dir, None)
    total = sum(len(tokenizer(t)["input_ids"]) + 1 for t in batch["text"])  # + one EOS each
    assert features["input_ids"].shape == (total // 8, 8)
    assert tokenizer.eos_token_id in features["input_ids"]
    assert (features["labels"] == features["input_ids"]).all()
    assert TASK.changes_row_count(spec) and not TASK.changes_row_count(CausalLmSpec(format="chat"))


def test_prompt_completion_trains_on_the_completion_only(model_dir, tokenizer):
    spec = CausalLmSpec(format="prompt_completion", max_length=32)
    batch = {
        "prompt": np.array(["review: good movie sentiment:"], dtype=object),
        "completion": np.array([" positive"], dtype=object),
    }
    features = TASK.preprocess(batch, spec, model_dir, None)
    assert trained_text(tokenizer, features) == " positive</s>"
    length = int(features["attention_mask"][0].sum())
    assert tokenizer.decode(features["input_ids"][0][:length]) == "review: good movie sentiment: positive</s>"
    assert (features["labels"][0][length:] == IGNORE).all()  # padding is never trained


def test_an_overlong_prompt_is_cut_from_the_left_and_the_completion_survives(model_dir, tokenizer):
    spec = CausalLmSpec(format="prompt_completion", max_length=6)
    batch = {
        "prompt": np.array(["the " * 30], dtype=object),
        "completion": np.array([" good"], dtype=object),
    }
    features = TASK.preprocess(batch, spec, model_dir, None)
    assert features["input_ids"].shape == (1, 6)
    assert trained_text(tokenizer, features) == " good</s>"


def test_chat_trains_on_assistant_turns_only(model_dir, tokenizer):
    spec = CausalLmSpec(format="chat", max_length=64)
    features = TASK.preprocess({"messages": np.array([CHAT], dtype=object)}, spec, model_dir, None)
    # Exactly the two assistant replies with their end-of-turn marker; no system/user text.
    assert trained_text(tokenizer, features) == "positive</s>negative</s>"
    # And the whole input is the template's rendering, token for token.
    rendered = tokenizer.apply_chat_template(CHAT, tokenize=False)
    length = int(features["attention_mask"][0].sum())
    assert tokenizer.decode(features["input_ids"][0][:length]) == rendered


def test_the_loss_ignores_prompt_tokens(model_dir, tokenizer):
    """The model's loss equals the mean next-token loss over assistant tokens alone."""
    from transformers import AutoModelForCausalLM

    spec = CausalLmSpec(format="chat", max_length=64)
    features = TASK.preprocess({"messages": np.array([CHAT], dtype=object)}, spec, model_dir, None)
    batch = TASK.collate(features)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        outputs = model(**batch)
    loss_sum, tokens, _ = token_stats(outputs.logits, batch["labels"])
    assert tokens == len(tokenizer("positive</s>negative</s>", add_special_tokens=False)["input_ids"])
    assert float(outputs.loss) == pytest.approx(loss_sum / tokens, rel=1e-5)
    # Changing a prompt token changes the inputs but not which positions are scored.
    altered = dict(batch, labels=batch["labels"].clone())
    altered["labels"][0, 0] = IGNORE
    assert token_stats(outputs.logits, altered["labels"])[1] == tokens


def test_chat_template_from_the_spec_overrides_the_tokenizers(model_dir, tokenizer):
    template = (
        "{% for m in messages %}{{ m['role'] | upper }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT: {% endif %}"
    )
    segments = chat_segments(tokenizer, CHAT[1:3], template)
    assert segments == [("USER: the movie was good\nASSISTANT: ", False), ("positive\n", True)]


def test_spec_refuses_a_template_that_is_not_jinja():
    with pytest.raises(SpecError, match="chat_template is not valid Jinja"):
        validate(
            {
                "model": {"path": "m"},
                "task": {"type": "causal_lm", "format": "chat", "chat_template": "{% for %}"},
                "data": {"train": "t.jsonl"},
            }
        )


@pytest.mark.parametrize(
    ("messages", "reason", "problem"),
    [
        ([{"role": "user", "content": "hi"}], "bad_conversation", "no assistant turn"),
        (
            [{"role": "narrator", "content": "hi"}, {"role": "assistant", "content": "x"}],
            "bad_conversation",
            "role 'narrator'",
        ),
        ([], "bad_conversation", "empty conversation"),
        ("hello", "wrong_type", "must be a list"),
        ([{"role": "user"}], "bad_conversation", "not a {role, content} object"),
        (["hi"], "wrong_type", "not a {role, content} object"),
        ([{"role": "assistant", "content": ["a", "b"]}], "wrong_type", "content must be text, got list"),
        ([{"role": "user", "content": "x"}, {"role": "assistant", "content": " "}], "empty_text", "blank"),
    ],
)
def test_bad_conversations_are_named(messages, reason, problem):
    fault = conversation_fault(messages, ["system", "user", "assistant"])
    assert fault.reason == reason and problem in fault.message


def test_causal_rows_that_cannot_fit_are_too_long(model_dir):
    from raft.tasks.base import load_tokenizer

    # prompt_completion: a completion that fills max_length by itself keeps no prompt token.
    spec = CausalLmSpec(format="prompt_completion", max_length=8)
    completion = " positive"
    size = len(load_tokenizer(model_dir)(completion, add_special_tokens=False)["input_ids"]) + 1  # + EOS
    fits = CausalLmSpec(format="prompt_completion", max_length=size + 1)
    tight = CausalLmSpec(format="prompt_completion", max_length=size)
    row = {"prompt": "a long review " * 20, "completion": completion}
    assert TASK.row_fault(row, fits, model_dir) is None  # the prompt is cut from the left
    fault = TASK.row_fault(row, tight, model_dir)
    assert fault.reason == "too_long" and f"take {size} tokens" in fault.message
    assert TASK.row_fault({"prompt": 3, "completion": "x"}, spec, model_dir).reason == "wrong_type"
    assert TASK.row_fault({"prompt": "p"}, spec, model_dir).reason == "missing_column"
    # chat: the first assistant token must fall within max_length.
    long_user = [
        {"role": "user", "content": "the movie was good " * 30},
        {"role": "assistant", "content": "yes"},
    ]
    chat = CausalLmSpec(format="chat", max_length=48)
    fault = TASK.row_fault({"messages": long_user}, chat, model_dir)
    assert fault.reason == "too_long" and "beyond task.max_length=48" in fault.message
    assert TASK.row_fault({"messages": CHAT}, chat, model_dir) is None
    assert (
        TASK.row_fault({"messages": long_user}, CausalLmSpec(format="chat", max_length=4096), model_dir)
        is None
    )


def test_row_problem_catches_roles_the_template_refuses(model_dir):
    # The spec allows "tool", but this tokenizer's template raises on it.
    spec = CausalLmSpec(format="chat")
    row = {"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]}
    assert "the chat template cannot render" in TASK.row_problem(row, spec, model_dir)
    assert TASK.row_problem({"messages": CHAT}, spec, model_dir) is None
    assert "blank" in TASK.row_problem(
        {"prompt": " ", "completion": "x"}, CausalLmSpec(format="prompt_completion"), model_dir
    )


def test_perplexity_is_exp_of_the_token_loss():
    metrics = TASK.metrics(np.array([20.0, 10.0, 4.0]), None)
    assert metrics["loss"] == pytest.approx(2.0)
    assert metrics["perplexity"] == pytest.approx(np.exp(2.0))
    assert metrics["token_accuracy"] == pytest.approx(0.4)


def test_token_stats_align_logits_with_extra_leading_positions():
    """Prompt tuning prepends virtual tokens to the logits; labels align with the tail."""
    labels = torch.tensor([[IGNORE, 2, 3]])
    logits = torch.full((1, 5, 4), -10.0)
    logits[0, 2, 2] = logits[0, 3, 3] = 10.0  # positions 2,3 of 5 = label positions 0,1 → predict 2, 3
    loss_sum, tokens, correct = token_stats(logits, labels)
    assert (tokens, correct) == (2, 2) and loss_sum < 1e-3


def test_chat_without_any_template_is_refused_before_training(tmp_path):
    from raft.tasks.base import load_tokenizer
    from raft.train import RunError, preflight

    path = make_tiny_generative_model(tmp_path / "m", "causal_lm")
    (path / "chat_template.jinja").unlink()
    load_tokenizer.cache_clear()
    train = tmp_path / "chat.jsonl"
    train.write_text('{"messages": [{"role": "assistant", "content": "x"}]}\n')
    spec = validate(
        {
            "model": {"path": str(path)},
            "task": {"type": "causal_lm", "format": "chat"},
            "data": {"train": str(train)},
        }
    )
    with pytest.raises(RunError, match="has no chat template; set task.chat_template"):
        preflight(spec)
    TASK.check_model(CausalLmSpec(format="chat", chat_template="{{ messages }}"), str(path))


# -- serving ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lm(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir).eval()


def _greedy(lm, tokenizer, prompt: str, max_new_tokens: int) -> list[int]:
    """Greedy continuation of one unpadded prompt, cut at EOS: what serving must reproduce."""
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    out = lm.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )[0, ids.shape[1] :].tolist()
    return out[: out.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in out else out


def test_predict_batches_prompts_of_different_lengths_like_one_at_a_time(lm, model_dir, tokenizer):
    spec = CausalLmSpec(generation={"max_new_tokens": 6})
    prompts = ["the movie was very", "good"]
    answers = TASK.predict(lm, model_dir, spec, prompts)
    for prompt, answer in zip(prompts, answers, strict=True):
        expected = _greedy(lm, tokenizer, prompt, 6)
        assert answer["generated_text"] == tokenizer.decode(expected, skip_special_tokens=True)
        assert answer["prompt_tokens"] == len(tokenizer(prompt)["input_ids"])
        ended = len(expected) < 6
        assert answer["completion_tokens"] == len(expected) + int(ended)
        assert answer["finish_reason"] == ("stop" if ended else "length")
    short = TASK.predict(lm, model_dir, spec, prompts, max_new_tokens=2)
    assert all(a["completion_tokens"] <= 2 for a in short)


def _stop_inside(text: str) -> str:
    """Two characters of ``text`` that first occur past its start: a stop string that cuts
    the completion to a non-empty prefix."""
    for start in range(1, len(text) - 1):
        if text.index(text[start : start + 2]) == start:
            return text[start : start + 2]
    raise AssertionError(f"no usable stop string in {text!r}")


def test_a_stop_string_cuts_the_completion(lm, model_dir):
    spec = CausalLmSpec(generation={"max_new_tokens": 12})
    (full,) = TASK.predict(lm, model_dir, spec, ["the film"])
    text = full["generated_text"]
    assert len(text) >= 4, text
    stop = _stop_inside(text)
    (cut,) = TASK.predict(lm, model_dir, spec, ["the film"], stop=[stop])
    assert cut["generated_text"] == text[: text.index(stop)]
    assert cut["finish_reason"] == "stop"


@pytest.mark.parametrize("stop", [[], ["@stop-at-2"]])
def test_streaming_yields_the_same_text_as_one_call(lm, model_dir, tokenizer, stop):
    from raft.tasks.causal_lm import stream_completion

    spec = CausalLmSpec(generation={"max_new_tokens": 10})
    (whole,) = TASK.predict(lm, model_dir, spec, ["the movie"])
    if stop:  # a stop string from the middle of the real completion
        stop = [_stop_inside(whole["generated_text"])]
        (whole,) = TASK.predict(lm, model_dir, spec, ["the movie"], stop=stop)
    pieces = list(
        stream_completion(lm, tokenizer, tokenizer("the movie")["input_ids"], spec.generation, stop)
    )
    *texts, last = pieces
    assert all(isinstance(t, str) and t for t in texts) and len(texts) >= 1
    assert "".join(texts) == whole["generated_text"]
    assert last["finish_reason"] == whole["finish_reason"]
    if not stop:
        assert last["completion_tokens"] == whole["completion_tokens"]


def test_chat_requests_render_with_the_generation_prompt(model_dir, tokenizer):
    spec = CausalLmSpec(format="chat")
    item = TASK.request_input({"messages": CHAT[:2]}, spec)
    ids = TASK.prompt_ids(tokenizer, item, spec)
    rendered = tokenizer.apply_chat_template(CHAT[:2], tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(ids) == rendered
    assert TASK.prompt_ids(tokenizer, "plain", spec) == tokenizer("plain")["input_ids"]


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (3, 'give a prompt (text) or {"messages"'),
        ({"messages": []}, "messages must be a non-empty list"),
        ({"messages": [{"role": "user"}]}, "turn 1 is not a {role, content} object with text content"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "turn 1 has role 'wizard'"),
        ({"messages": [], "extra": 1}, 'give a prompt (text) or {"messages"'),
    ],
)
def test_bad_generation_inputs_are_named(item, message):
    with pytest.raises(ValueError) as caught:
        TASK.request_input(item, CausalLmSpec())
    assert message in str(caught.value)


def test_generation_options_are_checked_by_name():
    spec = CausalLmSpec()
    assert TASK.request_options({"max_new_tokens": 3, "stop": ["\n"]}, spec) == {
        "max_new_tokens": 3,
        "stop": ["\n"],
    }
    with pytest.raises(ValueError, match="parameters.top_k: Extra inputs are not permitted"):
        TASK.request_options({"top_k": 3}, spec)
    with pytest.raises(ValueError, match="parameters.temperature"):
        TASK.request_options({"temperature": -1}, spec)


def test_a_cancelled_stream_stops_generating(lm, model_dir, tokenizer):
    import threading

    from raft.tasks.causal_lm import stream_completion

    spec = CausalLmSpec(generation={"max_new_tokens": 200})
    prompt = tokenizer("the movie")["input_ids"]
    (whole,) = TASK.predict(lm, model_dir, spec, ["the movie"])
    assert whole["completion_tokens"] == 200, whole  # no EOS: an uncancelled stream runs to the end
    cancel = threading.Event()
    pieces = stream_completion(lm, tokenizer, prompt, spec.generation, [], cancel)
    next(pieces)
    cancel.set()  # what raft serve does when the client goes away
    *_, last = pieces
    assert last["completion_tokens"] < 100, last


def test_prompts_must_fit_the_context_and_generation_stops_at_its_end(lm, model_dir, tokenizer):
    window = lm.config.max_position_embeddings  # 256 for the tiny Llama
    words = "good " * 400
    with pytest.raises(ValueError, match=rf"the prompt is \d+ tokens; this model reads at most {window}"):
        TASK.request_input(words, CausalLmSpec(), model_dir)
    assert TASK.request_input("good film", CausalLmSpec(), model_dir) == "good film"
    ids = tokenizer(words)["input_ids"][: window - 3]
    prompt = tokenizer.decode(ids)
    assert len(tokenizer(prompt)["input_ids"]) <= window - 1
    (answer,) = TASK.predict(lm, model_dir, CausalLmSpec(generation={"max_new_tokens": 50}), [prompt])
    assert answer["prompt_tokens"] + answer["completion_tokens"] <= window
