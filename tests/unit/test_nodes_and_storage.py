"""Cluster checks as pure functions of node reports, and the storage layer on real files."""

from __future__ import annotations

import pytest

from raft import storage
from raft.nodes import NodeReport, format_nodes, storage_problems, version_warnings

VERSIONS = (("python", "3.11.7"), ("ray", "2.60.0"), ("raft", "0.1.0"), ("torch", "2.13.0"))


def node(node_id: str, address: str, **kwargs) -> NodeReport:
    return NodeReport(node_id=node_id, address=address, cpus=4, gpus=0, **kwargs)


def test_versions_that_agree_give_no_warning():
    reports = [node("a" * 16, "10.0.0.1", versions=VERSIONS), node("b" * 16, "10.0.0.2", versions=VERSIONS)]
    assert version_warnings(reports) == []


def test_a_differing_version_names_package_and_nodes():
    other = tuple((p, "2.59.0" if p == "ray" else v) for p, v in VERSIONS)
    reports = [node("a" * 16, "10.0.0.1", versions=VERSIONS), node("b" * 16, "10.0.0.2", versions=other)]
    (warning,) = version_warnings(reports)
    assert warning.startswith("ray differs between nodes")
    assert "2.59.0 on 10.0.0.2 (bbbbbbbb)" in warning and "2.60.0 on 10.0.0.1 (aaaaaaaa)" in warning


def test_storage_a_node_cannot_see_is_refused_by_name():
    reports = [node("a" * 16, "10.0.0.1", sees_storage=True), node("b" * 16, "10.0.0.2", sees_storage=False)]
    (problem,) = storage_problems(reports, "/home/me/runs")
    assert "'/home/me/runs' is not shared" in problem and "10.0.0.2 (bbbbbbbb)" in problem
    assert "10.0.0.1" not in problem
    assert storage_problems([node("a" * 16, "10.0.0.1", sees_storage=False)], "/x") == []  # one node
    assert storage_problems([r for r in reports if r.sees_storage], "/x") == []


def test_node_table_lists_every_node_head_first():
    reports = [
        node("b" * 16, "10.0.0.2", versions=VERSIONS, sees_storage=False),
        node("a" * 16, "10.0.0.1", versions=VERSIONS, is_head=True, sees_storage=True),
    ]
    lines = format_nodes(reports).splitlines()
    assert lines[0].split()[:3] == ["node", "address", "role"]
    assert lines[1].split()[:3] == ["aaaaaaaa", "10.0.0.1", "head"] and lines[1].endswith("shared")
    assert lines[2].split()[:3] == ["bbbbbbbb", "10.0.0.2", "worker"] and lines[2].endswith("NOT VISIBLE")


@pytest.mark.parametrize("as_uri", [False, True])
def test_storage_roundtrip_on_paths_and_uris(tmp_path, as_uri):
    base = f"file://{tmp_path}/runs" if as_uri else str(tmp_path / "runs")
    target = storage.join(base, "run-1", "summary.json")
    assert not storage.exists(target)
    storage.write_text(target, '{"ok": true}')
    assert storage.exists(target) and storage.read_text(target) == '{"ok": true}'
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "weights.bin").write_bytes(b"\x00\x01")
    storage.upload_dir(folder, storage.join(base, "run-1", "model"))
    assert storage.exists(storage.join(base, "run-1", "model", "sub", "weights.bin"))
    storage.delete(target)
    assert not storage.exists(target)


def test_marker_is_seen_where_written_and_not_elsewhere(tmp_path):
    marker = storage.write_marker(str(tmp_path))
    assert storage.sees(marker)
    assert not storage.sees(str(tmp_path / "elsewhere" / "marker"))
    storage.delete(marker)
    assert not storage.sees(marker)


def test_normalize_keeps_uris_and_absolutizes_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.normalize("runs") == str(tmp_path / "runs")
    assert storage.normalize("s3://bucket/runs/") == "s3://bucket/runs"
    assert storage.is_uri("gs://b/x") and not storage.is_uri("/mnt/nfs/runs")
