"""Readers: one per published dataset or general file layout, all producing the same slices.

A reader is a function ``reader(input_dir: Path, cfg: PreprocessConfig) -> RawDataset``. The
returned :class:`RawDataset` carries the dataset-level facts (labels, split protocol, warnings)
and a *lazy* iterator of :class:`RawSlice` (2-D image float32 in [0, 1] at its original size,
2-D uint8 label mask, ids, and the published split when there is one), so a large NIfTI set is
never held at full resolution in memory. Resizing, splitting and validation happen in
:mod:`lungseg.data.preprocess`, identically for every reader.

Layout problems are found before the first slice is yielded (missing folder, an image without
a mask, a list naming a missing file, a bad split file), so they fail fast; every problem is a
``DataError`` naming the file.

The package:

* :mod:`~lungseg.data.readers.base` — :class:`RawSlice`, :class:`RawDataset`, the registry
  (:data:`READERS`, :func:`register_reader`, :func:`get_reader`);
* :mod:`~lungseg.data.readers.helpers` — what readers share: folder checks, image/mask pairing by
  file stem (:func:`match_pairs`), slice building, geometry checks;
* :mod:`~lungseg.data.readers.published` — the published datasets: ``medseg``, ``covid-semiseg``,
  ``kaggle-64``, ``kaggle-tiff``, ``msd-lung``;
* :mod:`~lungseg.data.readers.general` — general layouts for one's own data: ``pairs`` (with an
  optional ``split.csv`` of split and/or patient per image), ``nifti``, ``dicom``.

Every public name is importable from ``lungseg.data.readers``. Add a reader with
:func:`register_reader` (see ``docs/data.md``).
"""

from __future__ import annotations

from lungseg.data.readers.base import (
    BINARY_LABELS,
    READERS,
    RawDataset,
    RawSlice,
    Reader,
    ReaderInfo,
    get_reader,
    register_reader,
)
from lungseg.data.readers.general import (
    SPLIT_COLUMNS,
    SPLIT_FILE,
    SplitFile,
    axial_nifti,
    read_dicom,
    read_nifti,
    read_pairs,
    read_split_file,
)
from lungseg.data.readers.helpers import match_pairs, natural_key, require_same_geometry
from lungseg.data.readers.published import (
    read_covid_semiseg,
    read_kaggle_64,
    read_kaggle_tiff,
    read_medseg,
    read_msd_lung,
)

__all__ = [
    "BINARY_LABELS",
    "READERS",
    "SPLIT_COLUMNS",
    "SPLIT_FILE",
    "RawDataset",
    "RawSlice",
    "Reader",
    "ReaderInfo",
    "SplitFile",
    "axial_nifti",
    "get_reader",
    "match_pairs",
    "natural_key",
    "read_covid_semiseg",
    "read_dicom",
    "read_kaggle_64",
    "read_kaggle_tiff",
    "read_medseg",
    "read_msd_lung",
    "read_nifti",
    "read_pairs",
    "read_split_file",
    "register_reader",
    "require_same_geometry",
]
