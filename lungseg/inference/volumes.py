"""Read a scan with its geometry, bring it to the model's intensity range, write masks back in place.

Inputs (:func:`read_scan`)
    * a NIfTI volume (``.nii``/``.nii.gz``, nibabel). Slices are cut exactly as the training reader
      ``nifti`` cuts them (closest-canonical RAS, axial, radiological view: rows anterior →
      posterior, columns patient's right → left), so the model sees what it saw in training. The
      file must record a real-world geometry (qform or sform code > 0, positive voxel sizes); a file
      without one (ANALYZE-style, pixdim meaningless) is an error unless ``spacing`` is given.
    * a DICOM series folder (pydicom, :func:`lungseg.data.formats.read_dicom_series_files`: one
      series, slices sorted along the normal, HU via RescaleSlope/Intercept), slices in their stored
      row/column order as the training reader ``dicom`` uses them.
    * a folder of PNG/JPG/TIFF slices (or one such file), natural-sorted by name, each at its own
      size. These files record no spacing: volumes in mL need ``spacing``; without it the report
      gives pixel counts and percentages only.

Intensity: first the input's *domain* is decided (:class:`Intensity`, recorded in the report), then
it is brought to [0, 1] by the rule of the data the model was trained on (:func:`to_model_range`,
recorded in its ``preprocess``: ``dataset``, ``hu_window``), with the functions of
:mod:`lungseg.data.transforms` the training readers use:

* the domain — ``hu`` (Hounsfield units), ``uint8`` (8-bit grey levels, already windowed), ``uint16``,
  ``unit`` (already in [0, 1]) — comes from the data: a DICOM series is HU (RescaleSlope/Intercept);
  a NIfTI stored as uint8 without scaling is ``uint8``, floats within [0, 1] are ``unit``, data with
  negative values is ``hu``; anything else (non-negative values above 1 in another type: 8-bit grey
  levels stored as int16 or float, or CT numbers shifted by +1024) cannot be told apart and is refused
  with a one-line error asking for ``--intensity hu|unit|uint8``. PNG/TIFF slices: by dtype (uint8,
  uint16 using more than 12 bits — one whose values all fit in 12 bits is refused unstated, as CT
  numbers shifted by +1024 look the same —, signed → ``hu``, float within [0, 1] → ``unit``, other
  float → ``hu``). ``--intensity`` states
  the domain instead; values that contradict it (a ``uint8`` claim with values outside 0..255, ``unit``
  outside [0, 1]) are refused.
* the conversion: ``hu`` → HU window (``hu_window``); ``uint8`` → / 255; ``uint16`` → / 65535;
  ``unit`` → as is. Models trained on ``kaggle-64`` (whose images the source min-max scaled per image)
  get every slice min-max scaled instead, whatever the input (a linear window before a min-max changes
  nothing, so HU and 8-bit inputs agree).

Where input and training data differ in kind (a model trained on 8-bit windowed PNGs — MedSeg,
COVID-SemiSeg, window not published — given HU input, or the reverse) the scan carries a warning:
the result is a domain shift, not an error.

Orientation: a NIfTI with a real-world geometry (qform or sform code > 0) is cut in the radiological
view from its affine. A NIfTI without one has no orientation: its voxels are read in stored order, as
if the affine were ``diag(spacing)`` (RAS: first axis towards the patient's right, second anterior),
never through nibabel's ANALYZE fallback affine, which negates the first axis and so mirrored the
slices; the report's left/right then rests on that assumption, and the scan carries a warning
saying so.

Outputs (:func:`write_masks`): NIfTI input → ``<name>.nii.gz`` with the source affine and header
(labels uint8, same voxel grid and orientation as the input); DICOM input → ``<name>.nii.gz`` in the
series' geometry (SimpleITK: spacing, origin, direction of the series; the training reader ``dicom``
accepts it as that series' mask) and, on request, a DICOM SEG (highdicom) that references the source
slices; PNG/TIFF input → ``<name>/<stem>.png`` per slice at the slice's size (uint8 labels 0..K-1,
like MedSeg's masks).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lungseg.data import formats, transforms
from lungseg.errors import DataError

#: datasets whose images the source min-max scaled per image (see ``lungseg.data.readers``)
PER_IMAGE_MINMAX = frozenset({"kaggle-64"})
#: datasets whose images are 8-bit, windowed by the dataset's authors (the window is not published)
EIGHT_BIT_WINDOWED = frozenset({"medseg", "covid-semiseg"})
#: datasets read from Hounsfield units through ``hu_window``
HU_DATASETS = frozenset({"kaggle-tiff", "nifti", "dicom"})
#: what ``--intensity`` may state about an input
INTENSITY_CHOICES = transforms.STATABLE


@dataclass(frozen=True)
class Intensity:
    """The domain of an input's values and how it was decided (module docstring)."""

    domain: str
    """``"hu"``, ``"uint8"``, ``"uint16"`` or ``"unit"``."""
    decided_by: str

    def to_dict(self) -> dict[str, str]:
        return {"domain": self.domain, "decided_by": self.decided_by}


#: type-1 attributes of the source images that a DICOM SEG copies or references
SEG_SOURCE_REQUIRED = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "Modality",
)
#: type-2 (required, may be empty) attributes a DICOM SEG copies from its source images
TYPE2_PATIENT_STUDY = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
)


@dataclass
class Scan:
    """One input scan: its slices in the model's view (file units) and what writing back needs."""

    path: Path
    kind: str
    """``"nifti"``, ``"dicom"`` or ``"slices"`` (PNG/JPG/TIFF files)."""
    slices: list[np.ndarray]
    """2-D arrays ``(rows, cols)`` in the file's units (HU for NIfTI/DICOM), in the training view."""
    names: list[str]
    """One per slice: the file stem (slices) or ``z0000``… (volumes)."""
    spacing: tuple[float, float, float] | None
    """``(slice, row, col)`` in mm in the training view, None when unknown."""
    spacing_source: str
    columns_towards_left: bool | None
    """Whether the column index grows towards the patient's left (radiological view); None: unknown."""
    geometry: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    intensity: Intensity | None = None
    """The input's intensity domain (one for the scan; PNG/TIFF slices: that of their dtype)."""

    @property
    def stem(self) -> str:
        return formats.strip_suffix(self.path) if self.kind != "dicom" else self.path.name

    @property
    def voxel_ml(self) -> float | None:
        return None if self.spacing is None else float(np.prod(self.spacing)) / 1000.0


def _natural_key(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _check_spacing(values, path: Path, what: str) -> tuple[float, ...]:
    vals = tuple(float(v) for v in values)
    if not all(np.isfinite(v) and v > 0 for v in vals):
        raise DataError(path, f"{what} {vals} is not a positive voxel size in mm")
    return vals


def read_scan(
    path: str | Path,
    *,
    spacing: tuple[float, float, float] | None = None,
    require_spacing: bool = True,
    intensity: str | None = None,
) -> Scan:
    """The scan at ``path`` (see the module docstring). ``spacing`` = ``(row, col, slice)`` mm for inputs
    that record none (PNG/TIFF slices, a NIfTI without geometry); an input that records its own
    spacing refuses it (``DataError``) rather than silently choosing one of the two.
    ``require_spacing=False`` reads a NIfTI without geometry anyway (spacing None: pixels only,
    e.g. for the export's parity check). ``intensity`` (``hu``, ``unit``, ``uint8``) states the input's
    intensity domain where the data cannot tell it (module docstring)."""
    path = Path(path)
    given = None if spacing is None else _check_spacing(spacing, path, "--spacing")
    if intensity is not None and intensity not in INTENSITY_CHOICES:
        raise DataError(path, f"--intensity {intensity!r}: allowed {', '.join(INTENSITY_CHOICES)}")
    if not path.exists():
        raise DataError(path, "input not found (expected a NIfTI file, a DICOM series folder or PNG/TIFF slices)")
    if path.is_file():
        name = path.name.lower()
        if name.endswith(formats.NIFTI_SUFFIXES):
            return _read_nifti(path, given, require_spacing, intensity)
        if name.endswith(formats.IMAGE_SUFFIXES):
            return _read_slices(path, [path], given, intensity)
        if name.endswith(formats.DICOM_SUFFIXES):
            raise DataError(path, "a single DICOM file: give the folder of the series")
        raise DataError(path, "unknown input type (expected .nii/.nii.gz, a DICOM series folder or PNG/TIFF slices)")
    files = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
    images = sorted(
        (p for p in files if p.name.lower().endswith(formats.IMAGE_SUFFIXES)), key=lambda p: _natural_key(p.name)
    )
    if images:
        others = sorted(p.name for p in files if p not in images)
        return _read_slices(path, images, given, intensity, skipped=others)
    if not files:
        raise DataError(path, "empty folder (expected a DICOM series or PNG/TIFF slices)")
    if intensity not in (None, "hu"):
        raise DataError(path, f"--intensity {intensity}: a DICOM series is read in HU (RescaleSlope/Intercept)")
    return _read_dicom(path, given)


def _stated_intensity(values: np.ndarray, stated: str, path: Path) -> Intensity:
    """``--intensity`` checked against the values it describes (:func:`lungseg.data.transforms.check_stated`)."""
    lo, hi = float(np.min(values)), float(np.max(values))
    transforms.check_stated(stated, lo, hi, np.asarray(values), path)
    return Intensity(stated, f"--intensity {stated} (values {lo:g}..{hi:g})")


def _nifti_intensity(data: np.ndarray, path: Path, stated: str | None) -> Intensity:
    """The intensity domain of a NIfTI's (scaled) values: the rule the training reader ``nifti`` uses
    (:func:`lungseg.data.transforms.nifti_domain`)."""
    return Intensity(*transforms.nifti_domain(data, *formats.nifti_storage(path), path, stated))


# ------------------------------------------------------------------------------------------ NIfTI
def _ras_ornt(affine: np.ndarray):
    from nibabel import orientations as ori

    return ori.ornt_transform(ori.io_orientation(affine), ori.axcodes2ornt("RAS"))


def _read_nifti(path: Path, given, require_spacing: bool = True, intensity: str | None = None) -> Scan:
    import nibabel as nib
    from nibabel import orientations as ori

    data, affine, zooms = formats.read_nifti(path)  # 3-D check, one-line errors for corrupt files
    header = nib.load(str(path)).header
    has_geometry = int(header["qform_code"]) > 0 or int(header["sform_code"]) > 0
    if has_geometry:
        _check_spacing(zooms, path, "voxel size (pixdim)")
        if given is not None:
            raise DataError(
                path,
                f"the file records its voxel size {tuple(float(z) for z in zooms)} mm; "
                "--spacing is only for inputs without one",
            )
    elif given is None and require_spacing:
        raise DataError(
            path,
            "no voxel spacing: qform_code and sform_code are 0 (no real-world geometry, pixdim "
            "is not a size in mm); pass --spacing ROW COL SLICE in mm to state it",
        )
    warnings = []
    if has_geometry:
        from_affine = np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(axis=0))
        if not np.allclose(from_affine, zooms, rtol=1e-3, atol=1e-4):
            warnings.append(
                f"pixdim says voxels of {tuple(round(float(z), 4) for z in zooms)} mm but the affine "
                f"{tuple(round(float(z), 4) for z in from_affine)} mm: the affine's are used"
            )
            zooms = from_affine
    read_affine = affine
    if not has_geometry:
        # no orientation recorded: the stored voxel order, read as RAS (never nibabel's ANALYZE
        # fallback affine, whose negated first axis mirrored the slices)
        read_affine = np.eye(4)
        warnings.append(
            "the NIfTI records no orientation (qform_code and sform_code are 0): its voxels are read in "
            "stored order as RAS (first axis towards the patient's right); left/right rests on that assumption"
        )
    to_ras = _ras_ornt(read_affine)
    ras = ori.apply_orientation(data, to_ras)
    ras_zooms = np.asarray(zooms, float)[to_ras[:, 0].astype(int).argsort()] if has_geometry else None
    # RAS+ → radiological view, as lungseg.data.readers.axial_nifti: rows A→P, columns R→L
    view = np.flip(np.transpose(ras, (1, 0, 2)), axis=(0, 1))
    vol = np.moveaxis(view, 2, 0)  # (Z, rows, cols)
    if has_geometry:
        sp = (float(ras_zooms[2]), float(ras_zooms[1]), float(ras_zooms[0]))
        source = "NIfTI header (voxel size)"
    elif given is None:
        sp, source = None, "unknown (the file has no geometry)"
    else:
        sp = (given[2], given[0], given[1])
        source = "--spacing (the file has no geometry)"
    return Scan(
        path=path,
        kind="nifti",
        slices=list(vol),
        names=[f"z{z:04d}" for z in range(vol.shape[0])],
        spacing=sp,
        spacing_source=source,
        columns_towards_left=True,
        geometry={
            "affine": affine,
            "read_affine": read_affine,
            "header": header,
            "shape": data.shape,
            "to_ras": to_ras,
        },
        warnings=warnings,
        intensity=_nifti_intensity(data, path, intensity),
    )


def _nifti_mask(scan: Scan, labels: np.ndarray, dtype=np.uint8) -> np.ndarray:
    """``(Z, rows, cols)`` labels (or probabilities) in the training view → the source file's voxel layout."""
    from nibabel import orientations as ori

    view = np.moveaxis(labels, 0, 2)
    ras = np.transpose(np.flip(view, axis=(0, 1)), (1, 0, 2))
    back = ori.apply_orientation(
        ras, ori.ornt_transform(ori.axcodes2ornt("RAS"), ori.io_orientation(scan.geometry["read_affine"]))
    )
    return np.ascontiguousarray(back.reshape(scan.geometry["shape"]), dtype=dtype)


# ------------------------------------------------------------------------------------------ DICOM
def _read_dicom(path: Path, given) -> Scan:
    if given is not None:
        raise DataError(path, "a DICOM series records its spacing; --spacing is only for inputs without one")
    series = formats.read_dicom_series_files(path, skip_other_files=True)
    sp = _check_spacing(series.spacing, path, "spacing (slice step, PixelSpacing)")
    if len(series.files) == 1:
        sp = (_slice_thickness(series.files[0]), sp[1], sp[2])
    direction = np.asarray(series.direction, float).reshape(3, 3)
    col_axis = direction[:, 0]  # the direction in which the column index grows (LPS)
    towards_left = bool(col_axis[0] > 0) if abs(col_axis[0]) >= max(abs(col_axis[1]), abs(col_axis[2])) else None
    warnings = [] if towards_left is not None else ["the series is not axial: the left/right split is not computed"]
    if series.skipped:
        warnings.append(f"not DICOM, left out: {', '.join(p.name for p in series.skipped)}")
    return Scan(
        path=path,
        kind="dicom",
        slices=list(series.volume),
        names=[f"z{z:04d}" for z in range(len(series.files))],
        spacing=sp,
        spacing_source="DICOM (PixelSpacing, slice positions)"
        if len(series.files) > 1
        else "DICOM (PixelSpacing, SliceThickness of the single slice)",
        columns_towards_left=towards_left,
        warnings=warnings,
        geometry={"series": series},
        intensity=Intensity("hu", "DICOM series: RescaleSlope/RescaleIntercept give Hounsfield units"),
    )


def _slice_thickness(file: Path) -> float:
    import pydicom

    ds = pydicom.dcmread(file, stop_before_pixels=True)
    value = getattr(ds, "SliceThickness", None)
    if value in (None, ""):
        raise DataError(file, "a single slice without SliceThickness: its volume in mL is unknown")
    return _check_spacing([value], file, "SliceThickness")[0]


# ------------------------------------------------------------------------------------------ slices
def _slices_intensity(arrays: list[np.ndarray], files: list[Path], stated: str | None) -> Intensity:
    """One domain for all slices: by dtype (module docstring), or ``--intensity`` checked per file."""
    if stated is not None:
        for f, a in zip(files, arrays):
            _stated_intensity(a, stated, f)
        return Intensity(stated, f"--intensity {stated}")
    domains = set()
    for a in arrays:
        if a.dtype == np.uint8:
            domains.add("uint8")
        elif a.dtype == np.uint16:
            domains.add("uint16")
        elif np.issubdtype(a.dtype, np.floating) and a.size and a.min() >= 0.0 and a.max() <= 1.0:
            domains.add("unit")
        else:
            domains.add("hu")
    if len(domains) > 1:
        raise DataError(files[0].parent, f"the slices mix intensity domains {sorted(domains)}: give one kind of file")
    if domains == {"uint16"}:
        _check_full_range_16_bit(arrays, files)
    dtypes = ", ".join(sorted({str(a.dtype) for a in arrays}))
    return Intensity(domains.pop(), f"PNG/TIFF pixel type {dtypes}")


def _check_full_range_16_bit(arrays: list[np.ndarray], files: list[Path]) -> None:
    """16-bit slices are divided by 65535 only when their values use more than 12 bits: CT exported as
    16-bit PNG usually holds CT numbers + 1024 (0..~4095, air near 0), which / 65535 would turn into a
    nearly black image and an empty mask without a word."""
    top = max(int(a.max()) for a in arrays if a.size)
    if top <= transforms.TWELVE_BITS:
        where = files[0] if len(files) == 1 else files[0].parent
        raise DataError(
            where,
            f"16-bit slices whose values ({top} at most) fit in 12 bits: CT numbers shifted by +1024 and "
            "full-range 16-bit grey levels look alike; pass --intensity hu+1024 (or uint16 to divide by 65535)",
        )


def _read_slices(path: Path, files: list[Path], given, intensity: str | None = None, skipped=()) -> Scan:
    arrays = [formats.read_slice_image(f) for f in files]
    sp = None if given is None else (given[2], given[0], given[1])
    warnings = [
        "PNG/TIFF slices carry no orientation: left/right assumes the radiological view "
        "(the patient's left on the image's right)"
    ]
    if given is None:
        warnings.append("PNG/TIFF slices record no spacing: volumes are not computed (pass --spacing ROW COL SLICE)")
    if skipped:
        warnings.append(f"not a PNG/JPG/TIFF slice, left out: {', '.join(skipped)}")
    return Scan(
        path=path,
        kind="slices",
        slices=arrays,
        names=[formats.strip_suffix(f) for f in files],
        spacing=sp,
        spacing_source="--spacing" if given is not None else "unknown",
        columns_towards_left=True,
        warnings=warnings,
        geometry={"files": files},
        intensity=_slices_intensity(arrays, files, intensity),
    )


# ------------------------------------------------------------------------------------------ intensity
def intensity_rule(preprocess: dict[str, Any]) -> str:
    """``"minmax"`` (per-image min-max, ``kaggle-64``) or ``"window"`` (the readers' rules + ``hu_window``)."""
    return "minmax" if preprocess.get("dataset") in PER_IMAGE_MINMAX else "window"


def trained_on(preprocess: dict[str, Any]) -> str:
    """What the model's training images were, in words (recorded with the model as ``preprocess``)."""
    dataset = preprocess.get("dataset")
    window = list(_window(preprocess))
    if dataset in PER_IMAGE_MINMAX:
        return f"{dataset}: images min-max scaled per image by the source"
    if dataset in EIGHT_BIT_WINDOWED:
        return f"{dataset}: 8-bit slices windowed by the dataset's authors (window not published)"
    if dataset in HU_DATASETS:
        return f"{dataset}: Hounsfield units through hu_window {window}"
    return f"{dataset}: by the readers' rules with hu_window {window}"


def conversion(scan: Scan, preprocess: dict[str, Any]) -> str:
    """How :func:`to_model_range` brings this scan to [0, 1] for a model (said in the report)."""
    if intensity_rule(preprocess) == "minmax":
        return "min-max per slice (the model's training rule)"
    domain = scan.intensity.domain if scan.intensity else "hu"
    return {
        "hu": f"HU window {list(_window(preprocess))} → [0, 1]",
        "hu+1024": f"value − 1024, then HU window {list(_window(preprocess))} → [0, 1]",
        "uint8": "grey level / 255",
        "uint16": "value / 65535",
        "unit": "as is (already in [0, 1])",
    }[domain]


def _window(preprocess: dict[str, Any]) -> tuple[float, float]:
    return tuple(float(v) for v in preprocess.get("hu_window") or (-1000.0, 400.0))


def to_model_range(scan: Scan, preprocess: dict[str, Any]) -> tuple[list[np.ndarray], list[str]]:
    """Slices as float32 in [0, 1] from the scan's intensity domain by the training rule of
    ``preprocess`` (module docstring), plus the warnings about a difference between the input's
    domain and the training data's."""
    window = _window(preprocess)
    dataset = preprocess.get("dataset")
    domain = scan.intensity.domain if scan.intensity else "hu"
    warnings = []
    if dataset in EIGHT_BIT_WINDOWED and domain in ("hu", "hu+1024"):
        warnings.append(
            f"the model was trained on {dataset}: 8-bit slices windowed by the dataset's authors (window "
            f"not published); this HU input is windowed with the recorded hu_window {list(window)}"
        )
    if dataset in HU_DATASETS and domain not in ("hu", "hu+1024"):
        warnings.append(
            f"the model was trained on {dataset} (HU through hu_window {list(window)}); this input is "
            f"{domain} data, already windowed by whoever exported it"
        )
    if intensity_rule(preprocess) == "minmax":
        return [_minmax(s) for s in scan.slices], warnings
    return [transforms.to_unit_by_domain(s, domain, window) for s in scan.slices], warnings


def _minmax(s: np.ndarray) -> np.ndarray:
    s = np.asarray(s, dtype=np.float32)
    lo, hi = float(s.min()), float(s.max())
    return np.zeros_like(s) if hi <= lo else (s - lo) / (hi - lo)


# ------------------------------------------------------------------------------------------ writing
def write_masks(scan: Scan, labels: list[np.ndarray], out_dir: Path, name: str, *, dtype=np.uint8) -> list[Path]:
    """Write one model's labels (one 2-D uint8 array per slice, at the slice's size) in the input's
    geometry into ``out_dir`` under ``name`` (see the module docstring); the written paths.
    ``dtype=np.float32`` writes probabilities the same way (PNG/TIFF input: one float32 TIFF per slice)."""
    dtype = np.dtype(dtype)
    out_dir.mkdir(parents=True, exist_ok=True)
    if scan.kind == "slices":
        folder = out_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for stem, lab in zip(scan.names, labels):
            if dtype == np.uint8:
                from PIL import Image

                target = folder / f"{stem}.png"
                Image.fromarray(np.ascontiguousarray(lab, dtype=np.uint8)).save(target)
            else:
                import tifffile

                target = folder / f"{stem}.tiff"
                tifffile.imwrite(target, np.ascontiguousarray(lab, dtype=dtype))
            written.append(target)
        return written
    vol = np.stack(labels).astype(dtype)  # (Z, rows, cols)
    target = out_dir / f"{name}.nii.gz"
    if scan.kind == "nifti":
        import nibabel as nib

        header = scan.geometry["header"].copy()
        header.set_data_dtype(dtype)
        img = nib.Nifti1Image(_nifti_mask(scan, vol, dtype), scan.geometry["affine"], header=header)
        img.header.set_slope_inter(1.0, 0.0)
        nib.save(img, str(target))
        return [target]
    import SimpleITK as sitk

    series = scan.geometry["series"]
    img = sitk.GetImageFromArray(vol)
    img.SetSpacing(tuple(float(v) for v in series.spacing[::-1]))
    img.SetOrigin(tuple(float(v) for v in series.origin))
    img.SetDirection(tuple(float(v) for v in series.direction))
    sitk.WriteImage(img, str(target))
    return [target]


def check_dicom_seg_source(scan: Scan) -> None:
    """``DataError`` naming what is missing when a DICOM SEG cannot reference this series (checked
    before inference: a SEG copies these type-1 attributes from its source images)."""
    if scan.kind != "dicom":
        raise DataError(scan.path, "--dicom-seg needs a DICOM series as input")
    import pydicom

    ds = pydicom.dcmread(scan.geometry["series"].files[0], stop_before_pixels=True)
    missing = [k for k in SEG_SOURCE_REQUIRED if not getattr(ds, k, None)]
    if missing:
        raise DataError(
            scan.path,
            f"cannot write a DICOM SEG: the series lacks {', '.join(missing)} (a SEG must "
            "copy them from its source images); run without --dicom-seg",
        )


def write_dicom_seg(
    scan: Scan, labels: list[np.ndarray], target: Path, *, label_names: list[str], model_name: str, version: str
) -> Path:
    """A DICOM SEG (highdicom, BINARY, one segment per foreground label) referencing the source series."""
    check_dicom_seg_source(scan)
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    sources = [pydicom.dcmread(f) for f in scan.geometry["series"].files]
    for ds in sources:  # type-2 patient/study attributes (may be empty) that anonymised series often drop
        for keyword in TYPE2_PATIENT_STUDY:
            if keyword not in ds:
                setattr(ds, keyword, "")
    segments = []
    for number, label in enumerate(label_names[1:], start=1):
        is_lung = label.lower() in ("lung", "lungs", "lung field")
        segments.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=label,
                segmented_property_category=codes.SCT.Organ if is_lung else codes.SCT.MorphologicallyAbnormalStructure,
                segmented_property_type=codes.SCT.Lung if is_lung else codes.SCT.Lesion,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=hd.AlgorithmIdentificationSequence(
                    name=f"lungseg {model_name}", version=version, family=codes.DCM.ArtificialIntelligence
                ),
            )
        )
    try:
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=np.stack(labels).astype(np.uint8),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=segments,
            series_instance_uid=hd.UID(),
            series_number=900,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="lungseg",
            manufacturer_model_name=model_name,
            software_versions=version,
            device_serial_number="none",
            omit_empty_frames=False,
        )
    except (AttributeError, ValueError, TypeError) as exc:  # the source series lacks what a SEG must copy
        raise DataError(
            scan.path,
            f"cannot write a DICOM SEG for this series ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})",
        ) from exc
    seg.save_as(target)
    return target


__all__ = [
    "INTENSITY_CHOICES",
    "Intensity",
    "Scan",
    "check_dicom_seg_source",
    "conversion",
    "intensity_rule",
    "read_scan",
    "to_model_range",
    "trained_on",
    "write_dicom_seg",
    "write_masks",
]
