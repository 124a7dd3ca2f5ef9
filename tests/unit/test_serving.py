"""The serve: section and serving's pure logic (no Ray cluster)."""

from __future__ import annotations

import pytest
import yaml

from raft import serving
from raft.spec import SpecError, dump_spec, validate

BASE = {
    "model": {"path": "model"},
    "task": {"type": "sequence_classification"},
    "data": {"train": "train.jsonl"},
}


def _problems(serve: dict) -> list[str]:
    with pytest.raises(SpecError) as caught:
        validate({**BASE, "serve": serve})
    return caught.value.problems


def test_defaults_give_one_replica_with_batching():
    spec = validate({**BASE, "serve": {}})
    options = serving.deployment_options(spec.serve)
    assert options == {
        "max_ongoing_requests": 32,
        "max_queued_requests": 64,
        "ray_actor_options": {"num_cpus": 1.0, "num_gpus": 0.0},
        "health_check_period_s": 10.0,  # Serve's own defaults
        "health_check_timeout_s": 30.0,
        "logging_config": {"enable_access_log": True},
        "num_replicas": 1,
    }
    assert spec.serve.unhealthy_after_failures == 3
    assert spec.serve.batching.max_batch_size == 16
    assert "serve" not in yaml.safe_load(dump_spec(validate(BASE)))  # absent stays absent
    assert validate(yaml.safe_load(dump_spec(spec))) == spec


def test_autoscaling_replaces_a_fixed_replica_count():
    spec = validate({**BASE, "serve": {"autoscaling": {"min_replicas": 0, "max_replicas": 3}}})
    options = serving.deployment_options(spec.serve)
    assert "num_replicas" not in options
    assert options["autoscaling_config"] == {
        "min_replicas": 0,
        "max_replicas": 3,
        "target_ongoing_requests": 2.0,
    }


@pytest.mark.parametrize(
    ("serve", "expected"),
    [
        ({"num_replicas": 2, "autoscaling": {}}, "give num_replicas or autoscaling, not both"),
        (
            {"autoscaling": {"min_replicas": 3, "max_replicas": 2}},
            "min_replicas (3) is above max_replicas (2)",
        ),
        ({"num_replicas": 0}, "serve.num_replicas"),
        ({"port": 70000}, "serve.port"),
        ({"route_prefix": "api"}, "route_prefix 'api' must start with '/'"),
        ({"batching": {"max_batch_size": 0}}, "serve.batching.max_batch_size"),
        ({"replicas": 2}, "serve.replicas"),  # a misspelt key is an error, not ignored
        ({"health_check_timeout_s": 0}, "serve.health_check_timeout_s"),
        ({"health_check_period_s": -1}, "serve.health_check_period_s"),
        ({"unhealthy_after_failures": 0}, "serve.unhealthy_after_failures"),
    ],
)
def test_bad_serve_sections_are_refused_by_key(serve, expected):
    problems = _problems(serve)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("adapter_id", "problem"),
    [
        ("support-v2", None),
        ("a.b_c-1", None),
        ("../etc", "may not contain '/', '\\\\' or '..'"),
        ("team/adapter", "may not contain"),
        ("x..y", "may not contain"),
        ("", "must be 1-128 letters"),
        ("-leading", "must be 1-128 letters"),
        ("white space", "must be 1-128 letters"),
        ("a" * 129, "must be 1-128 letters"),
    ],
)
def test_adapter_ids_are_single_safe_names(adapter_id, problem):
    found = serving.adapter_problem(adapter_id)
    assert (found is None) if problem is None else (problem in found), found


def test_openai_model_field_names_base_and_adapter():
    assert serving.split_model_id("tiny", "tiny") == ("tiny", None)
    assert serving.split_model_id("tiny:support", "tiny") == ("tiny", "support")
    assert serving.split_model_id(":support", "tiny") == ("tiny", "support")


def test_the_built_config_is_a_valid_ray_serve_config():
    from ray.serve.schema import ServeDeploySchema  # Ray's own schema (no cluster)

    spec = validate(
        {
            **BASE,
            "serve": {
                "autoscaling": {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 4},
                "num_cpus": 2,
                "host": "0.0.0.0",
                "port": 8080,
                "request_timeout_s": 10,
                "health_check_period_s": 2,
                "health_check_timeout_s": 5,
            },
        }
    )
    config = serving.serve_config(spec.serve, "/models/topics")
    parsed = ServeDeploySchema.model_validate(config)
    (app,) = parsed.applications
    assert app.import_path == "raft.serve:build_app"
    assert app.args["model_dir"] == "/models/topics"
    assert serving.ServeSection.model_validate(app.args["serve"]) == spec.serve  # build_app reads it back
    (deployment,) = app.deployments
    assert deployment.name == "Predictor" and deployment.autoscaling_config["max_replicas"] == 4
    assert deployment.ray_actor_options.num_cpus == 2
    assert (deployment.health_check_period_s, deployment.health_check_timeout_s) == (2, 5)
    assert parsed.http_options.port == 8080 and parsed.http_options.request_timeout_s == 10


def test_a_request_list_is_a_list_of_inputs_and_parameters_default_empty():
    assert serving.PredictRequest(inputs="one").items() == ["one"]
    assert serving.PredictRequest(inputs=[["a", "b"]]).items() == [["a", "b"]]
    assert serving.PredictRequest(inputs=["a", "b"]).items() == ["a", "b"]
    assert serving.PredictRequest(inputs="x").parameters == {}
    with pytest.raises(ValueError, match="top_k"):
        serving.PredictRequest(inputs="x", top_k=2)  # parameters go under "parameters"


def test_media_inputs_decode_from_base64_data_urls_and_uploads():
    import base64

    png = b"\x89PNG\r\n\x1a\n rest"
    text = base64.b64encode(png).decode()
    assert serving.decode_media(text, "image") == png
    assert serving.decode_media("data:image/png;base64," + text, "image") == png
    assert serving.decode_media(png, "image") == png  # a multipart upload's bytes
    for bad, message in [
        ("not base64!", "give the image as base64 text (or a data: URL); this is not base64"),
        (42, "give the image as base64 text (or upload it as a file)"),
        ("", "the image is empty"),
    ]:
        with pytest.raises(ValueError) as caught:
            serving.decode_media(bad, "image")
        assert str(caught.value) == message


def test_input_problems_name_each_bad_input_by_position():
    from raft import registry

    task = registry.get_task("sequence_classification")
    single = validate(BASE).task
    pairs = validate({**BASE, "task": {"type": "sequence_classification", "text_pair_column": "b"}}).task
    assert serving.input_problems(task, single, ["a", "b"]) == (["a", "b"], [])
    assert serving.input_problems(task, single, []) == ([], ["inputs: give at least one input"])
    _, problems = serving.input_problems(task, single, ["ok", ["a", "b"], 3])
    assert problems == [
        "inputs[1]: give a text (this model takes one text per input)",
        "inputs[2]: give a text (this model takes one text per input)",
    ]
    _, problems = serving.input_problems(task, pairs, [["a", "b"], "lonely"])
    assert problems == ["inputs[1]: this model classifies text pairs; give [text, pair]"]


def test_request_options_are_the_familys_and_unknown_keys_are_named():
    from raft import registry

    spec = validate(BASE).task
    task = registry.get_task("sequence_classification")
    assert task.request_options({}, spec) == {"top_k": 1}
    assert task.request_options({"top_k": 3}, spec) == {"top_k": 3}
    with pytest.raises(ValueError, match=r"parameters.top_k: Input should be greater than 0"):
        task.request_options({"top_k": 0}, spec)
    with pytest.raises(ValueError, match=r"parameters.temperature: Extra inputs are not permitted"):
        task.request_options({"temperature": 1}, spec)
    tagger = registry.get_task("token_classification")
    with pytest.raises(ValueError, match=r"this model takes no parameters \(got \['top_k'\]\)"):
        tagger.request_options({"top_k": 2}, spec)


def _adapter_export(
    root, name: str, base: str, technique: str = "lora", task: str = "causal_lm", run: bool = True
):
    folder = root / name / "model" if run else root / name
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    document = {
        "model": {"path": base},
        "task": {"type": task},
        "technique": {"type": technique},
        "data": {"train": "t.jsonl"},
    }
    (folder / "raft_spec.yaml").write_text(dump_spec(validate(document)))
    return folder


def test_adapters_are_found_as_run_folders_or_adapter_folders(tmp_path):
    run = _adapter_export(tmp_path, "support", "base")
    plain = _adapter_export(tmp_path, "legal.v2", "base", run=False)
    (tmp_path / "notes").mkdir()  # no adapter: not listed
    (tmp_path / "bad name").mkdir()
    assert serving.adapter_path(tmp_path, "support") == run
    assert serving.adapter_path(tmp_path, "legal.v2") == plain
    assert serving.adapter_path(tmp_path, "notes") is None
    assert serving.available_adapters(tmp_path) == ["legal.v2", "support"]
    assert serving.available_adapters(tmp_path / "missing") == []


def test_an_adapter_must_share_the_base_family_and_kind(tmp_path):
    from raft.spec import load_spec

    base = validate(
        {
            **BASE,
            "model": {"path": str(tmp_path / "llama")},
            "task": {"type": "causal_lm"},
            "technique": {"type": "lora"},
        }
    )
    (tmp_path / "llama").mkdir()

    def mismatch(name, **kwargs):
        folder = _adapter_export(tmp_path / name, name, kwargs.pop("base", str(tmp_path / "llama")), **kwargs)
        return serving.adapter_mismatch(base, load_spec(folder / "raft_spec.yaml"), name)

    assert mismatch("good") is None
    assert "was trained over /elsewhere" in mismatch("other-base", base="/elsewhere")
    assert "is a sequence_classification model; this deployment serves causal_lm" in mismatch(
        "classifier", task="sequence_classification"
    )
    assert "is a ia3 adapter; this deployment's adapters are lora" in mismatch("ia3", technique="ia3")


def test_an_evicted_adapter_is_unloaded_once():
    unloaded = []
    adapter = serving.LoadedAdapter("support", "adapter1", None, unloaded.append)
    adapter.__del__()  # what Serve calls when it evicts the id
    adapter.__del__()  # and Python again at garbage collection
    del adapter
    assert unloaded == ["adapter1"]


def test_openai_requests_map_to_decoding_options_and_refuse_what_raft_cannot_do():
    request = serving.CompletionRequest(
        model="m", prompt="hi", max_tokens=5, temperature=0.5, stop="\n", user="someone", seed=3
    )
    assert request.options() == {"max_new_tokens": 5, "temperature": 0.5, "stop": ["\n"]}
    assert request.prompts() == ["hi"]
    chat = serving.ChatCompletionRequest(
        model="m", messages=[{"role": "user", "content": "hi"}], max_completion_tokens=7
    )
    assert chat.options() == {"max_new_tokens": 7}
    for bad, field in [({"n": 2}, "n"), ({"logprobs": True}, "logprobs"), ({"max_tokens": 0}, "max_tokens")]:
        with pytest.raises(ValueError, match=field):
            serving.CompletionRequest(model="m", prompt="hi", **bad)
    with pytest.raises(ValueError, match="messages"):
        serving.ChatCompletionRequest(model="m", messages=[])


def test_openai_responses_and_stream_chunks_have_openais_shape():
    import json

    answers = [
        {"generated_text": "a", "finish_reason": "stop", "prompt_tokens": 3, "completion_tokens": 2},
        {"generated_text": "b", "finish_reason": "length", "prompt_tokens": 4, "completion_tokens": 5},
    ]
    body = serving.completion_response("cmpl-1", "m", 7, answers)
    assert [c["text"] for c in body["choices"]] == ["a", "b"]
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 7, "total_tokens": 14}
    chat = serving.chat_response("c-1", "m", 7, answers[0])
    assert chat["choices"][0]["message"] == {"role": "assistant", "content": "a"}
    event = serving.stream_chunk("c-1", "m", 7, True, "hel", None)
    assert event.startswith("data: ") and event.endswith("\n\n")
    chunk = json.loads(event[len("data: ") :])
    assert chunk["object"] == "chat.completion.chunk" and chunk["choices"][0]["delta"] == {"content": "hel"}
    last = json.loads(serving.stream_chunk("c-1", "m", 7, False, None, "length")[len("data: ") :])
    assert last["choices"][0] == {"index": 0, "text": "", "finish_reason": "length", "logprobs": None}


def test_a_replica_is_unfit_after_enough_failed_model_calls_in_a_row_and_fit_after_one_success():
    health = serving.ModelHealth(limit=3)
    assert health.problem() is None  # a fresh replica is fit
    health.record(RuntimeError("CUDA error: an illegal memory access was encountered"))
    health.record(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert health.problem() is None  # two in a row: still fit
    health.record(None)  # a call that answered resets the count
    for _ in range(2):
        health.record(RuntimeError("boom"))
    assert health.problem() is None
    health.record(MemoryError("out of memory"))
    assert health.problem() == "its last 3 model calls failed, the last with MemoryError: out of memory"
    health.record(RuntimeError("again"))
    assert health.problem() == "its last 4 model calls failed, the last with RuntimeError: again"
    health.record(None)
    assert health.problem() is None and health.failures == 0
    strict = serving.ModelHealth(limit=1)
    strict.record(TypeError("x"))
    assert strict.problem() == "its last model call failed with TypeError: x"


def test_a_refused_input_neither_counts_against_a_replica_nor_for_it():
    # A ValueError is an input or option the model refuses (a client's, not the replica's):
    # a client sending it again and again cannot get a replica replaced...
    health = serving.ModelHealth(limit=2)
    for _ in range(5):
        health.record(ValueError("`temperature` must be strictly positive"))
    assert health.problem() is None and health.failures == 0
    # ...nor does it break a run of real failures.
    health.record(RuntimeError("CUDA error"))
    health.record(ValueError("bad option"))
    health.record(RuntimeError("CUDA error"))
    assert health.problem() == "its last 2 model calls failed, the last with RuntimeError: CUDA error"


def test_the_serve_status_line_counts_replicas_by_state_and_names_a_failure():
    from raft.serving import describe_status

    assert (
        describe_status("RUNNING", {"Predictor": ("HEALTHY", {"RUNNING": 2, "STARTING": 0})})
        == "RUNNING · Predictor healthy: 2 running"
    )
    assert describe_status(
        "DEPLOYING", {"Predictor": ("UPDATING", {"STARTING": 1, "RUNNING": 1})}, "waiting for replicas\nmore"
    ) == ("DEPLOYING · Predictor updating: 1 running, 1 starting · waiting for replicas")
    assert describe_status("DEPLOY_FAILED", {"Predictor": ("UNHEALTHY", {})}, "boom") == (
        "DEPLOY_FAILED · Predictor unhealthy: no replicas · boom"
    )
