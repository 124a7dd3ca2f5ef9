"""raft submit's decisions, without a cluster: ids, entrypoints, runtime envs, tokens, exit codes."""

from __future__ import annotations

import shlex

import pytest

from raft import submission
from raft.submission import SubmissionError


def test_submission_id_names_the_run_and_the_time():
    first = submission.submission_id("topics-lora", now=0)
    assert first == "raft-topics-lora-19700101-000000"
    assert submission.submission_id("topics-lora", now=61) != first
    assert submission.submission_id("a b/c:d", now=0) == "raft-a-b-c-d-19700101-000000"


def test_spec_must_live_inside_the_working_dir(tmp_path):
    (tmp_path / "jobs").mkdir()
    spec = tmp_path / "jobs" / "x.yaml"
    spec.write_text("x: 1")
    assert submission.relative_spec_path(spec, tmp_path) == "jobs/x.yaml"
    with pytest.raises(SubmissionError, match="is not a folder"):
        submission.relative_spec_path(spec, tmp_path / "missing")
    (tmp_path / "other").mkdir()
    with pytest.raises(SubmissionError, match="not inside the working directory"):
        submission.relative_spec_path(spec, tmp_path / "other")


def test_entrypoint_quotes_overrides():
    assert submission.entrypoint("jobs/s.yaml", [], "tune") == "raft tune jobs/s.yaml"
    with pytest.raises(submission.SubmissionError, match="not raft eval"):
        submission.entrypoint("jobs/s.yaml", [], "eval")
    command = submission.entrypoint("jobs/x.yaml", ["train.lr=3e-4", "output.name=my run"])
    assert shlex.split(command) == ["raft", "train", "jobs/x.yaml", "train.lr=3e-4", "output.name=my run"]


def test_runtime_env_adds_the_working_dir(tmp_path):
    env_file = tmp_path / "env.yaml"
    env_file.write_text("# comment\nenv_vars: {A: '1'}\nexcludes: [.venv]\n")
    env = submission.runtime_env(env_file, tmp_path)
    assert env == {"env_vars": {"A": "1"}, "excludes": [".venv"], "working_dir": str(tmp_path)}
    assert submission.runtime_env(None, tmp_path) == {"working_dir": str(tmp_path)}


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "does not exist"), ("- a\n- b\n", "must hold a mapping"), ("a: [", "not valid YAML")],
)
def test_bad_runtime_env_is_named(tmp_path, content, message):
    env_file = tmp_path / "env.yaml"
    if content is not None:
        env_file.write_text(content)
    with pytest.raises(SubmissionError, match=message):
        submission.runtime_env(env_file, tmp_path)


def test_auth_token_lookup_order(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    assert submission.auth_token("explicit", {"RAY_AUTH_TOKEN": "env"}) == "explicit"
    assert (
        submission.auth_token(None, {"RAY_AUTH_TOKEN": "env", "RAY_AUTH_TOKEN_PATH": str(token_file)})
        == "env"
    )
    assert submission.auth_token(None, {"RAY_AUTH_TOKEN_PATH": str(token_file)}) == "from-file"
    assert submission.auth_token(None, {"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")}) is None
    assert submission.auth_headers("abc") == {"Authorization": "Bearer abc"}
    assert submission.auth_headers(None) == {}


def test_exit_code_is_the_drivers_when_known():
    assert submission.exit_code("FAILED", 2) == 2
    assert submission.exit_code("SUCCEEDED", None) == 0
    assert submission.exit_code("FAILED", None) == 1
    assert submission.exit_code("STOPPED", None) == 130


def test_dashboard_address():
    assert submission.dashboard_address("10.0.0.1:8265") == "http://10.0.0.1:8265"
    assert submission.dashboard_address("https://head:8265") == "https://head:8265"
    with pytest.raises(SubmissionError, match="Jobs API"):
        submission.dashboard_address("ray://head:10001")
