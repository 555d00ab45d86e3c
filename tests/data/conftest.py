"""Fixtures of the data tests: small image size (64) so the real sets preprocess in about a second."""

from __future__ import annotations

import contextlib
import locale
from pathlib import Path

import pytest

from lungseg.config import PreprocessConfig

SIZE = 64


@pytest.fixture(scope="session")
def cfg() -> PreprocessConfig:
    return PreprocessConfig(image_size=SIZE)


@pytest.fixture(scope="session")
def params_file(tmp_path_factory) -> Path:
    """A params.yaml for CLI runs (only the preprocess section; the rest are defaults)."""
    path = tmp_path_factory.mktemp("params") / "params.yaml"
    path.write_text(f"preprocess:\n  image_size: {SIZE}\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def processed_medseg(tmp_path_factory, shared_data, cfg) -> Path:
    """The full real MedSeg set, preprocessed once for the session."""
    from lungseg.data.preprocess import preprocess

    out = tmp_path_factory.mktemp("processed") / "medseg"
    preprocess("medseg", shared_data / "medseg-covid100", out, cfg)
    return out


# ------------------------------------------------------------------ real-derived volume builders


def msd_patches(shared_data: Path, start: int, stop: int):
    """Real MSD lung-tumour patches ``[start, stop)`` as (images (n,48,48) in [0,1], labels uint8)."""
    import h5py
    import numpy as np

    with h5py.File(shared_data / "msd-lung-tumour" / "val_patches.h5", "r") as f:
        x = f["images"][start:stop, 0]
        y = f["labels"][start:stop, 0]
    return x.astype(np.float32), y.astype(np.uint8)


def unit_to_hu(x, window=(-1000.0, 400.0)):
    """Inverse of the HU window: a [0,1] image back to HU-like values (for HU-source fixtures)."""
    return x * (window[1] - window[0]) + window[0]


def write_nifti_pair(folder: Path, name: str, image_zyx, mask_zyx, *, spacing=(0.7, 0.8, 2.5), mask_affine=None):
    """Write ``images/<name>.nii.gz`` (float32 HU) and ``masks/<name>.nii.gz`` (uint8) with nibabel.

    Arrays are given as (z, y, x) slices; stored as (x, y, z) with a RAS affine of ``spacing``.
    """
    import nibabel as nib
    import numpy as np

    affine = np.diag([*spacing, 1.0])
    vol = np.transpose(np.asarray(image_zyx, dtype=np.float32), (2, 1, 0))
    mvol = np.transpose(np.asarray(mask_zyx, dtype=np.uint8), (2, 1, 0))
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(vol, affine), folder / "images" / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(mvol, affine if mask_affine is None else mask_affine), folder / "masks" / f"{name}.nii.gz")


@contextlib.contextmanager
def locale_kept():
    """Put the process locale back as it was: SimpleITK's DICOM writer (GDCM) sets it to C when it writes
    a slice position and leaves it so. After that Python's default text encoding is ASCII (when it does not
    run in UTF-8 mode, i.e. without PYTHONUTF8): every later ``read_text()``, ``open()`` or
    ``subprocess.run(text=True)`` without ``encoding=`` fails on non-ASCII text, in whatever test runs next."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def write_dicom_case(case_dir: Path, hu_zyx, mask_zyx, *, spacing_xyz=(0.8, 0.7, 2.5), origin=(-10.0, 5.0, 30.0)):
    """Write a CT DICOM series with RescaleIntercept −1024 and ``mask.nii.gz`` on the same grid.

    SimpleITK's writer takes the HU image and stores ``HU - intercept`` itself (checked in the test).
    """
    import numpy as np
    import SimpleITK as sitk

    series_dir = case_dir / "image"
    series_dir.mkdir(parents=True)
    img = sitk.GetImageFromArray(np.rint(np.asarray(hu_zyx)).astype(np.int16))
    img.SetSpacing(spacing_xyz)
    img.SetOrigin(origin)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125." + str(abs(hash(case_dir.name)) % 10**8)
    with locale_kept():  # the writer sets the process locale to C (see locale_kept)
        for i in range(img.GetDepth()):
            s = img[:, :, i]
            tags = {
                "0008|0060": "CT",
                "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
                "0008|0018": f"{uid}.3.{i}",
                "0020|000d": f"{uid}.1",
                "0020|000e": f"{uid}.2",
                "0020|0013": str(i + 1),
                "0020|0032": "\\".join(str(v) for v in img.TransformIndexToPhysicalPoint((0, 0, i))),
                "0020|0037": "1\\0\\0\\0\\1\\0",
                "0028|1052": "-1024",
                "0028|1053": "1",
                "0028|0030": f"{spacing_xyz[1]}\\{spacing_xyz[0]}",
                "0018|0050": str(spacing_xyz[2]),
            }
            for k, v in tags.items():
                s.SetMetaData(k, v)
            # write in reverse order so the reader must sort by position, not by file name
            writer.SetFileName(str(series_dir / f"{img.GetDepth() - i:03d}.dcm"))
            writer.Execute(s)
    mask = sitk.GetImageFromArray(np.asarray(mask_zyx, dtype=np.uint8))
    mask.CopyInformation(img)
    sitk.WriteImage(mask, str(case_dir / "mask.nii.gz"))


@pytest.fixture(scope="session")
def build():
    """The builders above (tests have no package, so they are handed out as a fixture)."""
    import types

    return types.SimpleNamespace(
        msd_patches=msd_patches, unit_to_hu=unit_to_hu, nifti_pair=write_nifti_pair, dicom_case=write_dicom_case
    )
