"""Low-level readers for the file formats of CT data; every failure is a :class:`DataError`.

Libraries made for the field do the decoding: PIL for PNG/JPG, tifffile for TIFF, nibabel for
NIfTI, pydicom for DICOM series (RescaleSlope/RescaleIntercept applied, so values are HU) and SimpleITK
for mask volumes,
h5py for HDF5. The functions here return raw arrays in the file's own units; normalisation to
[0, 1] lives in :mod:`lungseg.data.transforms`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lungseg.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
NIFTI_SUFFIXES = (".nii.gz", ".nii")


def _one_line(exc: BaseException) -> str:
    """The first line of an exception's message (errors are printed as one line by the CLI)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


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
        raise DataError(path, f"cannot decode image ({type(exc).__name__}: {_one_line(exc)})") from exc
    arr = np.squeeze(arr)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):  # RGB(A) TIFF
        arr = arr[..., :3].mean(axis=-1)
    if arr.ndim != 2:
        raise DataError(path, f"expected a 2-D image, got shape {arr.shape}")
    return arr


def read_slice_image(path: str | Path) -> np.ndarray:
    """A CT slice stored as an image: :func:`read_image_2d`, except that a palette image is read as the
    grey levels its palette shows (not its indices, which are for label maps) and a colour TIFF keeps
    its sample type (luminance rounded to it; float64 means would be read as Hounsfield units)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        try:
            import tifffile

            raw = np.squeeze(np.asarray(tifffile.imread(path)))
        except Exception as exc:  # noqa: BLE001 - tifffile raises many types for corrupt data
            raise DataError(path, f"cannot decode image ({type(exc).__name__}: {_one_line(exc)})") from exc
        if raw.ndim == 3 and raw.shape[-1] in (3, 4) and np.issubdtype(raw.dtype, np.integer):
            grey = raw[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
            return np.round(grey).astype(raw.dtype)
        return read_image_2d(path)
    if suffix in IMAGE_SUFFIXES and path.is_file():
        from PIL import Image

        try:
            with Image.open(path) as im:
                if im.mode == "P":
                    im.load()
                    return np.asarray(im.convert("L"))
        except Exception:  # noqa: BLE001 - read_image_2d names the problem
            pass
    return read_image_2d(path)


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
        raise DataError(path, f"cannot read NIfTI ({type(exc).__name__}: {_one_line(exc)})") from exc
    data = np.squeeze(data) if data.ndim > 3 else data
    if data.ndim != 3:
        raise DataError(path, f"expected a 3-D volume, got shape {data.shape}")
    return data, affine, zooms


def nifti_storage(path: str | Path) -> tuple[np.dtype, bool]:
    """``(stored dtype, scaled)`` of a NIfTI: whether its values go through scl_slope/scl_inter (read
    from the data proxy: nibabel clears the header fields once it has taken them over)."""
    import nibabel as nib

    img = nib.load(str(path))
    slope = getattr(img.dataobj, "slope", 1.0)
    inter = getattr(img.dataobj, "inter", 0.0)
    scaled = not (slope in (None, 1.0) or np.isnan(slope)) or not (inter in (None, 0.0) or np.isnan(inter))
    return np.dtype(img.get_data_dtype()), bool(scaled)


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM series read by :func:`read_dicom_series_files` (slices sorted along the normal)."""

    volume: np.ndarray
    """``(Z, Y, X)`` float32 in HU (each slice's RescaleSlope / RescaleIntercept applied)."""
    spacing: tuple[float, float, float]
    """``(z, y, x)`` in mm: slice step along the normal, PixelSpacing row and column spacing."""
    origin: tuple[float, float, float]
    """ImagePositionPatient of the first slice (LPS, mm)."""
    direction: tuple[float, ...]
    """3×3 row-major, one column per voxel axis (x, y, z), SimpleITK's convention."""
    files: tuple[Path, ...]
    """The slice files in the order of ``volume``."""
    skipped: tuple[Path, ...] = ()
    """Files of the folder left out as not DICOM (``skip_other_files=True`` only)."""


#: suffixes of DICOM files (a file without a suffix may be DICOM too: many archives name them so)
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


def looks_like_dicom(path: Path) -> bool:
    """A DICOM suffix, no suffix at all, or the ``DICM`` magic at byte 128 (Part 10 files)."""
    if path.suffix.lower() in DICOM_SUFFIXES or path.suffix == "":
        return True
    with open(path, "rb") as fh:
        fh.seek(128)
        return fh.read(4) == b"DICM"


def read_dicom_series(folder: str | Path):
    """``(volume (Z, Y, X) float32 in HU, spacing (z, y, x), origin (x, y, z), direction 3×3 flat)``.

    pydicom reads every file of ``folder`` (one series expected); slices are sorted by their
    position along the slice normal (ImagePositionPatient · (row × column cosines)) and converted
    to HU with each slice's own RescaleSlope / RescaleIntercept. The geometry is returned in
    SimpleITK's convention (spacing x, y, z reversed to z, y, x; direction row-major with one column
    per voxel axis) so it can be compared with a mask volume read by SimpleITK. (SimpleITK's GDCM
    reader was not used because it returned stored values without the rescale for series written
    by SimpleITK itself.) :func:`read_dicom_series_files` returns the same plus the sorted files.
    """
    s = read_dicom_series_files(folder)
    return s.volume, s.spacing, s.origin, s.direction


def read_dicom_series_files(folder: str | Path, *, skip_other_files: bool = False) -> DicomSeries:
    """:func:`read_dicom_series` as a :class:`DicomSeries` that also names the slice files in order
    (inference writes a DICOM SEG that references them). ``skip_other_files=True`` leaves out files
    that do not look like DICOM (:func:`looks_like_dicom`: e.g. a README beside the slices) instead
    of failing on them; a file that looks like DICOM and cannot be read is still an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "DICOM series folder not found")
    import pydicom

    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    skipped = [p for p in files if not looks_like_dicom(p)] if skip_other_files else []
    files = [p for p in files if p not in skipped]
    if not files:
        raise DataError(folder, "no DICOM files")
    slices = []
    for path in files:
        try:
            ds = pydicom.dcmread(path)
            pixels = ds.pixel_array.astype(np.float32)
            slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
            intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
            iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
            ipp = np.asarray([float(v) for v in ds.ImagePositionPatient])
            pix = [float(v) for v in ds.PixelSpacing]  # (row spacing, column spacing)
            series = str(ds.SeriesInstanceUID)
        except Exception as exc:  # pydicom raises many types for non-DICOM / incomplete files
            raise DataError(path, f"cannot read DICOM slice ({type(exc).__name__}: {_one_line(exc)})") from exc
        slices.append((path, series, pixels * slope + intercept, iop, ipp, pix))
    uids = sorted({s[1] for s in slices})
    if len(uids) > 1:
        raise DataError(folder, f"{len(uids)} DICOM series in one folder (expected one per folder)")
    row_cos, col_cos = slices[0][3][:3], slices[0][3][3:]
    normal = np.cross(row_cos, col_cos)
    slices.sort(key=lambda s: float(np.dot(s[4], normal)))
    shapes = {s[2].shape for s in slices}
    if len(shapes) > 1:
        raise DataError(folder, f"slices of different sizes {sorted(shapes)}")
    positions = np.asarray([np.dot(s[4], normal) for s in slices])
    dz = float(np.median(np.diff(positions))) if len(slices) > 1 else 1.0
    if len(slices) > 1 and not np.allclose(np.diff(positions), dz, atol=1e-2 * max(abs(dz), 1e-6)):
        raise DataError(folder, "slices are not evenly spaced (missing slice?)")
    vol = np.stack([s[2] for s in slices]).astype(np.float32)
    row_sp, col_sp = slices[0][5]
    direction = np.stack([row_cos, col_cos, normal], axis=1).reshape(-1)
    return DicomSeries(
        vol, (dz, row_sp, col_sp), tuple(slices[0][4]), tuple(direction), tuple(s[0] for s in slices), tuple(skipped)
    )


def read_sitk_volume(path: str | Path):
    """A mask/image volume file SimpleITK can read (NRRD, MHA, NIfTI, DICOM file...): ``(Z,Y,X)`` + geometry."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file not found")
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise DataError(path, f"cannot read volume: {_one_line(exc)}") from exc
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
