"""A lung-field model trained on the user's own labelled data serves in the cascade (#21): its labels
are named at preprocessing (``labels.json`` beside a ``pairs`` folder of the real Kaggle lung fields)."""

from __future__ import annotations

import json

import pytest

from train_helpers import kaggle_pairs, write_params


def _pairs_model(tmp_path_factory, shared_data, store, labels: bool):
    from lungseg.config import PreprocessConfig, load_params
    from lungseg.data.preprocess import preprocess
    from lungseg.training import train

    root = tmp_path_factory.mktemp("pairs")
    raw = kaggle_pairs(shared_data, root / "raw")
    if labels:
        (raw / "labels.json").write_text('["background", "lung"]', encoding="utf-8")
    data = root / "processed"
    preprocess("pairs", raw, data, PreprocessConfig(image_size=32))
    params = load_params(write_params(root / "params.yaml", store, epochs=2, batch_size=8, lr=0.01))
    train(params, data, root / "model")
    return root / "model"


@pytest.mark.slow
def test_a_lung_model_of_the_users_own_pairs_serves_in_the_cascade(
    tmp_path_factory, shared_data, store, infection_model, nifti_scan, predict, tmp_path
):
    named = _pairs_model(tmp_path_factory, shared_data, store, labels=True)
    out = tmp_path / "cascade"
    code, _, err = predict(None, nifti_scan, out, "--lung-model", named, "--infection-model", infection_model)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["models"]["lung"]["label_names"] == ["background", "lung"]
    assert report["volumes"]["lung"] is not None and report["percent_of_lung_affected"] is not None
    # the same data without names: a generic model, refused in the lung role as before
    generic = _pairs_model(tmp_path_factory, shared_data, store, labels=False)
    code, _, err = predict(None, nifti_scan, tmp_path / "x", "--lung-model", generic)
    assert code == 2 and "its labels are ['background', 'foreground']" in err
