"""``lungseg predict`` on a cohort folder (#21): models loaded once, one output per case, burden.csv,
one broken case reported while the others run, ``--continue``, ``--save-probabilities``."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lungseg.inference.cohort import COLUMNS, find_cases


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with (out / "burden.csv").open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == COLUMNS
        return {r["case"]: r for r in reader}


@pytest.fixture
def cohort(tmp_path, nifti_scan, dicom_case) -> Path:
    """Four cases from the real sample: two NIfTI volumes with known spacing (one cropped to 4 slices),
    one DICOM series (sub-folder), one truncated NIfTI; and a README that is no case."""
    root = tmp_path / "cohort"
    root.mkdir()
    shutil.copyfile(nifti_scan, root / "case_a.nii.gz")
    img = nib.load(nifti_scan)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:, :, :4], img.affine), root / "case_b.nii.gz")
    shutil.copytree(dicom_case / "image", root / "case_c")
    data = nifti_scan.read_bytes()
    (root / "case_d.nii.gz").write_bytes(data[: len(data) // 3])
    (root / "README.md").write_text("four cases", encoding="utf-8")
    return root


def test_what_is_a_cohort(cohort, sample_pngs, dicom_case, lungmask_dicom, tmp_path):
    cases, others = find_cases(cohort)
    assert [c.name for c in cases] == ["case_a", "case_b", "case_c", "case_d"] and others == ["README.md"]
    assert find_cases(dicom_case / "image") is None  # one DICOM series
    assert find_cases(lungmask_dicom) is None  # a series with a README beside it
    assert find_cases(sample_pngs[0].parent) is None  # PNG slices
    (tmp_path / "dup").mkdir()
    shutil.copyfile(cohort / "case_a.nii.gz", tmp_path / "dup" / "x.nii.gz")
    (tmp_path / "dup" / "x").mkdir()
    from lungseg.errors import DataError

    with pytest.raises(DataError, match="two cases named 'x'"):
        find_cases(tmp_path / "dup")


@pytest.mark.slow
def test_a_cohort_in_one_call_with_a_broken_case_and_continue(
    infection_model, cohort, predict, tmp_path, monkeypatch, nifti_scan
):
    import lungseg.inference.predict as predict_module

    loads = []
    real_load = predict_module.load_model
    monkeypatch.setattr(predict_module, "load_model", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    out = tmp_path / "out"
    code, stdout, err = predict(infection_model, cohort, out)
    assert code == 1, err  # some cases failed
    assert len(loads) == 1  # the model is loaded once for the cohort
    rows = _rows(out)
    assert {k: r["status"] for k, r in rows.items()} == {
        "case_a": "done",
        "case_b": "done",
        "case_c": "done",
        "case_d": "failed",
    }
    assert "cannot read NIfTI" in rows["case_d"]["error"] and "case_d.nii.gz" in rows["case_d"]["error"]
    assert "1 FAILED (case_d)" in stdout and "3 predicted" in stdout
    for i, name in enumerate(["case_a", "case_b", "case_c", "case_d"], start=1):
        assert f"[{i}/4] {name}: " in err and "ETA " in err  # a line per case, also when stderr is no terminal
    assert not (out / "case_d").exists()
    # each case is what a one-scan prediction of it gives
    single = tmp_path / "single"
    assert predict(infection_model, cohort / "case_a.nii.gz", single)[0] == 0
    one = json.loads((single / "report.json").read_text(encoding="utf-8"))
    inside = json.loads((out / "case_a" / "report.json").read_text(encoding="utf-8"))
    assert inside["volumes"] == one["volumes"]
    assert float(rows["case_a"]["infection_ml"]) == pytest.approx(one["volumes"]["infection"]["ml"])
    record = json.loads((out / "cohort.json").read_text(encoding="utf-8"))
    assert record["left_out"] == ["README.md"] and record["cases"]["case_d"]["status"] == "failed"
    # --continue: the cases done are kept, the repaired one is predicted
    stamps = {n: (out / n / "report.json").stat().st_mtime_ns for n in ("case_a", "case_b", "case_c")}
    shutil.copyfile(nifti_scan, cohort / "case_d.nii.gz")
    code, stdout, err = predict(infection_model, cohort, out, "--continue")
    assert code == 0, err
    assert {n: (out / n / "report.json").stat().st_mtime_ns for n in stamps} == stamps
    assert "3 already done (--continue)" in stdout and "1 predicted" in stdout
    assert {r["status"] for r in _rows(out).values()} == {"done"}


@pytest.mark.slow
def test_continue_refuses_a_cohort_of_another_model(infection_model, lung_model, cohort, predict, tmp_path):
    out = tmp_path / "out"
    (cohort / "case_d.nii.gz").unlink()
    assert predict(infection_model, cohort, out)[0] == 0
    code, stdout, err = predict(lung_model, cohort, out, "--continue")
    assert (
        code == 2
        and err.count("\n") == 1
        and "cohort.json: --continue: the cohort was predicted with other models" in err
    )
    code, _, err = predict(infection_model, cohort / "case_a.nii.gz", tmp_path / "x", "--continue")
    assert code == 2 and "--continue is for a cohort folder" in err


@pytest.mark.slow
def test_save_probabilities_on_the_masks_grid(infection_model, nifti_scan, predict, tmp_path):
    out = tmp_path / "out"
    code, _, err = predict(infection_model, nifti_scan, out, "--save-probabilities")
    assert code == 0, err
    probs, mask = nib.load(out / "infection_probabilities.nii.gz"), nib.load(out / "infection_mask.nii.gz")
    assert probs.shape == mask.shape and np.allclose(probs.affine, mask.affine)
    p = np.asarray(probs.dataobj)
    assert p.dtype == np.float32 and 0.0 <= p.min() and p.max() <= 1.0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    np.testing.assert_array_equal(
        np.asarray(mask.dataobj), (p >= report["models"]["infection"]["threshold"]).astype(np.uint8)
    )
    assert "infection_probabilities.nii.gz" in report["files"]


def test_the_readme_cohort_is_the_sample_slices_in_their_own_domain(tmp_path, lungmask_dicom):
    """scripts/make_cohort.py (the README's cohort): NIfTI cases that predict reads back as exactly the
    bundled MedSeg slices, uint8, with the stated spacing; the DICOM series as one more case."""
    import importlib.util

    from PIL import Image

    from lungseg.inference import volumes
    from train_helpers import SAMPLE

    spec = importlib.util.spec_from_file_location(
        "make_cohort", Path(__file__).parents[2] / "scripts" / "make_cohort.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "in"
    mod.build(out, sample=SAMPLE / "tr_im", spacing=(0.7, 0.8, 5.0), cases=3, dicom=lungmask_dicom)
    cases, _ = find_cases(out)
    assert [c.name for c in cases] == ["lungmask-dicom", "medseg_1", "medseg_2", "medseg_3"]
    pngs = sorted((SAMPLE / "tr_im").glob("*.png"))
    seen = []
    for name in ("medseg_1", "medseg_2", "medseg_3"):
        scan = volumes.read_scan(out / f"{name}.nii.gz")
        assert scan.intensity.domain == "uint8" and scan.spacing == pytest.approx((5.0, 0.7, 0.8))
        seen += scan.slices
    assert len(seen) == len(pngs)
    for s, p in zip(seen, pngs):
        np.testing.assert_array_equal(s, np.asarray(Image.open(p).convert("L")))
    with pytest.raises(SystemExit, match="exists and is not empty"):
        mod.build(out, sample=SAMPLE / "tr_im", spacing=(0.7, 0.8, 5.0), cases=3, dicom=None)


def test_a_folder_of_cases_and_slices_is_refused_and_cases_cannot_take_the_tables_name(cohort, sample_pngs, tmp_path):
    """A stray image turned the whole cohort into a one-slice scan (the NIfTI cases 'left out')."""
    from lungseg.errors import DataError

    shutil.copyfile(sample_pngs[0], cohort / "overview.png")
    with pytest.raises(DataError, match=r"cohort: holds both slices/DICOM files \(overview\.png\) and cases"):
        find_cases(cohort)
    (cohort / "overview.png").unlink()
    shutil.copyfile(cohort / "case_a.nii.gz", cohort / "burden.csv.nii.gz")
    with pytest.raises(DataError, match=r"a case may not be named 'burden\.csv'"):
        find_cases(cohort)


@pytest.mark.slow
def test_continue_refuses_another_input_or_settings_and_repredicts_a_changed_case(
    infection_model, cohort, predict, tmp_path, nifti_scan
):
    """--continue mixed serving settings and --spacing in one burden.csv, reused another folder's cases,
    and kept a case whose file had changed."""
    (cohort / "case_d.nii.gz").unlink()
    shutil.rmtree(cohort / "case_c")
    out = tmp_path / "out"
    assert predict(infection_model, cohort, out)[0] == 0
    other = tmp_path / "other"
    shutil.copytree(cohort, other)
    code, _, err = predict(infection_model, other, out, "--continue")
    assert code == 2 and "--continue: the cohort was predicted from" in err
    code, _, err = predict(infection_model, cohort, out, "--continue", "--save-probabilities")
    assert code == 2 and "predicted with other models or settings" in err
    code, _, err = predict(infection_model, cohort, out, "--continue", "--backend", "onnxruntime")
    assert code == 2 and "predicted with other models or settings" in err  # the cases ran in torch
    # a case whose file changed is predicted again; the unchanged one is kept
    img = nib.load(cohort / "case_b.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:, :, :2], img.affine), cohort / "case_b.nii.gz")
    code, stdout, err = predict(infection_model, cohort, out, "--continue")
    assert code == 0, err
    assert "1 already done (--continue)" in stdout and "1 predicted" in stdout
    assert json.loads((out / "case_b" / "report.json").read_text(encoding="utf-8"))["n_slices"] == 2
