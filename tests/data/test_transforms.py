import numpy as np
import pytest
from PIL import Image

from lungseg.data import transforms
from lungseg.errors import DataError


def test_hu_window_maps_window_to_unit_range():
    hu = np.array([-2000, -1000, -300, 400, 3000], dtype=np.int16)
    out = transforms.hu_window(hu, (-1000, 400))
    np.testing.assert_allclose(out, [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(transforms.to_unit_range(hu, source="x", window=(-1000, 400)), out)


def test_8bit_and_unit_float_and_bad_values():
    u8 = np.array([[0, 51, 255]], dtype=np.uint8)
    np.testing.assert_allclose(transforms.to_unit_range(u8, source="x", window=(-1000, 400)), [[0, 0.2, 1]])
    with pytest.raises(DataError, match="NaN"):
        transforms.to_unit_range(np.array([[np.nan]], dtype=np.float32), source="f.nii", window=(-1000, 400))
    with pytest.raises(DataError, match=r"f\.h5.*outside \[0, 1\]"):
        transforms.unit_float(np.array([[1.5]]), source="f.h5")


def test_mask_labels():
    np.testing.assert_array_equal(transforms.binarize_mask(np.array([0, 255], np.uint8), source="m"), [0, 1])
    with pytest.raises(DataError, match="m.png: mask has label 7"):
        transforms.binarize_mask(np.array([0, 1, 7], np.uint8), source="m.png")
    with pytest.raises(DataError, match=r"mask has label 3 \(allowed: 0, 1, 2\)"):
        transforms.check_labels(np.array([0, 2, 3]), 3, source="m.png")


def test_resize_real_slice_keeps_labels_and_range(shared_data):
    src = shared_data / "medseg-covid100"
    image = np.asarray(Image.open(src / "tr_im/tr_im_0010.png"), dtype=np.float32) / 255
    mask = np.asarray(Image.open(src / "tr_mask_new/tr_mask_0010.png"))
    img64, m64 = transforms.resize_pair(image, mask, 64)
    assert img64.shape == m64.shape == (64, 64) and img64.dtype == np.float32 and m64.dtype == np.uint8
    assert 0 <= img64.min() and img64.max() <= 1
    assert set(np.unique(m64)) <= {0, 1}
    assert abs(m64.mean() - mask.mean()) < 0.01  # nearest keeps the foreground share
    assert abs(img64.mean() - image.mean()) < 0.01  # area-like downscale keeps the mean intensity
