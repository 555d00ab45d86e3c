"""The data layer: raw CT datasets → one canonical, validated folder; and its loader.

* :mod:`lungseg.data.readers` — one reader per source format / published dataset (``READERS``); a package:
  shared helpers, published datasets, general layouts (``pairs`` with an optional ``split.csv``).
* :mod:`lungseg.data.formats` — low-level file reading (PIL, tifffile, nibabel, SimpleITK, h5py).
* :mod:`lungseg.data.transforms` — intensity normalisation (HU windowing, 8-bit scaling) and resizing.
* :mod:`lungseg.data.splits` — published protocol splits, seeded patient- or slice-level splits.
* :mod:`lungseg.data.validation` — Great Expectations checks run before the output is renamed into place.
* :mod:`lungseg.data.preprocess` — the ``lungseg preprocess`` entry point.
* :mod:`lungseg.data.dataset` — :func:`load_split` / :func:`read_meta` for training and evaluation.

Import-light on purpose: importing this package imports none of numpy, pandas, torch or GE.
"""
