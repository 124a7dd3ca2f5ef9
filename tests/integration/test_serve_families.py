"""raft serve for the vision, speech, image-text and seq2seq families on the real local Ray
cluster: images and audio as multipart uploads and as base64 JSON, answers equal to an
in-process call of the same export, undecodable media refused with 422 while the replica
stays healthy."""

from __future__ import annotations

import base64
import io
import random
import socket

import httpx
import numpy as np
import pytest
import soundfile
import torch
from ray import serve

from raft import registry
from raft.evaluate import load_exported
from raft.serve import start
from raft.serving import ServeSection
from raft.testing import (
    make_tiny_clip_model,
    make_tiny_generative_model,
    make_tiny_speech_model,
    make_tiny_vision_model,
    toy_captioned_image,
    toy_clip,
    toy_image,
)
from tests.helpers import export_tiny

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _wav(samples: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV")
    return buffer.getvalue()


def _t5(root):
    """A tiny T5 whose pad embedding is zeroed: untrained, it would otherwise only repeat
    the pad token it starts decoding from, and every answer would be empty."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    source = make_tiny_generative_model(root / "t5-source", "seq2seq")
    model = AutoModelForSeq2SeqLM.from_pretrained(source)
    with torch.no_grad():
        model.shared.weight[0].zero_()
    model.save_pretrained(root / "t5")
    AutoTokenizer.from_pretrained(source).save_pretrained(root / "t5")
    return root / "t5"


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-families")
    return {
        "vit": export_tiny(
            make_tiny_vision_model(root / "vit"),
            root / "vit-run",
            {"type": "image_classification"},
            ("diagonal", "horizontal", "vertical"),
        ),
        "asr": export_tiny(
            make_tiny_speech_model(root / "whisper"),
            root / "asr-run",
            {"type": "speech_recognition", "generation": {"max_new_tokens": 6}},
        ),
        "clip": export_tiny(
            make_tiny_clip_model(root / "clip"),
            root / "clip-run",
            {"type": "image_text", "max_length": 16, "class_prompt": "a photo of {} stripes"},
        ),
        "t5": export_tiny(
            _t5(root),
            root / "t5-run",
            {"type": "seq2seq", "source_prefix": "translate: ", "generation": {"max_new_tokens": 6}},
        ),
    }


@pytest.fixture(scope="module")
def urls(exports):
    port = _free_port()
    served = {
        name: start(str(folder), ServeSection(port=port, num_cpus=0.25, route_prefix=f"/{name}"), name=name)
        for name, folder in exports.items()
    }
    yield served
    serve.shutdown()


def _in_process(model_dir, items, **options):
    spec, model, _ = load_exported(model_dir)
    task = registry.get_task(spec.task.type)
    decoded = [task.request_input(item, spec.task, str(model_dir)) for item in items]
    return task.predict(model, str(model_dir), spec.task, decoded, **options)


def test_images_upload_or_base64_and_answer_as_in_process(exports, urls):
    rng = random.Random(0)
    images = [_png(toy_image(kind, rng)) for kind in ("horizontal", "vertical")]
    uploaded = httpx.post(
        f"{urls['vit']}/predict/upload",
        files=[("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)],
        data={"parameters": '{"top_k": 2}'},
        timeout=60,
    )
    assert uploaded.status_code == 200, uploaded.text
    as_json = httpx.post(
        f"{urls['vit']}/predict",
        json={"inputs": [base64.b64encode(d).decode() for d in images], "parameters": {"top_k": 2}},
        timeout=60,
    )
    expected = _in_process(exports["vit"], images, top_k=2)
    for answers in (uploaded.json()["predictions"], as_json.json()["predictions"]):
        assert [a["label"] for a in answers] == [e["label"] for e in expected]
        assert [[c["label"] for c in a["top_k"]] for a in answers] == [
            [c["label"] for c in e["top_k"]] for e in expected
        ]
        assert [a["score"] for a in answers] == pytest.approx([e["score"] for e in expected], abs=1e-5)


def test_media_that_does_not_decode_gets_422_and_the_replica_stays_up(urls):
    bad_upload = httpx.post(
        f"{urls['vit']}/predict/upload",
        files=[("files", ("x.png", b"not an image", "image/png"))],
        timeout=30,
    )
    assert bad_upload.status_code == 422, bad_upload.text
    assert "inputs[0]: the image does not decode" in bad_upload.text
    not_base64 = httpx.post(f"{urls['vit']}/predict", json={"inputs": ["%%%"]}, timeout=30)
    assert not_base64.status_code == 422 and "this is not base64" in not_base64.text
    noise = base64.b64encode(b"RIFF....WAVEjunk").decode()
    bad_audio = httpx.post(f"{urls['asr']}/predict", json={"inputs": noise}, timeout=30)
    assert bad_audio.status_code == 422 and "the audio does not decode" in bad_audio.text
    text_upload = httpx.post(
        f"{urls['t5']}/predict/upload", files=[("files", ("a.txt", b"hello", "text/plain"))], timeout=30
    )
    assert text_upload.status_code == 422 and "takes JSON inputs at /predict" in text_upload.text
    for name in ("vit", "asr", "t5"):
        assert httpx.get(f"{urls[name]}/healthz", timeout=10).json()["status"] == "ok"


def test_an_uploaded_clip_is_transcribed_as_in_process(exports, urls):
    clip = _wav(toy_clip(["low", "mid"], 8000), 8000)  # resampled to the model's rate
    response = httpx.post(
        f"{urls['asr']}/predict/upload", files=[("files", ("clip.wav", clip, "audio/wav"))], timeout=60
    )
    assert response.status_code == 200, response.text
    (answer,) = response.json()["predictions"]
    assert answer == _in_process(exports["asr"], [clip])[0]
    assert set(answer) == {"text"}


def test_image_text_embeds_and_labels_zero_shot_as_in_process(exports, urls):
    image = base64.b64encode(_png(toy_captioned_image("red", "horizontal", random.Random(0)))).decode()
    labels = ["red horizontal", "blue vertical", "green diagonal"]
    items = [{"image": image}, {"text": "a photo of red stripes"}]
    response = httpx.post(
        f"{urls['clip']}/predict",
        json={"inputs": items, "parameters": {"candidate_labels": labels, "top_k": 3}},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    got = response.json()["predictions"]
    expected = _in_process(exports["clip"], items, candidate_labels=labels, top_k=3)
    assert got[0]["label"] == expected[0]["label"] in labels
    assert [c["label"] for c in got[0]["top_k"]] == [c["label"] for c in expected[0]["top_k"]]
    for answer, want in zip(got, expected, strict=True):
        assert np.linalg.norm(answer["embedding"]) == pytest.approx(1.0, abs=1e-4)
        assert answer["embedding"] == pytest.approx(want["embedding"], abs=1e-5)
    assert set(got[1]) == {"embedding"}
    both = httpx.post(f"{urls['clip']}/predict", json={"inputs": [{"image": image, "text": "x"}]}, timeout=30)
    assert both.status_code == 422 and "exactly one of the two" in both.text


def test_seq2seq_generates_as_in_process_and_is_not_an_openai_model(exports, urls):
    sources = ["good movie", "the story was sad"]
    response = httpx.post(f"{urls['t5']}/predict", json={"inputs": sources}, timeout=60)
    assert response.status_code == 200, response.text
    got = [a["generated_text"] for a in response.json()["predictions"]]
    assert got == [e["generated_text"] for e in _in_process(exports["t5"], sources)]
    assert any(got), got  # the zeroed pad embedding lets the untrained model say something
    shorter = httpx.post(
        f"{urls['t5']}/predict", json={"inputs": sources, "parameters": {"max_new_tokens": 1}}, timeout=60
    ).json()["predictions"]
    assert [a["generated_text"] for a in shorter] == [
        e["generated_text"] for e in _in_process(exports["t5"], sources, max_new_tokens=1)
    ]
    openai_route = httpx.post(
        f"{urls['t5']}/v1/completions", json={"model": "served", "prompt": "x"}, timeout=30
    )
    assert openai_route.status_code == 404
    assert (
        openai_route.json()["error"]["message"]
        == "/v1/completions serves causal LMs; this model is a seq2seq (use /predict)"
    )
