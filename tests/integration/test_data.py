"""Ray Data ingest on a real cluster: formats, validation split, labels, bad data."""

from __future__ import annotations

import gzip
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raft.data import prepare
from raft.sources import DataError
from raft.spec import validate
from raft.testing import toy_sentiment_rows, write_jsonl
from tests.helpers import base_spec

pytestmark = pytest.mark.slow


def spec_for(tiny_bert, tmp_path, data: dict, **task):
    document = base_spec(tiny_bert, {"train": "x", "validation": "x"}, tmp_path, task=task)
    document["data"] = data
    return validate(document)


def features(dataset) -> list[dict]:
    return dataset.take_all()


def test_csv_with_seeded_validation_fraction(tiny_bert, tmp_path):
    rows = toy_sentiment_rows(200, seed=5)
    path = tmp_path / "train.csv"
    path.write_text("text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in rows))
    spec = spec_for(tiny_bert, tmp_path, {"train": str(path), "validation_fraction": 0.25})
    first, second = prepare(spec), prepare(spec)
    assert (first.train_rows, first.validation_rows) == (150, 50)
    assert first.labels.names == ("negative", "positive")
    # Same seed, same split: the validation features are identical.
    key = lambda r: r["input_ids"].tolist()  # noqa: E731
    assert sorted(map(key, features(first.validation))) == sorted(map(key, features(second.validation)))
    batch = features(first.train)[0]
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels"}


def test_parquet_folder_and_integer_labels(tiny_bert, tmp_path):
    folder = tmp_path / "parquet"
    folder.mkdir()
    rows = toy_sentiment_rows(60, seed=6, label_type="int")
    for i in range(3):
        pq.write_table(pa.Table.from_pylist(rows[20 * i : 20 * (i + 1)]), folder / f"part-{i}.parquet")
    val = write_jsonl(toy_sentiment_rows(10, seed=7, label_type="int"), tmp_path / "val.jsonl")
    prepared = prepare(spec_for(tiny_bert, tmp_path, {"train": str(folder), "validation": str(val)}))
    assert prepared.train_rows == 60 and prepared.validation_rows == 10
    assert prepared.labels.names == ("0", "1")
    labels = {int(r["labels"]) for r in features(prepared.train)}
    assert labels == {0, 1}


def test_saved_hf_dataset_uses_its_validation_split(tiny_bert, tmp_path):
    import datasets

    splits = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(toy_sentiment_rows(40, seed=8)),
            "validation": datasets.Dataset.from_list(toy_sentiment_rows(12, seed=9)),
        }
    )
    splits.save_to_disk(tmp_path / "hf")
    prepared = prepare(spec_for(tiny_bert, tmp_path, {"train": str(tmp_path / "hf")}))
    assert (prepared.train_rows, prepared.validation_rows) == (40, 12)


def test_a_class_label_column_names_its_ids(tiny_bert, tmp_path):
    """A saved dataset whose tags are a sequence of ClassLabel ids (as conll2003's ner_tags
    are) trains under the ClassLabel's names: entity types come from them. Without the
    names every tag was "0", "1", …, and entity F1 stayed 0 however well the model did."""
    import datasets

    from raft.train import check_inputs

    names = ["O", "B-NEG", "B-POS"]
    schema = datasets.Features(
        {
            "tokens": datasets.Sequence(datasets.Value("string")),
            "tags": datasets.Sequence(datasets.ClassLabel(names=names)),
        }
    )
    rows = [
        {"tokens": ["good" if i % 2 else "bad", "movie"], "tags": [2 if i % 2 else 1, 0]} for i in range(20)
    ]
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(rows, features=schema),
            "validation": datasets.Dataset.from_list(rows[:6], features=schema),
        }
    ).save_to_disk(tmp_path / "hf")
    document = base_spec(tiny_bert, {"train": str(tmp_path / "hf"), "validation": "x"}, tmp_path)
    document["data"] = {"train": str(tmp_path / "hf")}
    document["task"] = {"type": "token_classification", "max_length": 8}
    spec = check_inputs(validate(document))
    assert spec.task.labels == names
    prepared = prepare(spec)
    assert prepared.labels.names == tuple(names)
    from raft.registry import get_task

    assert get_task("token_classification").empty_stats(prepared.labels).shape == (3, 3)  # NEG, POS, tokens
    labels = {tuple(row["labels"][row["labels"] != -100].tolist()) for row in features(prepared.train)}
    assert labels == {(1, 0), (2, 0)}  # the ids as stored: B-NEG O and B-POS O
    # Names the spec gives win; integer cells are then ids into them.
    document["task"]["labels"] = ["O", "B-POS", "B-NEG"]
    assert check_inputs(validate(document)).task.labels == ["O", "B-POS", "B-NEG"]


def test_validation_label_unknown_to_training_is_refused(tiny_bert, tmp_path):
    train = write_jsonl(toy_sentiment_rows(20, seed=1), tmp_path / "t.jsonl")
    val = write_jsonl([{"text": "good", "label": "neutral"}], tmp_path / "v.jsonl")
    with pytest.raises(DataError, match="'neutral' is not one of the classes"):
        prepare(spec_for(tiny_bert, tmp_path, {"train": str(train), "validation": str(val)}))


def test_malformed_row_past_the_first_lines_names_the_file(tiny_bert, tmp_path):
    good = "".join(
        '{"text": "good film", "label": "positive"}\n{"text": "bad", "label": "negative"}\n'
        for _ in range(60)
    )
    path = tmp_path / "broken.jsonl"
    path.write_text(good + '{"text": "cut off\n')
    # One line that does not parse is one bad row (not a file Ray cannot read), by its line.
    with pytest.raises(DataError, match=r"broken.jsonl, line 121: not valid JSON .*\[bad_json\]"):
        prepare(spec_for(tiny_bert, tmp_path, {"train": str(path), "validation_fraction": 0.2}))


# -- every row is checked before training: the error names the file and the row ----------
@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from raft.testing import make_tiny_generative_model

    return make_tiny_generative_model(tmp_path_factory.mktemp("llama"), "causal_lm")


def chat_spec(model, train, tmp_path, **data):
    return validate(
        {
            "model": {"path": str(model)},
            "task": {"type": "causal_lm", "format": "chat", "max_length": 48},
            "data": {"train": str(train), "validation_fraction": 0.2, **data},
            "output": {"dir": str(tmp_path / "runs")},
        }
    )


def chat_rows_with_a_bad_one(tmp_path, bad_line: int, bad_row: dict):
    from raft.testing import toy_sft_rows

    rows = toy_sft_rows(80, seed=3, chat=True)
    rows.insert(bad_line - 1, bad_row)
    return write_jsonl(rows, tmp_path / "chat.jsonl")


def test_a_conversation_without_an_assistant_turn_is_named_by_file_and_line(tiny_llama, tmp_path):
    path = chat_rows_with_a_bad_one(tmp_path, 37, {"messages": [{"role": "user", "content": "hi"}]})
    with pytest.raises(DataError, match=r"chat.jsonl, line 37: the conversation has no assistant turn"):
        prepare(chat_spec(tiny_llama, path, tmp_path))


def test_an_unknown_chat_role_is_named_and_skip_mode_drops_and_counts_it(tiny_llama, tmp_path):
    bad = {"messages": [{"role": "narrator", "content": "x"}, {"role": "assistant", "content": "y"}]}
    path = chat_rows_with_a_bad_one(tmp_path, 5, bad)
    with pytest.raises(DataError, match=r"chat.jsonl, line 5: turn 1 has role 'narrator'"):
        prepare(chat_spec(tiny_llama, path, tmp_path))
    prepared = prepare(chat_spec(tiny_llama, path, tmp_path, on_bad_rows="skip"))
    assert prepared.skipped == {"data.train": {"bad_conversation": 1}}
    assert prepared.train_rows + prepared.validation_rows == 80
    assert len(prepared.samples) == 3  # validation rows for the logged generations


def test_token_tag_count_mismatch_is_named_by_line(tiny_bert, tmp_path):
    from raft.testing import toy_ner_rows

    rows = toy_ner_rows(50, seed=2)
    rows[20]["tags"] = rows[20]["tags"][:-1]
    path = write_jsonl(rows, tmp_path / "ner.jsonl")
    document = base_spec(tiny_bert, {"train": str(path), "validation": str(path)}, tmp_path)
    document["task"] = {"type": "token_classification"}
    with pytest.raises(DataError, match=r"ner.jsonl, line 21: \d+ tokens in 'tokens' but \d+ tags"):
        prepare(validate(document))


def test_seq2seq_row_with_an_empty_target_is_named_by_csv_row(tiny_llama, tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("source,target\n" + "good movie,bon filmo\n" * 9 + "bad film,\n")
    spec = validate(
        {
            "model": {"path": str(tiny_llama)},
            "task": {"type": "seq2seq"},
            "data": {"train": str(path), "validation": str(path)},
        }
    )
    with pytest.raises(DataError, match=r"pairs.csv, row 10: column 'target' is blank"):
        prepare(spec)


def test_conll_files_are_read_as_sentences(tiny_bert, tmp_path):
    text = "-DOCSTART- O\n\n" + "".join(
        f"{'good' if i % 2 else 'bad'} B-{'POS' if i % 2 else 'NEG'}\nmovie O\n\n" for i in range(30)
    )
    (tmp_path / "train.conll").write_text(text)
    (tmp_path / "broken.conll").write_text("good B-POS\nmovie\n")
    document = base_spec(
        tiny_bert,
        {"train": str(tmp_path / "train.conll"), "validation": str(tmp_path / "train.conll")},
        tmp_path,
    )
    document["task"] = {"type": "token_classification", "max_length": 8}
    prepared = prepare(validate(document))
    assert (prepared.train_rows, prepared.validation_rows) == (30, 30)
    assert prepared.labels.names == ("B-NEG", "B-POS", "O")
    document["data"]["train"] = str(tmp_path / "broken.conll")
    with pytest.raises(DataError, match=r"broken.conll, line 2: expected a token and a tag"):
        prepare(validate(document))
    # Skipping: the sentence holding the malformed line is one bad_line row; the others train.
    (tmp_path / "mixed.conll").write_text(text + "good B-POS\nmovie\n\n")
    document["data"].update(train=str(tmp_path / "mixed.conll"), on_bad_rows="skip")
    prepared = prepare(validate(document))
    assert prepared.skipped == {"data.train": {"bad_line": 1}} and prepared.train_rows == 30


# -- data faults: data.on_bad_rows and data.max_bad_fraction ------------------------------
# Past the first 100 lines (which validation peeks at), one line of each fault, each
# followed by two good rows: 100 + 10 * 3 = 130 lines, 10 bad.
FAULT_LINES = [
    ('{"tokens": ["good", "movie"], "tags": ["O", "O"]', "bad_json"),  # cut off
    ('["good", "movie"]', "bad_json"),  # valid JSON, not an object
    ('{"tokens": ["good", "movie"]}', "missing_column"),
    ('{"tokens": null, "tags": ["O"]}', "missing_column"),
    ('{"tokens": 42, "tags": ["O"]}', "wrong_type"),  # a number where the other rows hold lists
    ('{"tokens": ["good", "movie"], "tags": "O O"}', "wrong_type"),
    ('{"tokens": [], "tags": []}', "empty_text"),
    (json.dumps({"tokens": ["good"] * 20, "tags": ["O"] * 20}), "too_long"),  # 22 sub-words > 16
    ('{"tokens": ["good", "movie"], "tags": ["O"]}', "length_mismatch"),
    ('{"tokens": ["good"], "tags": ["B-XYZ"]}', "bad_label"),  # not in task.labels
]
FAULT_COUNTS = {
    "bad_json": 2,
    "bad_label": 1,
    "empty_text": 1,
    "length_mismatch": 1,
    "missing_column": 2,
    "too_long": 1,
    "wrong_type": 2,
}


def write_faults(path):
    from raft.testing import toy_ner_rows

    good = iter(json.dumps(row) for row in toy_ner_rows(120, seed=4))
    lines = [next(good) for _ in range(100)]
    for line, _ in FAULT_LINES:
        lines += [line, next(good), next(good)]
    text = "\n".join(lines) + "\n"
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def ner_spec(tiny_bert, tmp_path, train, validation, **data):
    document = base_spec(tiny_bert, {"train": str(train), "validation": str(validation)}, tmp_path)
    document["task"] = {"type": "token_classification", "max_length": 16, "labels": ["O", "B-POS", "B-NEG"]}
    document["data"].update(data)
    return validate(document)


def test_error_mode_names_the_first_bad_line_its_reason_and_all_counts(tiny_bert, tmp_path):
    path = write_faults(tmp_path / "faults.jsonl")
    with pytest.raises(DataError) as error:
        prepare(ner_spec(tiny_bert, tmp_path, path, path))
    message = str(error.value)
    assert re.search(r"^data.train \S*faults.jsonl, line 101: not valid JSON \(.*\) \[bad_json\]", message), (
        message
    )
    assert (
        "(10 bad rows in all: 2 bad_json, 2 missing_column, 2 wrong_type, 1 bad_label, 1 empty_text, "
        "1 length_mismatch, 1 too_long)" in message
    )
    assert "data.on_bad_rows: skip" in message


def test_skip_mode_counts_every_reason_per_role_and_trains_on_the_rest(tiny_bert, tmp_path, capsys):
    from raft.train import prepare_data

    train = write_faults(tmp_path / "faults.jsonl")
    validation = write_faults(tmp_path / "faults.jsonl.gz")  # gzip: the same rows, the same lines
    prepared = prepare_data(
        ner_spec(tiny_bert, tmp_path, train, validation, on_bad_rows="skip", max_bad_fraction=0.1)
    )
    assert prepared.skipped == {"data.train": FAULT_COUNTS, "data.validation": FAULT_COUNTS}
    assert (prepared.train_rows, prepared.validation_rows) == (120, 120)
    # The bad rows are gone from what the workers read, and every good row is preprocessed.
    features = prepared.train.take_all()
    assert len(features) == 120 and all(len(f["input_ids"]) == 16 for f in features)
    assert len(prepared.validation.take_all()) == 120
    printed = capsys.readouterr().out
    assert (
        "[raft] data.train: skipped 10 bad rows (data.on_bad_rows: skip): 2 bad_json, 2 missing_column, "
        "2 wrong_type, 1 bad_label, 1 empty_text, 1 length_mismatch, 1 too_long" in printed
    )


def test_too_many_bad_rows_stop_the_run_with_the_counts(tiny_bert, tmp_path):
    path = write_faults(tmp_path / "faults.jsonl")
    with pytest.raises(DataError) as error:  # 10 of 130 rows (7.7%) > the default 5%
        prepare(ner_spec(tiny_bert, tmp_path, path, path, on_bad_rows="skip"))
    message = str(error.value)
    assert re.search(
        r"^data.train '\S*faults.jsonl': 10 of 130 rows are bad \(7.7%\), more than "
        r"data.max_bad_fraction=0.05: 2 bad_json, 2 missing_column, 2 wrong_type, 1 bad_label, "
        r"1 empty_text, 1 length_mismatch, 1 too_long\. The first: \S*faults.jsonl, line 101: not valid JSON",
        message,
    ), message


def test_wrong_label_and_text_types_in_jsonl_and_csv_are_rows_not_crashes(tiny_bert, tmp_path):
    rows = [json.dumps(r) for r in toy_sentiment_rows(110, seed=3, label_type="int")]
    rows[104] = '{"text": 7, "label": 1}'  # a number among strings: no Arrow schema clash
    rows[105] = '{"text": "good film", "label": [1]}'
    rows[106] = '{"text": "good film", "label": 0.5}'
    rows[107] = '{"text": "good film", "label": "positive"}'  # a name among ids: usable
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(rows) + "\n")
    spec = spec_for(tiny_bert, tmp_path, {"train": str(path), "validation": str(path)})
    with pytest.raises(
        DataError, match=r"mixed.jsonl, line 105: column 'text' must hold text, got int 7 \[wrong_type\]"
    ):
        prepare(spec)
    skipping = spec_for(
        tiny_bert, tmp_path, {"train": str(path), "validation": str(path), "on_bad_rows": "skip"}
    )
    prepared = prepare(skipping)
    assert prepared.skipped["data.train"] == {"wrong_type": 3} and prepared.train_rows == 107
    assert prepared.labels.names == ("0", "1", "positive")
    assert len(prepared.train.take_all()) == 107
    # csv: an empty cell of an integer column is null, found by the row check and located by row.
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("text,label\n" + "good film,1\nbad film,0\n" * 30 + "fine film,\n")
    with pytest.raises(DataError, match=r"labels.csv, row 61: column 'label' is empty \[missing_column\]"):
        prepare(spec_for(tiny_bert, tmp_path, {"train": str(csv_path), "validation": str(csv_path)}))


def test_a_multi_epoch_text_run_tokenizes_once_and_keeps_the_same_rows(tiny_bert, tmp_path):
    """data.materialize: auto keeps the tokenized rows in the object store for every epoch
    (the bound here is a few KiB); false streams and tokenizes again each epoch. Both give
    the same rows."""
    from ray.data.dataset import MaterializedDataset

    train = write_jsonl(toy_sentiment_rows(64, seed=3), tmp_path / "train.jsonl")
    val = write_jsonl(toy_sentiment_rows(16, seed=4), tmp_path / "val.jsonl")
    data = {"train": str(train), "validation": str(val)}
    kept = prepare(spec_for(tiny_bert, tmp_path, data))
    assert kept.materialized and "kept for 3 epochs" in kept.materialized
    assert isinstance(kept.validation, MaterializedDataset)
    streamed = prepare(spec_for(tiny_bert, tmp_path, data | {"materialize": False}))
    assert streamed.materialized is None
    assert not isinstance(streamed.train, MaterializedDataset)

    def rows(dataset):
        return sorted(tuple(row["input_ids"].tolist()) + (int(row["labels"]),) for row in features(dataset))

    assert rows(kept.validation) == rows(streamed.validation)
    expected = rows(streamed.train)
    assert rows(kept.train) == expected
    # The kept rows need neither the file nor the tokenizer again (the training set is
    # reshuffled from them each epoch); the streamed ones read the file on every pass.
    train.rename(tmp_path / "moved.jsonl")
    assert rows(kept.train) == expected
    with pytest.raises(Exception, match="train.jsonl"):
        features(streamed.train)


def _epochs(spec, dataset, workers: int, epochs: int) -> list[list[list[tuple]]]:
    """Each worker's rows, in order, for each epoch: the shards Ray Train hands its workers
    (DataConfig.configure, as a run's DatasetManager calls it), read concurrently by the
    worker's own training passes (raft.worker._shard_pass, with its shuffle buffer)."""
    import threading

    from ray.train import DataConfig

    from raft import registry
    from raft.worker import _shard_pass

    task = registry.get_task(spec.task.type)
    shards = DataConfig().configure({"train": dataset}, workers, None, None)
    seen = [[[] for _ in range(epochs)] for _ in range(workers)]

    def read(rank: int) -> None:
        for epoch in range(epochs):
            for batch in _shard_pass(shards[rank]["train"], task, spec, True, epoch, rank):
                for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True):
                    seen[rank][epoch].append(tuple(ids[mask.bool()].tolist()))  # padding cut per batch

    threads = [threading.Thread(target=read, args=(rank,)) for rank in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a shard never finished its epochs"
    return seen


@pytest.mark.parametrize(
    "data",
    [{"shuffle": "global"}, {"shuffle": "global", "materialize": False}, {"shuffle": "local"}],
    ids=["global-kept", "global-streamed", "local-kept"],
)
def test_training_rows_are_reshuffled_every_epoch(tiny_bert, tmp_path, data):
    """A seeded shuffle that Ray re-runs each epoch would give every epoch the same order.
    Here every worker sees its rows in a new order each epoch, and every row once."""
    from raft.testing import CUES, FILLERS

    def text(i: int) -> str:  # 96 different rows in the toy vocabulary
        return " ".join(FILLERS[(i // len(FILLERS) ** k) % len(FILLERS)] for k in range(3))

    labels = sorted(CUES)
    rows = [{"text": f"{text(i)} {CUES[labels[i % 2]][0]}", "label": labels[i % 2]} for i in range(96)]
    train = write_jsonl(rows, tmp_path / "train.jsonl")
    val = write_jsonl(toy_sentiment_rows(8, seed=4), tmp_path / "val.jsonl")
    spec = spec_for(tiny_bert, tmp_path, {"train": str(train), "validation": str(val)} | data)
    prepared = prepare(spec)
    assert bool(prepared.materialized) == data.get("materialize", True)
    seen = _epochs(spec, prepared.train, workers=2, epochs=3)
    everything = sorted(
        tuple(row["input_ids"][row["attention_mask"].astype(bool)].tolist())
        for row in features(prepared.train)
    )
    assert len(set(everything)) == 96
    for epoch in range(3):
        assert sorted(seen[0][epoch] + seen[1][epoch]) == everything
    for rank in range(2):
        orders = [tuple(seen[rank][epoch]) for epoch in range(3)]
        assert len(set(orders)) == 3, f"worker {rank} saw the same order in two epochs"
