"""Readers of the published datasets (see ``../shared/data/README.md``): each knows its layout and
keeps its published split (test set as published, training pool split into train/val later).

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
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from lungseg.data import formats, transforms
from lungseg.data.readers.base import RawDataset, RawSlice, register_reader
from lungseg.data.readers.helpers import (
    binary_mask,
    check_same_shape,
    files,
    match_pairs,
    pair_slices,
    require_dir,
)
from lungseg.errors import DataError

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
    img_dir = require_dir(input_dir / "tr_im", "MedSeg image (tr_im)")
    mask_dir = require_dir(input_dir / "tr_mask_new", "MedSeg mask (tr_mask_new)")
    pairs = match_pairs(img_dir, mask_dir, (".png",), image_prefix="tr_im_", mask_prefix="tr_mask_")
    train_list = set(_read_jcs_list(input_dir / "train.txt", input_dir))
    test_list = set(_read_jcs_list(input_dir / "test.txt", input_dir))
    overlap = train_list & test_list
    rel = {img: f"tr_im/{img.name}" for _, img, _ in pairs}
    neither = [img for _, img, _ in pairs if rel[img] not in train_list | test_list]
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
        for _, img, mask_path in pairs:
            r = rel[img]
            in_train, in_test = r in train_list, r in test_list
            jcs = "both" if in_train and in_test else "train" if in_train else "test" if in_test else "neither"
            image = transforms.to_unit_range(formats.read_slice_image(img), source=img, window=cfg.hu_window)
            mask = transforms.check_labels(formats.read_image_2d(mask_path), 2, source=mask_path)
            check_same_shape(image, mask, img, mask_path)
            yield RawSlice(
                id=img.stem,
                source=r,
                image=image,
                mask=mask,
                split="test" if in_test else "pool",
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
    require_dir(root / "TrainingSet", "COVID-SemiSeg TrainingSet")
    require_dir(root / "TestingSet", "COVID-SemiSeg TestingSet")
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
        mask_fn = binary_mask
        names = ["background", "infection"]
    groups = []
    for split, prefix, folder in layout:
        require_dir(folder, "COVID-SemiSeg")
        img_dir = require_dir(folder / "Imgs", "COVID-SemiSeg image (Imgs)")
        gt_dir = require_dir(folder / "GT", "COVID-SemiSeg mask (GT)")
        groups.append((split, prefix, match_pairs(img_dir, gt_dir, formats.IMAGE_SUFFIXES)))

    def slices():
        for split, prefix, pairs in groups:
            yield from pair_slices(pairs, input_dir, cfg, mask_fn=mask_fn, split=split, id_prefix=prefix)

    return RawDataset(
        slices=slices(),
        num_labels=len(names),
        label_names=names,
        split_protocol="Inf-Net: 50 TrainingSet slices (train + seeded val) / 48 TestingSet slices (test)",
        warnings=[
            "slice-level split: no patient ids; val is carved from the 50 training slices",
            "COVID-SemiSeg holds the same 100 slices as MedSeg (medseg): "
            "never evaluate on one a model trained on the other",
        ],
    )


# ----------------------------------------------------------------------------------------- Kaggle


@register_reader("kaggle-64", "Kaggle lung fields 64 px npy (x_train→train pool, x_test→test; masks >= 0.5)")
def read_kaggle_64(input_dir: Path, cfg) -> RawDataset:
    root = input_dir / "64px" if (input_dir / "64px").is_dir() else input_dir
    require_dir(root, "Kaggle 64 px")
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
                yield RawSlice(
                    id=f"{part}-{i:04d}", source=src, image=image, mask=(yy >= 0.5).astype(np.uint8), split=split
                )

    return RawDataset(
        slices=slices(),
        label_names=["background", "lung"],
        split_protocol=(
            "source repository's train_test_split(random_state=50): x_train (train + seeded val) / x_test (test)"
        ),
        warnings=["slice-level split: the npy files carry no patient ids"],
    )


_KAGGLE_ID = re.compile(r"(ID_\d+)_Z_\d+")
_TIFF = (".tif", ".tiff")


@register_reader("kaggle-tiff", "Kaggle lung fields full-resolution TIFF (HU → hu_window), patient-level split")
def read_kaggle_tiff(input_dir: Path, cfg) -> RawDataset:
    require_dir(input_dir, "Kaggle TIFF")
    if (input_dir / "2d_images").is_dir():
        pairs = match_pairs(input_dir / "2d_images", require_dir(input_dir / "2d_masks", "2d_masks"), _TIFF)
    elif not any(p.name.startswith("image_") for p in files(input_dir, _TIFF)):
        raise DataError(input_dir, "no image_*.tif files (and no 2d_images/ folder)")
    else:
        pairs = match_pairs(input_dir, input_dir, _TIFF, image_prefix="image_", mask_prefix="mask_")

    def slices():
        for s in pair_slices(pairs, input_dir, cfg):
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

    require_dir(input_dir, "MSD lung")
    h5_files = files(input_dir, (".h5", ".hdf5"))
    if not h5_files:
        raise DataError(input_dir, "no .h5 files")
    opened = []
    for path in h5_files:
        try:
            with h5py.File(path, "r") as f:
                missing = [k for k in ("images", "labels") if k not in f]
                if missing:
                    raise DataError(path, f"HDF5 lacks dataset(s) {', '.join(missing)} (has: {', '.join(f)})")
                x, y = f["images"][()], f["labels"][()]
                pids = (
                    [p.decode() if isinstance(p, bytes) else str(p) for p in f["patient_ids"][()]]
                    if "patient_ids" in f
                    else None
                )
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
                    id=f"{path.stem}-{i:04d}",
                    source=src,
                    image=transforms.unit_float(x[i], source=input_dir / src),
                    mask=transforms.check_labels(y[i], 2, source=input_dir / src),
                    patient_id=pids[i] if pids is not None else None,
                    spacing=(2.0, 2.0),
                )

    return RawDataset(
        slices=slices(),
        label_names=["background", "tumour"],
        split_protocol="no published split: seeded train/val/test",
        warnings=[]
        if has_ids
        else [
            "slice-level split: the HDF5 holds only 'images' and 'labels' (no patient ids); patches of one of "
            "the 13 patients overlap and can fall in train, val and test"
        ],
    )
