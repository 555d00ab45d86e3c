"""The burden report against hand computations on real masks (Kaggle lung fields, MedSeg infection)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from lungseg.inference import burden
from train_helpers import SAMPLE

SPACING = (2.5, 0.7, 0.8)  # slice, row, col in mm
VOXEL_ML = 2.5 * 0.7 * 0.8 / 1000.0


@pytest.fixture(scope="module")
def real_masks(shared_data):
    """Five real Kaggle lung-field masks (64², two lungs each) and five real MedSeg infection masks
    brought to 64² by nearest neighbour: real shapes, numbers checked by hand below."""
    y = np.load(shared_data / "kaggle-lungs" / "64px" / "y_test.npy")[:5, :, :, 0]
    lung = [(m >= 0.5).astype(np.uint8) for m in y]
    files = sorted((SAMPLE / "tr_mask_new").glob("*.png"))[:5]
    infection = [np.asarray(Image.open(f).resize((64, 64), Image.NEAREST), dtype=np.uint8) for f in files]
    return lung, infection


def test_volumes_and_percentages_match_a_hand_computation(real_masks):
    lung, inf = real_masks
    rep = burden.compute(inf, lung, voxel_ml=VOXEL_ML, columns_towards_left=True)
    lung_px, inf_px = np.stack(lung) > 0, np.stack(inf) > 0
    n_lung, n_in, n_out = int(lung_px.sum()), int((inf_px & lung_px).sum()), int((inf_px & ~lung_px).sum())
    assert n_lung > 0 and n_in > 0 and n_out > 0  # the real masks overlap partly: every branch is exercised
    v = rep["volumes"]
    assert v["lung"]["voxels"] == n_lung and v["lung"]["ml"] == pytest.approx(n_lung * 2.5 * 0.7 * 0.8 / 1000)
    assert v["infection"]["voxels"] == int(inf_px.sum())
    assert v["infection"]["in_lung"]["ml"] == pytest.approx(n_in * 1.4 / 1000)
    assert v["infection"]["outside_lung"]["voxels"] == n_out
    assert v["infection"]["in_lung"]["voxels"] + n_out == v["infection"]["voxels"]
    assert rep["percent_of_lung_affected"] == pytest.approx(100.0 * n_in / n_lung)
    # left/right by hand: per slice components, centroid (scipy's center_of_mass) right of the midline = left lung
    left = right = inf_left = 0
    for lm, im in zip(lung, inf):
        comp, n = ndimage.label(lm)
        for k in range(1, n + 1):
            col = ndimage.center_of_mass(lm, comp, k)[1]
            part = comp == k
            if col > (lm.shape[1] - 1) / 2:
                left += int(part.sum())
                inf_left += int((part & (im > 0)).sum())
            else:
                right += int(part.sum())
    assert v["lung"]["left"]["voxels"] == left and v["lung"]["right"]["voxels"] == right
    assert left > 0 and right > 0 and left + right == n_lung
    assert v["infection"]["left"]["voxels"] == inf_left
    assert v["infection"]["left"]["percent_of_lung"] == pytest.approx(100.0 * inf_left / left)
    assert [s["lung_voxels"] for s in rep["slices"]] == [int(m.sum()) for m in lung]


def test_sides_follow_the_orientation():
    """A big component on the image's right and a small one on its left: which is the patient's left
    depends only on the orientation flag."""
    lung = np.zeros((10, 20), np.uint8)
    lung[2:8, 12:18] = 1  # 36 voxels, image right
    lung[3:5, 2:4] = 1  # 4 voxels, image left
    radiological = burden.compute(None, [lung], voxel_ml=1.0, columns_towards_left=True)["volumes"]["lung"]
    neurological = burden.compute(None, [lung], voxel_ml=1.0, columns_towards_left=False)["volumes"]["lung"]
    assert (radiological["left"]["voxels"], radiological["right"]["voxels"]) == (36, 4)
    assert (neurological["left"]["voxels"], neurological["right"]["voxels"]) == (4, 36)
    unknown = burden.compute(None, [lung], voxel_ml=1.0, columns_towards_left=None)["volumes"]["lung"]
    assert "left" not in unknown and unknown["voxels"] == 40


def test_without_spacing_there_are_counts_not_millilitres(real_masks):
    lung, inf = real_masks
    rep = burden.compute(inf, None, voxel_ml=None, columns_towards_left=True)
    assert rep["volumes"]["infection"]["ml"] is None and rep["volumes"]["lung"] is None
    assert rep["percent_of_lung_affected"] is None
    assert "voxels (no lung model" in burden.summary_line("x", rep)


def test_multiclass_infection_is_split_by_label():
    inf = np.array([[0, 1, 1], [2, 2, 2]], np.uint8)
    lung = np.array([[1, 1, 0], [1, 1, 1]], np.uint8)
    rep = burden.compute(
        [inf], [lung], voxel_ml=0.5, columns_towards_left=True, infection_labels=["ground-glass", "consolidation"]
    )
    by = rep["volumes"]["infection"]["by_label"]
    assert by["ground-glass"] == {"voxels": 2, "ml": 1.0, "in_lung": {"voxels": 1, "ml": 0.5}}
    assert by["consolidation"]["voxels"] == 3 and by["consolidation"]["in_lung"]["voxels"] == 3
    assert rep["volumes"]["infection"]["outside_lung"]["voxels"] == 1


def test_summary_line_says_everything_on_one_line(real_masks):
    lung, inf = real_masks
    rep = burden.compute(inf, lung, voxel_ml=VOXEL_ML, columns_towards_left=True)
    line = burden.summary_line("ct.nii.gz", rep)
    v = rep["volumes"]
    assert "\n" not in line and line.startswith("ct.nii.gz: lung ")
    assert f"lung {v['lung']['ml']:.1f} mL (left {v['lung']['left']['ml']:.1f} mL" in line
    assert f"= {rep['percent_of_lung_affected']:.1f} % of the lung" in line
    assert f"outside the lung mask {v['infection']['outside_lung']['ml']:.1f} mL" in line


def test_overlay_figure_is_written(real_masks, tmp_path):
    lung, inf = real_masks
    images = [m.astype(np.float32) * 0.5 for m in lung]
    path = burden.overlay_figure(tmp_path / "o.png", images, inf, lung, [f"z{i}" for i in range(5)], title="t")
    with Image.open(path) as im:
        assert im.size[0] > im.size[1] > 100
