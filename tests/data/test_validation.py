import json

import numpy as np
import pandas as pd
import pytest

from lungseg.data.validation import validate
from lungseg.errors import ValidationFailed


def _load(folder):
    return (
        pd.read_csv(folder / "manifest.csv", dtype={"id": str, "patient_id": str}),
        np.load(folder / "images.npy"),
        np.load(folder / "masks.npy"),
        json.loads((folder / "meta.json").read_text(encoding="utf-8")),
    )


@pytest.mark.slow
def test_real_processed_set_passes(processed_medseg, tmp_path):
    manifest, images, masks, meta = _load(processed_medseg)
    summary = validate(
        manifest,
        images,
        masks,
        num_labels=2,
        expected_counts=meta["counts"],
        patient_level=False,
        report_path=tmp_path / "r.json",
    )
    assert summary["success"] and summary["n_failed"] == 0 and summary["n_expectations"] > 10
    assert not (tmp_path / "r.json").exists()


@pytest.mark.slow
def test_corruptions_are_caught_and_named(processed_medseg, tmp_path):
    manifest, images, masks, meta = _load(processed_medseg)
    images[5, 0, 0, 0] = np.nan
    masks[7, 0, 0] = 2  # a third label in a binary set
    counts = dict(meta["counts"], val=meta["counts"]["val"] + 1)  # plan disagrees with the manifest
    with pytest.raises(ValidationFailed) as err:
        validate(
            manifest,
            images,
            masks,
            num_labels=2,
            expected_counts=counts,
            patient_level=False,
            report_path=tmp_path / "r.json",
        )
    report = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    failed = {c["kwargs"].get("column") or c["kwargs"].get("column_A") for c in report["checks"] if not c["success"]}
    assert {"img_nan", "mask_max", "n_in_split"} <= failed
    assert {manifest["id"][5], manifest["id"][7]} <= set(report["failing_ids"])
    assert manifest["id"][5] in str(err.value) and manifest["id"][7] in str(err.value)


@pytest.mark.slow
def test_patient_in_two_splits_fails(processed_medseg, tmp_path):
    manifest, images, masks, meta = _load(processed_medseg)
    manifest["patient_id"] = [f"p{i // 10}" for i in range(len(manifest))]  # every patient spans splits
    with pytest.raises(ValidationFailed, match="patient_n_splits"):
        validate(
            manifest,
            images,
            masks,
            num_labels=2,
            expected_counts=meta["counts"],
            patient_level=True,
            report_path=tmp_path / "r.json",
        )
