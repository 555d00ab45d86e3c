"""``lungseg preprocess``: raw CT data → one canonical, validated, DVC-friendly set."""

from __future__ import annotations

import argparse
from pathlib import Path

from lungseg.cli._common import add_output_folder_argument, add_params_argument, load


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("preprocess", help="turn a raw dataset into a validated training set")
    p.add_argument(
        "--dataset",
        required=True,
        help="reader: medseg, covid-semiseg, kaggle-64, kaggle-tiff, msd-lung, pairs, nifti, dicom (docs/data.md)",
    )
    p.add_argument("--input", type=Path, required=True, help="folder of the raw dataset")
    add_output_folder_argument(
        p, "folder to write (replaced atomically); a folder lungseg did not write is refused unless --overwrite"
    )
    add_params_argument(p)
    return p


def run(args: argparse.Namespace) -> int:
    params = load(args)  # config errors surface before heavy imports
    from lungseg.data.preprocess import preprocess

    summary = preprocess(args.dataset, args.input, args.output, params.preprocess)
    print(summary.describe())
    return 0
