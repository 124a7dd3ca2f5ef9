"""Ray Data ingest on a real cluster: formats, validation split, labels, bad data."""

from __future__ import annotations

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
    with pytest.raises(DataError, match="broken.jsonl"):
        prepare(spec_for(tiny_bert, tmp_path, {"train": str(path), "validation_fraction": 0.2}))
