"""``lungseg evaluate``: per-image metrics, summary JSON, figures; logged to MLflow."""

from __future__ import annotations

import argparse
from pathlib import Path

from lungseg.cli._common import add_output_folder_argument, add_params_argument, load


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("evaluate", help="evaluate a trained model on a split")
    p.add_argument("--model", type=Path, required=True, help="training output folder (from lungseg train)")
    p.add_argument("--data", type=Path, required=True, help="preprocessed dataset folder")
    add_output_folder_argument(
        p, "folder for the report (replaced atomically); a folder lungseg did not write is refused unless --overwrite"
    )
    p.add_argument(
        "--allow-preprocessing-mismatch",
        action="store_true",
        help="evaluate even when the data was preprocessed differently from the model's training data "
        "(image size, HU window, labels); the differences are recorded in metrics.json",
    )
    add_params_argument(p)
    return p


def run(args: argparse.Namespace) -> int:
    params = load(args)  # config errors surface before heavy imports
    from lungseg.artifacts.run_file import RunFile
    from lungseg.evaluation import evaluate
    from lungseg.tracking import check_store_in_use

    run_file = args.model / "mlflow_run.json"
    if run_file.is_file():  # the evaluation is logged under the training run: only in the store named
        check_store_in_use(params, RunFile.from_file(run_file).resolved_tracking_uri(), run_file, "evaluate")

    result = evaluate(
        params,
        model_dir=args.model,
        data_dir=args.data,
        output_dir=args.output,
        allow_preprocessing_mismatch=args.allow_preprocessing_mismatch,
    )
    print(result.describe())
    return 0
