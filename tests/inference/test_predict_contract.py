"""``lungseg predict``'s contract with the user's files (#21): the report says how intensities were read,
an ambiguous input is refused in one line before any inference, a user's folder is never replaced."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image


def _nifti(path: Path, zyx: np.ndarray) -> Path:
    vol = np.ascontiguousarray(np.transpose(zyx, (2, 1, 0)))
    img = nib.Nifti1Image(vol, np.diag([0.7, 0.8, 2.5, 1.0]))
    img.set_data_dtype(vol.dtype)
    nib.save(img, path)
    return path


@pytest.fixture(scope="module")
def grey(sample_pngs) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in sample_pngs[:3]])


@pytest.mark.slow
def test_the_report_states_the_intensity_domain_and_the_conversion(infection_model, predict, grey, tmp_path):
    u8 = _nifti(tmp_path / "u8.nii.gz", grey)
    hu = _nifti(tmp_path / "hu.nii.gz", ((grey / 255.0) * 1400.0 - 1000.0).astype(np.int16))
    reports = {}
    for name, path in (("u8", u8), ("hu", hu)):
        out = tmp_path / f"out-{name}"
        code, _, err = predict(infection_model, path, out)
        assert code == 0, err
        reports[name] = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert reports["u8"]["intensity"]["domain"] == "uint8"
    assert reports["u8"]["intensity"]["conversion"] == {"infection": "grey level / 255"}
    assert reports["hu"]["intensity"]["domain"] == "hu"
    assert reports["hu"]["intensity"]["conversion"]["infection"].startswith("HU window [-1000.0, 400.0]")
    assert not any("HU input" in w for w in reports["u8"]["warnings"])
    # the same slices, in either domain, give the same infection volume (up to HU rounding)
    ml = {k: r["volumes"]["infection"]["ml"] for k, r in reports.items()}
    assert ml["u8"] == pytest.approx(ml["hu"], rel=0.02, abs=0.05)


@pytest.mark.slow
def test_an_ambiguous_nifti_is_one_line_before_inference_and_predicts_when_stated(
    infection_model, predict, grey, tmp_path
):
    wide = _nifti(tmp_path / "wide.nii.gz", grey.astype(np.int16))
    out = tmp_path / "out"
    code, stdout, err = predict(infection_model, wide, out)
    assert code == 2 and not out.exists() and stdout == ""
    assert err.count("\n") == 1 and "wide.nii.gz: cannot tell the intensity domain" in err and "--intensity" in err
    code, _, err = predict(infection_model, wide, out, "--intensity", "uint8")
    assert code == 0, err
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["intensity"]["domain"] == "uint8" and report["intensity"]["decided_by"].startswith("--intensity")


@pytest.mark.slow
def test_a_users_folder_is_never_replaced_and_a_previous_output_is(infection_model, predict, grey, tmp_path):
    scan = _nifti(tmp_path / "u8.nii.gz", grey)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keepme.txt").write_text("precious", encoding="utf-8")
    code, _, err = predict(infection_model, scan, mine)
    assert code == 2 and "not written by lungseg" in err and "--overwrite" in err
    assert [p.name for p in mine.iterdir()] == ["keepme.txt"]
    # a previous lungseg output is replaced without asking
    out = tmp_path / "out"
    for _ in range(2):
        code, _, err = predict(infection_model, scan, out)
        assert code == 0, err
    # the folder holding the input is refused even with --overwrite
    code, _, err = predict(
        infection_model,
        scan,
        tmp_path,
        "--overwrite",
    )
    assert code == 2 and "holds the input" in err and scan.is_file()
    # --overwrite replaces the user's folder, as asked
    code, _, err = predict(infection_model, scan, mine, "--overwrite")
    assert code == 0, err
    assert not (mine / "keepme.txt").exists() and (mine / "report.json").is_file()


@pytest.mark.slow
def test_the_report_ties_the_masks_to_one_model_version_and_run(
    champion, store, infection_model, predict, grey, tmp_path, monkeypatch
):
    """report.json named `models:/…@champion` but no version, run, weights hash, date or device: once the
    alias moved, a report could not be tied to its model."""
    from mlflow import MlflowClient

    from lungseg.io import sha256_file

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    scan = _nifti(tmp_path / "u8.nii.gz", grey)
    out = tmp_path / "out"
    code, stdout, err = predict(champion, scan, out)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    model = report["models"]["infection"]
    name, alias = champion[len("models:/") :].split("@")
    mv = MlflowClient(store).get_model_version_by_alias(name, alias)
    assert model["registered_model"] == name and model["model_version"] == str(mv.version)
    assert model["run_id"] == mv.run_id and model["resolved_from"].startswith(f"models:/{name}/{mv.version} ")
    assert model["weights_sha256"].startswith("sha256:") and len(model["weights_sha256"]) == 71
    env = report["environment"]
    assert (
        env["lungseg_version"]
        and env["torch"]
        and env["date_utc"].endswith("+00:00")
        and env["device"].startswith("cpu")
    )
    timing = report["timing_s"]
    assert timing["load_models"] > 0 and timing["read_and_predict"] > 0
    assert "(read, predict, write)" in stdout and "with model loading" in stdout
    # a training folder names the file its weights came from and its run
    out2 = tmp_path / "out2"
    assert predict(infection_model, scan, out2)[0] == 0
    local = json.loads((out2 / "report.json").read_text(encoding="utf-8"))["models"]["infection"]
    assert local["weights_sha256"] == sha256_file(infection_model / "best.pt") and local["run_id"]


@pytest.mark.slow
def test_a_lung_model_serves_with_its_post_processing_and_says_when_not(lung_model, nifti_scan, predict, tmp_path):
    """Post-processing is part of the served model (evaluate.postprocess: auto → largest components +
    filled holes for a lung-field model); --no-postprocess serves the raw masks and the report says so."""
    from lungseg.artifacts.serving import keep_large_components

    on, off = tmp_path / "on", tmp_path / "off"
    code, _, err = predict(lung_model, nifti_scan, on)
    assert code == 0, err
    code, _, err = predict(lung_model, nifti_scan, off, "--no-postprocess")
    assert code == 0, err
    r_on = json.loads((on / "report.json").read_text(encoding="utf-8"))
    r_off = json.loads((off / "report.json").read_text(encoding="utf-8"))
    assert r_on["models"]["lung"]["serving"]["postprocess"] == "largest_components+fill_holes"
    assert r_off["models"]["lung"]["serving"]["postprocess"] == "none"
    assert r_on["models"]["lung"]["serving_fingerprint"] != r_off["models"]["lung"]["serving_fingerprint"]
    assert any(
        "--no-postprocess" in w and "differ from what the model was evaluated with" in w for w in r_off["warnings"]
    )
    assert not any("--no-postprocess" in w for w in r_on["warnings"])
    raw = np.asarray(nib.load(off / "lung_mask.nii.gz").dataobj)
    post = np.asarray(nib.load(on / "lung_mask.nii.gz").dataobj)
    # the served masks are the raw ones post-processed slice by slice (axial slices: the last axis here)
    want = np.stack([keep_large_components(raw[:, :, z]) for z in range(raw.shape[2])], axis=2)
    np.testing.assert_array_equal(post, want)


@pytest.mark.slow
def test_test_time_flips_are_served_when_evaluate_says_so(infection_model, nifti_scan, tmp_path, store, capsys):
    import yaml

    from lungseg.cli import main
    from train_helpers import write_params

    params = write_params(tmp_path / "p.yaml", store)
    data = yaml.safe_load(params.read_text(encoding="utf-8"))
    data["evaluate"]["tta"] = "flips"
    params.write_text(yaml.safe_dump(data), encoding="utf-8")
    outs = {}
    for name, extra in (("flips", ["--params", str(params)]), ("plain", [])):
        outs[name] = tmp_path / name
        args = ["predict", "--model", str(infection_model), "--input", str(nifti_scan), "--output", str(outs[name])]
        assert main(args + (extra or ["--params", str(write_params(tmp_path / "q.yaml", store))])) == 0
    capsys.readouterr()
    reports = {k: json.loads((v / "report.json").read_text(encoding="utf-8")) for k, v in outs.items()}
    assert reports["flips"]["models"]["infection"]["serving"]["tta"] == "flips"
    assert reports["plain"]["models"]["infection"]["serving"]["tta"] == "none"
