"""Locating data and checking its columns before any cluster work (no Ray)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raft.sources import DataError, check_columns, peek_columns, resolve

ROWS = [{"text": "good film", "label": "positive"}, {"text": "bad plot", "label": "negative"}]


@pytest.fixture
def files(tmp_path):
    (tmp_path / "d.jsonl").write_text(
        '{"text": "good film", "label": "positive"}\n{"text": "x", "label": "negative"}\n'
    )
    (tmp_path / "d.csv").write_text("text,label\ngood film,positive\n")
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "d.parquet")
    folder = tmp_path / "parts"
    folder.mkdir()
    for i in range(2):
        pq.write_table(pa.Table.from_pylist(ROWS), folder / f"part-{i}.parquet")
    (folder / "_SUCCESS").write_text("")
    return tmp_path


@pytest.mark.parametrize(("name", "fmt"), [("d.jsonl", "jsonl"), ("d.csv", "csv"), ("d.parquet", "parquet")])
def test_format_from_extension_and_columns(files, name, fmt):
    source = resolve(str(files / name))
    assert source.format == fmt
    assert peek_columns(source) == ["text", "label"]


def test_folder_of_parts_and_glob(files):
    source = resolve(str(files / "parts"))
    assert source.format == "parquet" and len(source.files) == 2  # _SUCCESS is skipped
    assert len(resolve(str(files / "parts" / "part-*.parquet")).files) == 2


def test_file_uri(files):
    source = resolve(f"file://{files / 'd.jsonl'}")
    assert source.format == "jsonl"
    assert source.file_uris == [str(files / "d.jsonl")]


def test_saved_hf_dataset_with_splits(tmp_path):
    import datasets

    splits = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS), "validation": datasets.Dataset.from_list(ROWS[:1])}
    )
    splits.save_to_disk(tmp_path / "hf")
    source = resolve(str(tmp_path / "hf"))
    assert source.format == "hf"
    assert peek_columns(source, "train") == ["text", "label"]
    with pytest.raises(DataError, match="no split 'test'"):
        peek_columns(source, "test")


def test_missing_and_unreadable_inputs_name_the_problem(files, tmp_path):
    with pytest.raises(DataError, match="data.train '.*nope.jsonl' does not exist"):
        resolve(str(tmp_path / "nope.jsonl"), role="data.train")
    with pytest.raises(DataError, match="no files match"):
        resolve(str(tmp_path / "*.nothing"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="cannot tell the format"):
        resolve(str(tmp_path / "notes.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty folder"):
        resolve(str(tmp_path / "empty"))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok", "label": 1}\n{"text": broken\n')
    with pytest.raises(DataError, match="line 2: not valid JSON"):
        peek_columns(resolve(str(tmp_path / "bad.jsonl")))


def test_missing_column_lists_what_is_there(files):
    with pytest.raises(DataError, match=r"no column\(s\) \['sentence'\]; it has \['text', 'label'\]"):
        check_columns(resolve(str(files / "d.csv")), ["sentence", "label"], "data.train")


def test_media_cells_read_from_bytes_paths_and_uris(tmp_path):
    from raft.sources import read_media

    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.wav").write_bytes(b"RIFF-data")
    data_file = tmp_path / "data.jsonl"
    assert read_media(b"raw") == b"raw"
    assert read_media({"bytes": b"hf", "path": None}) == b"hf"  # HF datasets' Image/Audio cell
    assert read_media("clips/a.wav", data_file) == b"RIFF-data"  # relative to the data file
    assert read_media(str(tmp_path / "clips" / "a.wav")) == b"RIFF-data"
    assert read_media((tmp_path / "clips" / "a.wav").as_uri()) == b"RIFF-data"  # file:// URI
    with pytest.raises(FileNotFoundError):
        read_media("clips/missing.wav", data_file)
    with pytest.raises(ValueError, match="expected bytes or a path, got int"):
        read_media(3)
