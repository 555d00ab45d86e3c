"""Helpers shared by the subcommand modules (argparse-level only: no heavy imports)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_params_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--params",
        type=Path,
        default=Path("params.yaml"),
        help="parameter file (default: params.yaml); parsed once into typed config",
    )


def add_output_folder_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """``--output FOLDER`` and ``--overwrite``: lungseg replaces an output folder as a whole, so a
    non-empty folder it did not write is refused unless ``--overwrite`` (:func:`lungseg.io.check_output_dir`)."""
    parser.add_argument("--output", type=Path, required=True, help=help)
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --output even when it is a non-empty folder that lungseg did not write "
        "(its files are deleted); never the current folder or a folder holding an input",
    )


def load(args: argparse.Namespace):
    """The typed :class:`lungseg.config.Params` named by ``--params``."""
    from lungseg.config import load_params

    return load_params(args.params)
