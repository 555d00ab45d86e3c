"""``preprocess.split: seeded``: a source's published test set is ignored and every slice is split by
the seeded fractions (the PR-Net paper's 211 / 26 / 27 proportions on the Kaggle lung fields)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lungseg.config import PreprocessConfig, params_from_dict
from lungseg.data.preprocess import preprocess
from lungseg.data.splits import assign_splits
from lungseg.errors import ConfigError

#: PR-Net §3.1: 264 images → 211 train / 26 val / 27 test (test of all, val of the rest)
TEST, VAL = 27 / 264, 26 / 237


def test_ignore_published_splits_every_unit_with_the_fractions():
    hints = ["pool"] * 213 + ["test"] * 54  # the Kaggle npy set: x_train / x_test
    ids = [f"s{i:03d}" for i in range(267)]
    published = assign_splits(hints, [None] * 267, ids, val_fraction=VAL, test_fraction=TEST, seed=0)
    assert published.splits[213:] == ["test"] * 54  # the default keeps the published test set
    seeded = assign_splits(
        hints, [None] * 267, ids, val_fraction=VAL, test_fraction=TEST, seed=0, ignore_published=True
    )
    # round-half-up: test 27/264·267 = 27.3 → 27; val 26/237·240 = 26.3 → 26; train the other 214
    assert seeded.counts == {"train": 214, "val": 26, "test": 27}
    assert set(seeded.splits[213:]) != {"test"}  # the published test slices are spread over the splits
    # on the paper's 264 images the proportions give its sizes exactly
    paper = assign_splits(
        [None] * 264, [None] * 264, ids[:264], val_fraction=VAL, test_fraction=TEST, seed=0, ignore_published=True
    )
    assert paper.counts == {"train": 211, "val": 26, "test": 27}
    # seeded: same seed same split, another seed another
    again = assign_splits(hints, [None] * 267, ids, val_fraction=VAL, test_fraction=TEST, seed=0, ignore_published=True)
    other = assign_splits(hints, [None] * 267, ids, val_fraction=VAL, test_fraction=TEST, seed=1, ignore_published=True)
    assert again.splits == seeded.splits and other.splits != seeded.splits


def test_the_setting_is_checked_and_recorded(tmp_path):
    assert PreprocessConfig().split == "published"
    with pytest.raises(ConfigError, match="preprocess.split"):
        params_from_dict({"preprocess": {"split": "random"}})
    x = np.random.default_rng(0).random((30, 16, 16, 1)).astype(np.float32)
    y = (x > 0.5).astype(np.float32)
    raw = tmp_path / "raw"
    raw.mkdir()
    for name, arr in (("x_train", x[:20]), ("y_train", y[:20]), ("x_test", x[20:]), ("y_test", y[20:])):
        np.save(raw / f"{name}.npy", arr)
    cfg = PreprocessConfig(image_size=16, split="seeded", test_fraction=0.2, val_fraction=0.25)
    preprocess("kaggle-64", raw, tmp_path / "out", cfg)
    meta = json.loads((tmp_path / "out" / "meta.json").read_text(encoding="utf-8"))
    assert meta["counts"] == {"train": 18, "val": 6, "test": 6}  # 0.2·30 = 6; 0.25·24 = 6
    assert meta["preprocess"]["split"] == "seeded" and meta["split_protocol"].startswith("seeded (preprocess.split)")
    preprocess("kaggle-64", raw, tmp_path / "pub", PreprocessConfig(image_size=16))
    pub = json.loads((tmp_path / "pub" / "meta.json").read_text(encoding="utf-8"))
    assert pub["counts"]["test"] == 10 and "split" not in pub["preprocess"]  # published: unchanged meta
