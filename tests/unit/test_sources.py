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
    with pytest.raises(DataError, match=r"line 2: not valid JSON .*\[bad_json\].*data.on_bad_rows: skip"):
        peek_columns(resolve(str(tmp_path / "bad.jsonl")))


def test_peeking_leaves_bad_lines_to_the_row_check_when_skipping(tmp_path):
    # data.on_bad_rows: skip: a bad line among the first ones must not stop the run here.
    path = tmp_path / "bad.jsonl"
    path.write_text('[1, 2]\n{"text": broken\n{"text": "ok", "label": 1}\n{"extra": true}\n')
    assert peek_columns(resolve(str(path)), strict=False) == ["text", "label", "extra"]
    with pytest.raises(DataError, match=r"line 1: a JSON array, not an object"):
        peek_columns(resolve(str(path)), strict=True)
    path.write_text("not json\n[]\n")
    with pytest.raises(
        DataError, match=r"no line of its first MiB is a JSON object \(line 1: not valid JSON"
    ):
        peek_columns(resolve(str(path)), strict=False)
    conll = tmp_path / "d.conll"
    conll.write_text("EU B-ORG\nlonely\n\nPeter B-PER\n")
    assert peek_columns(resolve(str(conll)), strict=False) == ["tokens", "tags"]
    with pytest.raises(DataError, match=r"d.conll, line 2: expected a token and a tag.*\[bad_line\]"):
        peek_columns(resolve(str(conll)), strict=True)


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


# -- row faults: the pure pieces of data.on_bad_rows ----------------------------------------
def test_jsonl_records_keep_file_line_numbers_and_skip_blank_lines():
    import gzip

    from raft.sources import JSON_COLUMN, jsonl_records

    text = '\ufeff{"a": 1}\n\n  \n{"a": "x\u2028y"}\r\n{"a": 3}'  # BOM, blanks, CRLF, no final newline
    records = list(jsonl_records(text.encode("utf-8"), "f.jsonl"))
    assert [(r["path"], r["line"]) for r in records] == [("f.jsonl", 1), ("f.jsonl", 4), ("f.jsonl", 5)]
    assert records[0][JSON_COLUMN] == b'{"a": 1}'
    assert "\u2028".encode() in records[1][JSON_COLUMN]  # U+2028 inside a string is no line break
    packed = list(jsonl_records(gzip.compress(text.encode("utf-8")), "f.jsonl.gz"))
    assert [r["line"] for r in packed] == [1, 4, 5]


@pytest.mark.parametrize(
    ("line", "reason", "message"),
    [
        (b'{"text": "cut off', "bad_json", "not valid JSON (Unterminated string"),
        (b"[1, 2]", "bad_json", "a JSON array, not an object"),
        (b'"text"', "bad_json", "a JSON string, not an object"),
        (b"null", "bad_json", "a JSON null, not an object"),
        (b'{"text": "caf\xe9"}', "bad_json", "not UTF-8"),
    ],
)
def test_a_line_that_is_not_a_json_object_is_bad_json(line, reason, message):
    from raft.sources import decode_json_line

    value, fault = decode_json_line(line)
    assert value is None and fault.reason == reason and message in fault.message


def test_an_absurdly_long_line_is_too_long_before_it_is_parsed():
    from raft.sources import MAX_ROW_BYTES, decode_json_line

    value, fault = decode_json_line(b'{"text": "' + b"x" * MAX_ROW_BYTES + b'"}')
    assert value is None and fault.reason == "too_long" and "32 MiB" in fault.message
    assert decode_json_line(b'{"text": "fine"}') == ({"text": "fine"}, None)


def test_record_row_gives_jsonl_rows_their_file_and_decode_batch_makes_columns():
    import numpy as np

    from raft.sources import FAULT_COLUMN, JSON_COLUMN, MESSAGE_COLUMN, decode_batch, record_row

    record = {"path": "/d/f.jsonl", "line": 3, JSON_COLUMN: b'{"text": "hi", "label": 1}'}
    assert record_row(record) == ({"path": "/d/f.jsonl", "text": "hi", "label": 1}, None)
    own = {"path": "/d/f.jsonl", "line": 4, JSON_COLUMN: b'{"path": "img/1.png"}'}
    assert record_row(own)[0]["path"] == "img/1.png"  # the row's own path column wins
    marked = {"tokens": [], "tags": [], FAULT_COLUMN: "bad_line", MESSAGE_COLUMN: "expected a token"}
    assert record_row(marked)[1].reason == "bad_line"
    # Mixed types across rows (int vs str label, a list) stay Python objects, one per cell.
    batch = {
        "path": np.array(["f", "f"], dtype=object),
        "line": np.array([1, 2]),
        JSON_COLUMN: np.array(
            [b'{"text": "a", "label": 1}', b'{"text": "b", "label": "x", "tags": [1]}'], dtype=object
        ),
    }
    decoded = decode_batch(batch)
    assert set(decoded) == {"path", "text", "label", "tags"}
    assert decoded["label"].tolist() == [1, "x"] and decoded["tags"][0] is None and decoded["tags"][1] == [1]


def test_counts_sum_per_reason_and_the_fraction_decides():
    from raft.sources import bad_fraction_problem, count_faults, describe_counts

    counts = count_faults([{"bad_json": 1, "too_long": 0}, {"bad_json": 2, "empty_text": 1}, {}])
    assert counts == {"bad_json": 3, "empty_text": 1}  # sorted, no zero counts
    assert list(counts) == ["bad_json", "empty_text"]
    assert (
        describe_counts({"too_long": 1, "bad_json": 3, "empty_text": 1})
        == "3 bad_json, 1 empty_text, 1 too_long"
    )
    assert bad_fraction_problem({}, 10, 0.0) is None
    assert bad_fraction_problem({"bad_json": 1}, 19, 0.05) is None  # exactly 5%: allowed
    problem = bad_fraction_problem({"bad_json": 1, "too_long": 1}, 18, 0.05)
    assert (
        problem
        == "2 of 20 rows are bad (10.0%), more than data.max_bad_fraction=0.05: 1 bad_json, 1 too_long"
    )
    assert bad_fraction_problem({"bad_json": 1}, 1000, 0.0) is not None  # 0: no bad row at all
    assert bad_fraction_problem({"bad_json": 5}, 0, 1.0) is None  # 1: any share


def test_shared_cell_checks_name_the_reason():
    import numpy as np

    from raft.sources import (
        MAX_ROW_BYTES,
        label_fault,
        media_type_fault,
        missing_fault,
        oversized_fault,
        strings_fault,
        text_fault,
    )

    def reason(fault):
        return fault and fault.reason

    assert reason(missing_fault({"text": "a"}, ["text", "label"])) == "missing_column"
    assert reason(missing_fault({"text": float("nan")}, ["text"])) == "missing_column"
    assert missing_fault({"text": "", "label": 0}, ["text", "label"]) is None  # blank is not missing
    cases = [
        (text_fault, "ok", None),
        (text_fault, None, "missing_column"),
        (text_fault, 3, "wrong_type"),
        (text_fault, ["a"], "wrong_type"),
        (text_fault, {"a": 1}, "wrong_type"),
        (text_fault, " \n", "empty_text"),
        (label_fault, "pos", None),
        (label_fault, 0, None),
        (label_fault, 2.0, None),  # an integral float: csv/pandas ints next to nulls
        (label_fault, np.int64(1), None),
        (label_fault, True, "wrong_type"),
        (label_fault, 0.5, "wrong_type"),
        (label_fault, [1], "wrong_type"),
        (label_fault, {"a": 1}, "wrong_type"),
        (label_fault, "", "empty_text"),
        (label_fault, -1, "bad_label"),
        (label_fault, None, "missing_column"),
        (strings_fault, ["a"], None),
        (strings_fault, np.array(["a"]), None),
        (strings_fault, "a b", "wrong_type"),
        (strings_fault, [], "empty_text"),
        (strings_fault, ["a", 1], "wrong_type"),
        (strings_fault, ["a", ""], "empty_text"),
        (media_type_fault, b"png", None),
        (media_type_fault, "a.png", None),
        (media_type_fault, {"bytes": b""}, None),
        (media_type_fault, 7, "wrong_type"),
        (media_type_fault, [1], "wrong_type"),
        (media_type_fault, "", "empty_text"),
    ]
    for check, value, expected in cases:
        assert reason(check(value, "c")) == expected, (check.__name__, value)
    assert reason(label_fault("neutral", "label", ["neg", "pos"])) == "bad_label"
    assert label_fault("pos", "label", ["neg", "pos"]) is None
    assert label_fault(1, "tags", ["O", "B-PER", "I-PER"]) is None  # an id the declared names name
    assert reason(label_fault(3, "tags", ["O", "B-PER", "I-PER"])) == "bad_label"  # out of range
    assert reason(label_fault(0, "stars", ["1", "2", "3"])) == "bad_label"  # integer names: a name
    assert reason(oversized_fault({"text": "x" * (MAX_ROW_BYTES + 1)})) == "too_long"
    assert oversized_fault({"text": "x" * 1000, "tokens": ["y"] * 10}) is None
