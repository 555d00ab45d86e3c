"""Readers of general layouts, for a user's own data.

``pairs``
    ``images/`` and ``masks/`` folders of PNG/JPG/BMP/TIFF matched by file stem; uint8 → /255,
    uint16 → /65535, signed integers and floats outside [0, 1] are HU → ``hu_window``. Masks {0, 1}
    or {0, 255}. Without more, slices carry no patient ids → seeded slice-level split with a warning.
    An optional **split file** ``split.csv`` beside ``images/`` gives the split and/or the patient of
    each image (format: :func:`read_split_file`; ``docs/data.md``).
``nifti``
    ``images/`` and ``masks/`` folders of ``.nii``/``.nii.gz`` volumes matched by name; shape,
    voxel size and affine must agree (else ``DataError`` naming both files). Volumes are put in
    closest-canonical (RAS) orientation with nibabel and cut into axial slices (rows = anterior →
    posterior, columns = right → left, the radiological view). Patient id = volume name, so splits
    are patient-level.
``dicom``
    One folder per case: ``<case>/image/`` holds one DICOM series (pydicom, sorted by position,
    rescale slope/intercept applied → HU), ``<case>/mask.*`` a mask volume SimpleITK reads (NIfTI,
    NRRD, MHA) on the same grid (size, spacing, origin, direction checked). Patient id = case name.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lungseg.data import formats, transforms
from lungseg.data.readers.base import RawDataset, RawSlice, register_reader
from lungseg.data.readers.helpers import match_pairs, natural_key, pair_slices, rel, require_dir, require_same_geometry
from lungseg.errors import DataError

# ----------------------------------------------------------------------------------------- pairs + split file

#: name of the optional split file of the ``pairs`` reader, beside ``images/`` and ``masks/``
SPLIT_FILE = "split.csv"
#: the columns a split file may have (``id`` and at least one of the others)
SPLIT_COLUMNS = ("id", "split", "patient_id")
#: split file value → the reader's split hint (val is always carved from train: ``preprocess.val_fraction``)
SPLIT_VALUES = {"train": "pool", "test": "test"}


@dataclass(frozen=True)
class SplitFile:
    """What a split file says: per image id its split hint (``pool``/``test``) and/or patient id."""

    path: Path
    split: dict[str, str] | None
    """id → ``pool`` (the file's ``train``) or ``test``; None without a ``split`` column."""
    patient: dict[str, str] | None
    """id → patient id; None without a ``patient_id`` column."""


def read_split_file(path: Path, ids: list[str]) -> SplitFile:
    """Read and check the split file ``path`` against the image ids (file stems) of a ``pairs`` folder.

    Format: UTF-8 CSV with a header line; columns ``id`` (an image's file name without suffix) and
    ``split`` (``train`` or ``test``) and/or ``patient_id`` (any non-empty text); one row per image,
    every image listed once. ``val`` is not a value: validation slices are carved from ``train``
    (``preprocess.val_fraction``, by patient when patient ids are given). Every problem is a
    ``DataError`` naming the file and the line."""
    (_, header), rows = _split_file_lines(path)
    _check_split_header(path, header)
    known, seen = set(ids), {}
    split: dict[str, str] | None = {} if "split" in header else None
    patient: dict[str, str] | None = {} if "patient_id" in header else None
    for n, cells in rows:
        row = _split_row(path, n, header, cells, known, seen)
        seen[row["id"]] = n
        if split is not None:
            split[row["id"]] = _split_hint(path, n, row)
        if patient is not None:
            patient[row["id"]] = row["patient_id"]
    _check_every_image_listed(path, ids, seen)
    if split is not None:
        _check_split_values(path, split, patient, seen)
    return SplitFile(path, split, patient)


def _split_file_lines(path: Path) -> tuple[tuple[int, list[str]], list[tuple[int, list[str]]]]:
    """The header line and the rows of the split file, each ``(line number, stripped cells)``, blank
    lines skipped (``DataError`` when it cannot be read or has no line)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            lines = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(path, f"cannot read the split file: {exc}") from exc
    numbered = [(n, [c.strip() for c in cells]) for n, cells in enumerate(lines, 1) if any(c.strip() for c in cells)]
    if not numbered:
        raise DataError(
            path,
            "empty split file: expected a header line 'id,split', 'id,patient_id' or "
            "'id,split,patient_id' and one row per image",
        )
    return numbered[0], numbered[1:]


def _check_split_header(path: Path, header: list[str]) -> None:
    """``DataError`` unless the header names known columns, each once, ``id`` and another."""
    unknown = [c for c in header if c not in SPLIT_COLUMNS]
    if unknown:
        raise DataError(
            path, f"line 1: unknown column(s) {', '.join(map(repr, unknown))} (allowed: {', '.join(SPLIT_COLUMNS)})"
        )
    if len(set(header)) != len(header):
        raise DataError(path, f"line 1: a column is named twice ({','.join(header)})")
    if "id" not in header or len(header) < 2:
        raise DataError(path, f"line 1: the header needs 'id' and 'split' and/or 'patient_id' (got {','.join(header)})")


def _split_row(
    path: Path, n: int, header: list[str], cells: list[str], known: set[str], seen: dict[str, int]
) -> dict[str, str]:
    """Line ``n`` as ``{column: value}``: ``DataError`` when it has another number of fields than the
    header, an empty value, an id that is not an image or one already listed (``seen``: id → line)."""
    if len(cells) != len(header):
        raise DataError(path, f"line {n}: expected {len(header)} fields ({','.join(header)}), got {len(cells)}")
    row = dict(zip(header, cells, strict=True))
    key = row["id"]
    for col, value in row.items():
        if not value:
            raise DataError(path, f"line {n}: empty {col}" + (f" for {key!r}" if key else ""))
    if key not in known:
        raise DataError(
            path, f"line {n}: id {key!r} is not an image in images/ (an id is the image's file name without suffix)"
        )
    if key in seen:
        raise DataError(path, f"line {n}: id {key!r} is listed twice (first on line {seen[key]})")
    return row


def _split_hint(path: Path, n: int, row: dict[str, str]) -> str:
    """The reader's split hint of line ``n``'s ``split`` value (``DataError`` unless train or test)."""
    if row["split"] not in SPLIT_VALUES:
        raise DataError(
            path,
            f"line {n}: split {row['split']!r} for {row['id']!r}: must be train or test "
            "(val is carved from train by preprocess.val_fraction)",
        )
    return SPLIT_VALUES[row["split"]]


def _check_every_image_listed(path: Path, ids: list[str], seen: dict[str, int]) -> None:
    missing = [i for i in ids if i not in seen]
    if missing:
        raise DataError(
            path,
            f"{len(missing)} image(s) have no row, e.g. {', '.join(map(repr, missing[:3]))}: "
            "every image in images/ needs one",
        )


def _check_split_values(
    path: Path, split: dict[str, str], patient: dict[str, str] | None, seen: dict[str, int]
) -> None:
    """``DataError`` unless both train and test have rows and, with patient ids, every patient's
    rows share one split (the first conflicting line, in file order, is named)."""
    for hint, name in (("test", "test"), ("pool", "train")):
        if hint not in split.values():
            raise DataError(path, f"no row has split {name}: a split file needs train and test images")
    if patient is None:
        return
    name = {"pool": "train", "test": "test"}
    first_of: dict[str, str] = {}
    for key in sorted(seen, key=seen.__getitem__):  # in file order
        first = first_of.setdefault(patient[key], key)
        if split[first] != split[key]:
            raise DataError(
                path,
                f"line {seen[key]}: patient {patient[key]!r} is in {name[split[key]]} here "
                f"and in {name[split[first]]} on line {seen[first]}: all slices of a "
                "patient share one split",
            )


@register_reader("pairs", "images/ + masks/ folders of PNG/JPG/TIFF matched by file stem (optional split.csv)")
def read_pairs(input_dir: Path, cfg) -> RawDataset:
    require_dir(input_dir, "input")
    img_dir = require_dir(input_dir / "images", "images")
    mask_dir = require_dir(input_dir / "masks", "masks")
    pairs = match_pairs(img_dir, mask_dir, formats.IMAGE_SUFFIXES)
    split_path = input_dir / SPLIT_FILE
    if not split_path.exists():
        return RawDataset(
            slices=pair_slices(pairs, input_dir, cfg),
            split_protocol="no published split: seeded slice-level train/val/test",
            warnings=["slice-level split: image/mask pairs carry no patient ids (give them in split.csv)"],
        )
    sf = read_split_file(split_path, [key for key, _, _ in pairs])

    def slices():
        for s in pair_slices(pairs, input_dir, cfg):
            s.split = sf.split[s.id] if sf.split is not None else None
            s.patient_id = sf.patient[s.id] if sf.patient is not None else None
            yield s

    level = "patient" if sf.patient is not None else "slice"
    if sf.split is not None:
        protocol = f"{SPLIT_FILE}: test = its test rows; its train rows → seeded {level}-level train/val"
    else:
        protocol = f"{SPLIT_FILE} patient ids: seeded patient-level train/val/test"
    warnings = (
        []
        if sf.patient is not None
        else [
            f"slice-level train/val split: {SPLIT_FILE} gives no patient_id, so slices of one patient can fall in "
            "train and val"
        ]
    )
    return RawDataset(slices=slices(), split_protocol=protocol, warnings=warnings)


# ----------------------------------------------------------------------------------------- NIfTI


def axial_nifti(data: np.ndarray, affine: np.ndarray):
    """Closest-canonical (RAS) volume → iterator of axial slices in radiological view + (row, col) spacing."""
    import nibabel as nib

    img = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
    vol = np.asarray(img.dataobj)
    zooms = img.header.get_zooms()[:3]
    # RAS+: index 0 grows towards the patient's Right, 1 towards Anterior, 2 towards Superior.
    # Radiological view: rows anterior → posterior, columns patient's right → left.
    view = np.flip(np.transpose(vol, (1, 0, 2)), axis=(0, 1))
    return view, (float(zooms[1]), float(zooms[0]))


@register_reader("nifti", "images/ + masks/ folders of NIfTI volumes (geometry checked), axial slices, patient-level")
def read_nifti(input_dir: Path, cfg) -> RawDataset:
    require_dir(input_dir, "input")
    img_dir = require_dir(input_dir / "images", "images")
    mask_dir = require_dir(input_dir / "masks", "masks")
    pairs = match_pairs(img_dir, mask_dir, formats.NIFTI_SUFFIXES)

    def slices():
        for stem, img_path, mask_path in pairs:
            data, affine, zooms = formats.read_nifti(img_path)
            mdata, maffine, mzooms = formats.read_nifti(mask_path)
            require_same_geometry(
                img_path,
                mask_path,
                data.shape,
                mdata.shape,
                [("voxel size", zooms, mzooms, 1e-4, True), ("affine", affine, maffine, 1e-3, False)],
            )
            vol, spacing = axial_nifti(data, affine)
            mvol, _ = axial_nifti(mdata, affine)
            # one intensity rule with lungseg predict (transforms.nifti_domain): a uint8 volume is grey levels
            domain, _ = transforms.nifti_domain(data, *formats.nifti_storage(img_path), img_path)
            for z in range(vol.shape[2]):
                src = f"{rel(img_path, input_dir)}#z={z}"
                image = transforms.to_unit_by_domain(np.ascontiguousarray(vol[:, :, z]), domain, cfg.hu_window)
                mask = transforms.binarize_mask(np.rint(mvol[:, :, z]), source=f"{mask_path}#z={z}")
                yield RawSlice(
                    id=f"{stem}-z{z:04d}", source=src, image=image, mask=mask, patient_id=stem, spacing=spacing
                )

    return RawDataset(
        slices=slices(), split_protocol="no published split: seeded patient-level (volume) train/val/test"
    )


# ----------------------------------------------------------------------------------------- DICOM


@register_reader("dicom", "<case>/image/ DICOM series + <case>/mask.* volume (HU via rescale), patient-level")
def read_dicom(input_dir: Path, cfg) -> RawDataset:
    require_dir(input_dir, "input")
    cases = sorted((p for p in input_dir.iterdir() if p.is_dir()), key=lambda p: natural_key(p.name))
    if not cases:
        raise DataError(input_dir, "no case folders (expected <case>/image/ + <case>/mask.*)")
    plan = []
    for case in cases:
        series = require_dir(case / "image", "DICOM series (image)")
        masks = [p for p in case.iterdir() if p.is_file() and p.name.startswith("mask.")]
        if len(masks) != 1:
            raise DataError(case, f"expected one mask.* file next to image/, found {len(masks)}")
        plan.append((case, series, masks[0]))

    def slices():
        for case, series, mask_path in plan:
            vol, spacing, origin, direction = formats.read_dicom_series(series)
            mvol, mspacing, morigin, mdirection = formats.read_sitk_volume(mask_path)
            require_same_geometry(
                series,
                mask_path,
                vol.shape,
                mvol.shape,
                [
                    ("spacing", spacing, mspacing, 1e-3, True),
                    ("origin", origin, morigin, 1e-2, True),
                    ("direction", direction, mdirection, 1e-4, False),
                ],
            )
            for z in range(vol.shape[0]):
                yield RawSlice(
                    id=f"{case.name}-z{z:04d}",
                    source=f"{rel(series, input_dir)}#z={z}",
                    image=transforms.hu_window(vol[z], cfg.hu_window),
                    mask=transforms.binarize_mask(mvol[z], source=f"{mask_path}#z={z}"),
                    patient_id=case.name,
                    spacing=(spacing[1], spacing[2]),
                )

    return RawDataset(slices=slices(), split_protocol="no published split: seeded patient-level (case) train/val/test")
