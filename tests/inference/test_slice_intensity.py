"""16-bit PNG slices: CT numbers + 1024 (how CT is commonly exported to 16-bit PNG) are not divided by 65535
without a word (that made a real chest CT a nearly black image: values 0..0.06 instead of the HU window).
Real data: the lungmask DICOM series (Apache-2.0), exported as HU + 1024 in 16-bit PNGs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from lungseg.data import transforms
from lungseg.errors import DataError
from lungseg.inference import volumes


@pytest.fixture
def png16_ct(tmp_path, lungmask_dicom):
    """The real series as 16-bit PNGs holding CT number + 1024, and the HU slices they came from."""
    hu = volumes.read_scan(lungmask_dicom).slices
    folder = tmp_path / "png16"
    folder.mkdir()
    for i, s in enumerate(hu):
        shifted = np.clip(np.asarray(s, dtype=np.int32) + 1024, 0, 65535).astype(np.uint16)
        Image.fromarray(shifted).save(folder / f"s{i}.png")
    return folder, hu


def test_sixteen_bit_ct_numbers_are_refused_unless_stated(png16_ct):
    folder, _ = png16_ct
    with pytest.raises(DataError) as err:
        volumes.read_scan(folder)
    msg = str(err.value)
    assert msg.startswith(f"{folder}: 16-bit slices whose values") and "--intensity hu+1024" in msg


def test_stated_hu_plus_1024_gives_the_hu_windowed_slices(png16_ct):
    folder, hu = png16_ct
    scan = volumes.read_scan(folder, intensity="hu+1024")
    assert scan.intensity.domain == "hu+1024"
    window = (-1000.0, 400.0)
    got, _ = volumes.to_model_range(scan, {"hu_window": list(window)})
    for g, h in zip(got, hu):
        expected = transforms.hu_window(np.clip(np.asarray(h, dtype=np.float32), -1024, None), window)
        np.testing.assert_allclose(g, expected, atol=1e-6)


def test_a_full_range_16_bit_slice_is_still_divided_by_65535(tmp_path):
    grey = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    Image.fromarray(grey).save(tmp_path / "g.png")
    scan = volumes.read_scan(tmp_path / "g.png", require_spacing=False)
    assert scan.intensity.domain == "uint16"
    got, _ = volumes.to_model_range(scan, {"hu_window": [-1000.0, 400.0]})
    np.testing.assert_allclose(got[0], grey.astype(np.float32) / 65535.0, atol=1e-7)


def test_stated_uint16_is_checked_against_the_values(tmp_path):
    Image.fromarray(np.full((8, 8), 300, np.uint16)).save(tmp_path / "a.png")
    assert volumes.read_scan(tmp_path / "a.png", intensity="uint16", require_spacing=False).intensity.domain == "uint16"
    with pytest.raises(DataError, match="--intensity uint16, but the values span"):
        transforms.check_stated("uint16", -1.0, 10.0, np.array([-1.0, 10.0]), tmp_path / "a.png")


def test_the_cli_offers_every_domain_the_library_can_check():
    out = subprocess.run(
        [sys.executable, "-m", "lungseg", "predict", "--help"], capture_output=True, text=True, encoding="utf-8"
    )
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    assert "--intensity {" + ",".join(transforms.STATABLE) + "}" in text
