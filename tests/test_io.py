import json

import pytest

from lungseg.io import atomic_dir, atomic_write_json


def test_atomic_dir_replaces_on_success(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_dir(target) as tmp:
        assert tmp != target and tmp.parent == tmp_path
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp or backup left


def test_atomic_dir_keeps_old_output_on_failure(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_dir(target) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("boom")
    assert (target / "old.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_dir_failure_without_previous_output_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        with atomic_dir(tmp_path / "new"):
            raise ValueError
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_json(tmp_path):
    p = atomic_write_json(tmp_path / "a" / "m.json", {"b": 1, "a": 2})
    assert json.loads(p.read_text()) == {"a": 2, "b": 1}
    assert [x.name for x in p.parent.iterdir()] == ["m.json"]


def test_read_json_object_names_the_file_and_the_problem(tmp_path):
    from lungseg.errors import DataError
    from lungseg.io import read_json_object

    path = tmp_path / "meta.json"
    with pytest.raises(DataError, match=r"meta\.json: written by preprocess"):
        read_json_object(path, "written by preprocess")
    path.write_text('{"a": 1,', encoding="utf-8")
    with pytest.raises(DataError, match=r"meta\.json: not valid JSON"):
        read_json_object(path, "x")
    path.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(DataError, match=r"meta\.json: not valid JSON"):
        read_json_object(path, "x")
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(DataError, match=r"meta\.json: expected a JSON object, found list"):
        read_json_object(path, "x")
    path.write_text('{"name": "LG-Net ²"}', encoding="utf-8")
    assert read_json_object(path, "x") == {"name": "LG-Net ²"}
