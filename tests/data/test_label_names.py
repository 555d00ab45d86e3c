"""The user names the labels of their own data at preprocessing (#21): ``preprocess.label_names`` or a
``labels.json`` beside the data, recorded in meta.json (and so with the model). Real data: the Kaggle
lung fields written as a ``pairs`` folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lungseg.config import PreprocessConfig
from lungseg.data.dataset import read_meta
from lungseg.data.preprocess import preprocess
from lungseg.errors import DataError
from train_helpers import kaggle_pairs


@pytest.fixture(scope="module")
def pairs(tmp_path_factory, shared_data) -> Path:
    return kaggle_pairs(shared_data, tmp_path_factory.mktemp("kaggle") / "pairs")


def test_a_generic_reader_gets_generic_names_by_default(pairs, tmp_path):
    preprocess("pairs", pairs, tmp_path / "out", PreprocessConfig(image_size=32))
    meta = read_meta(tmp_path / "out")
    assert meta["label_names"] == ["background", "foreground"] and meta["label_names_source"] == "reader pairs"


def test_labels_json_beside_the_data_names_them(pairs, tmp_path):
    (pairs / "labels.json").write_text(json.dumps({"labels": {"background": 0, "lung": 1}}), encoding="utf-8")
    try:
        preprocess("pairs", pairs, tmp_path / "out", PreprocessConfig(image_size=32))
    finally:
        (pairs / "labels.json").unlink()
    meta = read_meta(tmp_path / "out")
    assert meta["label_names"] == ["background", "lung"] and meta["label_names_source"] == "labels.json"


def test_params_name_them_and_bad_names_are_one_line(pairs, tmp_path):
    cfg = PreprocessConfig(image_size=32, label_names=["background", "lung"])
    preprocess("pairs", pairs, tmp_path / "out", cfg)
    assert read_meta(tmp_path / "out")["label_names_source"] == "params preprocess.label_names"
    with pytest.raises(DataError, match=r"1 names \['lung'\] for 2 label values"):
        preprocess("pairs", pairs, tmp_path / "bad", PreprocessConfig(image_size=32, label_names=["lung"]))
    assert not (tmp_path / "bad").exists()
    from lungseg.config import params_from_dict
    from lungseg.errors import ConfigError

    for names in (["lung", "lung"], ["background", " "]):  # refused when params.yaml is read
        with pytest.raises(ConfigError, match=r"preprocess\.label_names: label names must be unique, non-empty"):
            params_from_dict({"preprocess": {"label_names": names}})
    (pairs / "labels.json").write_text('["lung", "lung"]', encoding="utf-8")
    try:
        with pytest.raises(DataError, match=r"labels\.json: labels\.json: label names must be unique"):
            preprocess("pairs", pairs, tmp_path / "bad", PreprocessConfig(image_size=32))
    finally:
        (pairs / "labels.json").unlink()
    (pairs / "labels.json").write_text('["background", "lungs"]', encoding="utf-8")
    try:
        with pytest.raises(DataError, match=r"labels\.json: names the labels \['background', 'lungs'\], but"):
            preprocess("pairs", pairs, tmp_path / "bad", cfg)
        (pairs / "labels.json").write_text('{"background": 0, "lung": 2}', encoding="utf-8")
        with pytest.raises(DataError, match=r"label values must be 0\.\.1"):
            preprocess("pairs", pairs, tmp_path / "bad", PreprocessConfig(image_size=32))
    finally:
        (pairs / "labels.json").unlink()


def test_published_labels_are_not_renamed(shared_data, tmp_path):
    with pytest.raises(DataError, match=r"the kaggle-64 reader's labels are \['background', 'lung'\]"):
        preprocess(
            "kaggle-64",
            shared_data / "kaggle-lungs",
            tmp_path / "out",
            PreprocessConfig(image_size=32, label_names=["background", "lungs"]),
        )
