"""Readers: one per published dataset or general file layout, all producing the same slices.

A reader is a function ``reader(input_dir: Path, cfg: PreprocessConfig) -> RawDataset``. The
returned :class:`RawDataset` carries the dataset-level facts (labels, split protocol, warnings)
and a *lazy* iterator of :class:`RawSlice` (2-D image float32 in [0, 1] at its original size,
2-D uint8 label mask, ids, and the published split when there is one), so a large NIfTI set is
never held at full resolution in memory. Resizing, splitting and validation happen in
:mod:`lungseg.data.preprocess`, identically for every reader.

Layout problems are found before the first slice is yielded (missing folder, an image without
a mask, a list naming a missing file), so they fail fast; every problem is a ``DataError``
naming the file.

Published datasets (see ``/work/shared/data/README.md``):

``medseg``
    MedSeg/SIRM COVID-19 CT, 100 PNG slices with the JCS lists ``train.txt`` / ``test.txt``.
    Verified on the files: ``train.txt`` has 79 lines and contains **all 20** lines of
    ``test.txt``; both use CRLF line endings; 21 slices are in neither list. Training on the JCS
    ``train.txt`` would therefore train on the test set. Here: test = the 20 of ``test.txt``;
    train pool = every other slice (``train.txt`` minus test, plus the ones in neither), split
    into train/val by a seeded *slice-level* split (the source has no patient ids, so adjacent
    slices of one patient can sit on both sides). Both facts are recorded in ``meta.json``
    warnings; manifest column ``jcs_list`` says where each slice was listed
    (``train``/``test``/``both``/``neither``).
``covid-semiseg``
    Inf-Net's COVID-SemiSeg: train on the 50 ``TrainingSet`` slices (val carved from them),
    report on the 48 ``TestingSet`` slices. Binary infection by default; with
    ``PreprocessConfig.multiclass`` the ``MultiClassInfection-*`` label maps
    {0 background, 1 ground-glass, 2 consolidation}.
``kaggle-64``
    Kaggle "Finding and Measuring Lungs in CT Data" at 64 px (npy): ``x_train``→train pool,
    ``x_test``→test (the source repository's split). Masks were bilinearly resized by the source,
    leaving {0, .25, .5, .75, 1}: thresholded at 0.5 (``>= 0.5`` is lung, i.e. pixels at least
    half covered). Images are already min-max scaled to [0, 1] per image.
``kaggle-tiff``
    The full-resolution Kaggle TIFFs (int16 HU-like values → ``hu_window``; masks {0, 255}), either
    ``2d_images/`` + ``2d_masks/`` (the Kaggle layout) or ``image_<ID>.tif`` + ``mask_<ID>.tif`` in one
    folder. Patient id = the ``ID_NNNN`` part of ``ID_NNNN_Z_NNNN``, so splits are patient-level.
``msd-lung``
    MSD Task06 lung-tumour 48×48 patches from ``*.h5`` (``images`` (N,1,48,48) in [0, 1], ``labels``
    {0, 1}). The HDF5 holds only these two datasets (no patient ids, no attributes): slice-level
    split with a warning; spacing 2 mm (the source resampled to 2 mm).

General layouts:

``pairs``
    ``images/`` and ``masks/`` folders of PNG/JPG/BMP/TIFF matched by file stem; uint8 → /255,
    uint16 → /65535, signed integers and floats outside [0, 1] are HU → ``hu_window``. Masks {0, 1}
    or {0, 255}. No patient ids → slice-level split with a warning.
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

Add a reader with :func:`register_reader` (see ``docs/data.md``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lungseg.data import formats, transforms
from lungseg.errors import DataError

BINARY_LABELS = ["background", "foreground"]


@dataclass
class RawSlice:
    """One 2-D slice at its original size, intensity already in [0, 1]."""

    id: str
    source: str
    """File(s) it came from, relative to the input folder (``volume.nii.gz#z=12`` for volumes)."""
    image: np.ndarray
    mask: np.ndarray
    patient_id: str | None = None
    split: str | None = None
    """``"test"`` (published test set), ``"pool"`` (published training pool) or None (no protocol)."""
    spacing: tuple[float, float] | None = None
    """(row, col) pixel spacing in mm at the original size, when the source records it."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Dataset-specific manifest columns (e.g. ``jcs_list``)."""


@dataclass
class RawDataset:
    slices: Iterable[RawSlice]
    num_labels: int = 2
    label_names: list[str] = field(default_factory=lambda: list(BINARY_LABELS))
    split_protocol: str = ""
    warnings: list[str] = field(default_factory=list)


Reader = Callable[[Path, Any], RawDataset]


@dataclass(frozen=True)
class ReaderInfo:
    name: str
    func: Reader
    description: str


READERS: dict[str, ReaderInfo] = {}


def register_reader(name: str, description: str) -> Callable[[Reader], Reader]:
    """Decorator: make ``func`` available as ``lungseg preprocess --dataset NAME``."""

    def deco(func: Reader) -> Reader:
        READERS[name] = ReaderInfo(name, func, description)
        return func

    return deco


def get_reader(name: str) -> ReaderInfo:
    try:
        return READERS[name]
    except KeyError:
        raise DataError(None, f"unknown dataset {name!r} (valid: {', '.join(sorted(READERS))})") from None


# ----------------------------------------------------------------------------------------- helpers


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(path, f"{what} folder not found")
    return path


def _files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(suffixes))


def _match_by_stem(img_dir: Path, mask_dir: Path, suffixes: tuple[str, ...]) -> list[tuple[str, Path, Path]]:
    """``(stem, image, mask)`` for every image; an image without a mask (or the reverse) is an error."""
    images = {formats.strip_suffix(p): p for p in _files(img_dir, suffixes)}
    masks = {formats.strip_suffix(p): p for p in _files(mask_dir, suffixes)}
    if not images:
        raise DataError(img_dir, f"no image files ({', '.join(suffixes)})")
    for stem, path in images.items():
        if stem not in masks:
            raise DataError(path, f"image has no mask (expected {mask_dir / stem}.*)")
    for stem, path in masks.items():
        if stem not in images:
            raise DataError(path, f"mask has no image (expected {img_dir / stem}.*)")
    return [(stem, images[stem], masks[stem]) for stem in sorted(images, key=_natural_key)]


def _natural_key(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _check_same_shape(image: np.ndarray, mask: np.ndarray, img_path: Path, mask_path: Path) -> None:
    if image.shape != mask.shape:
        raise DataError(img_path, f"image shape {image.shape} differs from mask {mask_path} shape {mask.shape}")


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _pair_slices(pairs, root: Path, cfg, *, mask_fn, split=None, id_prefix="") -> Iterator[RawSlice]:
    for stem, img_path, mask_path in pairs:
        raw = formats.read_image_2d(img_path)
        image = transforms.to_unit_range(raw, source=img_path, window=cfg.hu_window)
        mask = mask_fn(formats.read_image_2d(mask_path), mask_path)
        _check_same_shape(image, mask, img_path, mask_path)
        yield RawSlice(id=f"{id_prefix}{stem}", source=_rel(img_path, root), image=image, mask=mask, split=split)


def _binary(mask, path):
    return transforms.binarize_mask(mask, source=path)


# ----------------------------------------------------------------------------------------- MedSeg


def _read_jcs_list(path: Path, root: Path) -> list[str]:
    """Image paths (first column) of a JCS list; CRLF or LF; every listed file must exist."""
    if not path.is_file():
        raise DataError(path, "JCS split list not found")
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):  # splitlines handles \r\n
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise DataError(path, f"line {lineno}: expected 'image mask', got {line.strip()!r}")
        for p in parts:
            if not (root / p).is_file():
                raise DataError(path, f"line {lineno}: listed file {p} not found")
        out.append(parts[0])
    return out


@register_reader("medseg", "MedSeg COVID-19 CT 100 PNG slices with the JCS split (test.txt; train pool = all others)")
def read_medseg(input_dir: Path, cfg) -> RawDataset:
    img_dir = _require_dir(input_dir / "tr_im", "MedSeg image (tr_im)")
    mask_dir = _require_dir(input_dir / "tr_mask_new", "MedSeg mask (tr_mask_new)")
    images = _files(img_dir, (".png",))
    if not images:
        raise DataError(img_dir, "no PNG images")
    pairs = []
    for img in images:
        mask = mask_dir / img.name.replace("tr_im", "tr_mask")
        if not mask.is_file():
            raise DataError(img, f"image has no mask (expected {mask})")
        pairs.append((img, mask))
    train_list = set(_read_jcs_list(input_dir / "train.txt", input_dir))
    test_list = set(_read_jcs_list(input_dir / "test.txt", input_dir))
    overlap = train_list & test_list
    rel = {img: f"tr_im/{img.name}" for img, _ in pairs}
    neither = [img for img, _ in pairs if rel[img] not in train_list | test_list]
    warnings = [
        "slice-level split: MedSeg gives no patient ids, so adjacent slices of one patient can fall in "
        "train, val and test; say so wherever a figure from this split is reported",
    ]
    if overlap:
        warnings.append(
            f"the published JCS train.txt lists {len(overlap)} of the {len(test_list)} test.txt slices; "
            "they are used as test only (never trained on)"
        )
    if neither:
        warnings.append(f"{len(neither)} slices are in neither JCS list; they joined the train pool")

    def slices():
        for img, mask_path in pairs:
            r = rel[img]
            in_train, in_test = r in train_list, r in test_list
            jcs = "both" if in_train and in_test else "train" if in_train else "test" if in_test else "neither"
            image = transforms.to_unit_range(formats.read_image_2d(img), source=img, window=cfg.hu_window)
            mask = transforms.check_labels(formats.read_image_2d(mask_path), 2, source=mask_path)
            _check_same_shape(image, mask, img, mask_path)
            yield RawSlice(
                id=img.stem, source=r, image=image, mask=mask, split="test" if in_test else "pool",
                extra={"jcs_list": jcs},
            )

    return RawDataset(
        slices=slices(),
        label_names=["background", "infection"],
        split_protocol="JCS test.txt as test; train pool = all other slices, seeded slice-level train/val",
        warnings=warnings,
    )


# ----------------------------------------------------------------------------------------- Inf-Net


@register_reader("covid-semiseg", "Inf-Net COVID-SemiSeg, 50 train / 48 test (multi-class with preprocess.multiclass)")
def read_covid_semiseg(input_dir: Path, cfg) -> RawDataset:
    root = input_dir / "Dataset" if (input_dir / "Dataset").is_dir() else input_dir
    _require_dir(root / "TrainingSet", "COVID-SemiSeg TrainingSet")
    _require_dir(root / "TestingSet", "COVID-SemiSeg TestingSet")
    if cfg.multiclass:
        layout = [
            ("pool", "train-", root / "TrainingSet/MultiClassInfection-Train"),
            ("test", "test-", root / "TestingSet/MultiClassInfection-Test"),
        ]
        mask_fn = lambda m, p: transforms.check_labels(m, 3, source=p)  # noqa: E731
        names = ["background", "ground-glass", "consolidation"]
    else:
        layout = [
            ("pool", "train-", root / "TrainingSet/LungInfection-Train/Doctor-label"),
            ("test", "test-", root / "TestingSet/LungInfection-Test"),
        ]
        mask_fn = _binary
        names = ["background", "infection"]
    groups = []
    for split, prefix, folder in layout:
        _require_dir(folder, "COVID-SemiSeg")
        img_dir = _require_dir(folder / "Imgs", "COVID-SemiSeg image (Imgs)")
        gt_dir = _require_dir(folder / "GT", "COVID-SemiSeg mask (GT)")
        groups.append((split, prefix, _match_by_stem(img_dir, gt_dir, formats.IMAGE_SUFFIXES)))

    def slices():
        for split, prefix, pairs in groups:
            yield from _pair_slices(pairs, input_dir, cfg, mask_fn=mask_fn, split=split, id_prefix=prefix)

    return RawDataset(
        slices=slices(),
        num_labels=len(names),
        label_names=names,
        split_protocol="Inf-Net: 50 TrainingSet slices (train + seeded val) / 48 TestingSet slices (test)",
        warnings=[
            "slice-level split: no patient ids; val is carved from the 50 training slices",
            "COVID-SemiSeg holds the same 100 slices as MedSeg (medseg): never evaluate on one a model trained on the other",
        ],
    )


# ----------------------------------------------------------------------------------------- Kaggle


@register_reader("kaggle-64", "Kaggle lung fields 64 px npy (x_train→train pool, x_test→test; masks >= 0.5)")
def read_kaggle_64(input_dir: Path, cfg) -> RawDataset:
    root = input_dir / "64px" if (input_dir / "64px").is_dir() else input_dir
    _require_dir(root, "Kaggle 64 px")
    arrays = {}
    for name in ("x_train", "y_train", "x_test", "y_test"):
        path = root / f"{name}.npy"
        if not path.is_file():
            raise DataError(path, "file not found")
        try:
            arrays[name] = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise DataError(path, f"cannot read npy: {exc}") from exc
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if x.shape != y.shape or x.ndim not in (3, 4):
            raise DataError(root / f"x_{part}.npy", f"shape {x.shape} does not match y_{part}.npy {y.shape}")

    def slices():
        for part, split in (("train", "pool"), ("test", "test")):
            x = arrays[f"x_{part}"].reshape(arrays[f"x_{part}"].shape[:3])
            y = arrays[f"y_{part}"].reshape(arrays[f"y_{part}"].shape[:3])
            for i in range(len(x)):
                src = f"x_{part}.npy[{i}]"
                image = transforms.unit_float(x[i], source=root / src)
                yy = y[i]
                if not np.all(np.isfinite(yy)) or yy.min() < 0 or yy.max() > 1:
                    raise DataError(root / f"y_{part}.npy[{i}]", "mask values outside [0, 1]")
                yield RawSlice(id=f"{part}-{i:04d}", source=src, image=image, mask=(yy >= 0.5).astype(np.uint8),
                               split=split)

    return RawDataset(
        slices=slices(),
        label_names=["background", "lung"],
        split_protocol="source repository's train_test_split(random_state=50): x_train (train + seeded val) / x_test (test)",
        warnings=["slice-level split: the npy files carry no patient ids"],
    )


_KAGGLE_ID = re.compile(r"(ID_\d+)_Z_\d+")


@register_reader("kaggle-tiff", "Kaggle lung fields full-resolution TIFF (HU → hu_window), patient-level split")
def read_kaggle_tiff(input_dir: Path, cfg) -> RawDataset:
    _require_dir(input_dir, "Kaggle TIFF")
    if (input_dir / "2d_images").is_dir():
        pairs = _match_by_stem(input_dir / "2d_images", _require_dir(input_dir / "2d_masks", "2d_masks"),
                               (".tif", ".tiff"))
    else:
        imgs = {p.name[len("image_"):].rsplit(".", 1)[0]: p for p in _files(input_dir, (".tif", ".tiff"))
                if p.name.startswith("image_")}
        masks = {p.name[len("mask_"):].rsplit(".", 1)[0]: p for p in _files(input_dir, (".tif", ".tiff"))
                 if p.name.startswith("mask_")}
        if not imgs:
            raise DataError(input_dir, "no image_*.tif files (and no 2d_images/ folder)")
        for stem, p in imgs.items():
            if stem not in masks:
                raise DataError(p, f"image has no mask (expected mask_{stem}.tif)")
        for stem, p in masks.items():
            if stem not in imgs:
                raise DataError(p, f"mask has no image (expected image_{stem}.tif)")
        pairs = [(s, imgs[s], masks[s]) for s in sorted(imgs, key=_natural_key)]

    def slices():
        for s in _pair_slices(pairs, input_dir, cfg, mask_fn=_binary):
            m = _KAGGLE_ID.search(s.id)
            s.patient_id = m.group(1) if m else None
            yield s

    return RawDataset(
        slices=slices(),
        label_names=["background", "lung"],
        split_protocol="no published split: seeded train/val/test (patient-level from ID_NNNN when every name has one)",
    )


# ----------------------------------------------------------------------------------------- MSD


@register_reader("msd-lung", "MSD Task06 lung-tumour 48×48 HDF5 patches (images/labels), slice-level split")
def read_msd_lung(input_dir: Path, cfg) -> RawDataset:
    import h5py

    _require_dir(input_dir, "MSD lung")
    files = _files(input_dir, (".h5", ".hdf5"))
    if not files:
        raise DataError(input_dir, "no .h5 files")
    opened = []
    for path in files:
        try:
            with h5py.File(path, "r") as f:
                missing = [k for k in ("images", "labels") if k not in f]
                if missing:
                    raise DataError(path, f"HDF5 lacks dataset(s) {', '.join(missing)} (has: {', '.join(f)})")
                x, y = f["images"][()], f["labels"][()]
                pids = [p.decode() if isinstance(p, bytes) else str(p) for p in f["patient_ids"][()]] \
                    if "patient_ids" in f else None
        except OSError as exc:
            raise DataError(path, f"cannot read HDF5: {exc}") from exc
        x, y = x.reshape(len(x), *x.shape[-2:]), y.reshape(len(y), *y.shape[-2:])
        if x.shape != y.shape:
            raise DataError(path, f"images {x.shape} and labels {y.shape} differ")
        opened.append((path, x, y, pids))
    has_ids = all(p is not None for *_, p in opened)

    def slices():
        for path, x, y, pids in opened:
            for i in range(len(x)):
                src = f"{path.name}[{i}]"
                yield RawSlice(
                    id=f"{path.stem}-{i:04d}", source=src,
                    image=transforms.unit_float(x[i], source=input_dir / src),
                    mask=transforms.check_labels(y[i], 2, source=input_dir / src),
                    patient_id=pids[i] if pids is not None else None, spacing=(2.0, 2.0),
                )

    return RawDataset(
        slices=slices(),
        label_names=["background", "tumour"],
        split_protocol="no published split: seeded train/val/test",
        warnings=[] if has_ids else [
            "slice-level split: the HDF5 holds only 'images' and 'labels' (no patient ids); patches of one of "
            "the 13 patients overlap and can fall in train, val and test"
        ],
    )


# ----------------------------------------------------------------------------------------- general


@register_reader("pairs", "images/ + masks/ folders of PNG/JPG/TIFF matched by file stem")
def read_pairs(input_dir: Path, cfg) -> RawDataset:
    _require_dir(input_dir, "input")
    img_dir = _require_dir(input_dir / "images", "images")
    mask_dir = _require_dir(input_dir / "masks", "masks")
    pairs = _match_by_stem(img_dir, mask_dir, formats.IMAGE_SUFFIXES)
    return RawDataset(
        slices=_pair_slices(pairs, input_dir, cfg, mask_fn=_binary),
        split_protocol="no published split: seeded slice-level train/val/test",
        warnings=["slice-level split: image/mask pairs carry no patient ids"],
    )


def _axial_nifti(data: np.ndarray, affine: np.ndarray):
    """Closest-canonical (RAS) volume → iterator of axial slices in radiological view + (row, col) spacing."""
    import nibabel as nib

    img = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
    vol = np.asarray(img.dataobj)
    zooms = img.header.get_zooms()[:3]
    # RAS+: index 0 grows towards the patient's Right, 1 towards Anterior, 2 towards Superior.
    # Radiological view: rows anterior → posterior, columns patient's right → left.
    view = np.flip(np.transpose(vol, (1, 0, 2)), axis=(0, 1))
    return view, (float(zooms[1]), float(zooms[0]))


def _require_same_geometry(path: Path, mask_path: Path, shape, mask_shape, checks) -> None:
    """``DataError`` on ``path`` listing every way the mask's grid differs from the image's:
    ``checks`` = ``(what, image value, mask value, atol, print the values?)``."""
    problems = [] if tuple(shape) == tuple(mask_shape) else [f"shape {tuple(shape)} vs {tuple(mask_shape)}"]
    for what, a, b, atol, show in checks:
        if np.shape(a) != np.shape(b) or not np.allclose(a, b, atol=atol):
            problems.append(f"{what} {tuple(np.round(np.asarray(a, float), 4).tolist())} vs "
                            f"{tuple(np.round(np.asarray(b, float), 4).tolist())}" if show else f"{what} differs")
    if problems:
        raise DataError(path, f"geometry does not match mask {mask_path}: {'; '.join(problems)}")


@register_reader("nifti", "images/ + masks/ folders of NIfTI volumes (geometry checked), axial slices, patient-level")
def read_nifti(input_dir: Path, cfg) -> RawDataset:
    _require_dir(input_dir, "input")
    img_dir = _require_dir(input_dir / "images", "images")
    mask_dir = _require_dir(input_dir / "masks", "masks")
    pairs = _match_by_stem(img_dir, mask_dir, formats.NIFTI_SUFFIXES)

    def slices():
        for stem, img_path, mask_path in pairs:
            data, affine, zooms = formats.read_nifti(img_path)
            mdata, maffine, mzooms = formats.read_nifti(mask_path)
            _require_same_geometry(img_path, mask_path, data.shape, mdata.shape,
                                   [("voxel size", zooms, mzooms, 1e-4, True), ("affine", affine, maffine, 1e-3, False)])
            vol, spacing = _axial_nifti(data, affine)
            mvol, _ = _axial_nifti(mdata, affine)
            for z in range(vol.shape[2]):
                src = f"{_rel(img_path, input_dir)}#z={z}"
                image = transforms.to_unit_range(np.ascontiguousarray(vol[:, :, z]), source=img_path, window=cfg.hu_window)
                mask = transforms.binarize_mask(np.rint(mvol[:, :, z]), source=f"{mask_path}#z={z}")
                yield RawSlice(id=f"{stem}-z{z:04d}", source=src, image=image, mask=mask, patient_id=stem,
                               spacing=spacing)

    return RawDataset(slices=slices(), split_protocol="no published split: seeded patient-level (volume) train/val/test")


@register_reader("dicom", "<case>/image/ DICOM series + <case>/mask.* volume (HU via rescale), patient-level")
def read_dicom(input_dir: Path, cfg) -> RawDataset:
    _require_dir(input_dir, "input")
    cases = sorted((p for p in input_dir.iterdir() if p.is_dir()), key=lambda p: _natural_key(p.name))
    if not cases:
        raise DataError(input_dir, "no case folders (expected <case>/image/ + <case>/mask.*)")
    plan = []
    for case in cases:
        series = _require_dir(case / "image", "DICOM series (image)")
        masks = [p for p in case.iterdir() if p.is_file() and p.name.startswith("mask.")]
        if len(masks) != 1:
            raise DataError(case, f"expected one mask.* file next to image/, found {len(masks)}")
        plan.append((case, series, masks[0]))

    def slices():
        for case, series, mask_path in plan:
            vol, spacing, origin, direction = formats.read_dicom_series(series)
            mvol, mspacing, morigin, mdirection = formats.read_sitk_volume(mask_path)
            _require_same_geometry(series, mask_path, vol.shape, mvol.shape,
                                   [("spacing", spacing, mspacing, 1e-3, True), ("origin", origin, morigin, 1e-2, True),
                                    ("direction", direction, mdirection, 1e-4, False)])
            for z in range(vol.shape[0]):
                yield RawSlice(
                    id=f"{case.name}-z{z:04d}", source=f"{_rel(series, input_dir)}#z={z}",
                    image=transforms.hu_window(vol[z], cfg.hu_window),
                    mask=transforms.binarize_mask(mvol[z], source=f"{mask_path}#z={z}"),
                    patient_id=case.name, spacing=(spacing[1], spacing[2]),
                )

    return RawDataset(slices=slices(), split_protocol="no published split: seeded patient-level (case) train/val/test")
