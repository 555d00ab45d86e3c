"""Read a processed dataset folder (the output of ``lungseg preprocess``).

The folder layout is fixed by ``docs/CONTRACTS.md``: ``images.npy`` float32 ``(N, 1, S, S)`` in
[0, 1], ``masks.npy`` uint8 ``(N, S, S)``, ``manifest.csv`` (one row a slice, row order = array
order, column ``split``), ``meta.json``. Arrays are memory-mapped and only the rows of the
requested split are copied into memory, so loading the test split of a large set is cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lungseg.errors import DataError

SPLITS = ("train", "val", "test")
REQUIRED_FILES = ("images.npy", "masks.npy", "manifest.csv", "meta.json")


@dataclass(frozen=True)
class SplitArrays:
    """One split of a processed dataset.

    ``images`` float32 ``(n, 1, S, S)``; ``masks`` uint8 ``(n, S, S)``; ``manifest`` the matching
    manifest rows (index reset to 0..n-1; column ``index`` is the row in the full arrays);
    ``meta`` the parsed ``meta.json``.
    """

    images: Any
    masks: Any
    manifest: Any
    meta: dict[str, Any]

    def __len__(self) -> int:
        return int(self.images.shape[0])


def _check_folder(data_dir: Path) -> None:
    if not data_dir.is_dir():
        raise DataError(data_dir, "processed dataset folder not found (run `lungseg preprocess` first)")
    missing = [name for name in REQUIRED_FILES if not (data_dir / name).is_file()]
    if missing:
        raise DataError(data_dir, f"not a processed dataset folder: missing {', '.join(missing)}")


def read_meta(data_dir: str | Path) -> dict[str, Any]:
    """The parsed ``meta.json`` of a processed dataset folder (``DataError`` if missing/invalid)."""
    from lungseg.io import read_json_object

    return read_json_object(
        Path(data_dir) / "meta.json", "meta.json not found (is this a folder written by `lungseg preprocess`?)"
    )


def read_manifest(data_dir: str | Path):
    """The full manifest as a pandas DataFrame (ids and patient ids kept as strings)."""
    import pandas as pd

    path = Path(data_dir) / "manifest.csv"
    if not path.is_file():
        raise DataError(path, "manifest.csv not found")
    return pd.read_csv(path, dtype={"id": str, "patient_id": str, "source": str, "split": str})


def load_split(data_dir: str | Path, split: str) -> SplitArrays:
    """Load one split (``train``, ``val``, ``test``; ``all`` for every row) of a processed folder.

    Raises :class:`~lungseg.errors.DataError` when the folder or one of its files is missing, the
    split name is unknown, the split is empty, or the arrays disagree with the manifest.
    """
    import numpy as np

    data_dir = Path(data_dir)
    _check_folder(data_dir)
    if split not in (*SPLITS, "all"):
        raise DataError(data_dir, f"unknown split {split!r} (valid: {', '.join(SPLITS)}, all)")
    meta = read_meta(data_dir)
    manifest = read_manifest(data_dir)
    try:
        images = np.load(data_dir / "images.npy", mmap_mode="r")
        masks = np.load(data_dir / "masks.npy", mmap_mode="r")
    except (ValueError, OSError) as exc:
        raise DataError(data_dir, f"cannot read images.npy/masks.npy: {exc}") from exc
    if not (len(images) == len(masks) == len(manifest)):
        raise DataError(
            data_dir,
            f"images.npy ({len(images)}), masks.npy ({len(masks)}) and manifest.csv ({len(manifest)} rows) disagree",
        )
    if split == "all":
        rows = manifest
    else:
        rows = manifest[manifest["split"] == split]
        if rows.empty:
            present = sorted(manifest["split"].dropna().unique())
            raise DataError(data_dir, f"split {split!r} is empty (splits present: {', '.join(present)})")
    idx = rows["index"].to_numpy(dtype=np.int64)
    return SplitArrays(
        images=np.ascontiguousarray(images[idx], dtype=np.float32),
        masks=np.ascontiguousarray(masks[idx], dtype=np.uint8),
        manifest=rows.reset_index(drop=True),
        meta=meta,
    )
