"""End-to-end preprocessing of the real sets, and every kind of bad input through the CLI."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from lungseg.cli import main
from lungseg.config import PreprocessConfig
from lungseg.data import readers
from lungseg.data.dataset import load_split, read_meta
from lungseg.data.preprocess import preprocess
from lungseg.data.readers import RawDataset, RawSlice
from lungseg.errors import ConfigError, DataError, ValidationFailed

CONTRACT_FILES = {"images.npy", "masks.npy", "manifest.csv", "meta.json", "validation.json", ".lungseg-output"}


def _check_canonical(out, meta_counts):
    assert {p.name for p in out.iterdir()} == CONTRACT_FILES
    images, masks = np.load(out / "images.npy"), np.load(out / "masks.npy")
    manifest = pd.read_csv(out / "manifest.csv")
    meta = read_meta(out)
    assert images.dtype == np.float32 and images.ndim == 4 and images.shape[1] == 1
    assert masks.dtype == np.uint8 and masks.shape == (len(images), *images.shape[2:])
    assert 0.0 <= images.min() and images.max() <= 1.0 and not np.isnan(images).any()
    assert set(np.unique(masks)) <= set(range(meta["num_labels"]))
    assert list(manifest["index"]) == list(range(len(images)))
    assert manifest["split"].value_counts().to_dict() == meta["counts"] == meta_counts
    # the manifest's per-slice foreground agrees with the arrays
    np.testing.assert_allclose(manifest["foreground_fraction"], (masks > 0).mean(axis=(1, 2)))
    assert json.loads((out / "validation.json").read_text(encoding="utf-8"))["success"] is True
    return images, masks, manifest, meta


@pytest.mark.slow
def test_medseg_full(processed_medseg):
    _, masks, manifest, meta = _check_canonical(processed_medseg, {"train": 68, "val": 12, "test": 20})
    assert manifest["jcs_list"].value_counts().to_dict() == {"train": 59, "neither": 21, "both": 20}
    assert set(manifest.loc[manifest["split"] == "test", "jcs_list"]) == {"both"}
    assert any("train.txt lists 20" in w for w in meta["warnings"])
    assert any(w.startswith("slice-level") for w in meta["warnings"])
    assert meta["spacing_mm"] is None and meta["split_level"] == "slice"


@pytest.mark.slow
@pytest.mark.parametrize("multiclass", [False, True])
def test_covid_semiseg(tmp_path, shared_data, multiclass):
    cfg = PreprocessConfig(image_size=64, multiclass=multiclass)
    preprocess("covid-semiseg", shared_data / "covid-semiseg", tmp_path / "o", cfg)
    _, masks, manifest, meta = _check_canonical(tmp_path / "o", {"train": 42, "val": 8, "test": 48})
    assert set(np.unique(masks)) == ({0, 1, 2} if multiclass else {0, 1})
    assert meta["label_names"][0] == "background" and len(meta["label_names"]) == meta["num_labels"]
    assert manifest.loc[manifest["split"] != "test", "id"].str.startswith("train-").all()


@pytest.mark.slow
def test_kaggle_64_and_msd(tmp_path, shared_data, cfg):
    s = preprocess("kaggle-64", shared_data / "kaggle-lungs" / "64px", tmp_path / "k", cfg)
    _, masks, _, meta = _check_canonical(tmp_path / "k", s.counts)
    assert s.counts["test"] == 54 and s.counts["train"] + s.counts["val"] == 213
    assert 0.22 < meta["foreground_fraction"] < 0.26
    assert "267 slices" in s.describe() and "test 54" in s.describe()
    s = preprocess("msd-lung", shared_data / "msd-lung-tumour", tmp_path / "m", cfg)
    _, _, manifest, meta = _check_canonical(tmp_path / "m", s.counts)
    assert s.n_slices == 130 and all(v > 0 for v in s.counts.values())
    assert meta["spacing_mm"] == pytest.approx([2.0 * 48 / 64] * 2)  # 2 mm patches upsampled to 64 px


def test_patient_level_split_on_volumes(tmp_path, shared_data, build, cfg):
    """Ten real-derived NIfTI volumes → no volume (patient) in two splits."""
    for v in range(10):
        x, y = build.msd_patches(shared_data, 3 * v, 3 * v + 3)
        build.nifti_pair(tmp_path / "raw", f"pat{v:02d}", build.unit_to_hu(x), y)
    preprocess("nifti", tmp_path / "raw", tmp_path / "o", cfg)
    _, _, manifest, meta = _check_canonical(tmp_path / "o", read_meta(tmp_path / "o")["counts"])
    assert meta["split_level"] == "patient"
    assert (manifest.groupby("patient_id")["split"].nunique() == 1).all()
    assert manifest["patient_id"].nunique() == 10 and set(manifest["split"]) == {"train", "val", "test"}
    assert meta["spacing_mm"] == pytest.approx([0.8 * 48 / 64, 0.7 * 48 / 64])


@pytest.mark.slow
def test_sample_via_cli(tmp_path, sample_dir, params_file, capsys):
    out = tmp_path / "sample"
    code = main(
        [
            "preprocess",
            "--dataset",
            "medseg",
            "--input",
            str(sample_dir),
            "--output",
            str(out),
            "--params",
            str(params_file),
        ]
    )
    assert code == 0
    assert "22 slices" in capsys.readouterr().out
    _check_canonical(out, read_meta(out)["counts"])
    assert load_split(out, "test").manifest["id"].tolist() == sorted(
        f"tr_im_{line.split()[0][-8:-4]}"
        for line in (sample_dir / "test.txt").read_text(encoding="utf-8").splitlines()
        if line.strip()
    )


@pytest.mark.slow
def test_same_data_gives_byte_identical_output_wherever_it_lives(tmp_path, sample_dir, params_file, monkeypatch):
    """DVC hashes the output folder: two checkouts preprocessing the same data must write the same bytes."""
    import hashlib

    digests = []
    for name in ("checkout-a", "checkout-b"):
        root = tmp_path / name
        _copy_sample(sample_dir, root / "data" / "sample")
        monkeypatch.chdir(root)
        assert (
            main(
                [
                    "preprocess",
                    "--dataset",
                    "medseg",
                    "--input",
                    "data/sample",
                    "--output",
                    "processed",
                    "--params",
                    str(params_file),
                ]
            )
            == 0
        )
        files = sorted((root / "processed").iterdir())
        assert [f.name for f in files] == [
            ".lungseg-output",
            "images.npy",
            "manifest.csv",
            "masks.npy",
            "meta.json",
            "validation.json",
        ]
        digests.append({f.name: hashlib.md5(f.read_bytes()).hexdigest() for f in files})
    assert digests[0] == digests[1]
    assert read_meta(tmp_path / "checkout-a" / "processed")["source_dir"] == "data/sample"


# ---------------------------------------------------------------------------------------- bad input


def _copy_sample(src, dst):
    shutil.copytree(src, dst)
    for p in dst.rglob("*"):
        p.chmod(0o644 if p.is_file() else 0o755)
    return dst


def _truncate_png(root):
    p = root / "tr_im" / "tr_im_0008.png"
    p.write_bytes(p.read_bytes()[:2000])
    return "tr_im_0008.png", "cannot decode"


def _label_seven(root):
    from PIL import Image

    p = root / "tr_mask_new" / "tr_mask_0008.png"
    m = np.asarray(Image.open(p)).copy()
    m[100:110, 100:110] = 7
    Image.fromarray(m).save(p)
    return "tr_mask_0008.png", "mask has label 7"


def _no_mask(root):
    (root / "tr_mask_new" / "tr_mask_0041.png").unlink()
    return "tr_im_0041.png", "has no mask"


def _missing_folder(root):
    shutil.rmtree(root / "tr_mask_new")
    return "tr_mask_new", "folder not found"


@pytest.mark.slow
@pytest.mark.parametrize("breaker", [_truncate_png, _label_seven, _no_mask, _missing_folder])
def test_bad_medseg_input_fails_cleanly(tmp_path, sample_dir, params_file, capsys, breaker):
    raw = _copy_sample(sample_dir, tmp_path / "raw")
    out = tmp_path / "out"
    assert (
        main(
            [
                "preprocess",
                "--dataset",
                "medseg",
                "--input",
                str(raw),
                "--output",
                str(out),
                "--params",
                str(params_file),
            ]
        )
        == 0
    )
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    name, problem = breaker(raw)
    code = main(
        ["preprocess", "--dataset", "medseg", "--input", str(raw), "--output", str(out), "--params", str(params_file)]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and name in err and problem in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # previous output intact
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folder left


def test_nifti_mismatch_and_missing_input_and_unknown_dataset_via_cli(
    tmp_path, shared_data, build, params_file, capsys
):
    x, y = build.msd_patches(shared_data, 0, 4)
    build.nifti_pair(tmp_path / "raw", "vol1", build.unit_to_hu(x), y, mask_affine=np.diag([0.7, 0.8, 2.5, 1.0]) * 2)
    cases = [
        (
            ["--dataset", "nifti", "--input", str(tmp_path / "raw")],
            ["images/vol1.nii.gz", "masks/vol1.nii.gz", "geometry"],
        ),
        (["--dataset", "medseg", "--input", str(tmp_path / "nowhere")], ["nowhere", "input folder not found"]),
        (["--dataset", "medsegg", "--input", str(tmp_path / "raw")], ["unknown dataset 'medsegg'", "medseg", "nifti"]),
    ]
    for args, needles in cases:
        code = main(["preprocess", *args, "--output", str(tmp_path / "out"), "--params", str(params_file)])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ")
        for needle in needles:
            assert needle in err
        assert not (tmp_path / "out").exists()


def test_failed_validation_reports_ids_and_writes_nothing(tmp_path, shared_data, monkeypatch):
    """A reader that lets an out-of-range image through is stopped by the GE checks, not by luck."""
    from PIL import Image

    src = shared_data / "medseg-covid100"

    def bad_reader(input_dir, cfg):
        def slices():
            for i in range(1, 9):
                image = np.asarray(Image.open(src / f"tr_im/tr_im_{i:04d}.png"), dtype=np.float32)[:64, :64] / 255
                if i == 3:
                    image = image * 3.0  # forgot to scale: values up to 3
                mask = np.asarray(Image.open(src / f"tr_mask_new/tr_mask_{i:04d}.png"))[:64, :64]
                yield RawSlice(id=f"s{i}", source=f"tr_im_{i:04d}.png", image=image, mask=mask)

        return RawDataset(slices=slices())

    monkeypatch.setitem(readers.READERS, "unscaled", readers.ReaderInfo("unscaled", bad_reader, "test reader"))
    out = tmp_path / "out"
    with pytest.raises(ValidationFailed) as err:
        preprocess("unscaled", src, out, PreprocessConfig(image_size=64))
    assert "s3" in str(err.value) and "img_max" in str(err.value)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["out.validation-failed.json"]
    report = json.loads((tmp_path / "out.validation-failed.json").read_text(encoding="utf-8"))
    assert report["success"] is False and report["failing_ids"] == ["s3"]


def test_too_small_dataset_is_a_data_error(tmp_path, shared_data, cfg):
    root = tmp_path / "raw"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    (root / "images" / "a.tif").write_bytes(
        (shared_data / "kaggle-lungs/fullres-sample/image_ID_0000_Z_0142.tif").read_bytes()
    )
    (root / "masks" / "a.tif").write_bytes(
        (shared_data / "kaggle-lungs/fullres-sample/mask_ID_0000_Z_0142.tif").read_bytes()
    )
    with pytest.raises(DataError, match="too few slices"):
        preprocess("pairs", root, tmp_path / "o", cfg)
    assert not (tmp_path / "o").exists()


def test_cli_help_names_every_reader():
    import argparse

    from lungseg.cli import preprocess as cli_preprocess

    parser = argparse.ArgumentParser()
    cli_preprocess.add_parser(parser.add_subparsers())
    help_text = next(
        a.help for a in parser._subparsers._group_actions[0].choices["preprocess"]._actions if a.dest == "dataset"
    )
    assert sorted(n.strip() for n in help_text.split(":")[1].split("(")[0].split(",")) == sorted(readers.READERS)


@pytest.mark.slow
def test_meta_records_the_raw_datas_version(tmp_path, sample_dir):
    from lungseg.lineage import folder_hash

    cfg = PreprocessConfig(image_size=32)
    out = tmp_path / "out"
    preprocess("medseg", sample_dir, out, cfg)
    source = read_meta(out)["source"]
    assert source["md5"] == folder_hash(sample_dir).md5 and source["nfiles"] > 0
    # the bundled sample is tracked by git: a version too (path + commit + content hash)
    assert (
        source["versioned"] is True
        and source["tracked_by"] == "git"
        and source["path"] == "data/sample/medseg-covid100"
    )
    # a pipeline that declares another version for this folder is refused before anything is written
    declared = {"md5": "0" * 32 + ".dir", "path": "data/raw/medseg", "rev": "v1", "commit": "f" * 40}
    with pytest.raises(DataError, match="not that version"):
        preprocess("medseg", sample_dir, tmp_path / "other", cfg, data_version=declared)
    assert not (tmp_path / "other").exists()
    ok = preprocess("medseg", sample_dir, tmp_path / "declared", cfg, data_version={**declared, "md5": source["md5"]})
    assert read_meta(ok.output_dir)["source"]["rev"] == "v1" and read_meta(ok.output_dir)["source"]["versioned"]


def test_the_size_and_window_rules_are_the_configs_not_preprocess(tmp_path, shared_data, monkeypatch, capsys):
    """``preprocess`` does not check its config again (it refused sizes that are not multiples of 16
    while the config took any size ≥ 8): 24² is preprocessed when no model is named, and a params
    file whose ``train.model`` needs a multiple of 16 is refused when it is read, before any work."""
    from PIL import Image

    src = shared_data / "medseg-covid100"

    def reader(input_dir, cfg):
        def slices():
            for i in range(1, 11):
                image = np.asarray(Image.open(src / f"tr_im/tr_im_{i:04d}.png"), dtype=np.float32)[:64, :64] / 255
                mask = np.asarray(Image.open(src / f"tr_mask_new/tr_mask_{i:04d}.png"))[:64, :64]
                yield RawSlice(id=f"s{i}", source=f"tr_im_{i:04d}.png", image=image, mask=mask)

        return RawDataset(slices=slices())

    monkeypatch.setitem(readers.READERS, "crops", readers.ReaderInfo("crops", reader, "test reader"))
    summary = preprocess("crops", src, tmp_path / "o24", PreprocessConfig(image_size=24))
    assert summary.image_size == 24 and np.load(tmp_path / "o24" / "images.npy").shape[-2:] == (24, 24)
    params_file = tmp_path / "p.yaml"
    params_file.write_text("preprocess: {image_size: 24}\ntrain: {model: lgnet}\n", encoding="utf-8")
    args = ["preprocess", "--dataset", "crops", "--input", str(src), "--output", str(tmp_path / "o")]
    assert main([*args, "--params", str(params_file)]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"error: {params_file}.preprocess.image_size: 24 is not a multiple of 16, which lgnet needs (train.model)\n"
    )
    assert not (tmp_path / "o").exists()
    with pytest.raises(ConfigError, match=r"^preprocess\.hu_window: must be \[low, high\] with low < high"):
        PreprocessConfig(hu_window=(400.0, -1000.0))  # refused where it is built, before preprocess sees it
