"""Low-level readers for the file formats of CT data; every failure is a :class:`DataError`.

Libraries made for the field do the decoding: PIL for PNG/JPG, tifffile for TIFF, nibabel for
NIfTI, SimpleITK for DICOM series (it applies RescaleSlope/RescaleIntercept, so values are HU),
h5py for HDF5. The functions here return raw arrays in the file's own units; normalisation to
[0, 1] lives in :mod:`lungseg.data.transforms`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lungseg.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
NIFTI_SUFFIXES = (".nii.gz", ".nii")


def read_image_2d(path: str | Path) -> np.ndarray:
    """A 2-D array from a PNG/JPG/BMP (PIL) or TIFF (tifffile) file, in its stored dtype.

    Colour images are converted to luminance; palette PNGs keep their indices (label maps).
    A missing, truncated or undecodable file raises ``DataError(path, ...)``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            arr = np.asarray(tifffile.imread(path))
        else:
            from PIL import Image

            with Image.open(path) as im:
                im.load()  # decode now: a truncated file fails here, not later
                if im.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LA"):
                    im = im.convert("L")
                arr = np.asarray(im)
    except DataError:
        raise
    except Exception as exc:  # PIL/tifffile raise many types for corrupt data
        raise DataError(path, f"cannot decode image ({type(exc).__name__}: {exc})") from exc
    arr = np.squeeze(arr)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):  # RGB(A) TIFF
        arr = arr[..., :3].mean(axis=-1)
    if arr.ndim != 2:
        raise DataError(path, f"expected a 2-D image, got shape {arr.shape}")
    return arr


def read_nifti(path: str | Path):
    """``(data (X, Y, Z) float32, affine 4×4, zooms (3,))`` of a NIfTI volume via nibabel."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        import nibabel as nib

        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)  # applies scl_slope/scl_inter
        affine = np.asarray(img.affine, dtype=np.float64)
        zooms = np.asarray(img.header.get_zooms()[:3], dtype=np.float64)
    except Exception as exc:
        raise DataError(path, f"cannot read NIfTI ({type(exc).__name__}: {exc})") from exc
    data = np.squeeze(data) if data.ndim > 3 else data
    if data.ndim != 3:
        raise DataError(path, f"expected a 3-D volume, got shape {data.shape}")
    return data, affine, zooms


def read_dicom_series(folder: str | Path):
    """``(volume (Z, Y, X) float32 in HU, spacing (z, y, x), origin, direction)`` of one DICOM series.

    SimpleITK's ``ImageSeriesReader`` sorts the slices by position and applies the rescale
    slope/intercept, so the values are Hounsfield units.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "DICOM series folder not found")
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    try:
        ids = reader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError as exc:
        raise DataError(folder, f"cannot scan for DICOM series: {exc}") from exc
    if not ids:
        raise DataError(folder, "no DICOM series found")
    if len(ids) > 1:
        raise DataError(folder, f"{len(ids)} DICOM series in one folder (expected one per folder)")
    files = reader.GetGDCMSeriesFileNames(str(folder), ids[0])
    reader.SetFileNames(files)
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        raise DataError(folder, f"cannot read DICOM series: {exc}") from exc
    vol = sitk.GetArrayFromImage(img).astype(np.float32)
    spacing = tuple(float(s) for s in img.GetSpacing())[::-1]
    return vol, spacing, tuple(img.GetOrigin()), tuple(img.GetDirection())


def read_sitk_volume(path: str | Path):
    """A mask/image volume file SimpleITK can read (NRRD, MHA, NIfTI, DICOM file...): ``(Z,Y,X)`` + geometry."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file not found")
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise DataError(path, f"cannot read volume: {exc}") from exc
    vol = sitk.GetArrayFromImage(img)
    spacing = tuple(float(s) for s in img.GetSpacing())[::-1]
    return vol, spacing, tuple(img.GetOrigin()), tuple(img.GetDirection())


def strip_suffix(path: Path) -> str:
    """File name without its image/NIfTI suffix (``a.nii.gz`` → ``a``, ``b.png`` → ``b``)."""
    name = path.name
    for suffix in NIFTI_SUFFIXES + IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem
