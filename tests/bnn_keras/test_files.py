"""Output files are complete or absent."""

import json

import pytest

from bnn_keras import files


def test_atomic_path_renames_into_place_on_success(tmp_path):
    target = tmp_path / "sub" / "model.keras"
    with files.atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".keras" and tmp != target
        tmp.write_text("complete")
    assert target.read_text() == "complete"
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.keras"]


def test_atomic_path_leaves_old_file_and_no_partial_on_failure(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with files.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_write_json_is_sorted_and_parseable(tmp_path):
    path = files.write_json(tmp_path / "c.json", {"b": 1, "a": [1.5]})
    assert json.loads(path.read_text()) == {"a": [1.5], "b": 1}
    assert path.read_text().index('"a"') < path.read_text().index('"b"')
