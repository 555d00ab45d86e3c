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


def test_an_output_folder_never_replaces_a_file(tmp_path):
    """`--output` naming an existing file was silently replaced by a folder (leaving `.afile.old-*`)."""
    from lungseg.errors import DataError
    from lungseg.io import check_output_dir, replace_dir

    afile = tmp_path / "afile"
    afile.write_text("keep me", encoding="utf-8")
    with pytest.raises(DataError, match=r"afile: exists and is not a folder"):
        with atomic_dir(afile) as tmp:
            (tmp / "x.txt").write_text("x", encoding="utf-8")
    src = tmp_path / "src"
    src.mkdir()
    with pytest.raises(DataError, match=r"afile: exists and is not a folder"):
        replace_dir(src, afile)
    assert afile.read_text(encoding="utf-8") == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "src"]  # no temporary or backup left
    with pytest.raises(DataError, match=r"afile: is a file, not a folder"):
        check_output_dir(afile / "inside")
    assert check_output_dir(tmp_path / "new") == tmp_path / "new"


def test_an_output_file_never_replaces_a_folder(tmp_path):
    from lungseg.errors import DataError
    from lungseg.io import atomic_write_text

    folder = tmp_path / "reg.json"
    folder.mkdir()
    (folder / "inner").write_text("keep", encoding="utf-8")
    with pytest.raises(DataError, match=r"reg\.json: is a folder: the output is a file"):
        atomic_write_json(folder, {"a": 1})
    with pytest.raises(DataError, match=r"reg\.json: is a folder"):
        atomic_write_text(folder, "x")
    assert (folder / "inner").read_text(encoding="utf-8") == "keep"
    assert [p.name for p in tmp_path.iterdir()] == ["reg.json"]


def test_sha256_file(tmp_path):
    import hashlib

    from lungseg.io import sha256_file

    path = tmp_path / "w.bin"
    path.write_bytes(b"\x00\x01" * 700_000)  # more than one read block
    assert sha256_file(path) == "sha256:" + hashlib.sha256(b"\x00\x01" * 700_000).hexdigest()
