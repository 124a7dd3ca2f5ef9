"""The spec schema: unknown keys, types, cross-field rules, overrides, shipped YAMLs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from raft.spec import (
    SpecError,
    apply_overrides,
    dump_spec,
    load_spec,
    parse_override,
    resume_conflicts,
    validate,
)

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = {
    "model": {"path": "models/x"},
    "task": {"type": "sequence_classification"},
    "data": {"train": "train.jsonl"},
}


def problems_of(document: dict) -> list[str]:
    with pytest.raises(SpecError) as caught:
        validate(document)
    return caught.value.problems


def test_minimal_spec_fills_defaults():
    spec = validate(MINIMAL)
    assert spec.technique.type == "full"
    assert spec.scaling.num_workers == 2
    assert spec.deepspeed.zero_stage == 0
    assert spec.run_name.startswith("sequence_classification-full-")


def test_every_problem_reported_at_once_with_dotted_paths():
    document = {
        "model": {"pth": "x"},
        "task": {"type": "sequence_classification", "max_length": 0},
        "technique": {"type": "lora", "r": "big"},
        "data": {"train": "t.jsonl"},
        "train": {"lr": -1, "epochs": 2.5},
        "bogus": {},
    }
    problems = problems_of(document)
    paths = {p.split(":")[0] for p in problems}
    assert {
        "model.path",
        "model.pth",
        "task.max_length",
        "technique.r",
        "train.lr",
        "train.epochs",
        "bogus",
    } <= paths
    assert any("unknown key" in p for p in problems if p.startswith("model.pth"))


def test_bad_row_settings_default_and_bounds():
    data = validate(MINIMAL).data
    assert (data.on_bad_rows, data.max_bad_fraction) == ("error", 0.05)
    skip = validate({**MINIMAL, "data": {"train": "t.jsonl", "on_bad_rows": "skip", "max_bad_fraction": 0}})
    assert (skip.data.on_bad_rows, skip.data.max_bad_fraction) == ("skip", 0.0)
    problems = problems_of(
        {**MINIMAL, "data": {"train": "t.jsonl", "on_bad_rows": "drop", "max_bad_fraction": 1.5}}
    )
    assert {p.split(":")[0] for p in problems} == {"data.on_bad_rows", "data.max_bad_fraction"}
    # The old name is gone (no alias): it is an unknown key, not silently ignored.
    assert problems_of({**MINIMAL, "data": {"train": "t.jsonl", "bad_rows": "skip"}})[0].startswith(
        "data.bad_rows: unknown key"
    )


def test_unknown_task_and_technique_types_list_the_known_ones():
    problems = problems_of({**MINIMAL, "task": {"type": "summarise"}, "technique": {"type": "lorax"}})
    assert any(p.startswith("task") and "sequence_classification" in p for p in problems)
    assert any(p.startswith("technique") and "lora" in p and "prompt_tuning" in p for p in problems)


def test_technique_fields_are_checked_per_technique():
    # 'r' belongs to lora, not to freeze.
    problems = problems_of({**MINIMAL, "technique": {"type": "freeze", "r": 8}})
    assert any(p.startswith("technique.r") for p in problems)


@pytest.mark.parametrize(
    ("sections", "needle"),
    [
        ({"deepspeed": {"zero_stage": 2, "offload_params": True}}, "offload_params needs zero_stage: 3"),
        ({"deepspeed": {"zero_stage": 0, "offload_optimizer": True}}, "offload_optimizer needs zero_stage"),
        ({"output": {"merge_adapter": True}}, "has no adapter to merge"),
        ({"train": {"precision": "bf16"}}, "needs scaling.use_gpu"),
        ({"train": {"warmup_ratio": 0.1, "warmup_steps": 10}}, "not both"),
        ({"data": {"train": "t.jsonl", "validation": "v.jsonl", "validation_fraction": 0.2}}, "not both"),
        ({"technique": {"type": "freeze", "embeddings": False}}, "freezes nothing"),
        ({"technique": {"type": "prompt_tuning", "init": "text"}}, "init_text"),
        ({"output": {"name": "../escape"}}, "output.name"),
    ],
)
def test_cross_field_rules(sections, needle):
    problems = problems_of({**MINIMAL, **sections})
    assert any(needle in p for p in problems), problems


def test_overrides_set_nested_values_parsed_as_yaml():
    document = apply_overrides(
        MINIMAL, ["train.lr=3e-4", "scaling.num_workers=4", "technique.type=lora", "technique.r=16"]
    )
    spec = validate(document)
    assert spec.train.lr == pytest.approx(3e-4)
    assert spec.scaling.num_workers == 4
    assert spec.technique.type == "lora" and spec.technique.r == 16
    assert MINIMAL["data"] == {"train": "train.jsonl"}  # the input is not modified


def test_override_list_value():
    spec = validate(
        apply_overrides(MINIMAL, ["technique.type=lora", "technique.target_modules=[query,value]"])
    )
    assert spec.technique.target_modules == ["query", "value"]


def test_bad_overrides_all_reported():
    with pytest.raises(SpecError) as caught:
        apply_overrides(MINIMAL, ["train.lr", "model.path.deeper=1", "=3"])
    assert len(caught.value.problems) == 3


def test_override_into_unknown_key_is_an_unknown_key_error():
    problems = problems_of(apply_overrides(MINIMAL, ["train.learning_rate=0.1"]))
    assert problems == ["train.learning_rate: unknown key (not part of the spec; check the spelling)"]


def test_parse_override_types():
    assert parse_override("a.b=true") == (["a", "b"], True)
    assert parse_override("a=null") == (["a"], None)
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])


def test_load_spec_reports_yaml_errors_and_missing_files(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(broken)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(SpecError, match="mapping of sections"):
        load_spec(listy)


SHIPPED = sorted([*ROOT.glob("examples/*.yaml"), *ROOT.glob("jobs/*.yaml")])


def test_there_are_shipped_specs():
    assert any(p.parent.name == "examples" for p in SHIPPED)


@pytest.mark.parametrize("path", [p for p in SHIPPED if p.name != "runtime_env.yaml"], ids=lambda p: p.name)
def test_shipped_specs_validate_and_open_with_their_command(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("#") and ("raft " in first or "make " in first), first
    spec = load_spec(path)
    assert spec.task.type
    # Data the examples ship must exist (relative paths are relative to the repo root);
    # data an example generates comes from the script its command runs first.
    generator = re.match(r"# python (examples/data/make_\w+\.py) && raft ", first)
    for location in (spec.data.train, spec.data.validation):
        if location and "://" not in location and not (ROOT / location).exists():
            assert generator and (ROOT / generator.group(1)).is_file(), (location, first)


def test_the_digits_example_writes_an_image_folder_per_class(tmp_path):
    import runpy

    from raft.sources import class_of, resolve

    runpy.run_path(str(ROOT / "examples/data/make_digits.py"), run_name="digits")["main"](tmp_path)
    train = resolve(str(tmp_path / "data/digits/train"))
    validation = resolve(str(tmp_path / "data/digits/validation"))
    assert train.format == validation.format == "imagefolder"
    assert (len(train.files), len(validation.files)) == (1497, 300)
    assert {class_of(f, train.root) for f in train.files} == {str(d) for d in range(10)}
    assert (tmp_path / "models/tiny-vit/preprocessor_config.json").is_file()


def test_the_caption_example_writes_captioned_digits(tmp_path):
    import json
    import runpy

    from raft.tasks.image_text import ImageText, ImageTextSpec

    runpy.run_path(str(ROOT / "examples/data/make_digit_captions.py"), run_name="captions")["main"](tmp_path)
    data = tmp_path / "data/digit_captions"
    splits = {
        s: [json.loads(x) for x in (data / f"{s}.jsonl").read_text().splitlines()]
        for s in ("train", "validation")
    }
    assert (len(splits["train"]), len(splits["validation"])) == (1497, 300)
    model = str(tmp_path / "models/tiny-clip")
    spec = ImageTextSpec(text_column="caption", label_column="label", max_length=16)
    for row in splits["validation"][:20]:
        assert ImageText().row_problem(row | {"path": str(data / "validation.jsonl")}, spec, model) is None
    assert {row["label"] for row in splits["train"]} == {
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
    }


def test_the_speech_example_writes_clips_raft_accepts(tmp_path):
    """With espeak-ng installed the clips are spoken digits; without it, toy tones."""
    import json
    import runpy

    from raft.tasks.speech_recognition import SpeechRecognition, SpeechRecognitionSpec

    runpy.run_path(str(ROOT / "examples/data/make_speech.py"), run_name="speech")["main"](tmp_path, 6, 3)
    data = tmp_path / "data/speech"
    model = str(tmp_path / "models/tiny-whisper")
    SpeechRecognition().check_model(SpeechRecognitionSpec(), model)
    for split, count in (("train", 6), ("validation", 3)):
        rows = [json.loads(x) for x in (data / f"{split}.jsonl").read_text().splitlines()]
        assert len(rows) == count
        for row in rows:
            row |= {"path": str(data / f"{split}.jsonl")}
            assert SpeechRecognition().row_problem(row, SpeechRecognitionSpec(), model) is None


def test_dump_round_trips():
    from raft.spec import dump_spec

    spec = validate({**MINIMAL, "technique": {"type": "lora", "r": 4}})
    assert validate(yaml.safe_load(dump_spec(spec))) == spec


def test_readme_spec_reference_is_current():
    from raft.spec import reference_markdown

    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- spec-reference:start -->\n", 1)[1].split("\n<!-- spec-reference:end -->", 1)[0]
    assert block == reference_markdown(), "run: raft spec-reference, and paste it into README.md"


def test_num_workers_is_a_count_or_an_elastic_range():
    fixed = validate({**MINIMAL, "scaling": {"num_workers": 3}}).scaling
    assert (fixed.elastic, fixed.min_workers, fixed.max_workers) == (False, 3, 3)
    elastic = validate({**MINIMAL, "scaling": {"num_workers": [1, 4]}}).scaling
    assert (elastic.elastic, elastic.min_workers, elastic.max_workers) == (True, 1, 4)
    assert (
        validate(yaml.safe_load(dump_spec(validate({**MINIMAL, "scaling": {"num_workers": [1, 4]}})))).scaling
        == elastic
    )
    for bad, needle in [
        ([4, 1], "min is above max"),
        ("zero", "expected a number of workers"),
        ([0, 2], "expected a number of workers"),
        (0, "expected at least 1 worker"),
    ]:
        found = problems_of({**MINIMAL, "scaling": {"num_workers": bad}})
        assert len(found) == 1 and found[0].startswith("scaling.num_workers") and needle in found[0], found
    assert problems_of({**MINIMAL, "scaling": {"num_workers": [1, 2]}, "deepspeed": {"zero_stage": 3}}) == [
        "scaling.num_workers: an elastic [min, max] run needs deepspeed.zero_stage 0, 1 or 2 "
        "(a ZeRO-3 checkpoint only loads into the number of workers that wrote it)"
    ]


def test_a_resumed_run_may_train_longer_but_not_change_what_it_trains():
    saved = yaml.safe_load(dump_spec(validate({**MINIMAL, "technique": {"type": "lora", "r": 8}})))
    longer = {
        **MINIMAL,
        "technique": {"type": "lora", "r": 8},
        "train": {"epochs": 9},
        "scaling": {"num_workers": 4},
    }
    assert resume_conflicts(saved, yaml.safe_load(dump_spec(validate(longer)))) == []
    changed = {
        **MINIMAL,
        "technique": {"type": "lora", "r": 16},
        "data": {"train": "other.jsonl", "cpus_per_task": 2},
        "train": {"batch_size": 4},
    }
    assert resume_conflicts(saved, yaml.safe_load(dump_spec(validate(changed)))) == [
        "technique.r: 8 → 16",
        "data.train: 'train.jsonl' → 'other.jsonl'",
        "train.batch_size: 16 → 4",
    ]


@pytest.mark.parametrize("name", ["../escape", "..", "a/b", "a\\b", ".hidden", "/abs", "", "run name"])
def test_run_names_cannot_leave_the_output_folder(name):
    found = problems_of({**MINIMAL, "output": {"name": name}})
    assert len(found) == 1 and found[0].startswith("output.name"), found
