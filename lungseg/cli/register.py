"""``lungseg register``: register the evaluated model; move ``champion`` only if it is better."""

from __future__ import annotations

import argparse
from pathlib import Path

from lungseg.cli._common import add_params_argument, load


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("register", help="register a model version and decide champion/challenger")
    p.add_argument("--model", type=Path, required=True, help="training output folder (holds the MLflow run id)")
    p.add_argument("--evaluation", type=Path, required=True, help="evaluation output folder")
    p.add_argument(
        "--output", type=Path, required=True, help="new JSON file recording the decision (an existing file is refused)"
    )
    p.add_argument(
        "--allow-preprocessing-mismatch",
        action="store_true",
        help="let an evaluation made with `lungseg evaluate --allow-preprocessing-mismatch` be promoted "
        "(without it, such a model is registered, tagged and never promoted)",
    )
    add_params_argument(p)
    return p


def run(args: argparse.Namespace) -> int:
    params = load(args)  # config errors surface before heavy imports
    from lungseg.registry import register

    decision = register(
        params,
        model_dir=args.model,
        evaluation_dir=args.evaluation,
        output=args.output,
        allow_preprocessing_mismatch=args.allow_preprocessing_mismatch,
    )
    print(decision.describe())
    return 0
