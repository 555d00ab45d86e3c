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


def load(args: argparse.Namespace):
    """The typed :class:`lungseg.config.Params` named by ``--params``."""
    from lungseg.config import load_params

    return load_params(args.params)
