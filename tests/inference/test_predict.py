"""``lungseg predict`` on real scans of every input type, the cascade, the champion URI, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from train_helpers import SAMPLE


def _report(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text(encoding="utf-8"))


@pytest.mark.slow
def test_png_slices_of_the_sample(infection_model, tmp_path, predict):
    out = tmp_path / "png"
    code, stdout, _ = predict(infection_model, SAMPLE / "tr_im", out)
    assert code == 0
    inputs = sorted((SAMPLE / "tr_im").glob("*.png"))
    masks = sorted((out / "infection_mask").glob("*.png"))
    assert [m.name for m in masks] == [p.name for p in inputs]  # one mask per slice, same name
    rep = _report(out)
    for row, mask, src in zip(rep["slices"], masks, inputs):
        m = np.asarray(Image.open(mask))
        assert m.shape == np.asarray(Image.open(src)).shape and set(np.unique(m)) <= {0, 1}
        assert row["name"] == src.stem and row["infection_voxels"] == int(m.sum())
    assert rep["input_kind"] == "slices" and rep["n_slices"] == 22 and rep["voxel_volume_ml"] is None
    assert rep["volumes"]["infection"]["ml"] is None
    assert rep["models"]["infection"]["preprocess"]["image_size"] == 32  # what the model recorded
    summary = (out / "summary.txt").read_text(encoding="utf-8")
    assert summary.count("\n") == 1 and stdout.startswith(summary.strip())
    assert (out / "overlay.png").stat().st_size > 1000


@pytest.mark.slow
def test_nifti_cascade_report_matches_a_hand_computation(
    lung_model, infection_model, nifti_scan, nifti_zooms, tmp_path, predict
):
    out = tmp_path / "nifti"
    code, _, _ = predict(None, nifti_scan, out, "--lung-model", lung_model, "--infection-model", infection_model)
    assert code == 0
    src = nib.load(nifti_scan)
    lung_img, inf_img = nib.load(out / "lung_mask.nii.gz"), nib.load(out / "infection_mask.nii.gz")
    for img in (lung_img, inf_img):  # the input's own grid and affine
        assert img.shape == src.shape
        np.testing.assert_allclose(img.affine, src.affine)
    lung, inf = np.asarray(lung_img.dataobj) > 0, np.asarray(inf_img.dataobj) > 0
    voxel_ml = nifti_zooms[0] * nifti_zooms[1] * nifti_zooms[2] / 1000.0  # 0.7 × 0.8 × 2.5 mm³
    rep = _report(out)
    v = rep["volumes"]
    assert rep["voxel_volume_ml"] == pytest.approx(voxel_ml)
    assert v["lung"]["ml"] == pytest.approx(lung.sum() * voxel_ml)
    assert v["infection"]["ml"] == pytest.approx(inf.sum() * voxel_ml)
    assert v["infection"]["in_lung"]["ml"] == pytest.approx((inf & lung).sum() * voxel_ml)
    assert v["infection"]["outside_lung"]["ml"] == pytest.approx((inf & ~lung).sum() * voxel_ml)
    if lung.sum():
        assert rep["percent_of_lung_affected"] == pytest.approx(100.0 * (inf & lung).sum() / lung.sum())
        assert v["lung"]["left"]["voxels"] + v["lung"]["right"]["voxels"] == int(lung.sum())
    assert set(rep["models"]) == {"lung", "infection"}
    assert rep["models"]["lung"]["label_names"] == ["background", "lung"]
    assert "infection outside the lung mask" in rep["summary"]


@pytest.mark.slow
def test_dicom_fixture_with_a_dicom_seg(infection_model, dicom_case_for_seg, tmp_path, predict):
    import highdicom as hd

    from lungseg.config import PreprocessConfig
    from lungseg.data import readers

    out = tmp_path / "dicom"
    code, _, _ = predict(infection_model, dicom_case_for_seg / "image", out, "--dicom-seg")
    assert code == 0
    seg = hd.seg.segread(out / "infection_mask.seg.dcm")
    assert seg.number_of_frames == 4
    case = tmp_path / "cases" / "c"
    shutil.copytree(dicom_case_for_seg / "image", case / "image")
    shutil.copyfile(out / "infection_mask.nii.gz", case / "mask.nii.gz")
    predicted = [s.mask for s in readers.read_dicom(tmp_path / "cases", PreprocessConfig()).slices]  # geometry checked
    assert sum(int(m.sum()) for m in predicted) == _report(out)["volumes"]["infection"]["voxels"]
    assert _report(out)["spacing_mm"] == {"slice": 2.5, "row": 0.7, "col": 0.8}


@pytest.mark.slow
def test_the_real_two_slice_series(infection_model, lungmask_dicom, tmp_path, predict):
    out = tmp_path / "lungmask"
    code, _, _ = predict(infection_model, lungmask_dicom, out)
    assert code == 0
    img = nib.load(out / "infection_mask.nii.gz")
    assert img.shape == (512, 512, 2) and img.header.get_zooms() == pytest.approx((0.625, 0.625, 1.0))
    rep = _report(out)
    assert rep["voxel_volume_ml"] == pytest.approx(0.625 * 0.625 * 1.0 / 1000)
    assert rep["volumes"]["infection"]["ml"] == pytest.approx(int((np.asarray(img.dataobj) > 0).sum()) * 0.000390625)
    assert any("README.md" in w for w in rep["warnings"])


@pytest.mark.slow
def test_a_size_that_is_no_multiple_of_the_divisor_is_resampled(infection_model, tmp_path, predict):
    folder = tmp_path / "odd"
    folder.mkdir()
    crop = np.asarray(Image.open(sorted((SAMPLE / "tr_im").glob("*.png"))[0]))[50:350, 20:321]  # 300 × 301
    Image.fromarray(crop).save(folder / "odd.png")
    code, _, _ = predict(infection_model, folder / "odd.png", tmp_path / "out", "--spacing", "0.7", "0.7", "5")
    assert code == 0
    assert np.asarray(Image.open(tmp_path / "out" / "infection_mask" / "odd.png")).shape == (300, 301)
    assert _report(tmp_path / "out")["voxel_volume_ml"] == pytest.approx(0.7 * 0.7 * 5 / 1000)


@pytest.mark.slow
def test_slices_of_different_sizes(infection_model, shared_data, tmp_path, predict):
    """COVID-SemiSeg's real test slices are cropped to the lungs, each to its own size: every mask has
    the size of its slice (batches hold one size each)."""
    src = shared_data / "covid-semiseg" / "Dataset" / "TestingSet" / "LungInfection-Test" / "Imgs"
    folder = tmp_path / "semiseg"
    folder.mkdir()
    for f in sorted(src.glob("*.jpg"))[:5]:
        shutil.copyfile(f, folder / f.name)
    code, _, _ = predict(infection_model, folder, tmp_path / "out", "--batch-size", "3")
    assert code == 0
    sizes = {np.asarray(Image.open(f)).shape for f in folder.iterdir()}
    assert len(sizes) == 5  # five different sizes
    for f in folder.iterdir():
        mask = np.asarray(Image.open(tmp_path / "out" / "infection_mask" / f"{f.stem}.png"))
        assert mask.shape == np.asarray(Image.open(f)).shape


@pytest.mark.slow
def test_the_champion_uri_predicts_what_the_training_folder_predicts(
    champion, infection_model, nifti_scan, store_in_env, tmp_path, predict
):
    a, b = tmp_path / "from_uri", tmp_path / "from_folder"
    assert predict(champion, nifti_scan, a)[0] == 0
    assert predict(infection_model, nifti_scan, b)[0] == 0
    np.testing.assert_array_equal(
        np.asarray(nib.load(a / "infection_mask.nii.gz").dataobj),
        np.asarray(nib.load(b / "infection_mask.nii.gz").dataobj),
    )
    assert "lungseg pyfunc" in _report(a)["models"]["infection"]["resolved_from"]


@pytest.mark.slow
def test_a_model_logged_before_the_portable_one_is_read_from_its_runs_checkpoint(
    infection_model, store_in_env, nifti_scan, tmp_path, predict
):
    """An ``mlflow.pytorch`` model (what training logged before the pyfunc) carries no preprocessing:
    predict reads the ``checkpoints/best.pt`` that training logged to the same run."""
    import mlflow

    from lungseg.artifacts.checkpoint import build_model, load_checkpoint
    from lungseg.tracking import scoped_tracking_uri

    run_id = json.loads((infection_model / "mlflow_run.json").read_text(encoding="utf-8"))["run_id"]
    ckpt = load_checkpoint(infection_model / "best.pt")
    net = build_model(ckpt["model_identity"])
    net.load_state_dict(ckpt["model_state"])
    with scoped_tracking_uri(store_in_env):
        info = mlflow.pytorch.log_model(
            net.eval(), name="legacy", serialization_format="pickle", run_id=run_id, pip_requirements=["torch"]
        )
    out = tmp_path / "legacy"
    assert predict(info.model_uri, nifti_scan, out)[0] == 0
    assert "checkpoints/best.pt" in _report(out)["models"]["infection"]["resolved_from"]


# ----------------------------------------------------------------------------------------- bad input
def _two_series(tmp_path: Path, dicom_case: Path, lungmask_dicom: Path) -> Path:
    folder = tmp_path / "two"
    shutil.copytree(dicom_case / "image", folder)
    shutil.copyfile(lungmask_dicom / "0.dcm", folder / "other.dcm")
    return folder


def _four_d(tmp_path: Path, nifti_scan: Path) -> Path:
    img = nib.load(nifti_scan)
    vol = np.asarray(img.dataobj)
    path = tmp_path / "four_d.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([vol, vol], axis=-1), img.affine), path)
    return path


def _no_spacing(tmp_path: Path, nifti_scan: Path) -> Path:
    path = tmp_path / "no_spacing.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(nib.load(nifti_scan).dataobj), None), path)
    return path


def _truncated_nifti(tmp_path: Path, nifti_scan: Path) -> Path:
    path = tmp_path / "truncated.nii.gz"
    data = nifti_scan.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


def _corrupt_png(tmp_path: Path, _nifti_scan: Path) -> Path:
    folder = tmp_path / "pngs"
    folder.mkdir()
    src = sorted((SAMPLE / "tr_im").glob("*.png"))[0].read_bytes()
    (folder / "broken.png").write_bytes(src[: len(src) // 2])
    return folder / "broken.png"


BAD_INPUTS = {
    "no_spacing": (_no_spacing, "no voxel spacing"),
    "four_d": (_four_d, "expected a 3-D volume"),
    "truncated_nifti": (_truncated_nifti, "cannot read NIfTI"),
    "corrupt_png": (_corrupt_png, "cannot decode image"),
}


def _assert_one_line_error(err: str, where: str, problem: str, out: Path) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {where}: ") and problem in lines[0], lines[0]
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]  # no temporary leftovers


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_no_output(case, infection_model, nifti_scan, tmp_path, predict):
    make, problem = BAD_INPUTS[case]
    path = make(tmp_path, nifti_scan)
    out = tmp_path / "out"
    code, _, err = predict(infection_model, path, out)
    assert code == 2
    _assert_one_line_error(err, str(path), problem, out)


@pytest.mark.slow
def test_two_series_in_one_folder(infection_model, dicom_case, lungmask_dicom, tmp_path, predict):
    folder = _two_series(tmp_path, dicom_case, lungmask_dicom)
    out = tmp_path / "out"
    code, _, err = predict(infection_model, folder, out)
    assert code == 2
    _assert_one_line_error(err, str(folder), "2 DICOM series in one folder", out)


@pytest.mark.slow
def test_a_model_uri_that_does_not_exist(champion, store_in_env, nifti_scan, tmp_path, predict):
    out = tmp_path / "out"
    for uri in ("models:/lungseg-inference-tests@no-such-alias", "models:/no-such-model/1"):
        code, _, err = predict(uri, nifti_scan, out)
        assert code == 2
        _assert_one_line_error(err, uri, "cannot load the model from the MLflow store", out)
    code, _, err = predict(tmp_path / "no-model", nifti_scan, out)
    assert code == 2
    _assert_one_line_error(err, str(tmp_path / "no-model"), "model not found", out)


@pytest.mark.slow
def test_a_failure_keeps_the_previous_output(infection_model, nifti_scan, tmp_path, predict):
    out = tmp_path / "out"
    assert predict(infection_model, nifti_scan, out)[0] == 0
    before = sorted(p.name for p in out.iterdir())
    bad = _no_spacing(tmp_path, nifti_scan)
    assert predict(infection_model, bad, out)[0] == 2
    assert sorted(p.name for p in out.iterdir()) == before
