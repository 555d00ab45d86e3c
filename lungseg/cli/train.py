"""``lungseg train``: train a model on a preprocessed set, tracked in MLflow."""

from __future__ import annotations

import argparse
from pathlib import Path

from lungseg.cli._common import add_output_folder_argument, add_params_argument, load


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train a model (checkpoint every epoch, MLflow tracking)")
    p.add_argument("--data", type=Path, required=True, help="preprocessed dataset folder")
    add_output_folder_argument(
        p, "folder for checkpoints and the final model; a folder lungseg did not write is refused unless --overwrite"
    )
    p.add_argument("--resume", action="store_true", help="resume from the last checkpoint in --output")
    add_params_argument(p)
    return p


def run(args: argparse.Namespace) -> int:
    params = load(args)  # config errors surface before heavy imports
    from lungseg.training import train

    result = train(params, data_dir=args.data, output_dir=args.output, resume=args.resume)
    print(result.describe())
    return 0
