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
        "num_replicas": 1,
    }
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
    assert parsed.http_options.port == 8080 and parsed.http_options.request_timeout_s == 10
