"""Helpers shared by the readers: folder checks, file listing, image/mask pairing, slice building,
geometry checks. Every problem is a ``DataError`` naming the file."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from lungseg.data import formats, transforms
from lungseg.data.readers.base import RawSlice
from lungseg.errors import DataError

#: ``(key, image path, mask path)``: one image and its mask, matched by key
Pair = tuple[str, Path, Path]


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(path, f"{what} folder not found")
    return path


def files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """The files directly in ``folder`` whose name ends with one of ``suffixes`` (any case), sorted."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(suffixes))


def natural_key(s: str) -> list:
    """Sort key that orders ``img2`` before ``img10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def match_pairs(
    img_dir: Path, mask_dir: Path, suffixes: tuple[str, ...], *, image_prefix: str = "", mask_prefix: str = ""
) -> list[Pair]:
    """Every image in ``img_dir`` with its mask in ``mask_dir``, matched by *key*: the file name without
    its suffix and without ``image_prefix`` / ``mask_prefix`` (``tr_im_0001.png`` ↔ ``tr_mask_0001.png``,
    ``image_ID_1.tif`` ↔ ``mask_ID_1.tif``, ``case1.png`` ↔ ``case1.png``). Only files with the prefix
    and one of ``suffixes`` take part (so images and masks may share one folder). An image without a
    mask, a mask without an image, or no image at all is a ``DataError`` naming the file. Sorted in
    natural order of the key."""

    def by_key(folder: Path, prefix: str) -> dict[str, Path]:
        return {formats.strip_suffix(p)[len(prefix) :]: p for p in files(folder, suffixes) if p.name.startswith(prefix)}

    images, masks = by_key(img_dir, image_prefix), by_key(mask_dir, mask_prefix)
    if not images:
        raise DataError(img_dir, f"no image files ({image_prefix}*{', *'.join(suffixes)})")
    for key, path in images.items():
        if key not in masks:
            raise DataError(path, f"image has no mask (expected {mask_dir / (mask_prefix + key)}.*)")
    for key, path in masks.items():
        if key not in images:
            raise DataError(path, f"mask has no image (expected {img_dir / (image_prefix + key)}.*)")
    return [(key, images[key], masks[key]) for key in sorted(images, key=natural_key)]


def check_same_shape(image: np.ndarray, mask: np.ndarray, img_path: Path, mask_path: Path) -> None:
    if image.shape != mask.shape:
        raise DataError(img_path, f"image shape {image.shape} differs from mask {mask_path} shape {mask.shape}")


def rel(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` when it is inside it, else as given."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def binary_mask(mask: np.ndarray, path) -> np.ndarray:
    return transforms.binarize_mask(mask, source=path)


def pair_slices(
    pairs: Iterable[Pair],
    root: Path,
    cfg,
    *,
    mask_fn: Callable = binary_mask,
    split: str | None = None,
    id_prefix: str = "",
) -> Iterator[RawSlice]:
    """One :class:`RawSlice` per 2-D image/mask pair (id = ``id_prefix + key``, source relative to ``root``)."""
    for key, img_path, mask_path in pairs:
        image = transforms.to_unit_range(formats.read_slice_image(img_path), source=img_path, window=cfg.hu_window)
        mask = mask_fn(formats.read_image_2d(mask_path), mask_path)
        check_same_shape(image, mask, img_path, mask_path)
        yield RawSlice(id=f"{id_prefix}{key}", source=rel(img_path, root), image=image, mask=mask, split=split)


def require_same_geometry(path: Path, mask_path: Path, shape, mask_shape, checks) -> None:
    """``DataError`` on ``path`` listing every way the mask's grid differs from the image's:
    ``checks`` = ``(what, image value, mask value, atol, print the values?)``."""
    problems = [] if tuple(shape) == tuple(mask_shape) else [f"shape {tuple(shape)} vs {tuple(mask_shape)}"]
    for what, a, b, atol, show in checks:
        if np.shape(a) != np.shape(b) or not np.allclose(a, b, atol=atol):
            problems.append(
                f"{what} {tuple(np.round(np.asarray(a, float), 4).tolist())} vs "
                f"{tuple(np.round(np.asarray(b, float), 4).tolist())}"
                if show
                else f"{what} differs"
            )
    if problems:
        raise DataError(path, f"geometry does not match mask {mask_path}: {'; '.join(problems)}")
