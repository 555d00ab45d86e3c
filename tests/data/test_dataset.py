import json

import numpy as np
import pandas as pd
import pytest

from lungseg.data.dataset import SPLITS, load_split, read_meta
from lungseg.errors import DataError


@pytest.mark.slow
def test_load_split_returns_contract_arrays(processed_medseg):
    meta = read_meta(processed_medseg)
    full_images = np.load(processed_medseg / "images.npy")
    total = 0
    for split in SPLITS:
        part = load_split(processed_medseg, split)
        n = meta["counts"][split]
        assert len(part) == n > 0
        assert part.images.dtype == np.float32 and part.images.shape == (n, 1, meta["image_size"], meta["image_size"])
        assert part.masks.dtype == np.uint8 and part.masks.shape == (n, meta["image_size"], meta["image_size"])
        assert (part.manifest["split"] == split).all()
        # rows follow the manifest's `index` column into the full arrays
        np.testing.assert_array_equal(part.images, full_images[part.manifest["index"].to_numpy()])
        assert part.meta == meta
        total += n
    assert len(load_split(processed_medseg, "all")) == total == len(full_images)


@pytest.mark.slow
def test_missing_folder_file_and_split_are_data_errors(tmp_path, processed_medseg):
    with pytest.raises(DataError, match="not found"):
        load_split(tmp_path / "nowhere", "train")
    with pytest.raises(DataError, match="meta.json not found"):
        read_meta(tmp_path)
    with pytest.raises(DataError, match="unknown split 'training'"):
        load_split(processed_medseg, "training")
    # a folder whose manifest has no val rows
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("images.npy", "masks.npy", "meta.json"):
        (broken / name).write_bytes((processed_medseg / name).read_bytes())
    manifest = pd.read_csv(processed_medseg / "manifest.csv")
    manifest.loc[manifest["split"] == "val", "split"] = "train"
    manifest.to_csv(broken / "manifest.csv", index=False)
    with pytest.raises(DataError, match="split 'val' is empty"):
        load_split(broken, "val")
    (broken / "masks.npy").unlink()
    with pytest.raises(DataError, match="missing masks.npy"):
        load_split(broken, "train")


def test_invalid_meta_is_a_data_error(tmp_path):
    (tmp_path / "meta.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match="not valid JSON"):
        read_meta(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps([1, 2]), encoding="utf-8")
    with pytest.raises(DataError, match="JSON object"):
        read_meta(tmp_path)
