"""raft serve for causal LMs on the real local Ray cluster: the official ``openai`` client
against raft's OpenAI-compatible routes (completions, a streamed chat, models), and LoRA
adapters multiplexed over one base model, picked per request by header or model id."""

from __future__ import annotations

import socket

import httpx
import openai
import pytest
from ray import serve

from raft import registry
from raft.evaluate import load_exported
from raft.export import export_model
from raft.serve import start
from raft.serving import ServeSection
from raft.spec import validate
from raft.testing import make_tiny_generative_model

pytestmark = pytest.mark.slow
CHAT = [{"role": "user", "content": "the movie was good"}]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _lora_export(base, runs, name: str, seed: int):
    """A LoRA adapter over ``base`` with random (non-zero) weights, exported as raft train
    exports an adapter run: runs/<name>/model."""
    import torch
    from peft import LoraConfig, get_peft_model

    spec = validate(
        {
            "model": {"path": str(base)},
            "task": {"type": "causal_lm", "format": "chat", "generation": {"max_new_tokens": 8}},
            "technique": {"type": "lora", "r": 4},
            "data": {"train": "unused.jsonl"},
            "output": {"dir": str(runs), "name": name},
        }
    )
    torch.manual_seed(seed)
    model = registry.get_task("causal_lm").build_model(str(base), spec.task, None)
    config = LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    checkpoint = runs.parent / "checkpoints" / name
    get_peft_model(model, config).save_pretrained(checkpoint)
    return export_model(checkpoint, runs / name / "model", spec, None)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-llm")
    base = make_tiny_generative_model(root / "tiny-llama", "causal_lm")
    adapters = root / "runs"
    for seed, name in enumerate(("chat", "alpha", "beta")):
        _lora_export(base, adapters, name, seed)
    other = make_tiny_generative_model(root / "other-llama", "causal_lm")
    _lora_export(other, adapters, "stranger", 3)  # over another base model
    return adapters


@pytest.fixture(scope="module")
def url(runs):
    port = _free_port()
    section = ServeSection(
        port=port,
        num_cpus=0.5,
        adapters_dir=str(runs),
        max_adapters_per_replica=1,
        batching={"max_batch_size": 4},
    )
    yield start(str(runs / "chat" / "model"), section, name="chat")
    serve.shutdown()


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


def _in_process(model_dir, item, **options):
    spec, model, _ = load_exported(model_dir)
    (answer,) = registry.get_task("causal_lm").predict(model, str(model_dir), spec.task, [item], **options)
    return answer


def test_openai_completions_equal_an_in_process_call(client, runs):
    response = client.completions.create(model="chat", prompt="the movie was", max_tokens=6)
    expected = _in_process(runs / "chat" / "model", "the movie was", max_new_tokens=6)
    (choice,) = response.choices
    assert choice.text == expected["generated_text"]
    assert choice.finish_reason == expected["finish_reason"]
    assert response.usage.completion_tokens == expected["completion_tokens"]
    assert response.usage.prompt_tokens == expected["prompt_tokens"]
    assert response.model == "chat" and response.object == "text_completion"


def test_a_streamed_chat_arrives_in_pieces_that_join_to_the_whole_answer(client, runs):
    stream = client.chat.completions.create(model="chat:alpha", messages=CHAT, max_tokens=8, stream=True)
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    expected = _in_process(runs / "alpha" / "model", {"messages": CHAT}, max_new_tokens=8)
    assert len(pieces) >= 2, pieces  # streamed, not sent whole
    assert "".join(pieces) == expected["generated_text"]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == expected["finish_reason"]
    whole = client.chat.completions.create(model="chat:alpha", messages=CHAT, max_tokens=8)
    assert whole.choices[0].message.content == expected["generated_text"]


def test_two_adapters_on_one_base_answer_differently_and_each_like_its_own_export(client, url, runs):
    answers = {}
    for adapter in ("alpha", "beta", "alpha"):  # one adapter per replica: beta evicts alpha, and back
        response = client.completions.create(model=f"chat:{adapter}", prompt="the film", max_tokens=8)
        answers[adapter] = response.choices[0].text
        assert (
            answers[adapter]
            == _in_process(runs / adapter / "model", "the film", max_new_tokens=8)["generated_text"]
        )
    assert answers["alpha"] != answers["beta"]
    assert httpx.get(f"{url}/stats", timeout=10).json()["adapters_loaded"] == 1  # the LRU limit
    # The header Serve routes by picks the adapter on /predict too.
    by_header = httpx.post(
        f"{url}/predict",
        json={"inputs": "the film", "parameters": {"max_new_tokens": 8}},
        headers={"serve_multiplexed_model_id": "beta"},
        timeout=60,
    ).json()
    assert by_header["model"] == "chat:beta"
    assert by_header["predictions"][0]["generated_text"] == answers["beta"]
    listed = [m.id for m in client.models.list()]
    assert listed == ["chat", "chat:alpha", "chat:beta", "chat:chat"]  # not stranger: another base


def test_unknown_and_unsafe_adapters_are_refused_and_the_replica_stays_up(client, url):
    with pytest.raises(openai.NotFoundError, match="unknown adapter 'gamma'"):
        client.completions.create(model="chat:gamma", prompt="x", max_tokens=2)
    with pytest.raises(
        openai.UnprocessableEntityError, match="adapter 'stranger' was trained over .*other-llama"
    ):
        client.completions.create(model="chat:stranger", prompt="x", max_tokens=2)
    with pytest.raises(openai.NotFoundError, match="unknown model 'other'"):
        client.completions.create(model="other", prompt="x", max_tokens=2)
    for unsafe in ("..", "a/b", "../chat"):
        response = httpx.post(
            f"{url}/predict", json={"inputs": "x"}, headers={"serve_multiplexed_model_id": unsafe}, timeout=30
        )
        assert response.status_code == 422, (unsafe, response.text)
        assert "may not contain" in response.text
    with pytest.raises(openai.UnprocessableEntityError, match="n"):
        client.completions.create(model="chat", prompt="x", max_tokens=2, n=2)
    bad = httpx.post(f"{url}/v1/chat/completions", json={"model": "chat"}, timeout=30)
    assert bad.status_code == 422 and "messages" in bad.text
    assert httpx.get(f"{url}/healthz", timeout=10).json() == {"status": "ok", "task": "causal_lm"}
