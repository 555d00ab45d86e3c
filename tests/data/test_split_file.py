"""The ``pairs`` reader's split file (``split.csv``): a user's own PNG slices get the split and/or the
patient of each image from it (real MedSeg PNGs renamed as a user's folder), and every bad file is a
one-line DataError naming the file and the line."""

from __future__ import annotations

import csv

import pandas as pd
import pytest

from lungseg.cli import main
from lungseg.data import readers
from lungseg.data.dataset import read_meta
from lungseg.data.preprocess import preprocess
from lungseg.errors import DataError

#: 10 slices of 5 "patients" (two slices each); p5 is the test patient
IDS = [f"case{i}" for i in range(1, 11)]
PATIENT = {f"case{i}": f"p{(i + 1) // 2}" for i in range(1, 11)}


@pytest.fixture()
def user_pairs(tmp_path, shared_data):
    """``images/`` + ``masks/`` of real MedSeg PNGs under a user's own names."""
    src = shared_data / "medseg-covid100"
    root = tmp_path / "mine"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, name in enumerate(IDS, start=1):
        (root / "images" / f"{name}.png").write_bytes((src / f"tr_im/tr_im_{i + 20:04d}.png").read_bytes())
        (root / "masks" / f"{name}.png").write_bytes((src / f"tr_mask_new/tr_mask_{i + 20:04d}.png").read_bytes())
    return root


def write_split(root, header, rows):
    with open(root / "split.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return root / "split.csv"


def _manifest(out):
    return pd.read_csv(out / "manifest.csv", dtype={"patient_id": str})


@pytest.mark.slow
def test_split_and_patient_ids_give_the_users_test_set_and_a_patient_level_split(user_pairs, tmp_path, cfg):
    write_split(
        user_pairs,
        ["id", "split", "patient_id"],
        [[i, "test" if PATIENT[i] == "p5" else "train", PATIENT[i]] for i in IDS],
    )
    out = tmp_path / "out"
    preprocess("pairs", user_pairs, out, cfg)
    man, meta = _manifest(out), read_meta(out)
    assert sorted(man.loc[man.split == "test", "id"]) == ["case10", "case9"]  # exactly the file's test rows
    assert dict(zip(man.id, man.patient_id, strict=True)) == PATIENT
    assert man.groupby("patient_id").split.nunique().max() == 1  # val is carved by patient, not by slice
    assert meta["split_level"] == "patient" and meta["counts"]["val"] in (2, 4)
    assert meta["split_protocol"].startswith("split.csv: test = its test rows")
    assert not any("slice-level" in w for w in meta["warnings"])


def test_split_only_keeps_the_test_rows_and_warns_that_train_val_is_slice_level(user_pairs, cfg):
    write_split(user_pairs, ["split", "id"], [["test" if i in ("case3", "case7") else "train", i] for i in IDS])
    raw = readers.get_reader("pairs").func(user_pairs, cfg)
    slices = list(raw.slices)
    assert {s.id for s in slices if s.split == "test"} == {"case3", "case7"}
    assert {s.split for s in slices} == {"test", "pool"} and all(s.patient_id is None for s in slices)
    assert any(w.startswith("slice-level train/val split: split.csv gives no patient_id") for w in raw.warnings)


def test_patient_ids_only_give_a_seeded_patient_level_split(user_pairs, tmp_path, cfg):
    write_split(user_pairs, ["id", "patient_id"], [[i, PATIENT[i]] for i in IDS])
    out = tmp_path / "out"
    preprocess("pairs", user_pairs, out, cfg)
    man = _manifest(out)
    assert man.groupby("patient_id").split.nunique().max() == 1
    assert set(man.split) == {"train", "val", "test"}
    assert read_meta(out)["split_level"] == "patient"


def test_without_a_split_file_the_split_is_slice_level_as_before(user_pairs, cfg):
    raw = readers.get_reader("pairs").func(user_pairs, cfg)
    assert all(s.split is None and s.patient_id is None for s in raw.slices)
    assert raw.warnings[0].startswith("slice-level split: image/mask pairs carry no patient ids")


def _rows(**change):
    """One valid ``id,split,patient_id`` row per image, with ``change[id] = [..]`` replacing that row."""
    return [change.get(i, [i, "test" if PATIENT[i] == "p5" else "train", PATIENT[i]]) for i in IDS]


BAD = {
    "unknown column": (
        ["id", "split", "patient"],
        _rows(),
        "line 1: unknown column(s) 'patient' (allowed: id, split, patient_id)",
    ),
    "no id column": (["name", "split"], [], "line 1: unknown column(s) 'name'"),
    "only id": (["id"], [[i] for i in IDS], "line 1: the header needs 'id' and 'split' and/or 'patient_id'"),
    "column twice": (["id", "split", "split"], [], "line 1: a column is named twice"),
    "short row": (
        ["id", "split", "patient_id"],
        _rows(case4=["case4", "train"]),
        "line 5: expected 3 fields (id,split,patient_id), got 2",
    ),
    "empty value": (
        ["id", "split", "patient_id"],
        _rows(case2=["case2", "train", ""]),
        "line 3: empty patient_id for 'case2'",
    ),
    "unknown id": (
        ["id", "split", "patient_id"],
        _rows(case6=["case66", "train", "p3"]),
        "line 7: id 'case66' is not an image in images/",
    ),
    "listed twice": (
        ["id", "split", "patient_id"],
        _rows(case6=["case5", "train", "p3"]),
        "line 7: id 'case5' is listed twice (first on line 6)",
    ),
    "val is not a value": (
        ["id", "split", "patient_id"],
        _rows(case1=["case1", "val", "p1"]),
        "line 2: split 'val' for 'case1': must be train or test (val is carved from train",
    ),
    "patient in train and test": (
        ["id", "split", "patient_id"],
        _rows(case10=["case10", "train", "p5"]),
        "line 11: patient 'p5' is in train here and in test on line 10",
    ),
    "no test rows": (["id", "split"], [[i, "train"] for i in IDS], "no row has split test"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_split_files_name_the_file_and_line(user_pairs, cfg, case):
    header, rows, problem = BAD[case]
    path = write_split(user_pairs, header, rows)
    with pytest.raises(DataError) as err:
        readers.get_reader("pairs").func(user_pairs, cfg)
    assert str(err.value).startswith(f"{path}: ") and problem in str(err.value)


def test_an_unlisted_image_and_an_empty_file(user_pairs, cfg):
    path = write_split(user_pairs, ["id", "patient_id"], [[i, PATIENT[i]] for i in IDS[:-2]])
    with pytest.raises(DataError, match=r"split.csv: 2 image\(s\) have no row, e.g. 'case9', 'case10'"):
        readers.get_reader("pairs").func(user_pairs, cfg)
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="split.csv: empty split file"):
        readers.get_reader("pairs").func(user_pairs, cfg)


def test_bad_split_file_via_the_cli_is_one_line_and_writes_nothing(user_pairs, tmp_path, params_file, capsys):
    path = write_split(user_pairs, ["id", "split"], [[i, "validation"] for i in IDS])
    out = tmp_path / "out"
    code = main(
        [
            "preprocess",
            "--dataset",
            "pairs",
            "--input",
            str(user_pairs),
            "--output",
            str(out),
            "--params",
            str(params_file),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {path}: line 2: split 'validation' for 'case1'")
    assert not out.exists()
