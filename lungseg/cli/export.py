"""``lungseg export``: ONNX / TorchScript of a trained model, checked against PyTorch on real slices."""

from __future__ import annotations

import argparse
from pathlib import Path

from lungseg.cli._common import add_output_folder_argument, add_params_argument


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "export",
        help="export a model to ONNX or TorchScript with a parity check on real slices",
        description="Export a trained model (a `lungseg train` folder or an MLflow URI such as "
        "models:/lungseg-lgnet@champion) with its sigmoid/softmax, run the export on real slices "
        "(onnxruntime for ONNX) and compare with PyTorch. See docs/inference.md.",
    )
    p.add_argument("--model", required=True, help="training output folder, checkpoint file or MLflow model URI")
    p.add_argument("--format", required=True, choices=("onnx", "torchscript"))
    add_output_folder_argument(
        p, "output folder (replaced atomically); a folder lungseg did not write is refused unless --overwrite"
    )
    p.add_argument(
        "--check-input",
        type=Path,
        required=True,
        help="real slices for the parity check: a NIfTI file, a DICOM series or PNG/TIFF slices",
    )
    p.add_argument("--max-check-slices", type=int, default=16, help="use at most this many slices (default 16)")
    p.add_argument("--tolerance", type=float, default=1e-3, help="largest accepted |Δ probability| (default 1e-3)")
    add_params_argument(p)
    p.set_defaults(_output_inside_input=output_in_model_folder)
    return p


def output_in_model_folder(args: argparse.Namespace, item: Path) -> bool:
    """Whether ``item`` is the ``--model`` folder and ``--output`` a folder directly in it — ``lungseg export
    --model RUN --output RUN/onnx``, the export the model folder carries (docs/inference.md): the one input
    an export may be written into (still replaced atomically, under the output's lock; a folder there that
    lungseg export did not write is refused unless --overwrite). Anything deeper, the folder itself or
    another input stays refused (:func:`lungseg.io.check_output_dir`)."""
    model = Path(str(args.model))
    return item == model and model.is_dir() and Path(args.output).resolve().parent == model.resolve()


def run(args: argparse.Namespace) -> int:
    from lungseg.cli.predict import params_or_defaults
    from lungseg.errors import ConfigError

    params = params_or_defaults(args)
    if args.max_check_slices < 1:
        raise ConfigError(f"--max-check-slices: must be ≥ 1, got {args.max_check_slices}")

    from lungseg.inference import volumes
    from lungseg.inference.export import export_model
    from lungseg.inference.predict import load_model
    from lungseg.tracking import resolve_tracking_uri

    ev = params.evaluate  # a folder model is exported as predict serves it (tta auto: mirror under preset nnunet)
    model = load_model(args.model, tracking_uri=resolve_tracking_uri(params), threshold=ev.threshold, tta=ev.tta)
    tta = model.serving.tta  # review of #25: the plain network was exported while the model served mirror
    if tta not in ("none", "mirror"):
        origin = model.provenance.get("serving_origin")  # an MLflow model's own recorded settings win over params
        where = (
            f"recorded with the MLflow model ({origin}; evaluate.tta does not change it): export its training "
            "folder with evaluate.tta none or mirror instead"
            if origin
            else "set evaluate.tta to none or mirror"
        )
        raise ConfigError(
            f"{args.model}: serves with tta {tta!r}, which an export cannot carry (none or mirror): {where}"
        )
    scan = volumes.read_scan(args.check_input, require_spacing=False)  # pixels are enough here
    slices, _ = volumes.to_model_range(scan, model.preprocess)
    result = export_model(
        model,
        args.format,
        args.output,
        slices[: args.max_check_slices],
        tolerance=args.tolerance,
        check_input=str(args.check_input),
        tta=tta,
    )
    print(result.describe())
    return 0
