import json
from pathlib import Path

import pytest

from lungseg.io import atomic_dir, atomic_write_json


def test_atomic_dir_replaces_on_success(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old", encoding="utf-8")
    (target / ".lungseg-output").write_text("", encoding="utf-8")  # a previous lungseg output
    with atomic_dir(target) as tmp:
        assert tmp != target and tmp.parent == tmp_path
        (tmp / "new.txt").write_text("new", encoding="utf-8")
    assert sorted(p.name for p in target.iterdir()) == [".lungseg-output", "new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp or backup left


def test_atomic_dir_keeps_old_output_on_failure(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old", encoding="utf-8")
    (target / ".lungseg-output").write_text("", encoding="utf-8")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_dir(target) as tmp:
            (tmp / "half.txt").write_text("half", encoding="utf-8")
            raise RuntimeError("boom")
    assert (target / "old.txt").read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_dir_failure_without_previous_output_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        with atomic_dir(tmp_path / "new"):
            raise ValueError
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_json(tmp_path):
    p = atomic_write_json(tmp_path / "a" / "m.json", {"b": 1, "a": 2})
    assert json.loads(p.read_text(encoding="utf-8")) == {"a": 2, "b": 1}
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


# ----------------------------------------------------------------- never delete what lungseg did not write
def test_a_folder_lungseg_did_not_write_is_never_replaced_unless_allowed(tmp_path):
    """A non-empty `--output` folder without lungseg's marker was replaced whole (a user's keepme.txt deleted)."""
    from lungseg.errors import DataError
    from lungseg.io import MARKER, overwrite_allowed

    target = tmp_path / "mine"
    target.mkdir()
    (target / "keepme.txt").write_text("precious", encoding="utf-8")
    with pytest.raises(DataError, match=r"mine: exists, is not empty and was not written by lungseg.*--overwrite"):
        with atomic_dir(target) as tmp:
            raise AssertionError("the block must not run")  # refused before any work
    assert (target / "keepme.txt").read_text(encoding="utf-8") == "precious"
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # no temporary left
    with overwrite_allowed():
        with atomic_dir(target) as tmp:
            (tmp / "new.txt").write_text("new", encoding="utf-8")
    assert sorted(p.name for p in target.iterdir()) == [MARKER, "new.txt"]
    # now it is lungseg's: replaced again without being allowed
    with atomic_dir(target) as tmp:
        (tmp / "newer.txt").write_text("newer", encoding="utf-8")
    assert sorted(p.name for p in target.iterdir()) == [MARKER, "newer.txt"]


def test_an_empty_folder_is_used_and_marked(tmp_path):
    from lungseg.io import MARKER

    target = tmp_path / "empty"
    target.mkdir()
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("a", encoding="utf-8")
    assert sorted(p.name for p in target.iterdir()) == [MARKER, "a.txt"]


def test_a_folder_that_appears_during_the_work_is_still_protected(tmp_path):
    """The check runs again before the swap: a user folder created meanwhile is not replaced."""
    from lungseg.errors import DataError

    target = tmp_path / "late"
    with pytest.raises(DataError, match=r"late: exists, is not empty and was not written by lungseg"):
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("a", encoding="utf-8")
            target.mkdir()
            (target / "user.txt").write_text("u", encoding="utf-8")
    assert sorted(p.name for p in target.iterdir()) == ["user.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["late"]


def test_the_current_folder_or_one_holding_an_input_is_refused_even_when_allowed(tmp_path, monkeypatch):
    from lungseg.errors import DataError
    from lungseg.io import check_output_dir, overwrite_allowed

    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    monkeypatch.chdir(work / "sub")
    with overwrite_allowed():
        for path in (Path("."), work / "sub", work, Path("..")):
            with pytest.raises(DataError, match=r"is the current folder or holds it"):
                check_output_dir(path)
        scans = tmp_path / "scans"
        scans.mkdir()
        (scans / "a.nii.gz").write_bytes(b"x")
        with pytest.raises(DataError, match=r"scans: holds the input .*a\.nii\.gz"):
            check_output_dir(scans, keep=(scans / "a.nii.gz",))
        assert check_output_dir(scans) == scans  # allowed, holding no input


def test_a_data_copy_is_not_marked(tmp_path):
    """replace_dir(mark=False): a fetched data version must hash to that version (lineage.fetch)."""
    from lungseg.io import replace_dir

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(b"a")
    replace_dir(src, tmp_path / "copy", mark=False)
    assert [p.name for p in (tmp_path / "copy").iterdir()] == ["a.png"]


@pytest.mark.parametrize("command", ["predict", "evaluate", "export", "preprocess", "train"])
def test_every_output_folder_command_refuses_a_user_folder_before_any_work(tmp_path, monkeypatch, capsys, command):
    """The CLI checks `--output` before the command runs (here the model/data do not even exist:
    the answer is about the output, so no inference or training could have started)."""
    from lungseg.cli import main

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "results"
    out.mkdir()
    (out / "keepme.txt").write_text("precious", encoding="utf-8")
    args = {
        "predict": ["--input", "missing.nii.gz", "--model", "missing-model"],
        "evaluate": ["--model", "missing-model", "--data", "missing-data"],
        "export": ["--model", "missing-model", "--format", "onnx", "--check-input", "missing.nii.gz"],
        "preprocess": ["--dataset", "medseg", "--input", "missing-raw"],
        "train": ["--data", "missing-data"],
    }[command]
    assert main([command, *args, "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "results: exists, is not empty and was not written by lungseg" in err
    assert [p.name for p in out.iterdir()] == ["keepme.txt"]
    assert main([command, *args, "--output", "."]) == 2
    assert "is the current folder or holds it" in capsys.readouterr().err


def test_another_commands_output_is_not_replaced_without_overwrite(tmp_path):
    """`lungseg predict --output <a trained model>` deleted best.pt: a marker names the command that wrote
    the folder, and only that command replaces it without --overwrite."""
    from lungseg.errors import DataError
    from lungseg.io import MARKER, overwrite_allowed, written_by

    model = tmp_path / "model"
    with written_by("lungseg train"), atomic_dir(model) as tmp:
        (tmp / "best.pt").write_bytes(b"weights")
    assert json.loads((model / MARKER).read_text(encoding="utf-8"))["written_by"] == "lungseg train"
    with written_by("lungseg predict"):
        with pytest.raises(DataError, match=r"model: holds the output of `lungseg train`, not of `lungseg predict`"):
            with atomic_dir(model):
                raise AssertionError("refused before the block")
        assert (model / "best.pt").read_bytes() == b"weights"
        with overwrite_allowed(), atomic_dir(model) as tmp:
            (tmp / "report.json").write_text("{}", encoding="utf-8")
    assert sorted(p.name for p in model.iterdir()) == [MARKER, "report.json"]
    with written_by("lungseg train"), atomic_dir(tmp_path / "again") as tmp:
        (tmp / "x").write_text("1", encoding="utf-8")
    with written_by("lungseg train"), atomic_dir(tmp_path / "again") as tmp:  # the same command: replaced
        (tmp / "y").write_text("2", encoding="utf-8")
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == [MARKER, "y"]


def test_an_output_inside_an_input_folder_or_a_symlink_is_refused(tmp_path):
    from lungseg.errors import DataError
    from lungseg.io import check_output_dir, overwrite_allowed

    cases = tmp_path / "cases"
    (cases / "dcm").mkdir(parents=True)
    (cases / "dcm" / "1.dcm").write_bytes(b"x")
    with overwrite_allowed():
        for out in (cases / "dcm", cases / "new"):
            with pytest.raises(DataError, match=r"is inside the input .*cases: write outputs beside an input"):
                check_output_dir(out, keep=(cases,))
        real = tmp_path / "real"
        real.mkdir()
        link = tmp_path / "link"
        link.symlink_to(real, target_is_directory=True)
        with pytest.raises(DataError, match="link: is a symbolic link"):
            check_output_dir(link)


def test_outputs_get_normal_permissions_and_stale_temporaries_of_a_killed_run_go(tmp_path):
    """mkdtemp/mkstemp made outputs private (0700/0600); a SIGKILL left .NAME.tmp-* folders for ever."""
    import os
    import stat

    from lungseg.io import atomic_write_text

    umask = os.umask(0o022)
    try:
        dead = tmp_path / ".out.tmp-999999999-abc"  # a pid that does not run
        dead.mkdir()
        alive = tmp_path / f".out.tmp-{os.getpid()}-abc"  # this process: kept
        alive.mkdir()
        with atomic_dir(tmp_path / "out") as tmp:
            atomic_write_text(tmp / "report.json", "{}")
        assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
        assert stat.S_IMODE((tmp_path / "out" / "report.json").stat().st_mode) == 0o644
        assert not dead.exists() and alive.exists()
    finally:
        os.umask(umask)
