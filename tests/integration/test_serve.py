"""raft serve on the real local Ray cluster: a classifier and a tagger export behind HTTP,
answers equal to an in-process call, dynamic batching under concurrent clients, bad
requests refused with 4xx while the replica stays healthy."""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from ray import serve

from raft import registry
from raft.evaluate import load_exported
from raft.export import export_model
from raft.labels import LabelMap
from raft.serve import start, status_line
from raft.serving import ServeSection
from raft.spec import validate

pytestmark = pytest.mark.slow
LABELS = ("negative", "neutral", "positive")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _export(tiny_bert, root, task_type: str, name: str, labels: tuple[str, ...]):
    """A tiny BERT with a fresh head, exported the way raft train exports a run."""
    spec = validate(
        {
            "model": {"path": str(tiny_bert)},
            "task": {"type": task_type, "max_length": 16},
            "data": {"train": "unused.jsonl"},
            "output": {"dir": str(root), "name": name},
        }
    )
    model = registry.get_task(task_type).build_model(str(tiny_bert), spec.task, LabelMap(labels))
    model.save_pretrained(root / "checkpoint")
    return export_model(root / "checkpoint", root / name / "model", spec, LabelMap(labels))


@pytest.fixture(scope="module")
def classifier(tiny_bert, tmp_path_factory):
    return _export(tiny_bert, tmp_path_factory.mktemp("serve"), "sequence_classification", "topics", LABELS)


@pytest.fixture(scope="module")
def tagger(tiny_bert, tmp_path_factory):
    tags = ("B-LOC", "B-PER", "I-PER", "O")
    return _export(tiny_bert, tmp_path_factory.mktemp("serve-ner"), "token_classification", "entities", tags)


@pytest.fixture(scope="module")
def port():
    port = _free_port()
    yield port
    serve.shutdown()  # frees the replicas' CPUs for the tests that train after these


@pytest.fixture(scope="module")
def url(classifier, port):
    section = ServeSection(port=port, batching={"max_batch_size": 8, "batch_wait_timeout_s": 0.1})
    return start(str(classifier), section)


def test_a_token_classifier_answers_with_entities_beside_the_classifier(tagger, url, port):
    # A second application on the same Serve instance, under its own route.
    ner = start(str(tagger), ServeSection(port=port, route_prefix="/ner"), name="ner")
    texts = ["Ada Lovelace visited London", "the of a"]
    response = httpx.post(f"{ner}/predict", json={"inputs": texts}, timeout=60)
    assert response.status_code == 200, response.text
    spec, model, _ = load_exported(tagger)
    expected = registry.get_task("token_classification").predict(model, str(tagger), spec.task, texts)
    for got, want in zip(response.json()["predictions"], expected, strict=True):
        assert [t["word"] for t in got["tags"]] == [t["word"] for t in want["tags"]]
        assert [t["tag"] for t in got["tags"]] == [t["tag"] for t in want["tags"]]
        assert [(e["entity"], e["start"], e["end"]) for e in got["entities"]] == [
            (e["entity"], e["start"], e["end"]) for e in want["entities"]
        ]
    assert httpx.get(f"{url}/healthz", timeout=10).json()["task"] == "sequence_classification"
    # What raft serve prints while it serves: each application's state and replicas.
    assert status_line("ner") == status_line() == "RUNNING · Predictor healthy: 1 running"
    assert status_line("absent") == "not deployed"


def test_predictions_over_http_equal_an_in_process_call(classifier, url):
    texts = ["good great fine", "bad awful", "the of a"]
    response = httpx.post(f"{url}/predict", json={"inputs": texts, "parameters": {"top_k": 2}}, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "topics" and len(body["predictions"]) == 3

    spec, model, _ = load_exported(classifier)
    expected = registry.get_task("sequence_classification").predict(
        model, str(classifier), spec.task, texts, top_k=2
    )
    for got, want in zip(body["predictions"], expected, strict=True):
        assert got["label"] == want["label"] in LABELS
        assert got["score"] == pytest.approx(want["score"], abs=1e-5)
        assert [c["label"] for c in got["top_k"]] == [c["label"] for c in want["top_k"]]
        assert len(got["top_k"]) == 2 and got["top_k"][0]["score"] >= got["top_k"][1]["score"]

    single = httpx.post(f"{url}/predict", json={"inputs": "good great fine"}, timeout=60).json()
    assert single["predictions"][0]["label"] == expected[0]["label"]
    assert len(single["predictions"][0]["top_k"]) == 1  # top_k defaults to 1
    models = httpx.get(f"{url}/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["topics"]


def test_concurrent_clients_are_batched(url):
    before = httpx.get(f"{url}/stats", timeout=10).json()["batches"]

    def one(index: int) -> int:
        return httpx.post(f"{url}/predict", json={"inputs": f"good day {index}"}, timeout=60).status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        assert set(pool.map(one, range(32))) == {200}
    after = httpx.get(f"{url}/stats", timeout=10).json()["batches"]
    new = {int(size): count - before.get(size, 0) for size, count in after.items()}
    assert sum(size * count for size, count in new.items()) == 32  # every request, once
    assert max(size for size, count in new.items() if count) > 1, new  # some ran together


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"{not json", "json"),
        (json.dumps({"text": "hello"}).encode(), "inputs"),  # the field is named inputs
        (json.dumps({"inputs": ["a", ["a", "b"]]}).encode(), "inputs[1]: give a text"),
        (json.dumps({"inputs": []}).encode(), "give at least one input"),
        (json.dumps({"inputs": "a", "parameters": {"top_k": 0}}).encode(), "parameters.top_k"),
        (json.dumps({"inputs": "a", "parameters": {"beams": 2}}).encode(), "parameters.beams"),
        (json.dumps({"inputs": "a", "colour": "red"}).encode(), "colour"),
    ],
)
def test_bad_requests_get_422_naming_the_problem_and_the_replica_stays_up(url, content, expected):
    response = httpx.post(
        f"{url}/predict", content=content, headers={"content-type": "application/json"}, timeout=30
    )
    assert response.status_code == 422, response.text
    assert expected in response.text
    assert httpx.get(f"{url}/healthz", timeout=10).json() == {
        "status": "ok",
        "task": "sequence_classification",
    }


def test_overload_is_refused_with_503_while_the_replica_is_busy(classifier, url, port):
    # One request at a time and one waiting: a long request holds the replica, and of the
    # requests that arrive meanwhile, those past the queue are refused at once, not held.
    section = ServeSection(
        port=port,
        route_prefix="/tight",
        max_ongoing_requests=1,
        max_queued_requests=1,
        batching={"max_batch_size": 1},
    )
    tight = start(str(classifier), section, name="tight")

    def post(body: dict) -> tuple[int, float]:  # status, and when the answer came
        response = httpx.post(f"{tight}/predict", json=body, timeout=120)
        return response.status_code, time.monotonic()

    with ThreadPoolExecutor(max_workers=8) as pool:
        slow = pool.submit(post, {"inputs": ["good day"] * 3000})
        time.sleep(1.0)  # the long request reaches the replica
        burst = [future.result() for future in [pool.submit(post, {"inputs": "hi"}) for _ in range(6)]]
        slow_status, slow_done = slow.result()
    assert slow_status == 200
    refused = [when for status, when in burst if status == 503]
    assert refused, burst
    assert all(when < slow_done for when in refused)  # answered at once, not after the wait
    assert {status for status, _ in burst} <= {200, 503}
    serve.delete("tight")
