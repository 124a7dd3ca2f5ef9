"""The CLI on bad input: one clear message, exit code 2, no cluster started, nothing lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from raft.cli import main
from tests.helpers import base_spec


@pytest.fixture
def write_spec(tmp_path, tiny_bert, toy_data):
    def write(**sections):
        path = tmp_path / "spec.yaml"
        path.write_text(
            "# raft train spec.yaml\n" + yaml.safe_dump(base_spec(tiny_bert, toy_data, tmp_path, **sections))
        )
        return path

    return write


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_validate_accepts_a_good_spec(write_spec):
    result = run("validate", write_spec(), "train.lr=1e-4", "technique.type=lora")
    assert result.exit_code == 0, result.output
    assert "valid" in result.output and "lora" in result.output


def test_validate_lists_every_schema_problem(write_spec):
    result = run("validate", write_spec(), "train.lr=-1", "scaling.num_workers=zero", "train.bogus=1")
    assert result.exit_code == 2
    assert "3 problem(s)" in result.output
    for path in ("train.lr", "scaling.num_workers", "train.bogus"):
        assert path in result.output


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.train=/nonexistent/train.jsonl", "data.train '/nonexistent/train.jsonl' does not exist"),
        ("task.text_column=sentence", "no column(s) ['sentence']"),
        ("task.label_column=category", "no column(s) ['category']"),
        ("model.path=/nonexistent/model", "model.path '/nonexistent/model' is not a folder"),
        (
            "model.path=package:not_a_real_package/model",
            "Python package 'not_a_real_package' is not installed",
        ),
    ],
)
def test_train_refuses_bad_input_before_starting_ray(write_spec, tmp_path, monkeypatch, override, message):
    connects = []
    monkeypatch.setattr("raft.train.connect", lambda *args, **kwargs: connects.append(args))
    earlier = tmp_path / "runs" / "earlier-run"
    earlier.mkdir(parents=True)
    (earlier / "summary.json").write_text(json.dumps({"accuracy": 0.9}))
    result = run("train", write_spec(), override)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert connects == []  # no cluster was started or joined
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["earlier-run"]
    assert json.loads((earlier / "summary.json").read_text()) == {"accuracy": 0.9}


def test_empty_data_file_is_refused(write_spec, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = run("validate", write_spec(), f"data.train={empty}")
    assert result.exit_code == 2 and "is empty (no rows)" in result.output


def test_model_folder_without_safetensors_is_refused(write_spec, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"")
    result = run("validate", write_spec(), f"model.path={folder}")
    assert result.exit_code == 2 and "no *.safetensors weights" in result.output


def test_finished_run_is_not_trained_again(write_spec, tmp_path):
    model_dir = tmp_path / "runs" / "done" / "model"
    model_dir.mkdir(parents=True)
    (model_dir / "model.safetensors").write_bytes(b"weights")
    result = run("train", write_spec(), "output.name=done")
    # No cluster is started and nothing under the run is touched.
    assert result.exit_code == 0 and "already finished" in result.output, result.output
    assert "not training it again" in result.output
    assert sorted(p.name for p in (tmp_path / "runs" / "done").rglob("*")) == ["model", "model.safetensors"]
    assert (model_dir / "model.safetensors").read_bytes() == b"weights"


def test_list_prints_the_matrix():
    result = run("list")
    assert result.exit_code == 0
    table, notes = result.output.split("\n\n")
    header, *rows = table.splitlines()
    techniques = ("freeze", "full", "ia3", "lora", "prefix_tuning", "prompt_tuning")
    assert header.split()[1:] == list(techniques)
    by_family = {row.split()[0]: row.split()[1:] for row in rows}
    assert len(by_family) == 7  # every family in raft's scope
    assert by_family["sequence_classification"] == ["yes"] * len(techniques)
    for generative in ("causal_lm", "seq2seq"):
        assert by_family[generative] == ["yes"] * len(techniques), by_family[generative]
    # A refused pair shows "no [n]" and footnote n gives the reason.
    cells = " ".join(by_family["token_classification"]).replace("no [", "no[").split()
    ner = dict(zip(techniques, cells, strict=True))
    number = ner["prompt_tuning"].removeprefix("no[").rstrip("]")
    footnotes = {line.split("]")[0].lstrip("["): line for line in notes.splitlines()}
    assert "token_classification × prompt_tuning: peft's prompt tuning prepends" in footnotes[number]
    for family in ("image_classification", "speech_recognition", "image_text"):
        cells = " ".join(by_family[family])
        assert cells.startswith("yes yes yes yes no [") and cells.count("no [") == 2, cells


SEARCH = {"metric": "val_accuracy", "space": {"train.lr": {"loguniform": [1e-4, 1e-2]}}}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give a spec file to start a search, or --resume RUN_DIR"),
        (["--resume", "{tmp}/runs/nothing-here"], "is not a search started by raft tune"),
        (["{bad_key}"], "tune.space.train.lrr: not a key of the spec"),
        (["{spec}", "tune.metric=val_bleu"], "never report 'val_bleu'"),
        (
            ["{spec}", "data.train=/nonexistent/train.jsonl"],
            "data.train '/nonexistent/train.jsonl' does not exist",
        ),
        (  # every searched data file and model folder is checked too, not only the base one
            ["{spec}", "tune.space={{data.train: [/nonexistent/more.jsonl]}}"],
            "tune.space.data.train = '/nonexistent/more.jsonl': data.train '/nonexistent/more.jsonl' does not exist",
        ),
        (
            ["{spec}", "tune.space={{model.path: [{tmp}]}}"],
            "has no config.json; is it a Hugging Face model folder?",
        ),
    ],
)
def test_tune_refuses_bad_input_before_starting_ray(write_spec, tmp_path, monkeypatch, args, message):
    connects = []
    monkeypatch.setattr("raft.tune.connect", lambda *a, **k: connects.append(a))
    bad_key = write_spec(tune={"space": {"train.lrr": [1e-3]}})
    bad_key = bad_key.rename(tmp_path / "bad_key.yaml")
    spec = write_spec(tune=SEARCH)
    result = run("tune", *[a.format(tmp=tmp_path, spec=spec, bad_key=bad_key) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert connects == []  # no cluster was started or joined, no trial ran
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_tune_needs_a_tune_section_and_validate_describes_the_search(write_spec):
    result = run("tune", write_spec())
    assert result.exit_code == 2 and "has no tune: section" in result.output
    result = run("validate", write_spec(tune=SEARCH))
    assert result.exit_code == 0, result.output
    assert "search over train.lr: 4 trials (1 at once), fifo, random" in result.output


def _export_stub(folder, tiny_bert, task: dict) -> Path:
    """A folder holding only an export's raft_spec.yaml: all raft serve reads before Ray."""
    folder.mkdir(parents=True)
    document = {"model": {"path": str(tiny_bert)}, "task": task, "data": {"train": "train.jsonl"}}
    (folder / "raft_spec.yaml").write_text(yaml.safe_dump(document))
    return folder


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give the model folder to serve"),
        (["{tmp}"], "is not a model exported by raft (no raft_spec.yaml)"),
        (["--best", "{tmp}"], "best/model is not a model exported by raft"),
        (["{classifier}", "--best", "{tmp}"], "give MODEL_DIR or --best RUN_DIR, not both"),
        (["{classifier}", "train.lr=1"], "raft serve takes serve.key=value overrides only; got train.lr=1"),
        (["{classifier}", "serve.replicas=2"], "serve.replicas"),
        (["{classifier}", "serve.num_replicas=2", "serve.autoscaling={{max_replicas: 3}}"], "not both"),
        (["{classifier}", "serve.adapters_dir={tmp}/nowhere"], "nowhere' is not a folder"),
        (
            ["{generator}", "serve.adapters_dir={tmp}"],
            "serve.adapters_dir needs an adapter export to serve (its base model carries the adapters)",
        ),
    ],
)
def test_serve_refuses_bad_input_before_starting_ray(tmp_path, tiny_bert, monkeypatch, args, message):
    started = []
    monkeypatch.setattr("raft.serve.start", lambda *a, **k: started.append(a))
    classifier = _export_stub(tmp_path / "classifier", tiny_bert, {"type": "sequence_classification"})
    generator = _export_stub(tmp_path / "generator", tiny_bert, {"type": "causal_lm"})
    result = run("serve", *[a.format(tmp=tmp_path, classifier=classifier, generator=generator) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert started == []


def test_serve_build_writes_a_config_rays_serve_accepts(tmp_path, tiny_bert):
    from ray.serve.schema import ServeDeploySchema

    classifier = _export_stub(tmp_path / "classifier", tiny_bert, {"type": "sequence_classification"})
    out = tmp_path / "serve.yaml"
    result = run("serve", classifier, "serve.num_replicas=3", "serve.port=8100", "--build", out)
    assert result.exit_code == 0, result.output
    config = ServeDeploySchema.model_validate(yaml.safe_load(out.read_text()))
    (app,) = config.applications
    assert app.import_path == "raft.serve:build_app" and app.args["model_dir"] == str(classifier.resolve())
    assert app.deployments[0].num_replicas == 3 and config.http_options.port == 8100
