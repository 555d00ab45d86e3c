"""``lungseg predict``: masks in the input's geometry and an infection-burden report for one scan."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from lungseg.cli._common import add_output_folder_argument, add_params_argument


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "predict",
        help="masks + infection-burden report for a CT scan (NIfTI, DICOM series, PNG/TIFF slices)",
        description="Predict masks for one scan with a trained model (a `lungseg train` folder or an MLflow URI "
        "such as models:/lungseg-lgnet@champion) and write them in the input's geometry, with a "
        "burden report (report.json, summary.txt, overlay.png). The preprocessing (image size, HU "
        "window) is the one recorded with the model. See docs/inference.md.",
    )
    p.add_argument(
        "--input",
        type=Path,
        required=True,
        help="a NIfTI file, a DICOM series folder, or a folder of PNG/TIFF slices (or one slice); or a "
        "cohort: a folder of NIfTI files and/or one sub-folder per case (models loaded once, one output "
        "sub-folder per case, burden.csv)",
    )
    add_output_folder_argument(
        p, "output folder (replaced atomically); a folder lungseg did not write is refused unless --overwrite"
    )
    p.add_argument(
        "--model",
        help="training output folder, checkpoint file or MLflow model URI; its role (lung "
        "field or infection) follows from its label names",
    )
    p.add_argument("--lung-model", help="lung-field model (folder or MLflow URI) for the cascade")
    p.add_argument("--infection-model", help="infection model (folder or MLflow URI) for the cascade")
    p.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        metavar=("ROW", "COL", "SLICE"),
        help="voxel size in mm for inputs that record none (PNG/TIFF slices, a NIfTI without geometry)",
    )
    p.add_argument(
        "--intensity",
        choices=("hu", "hu+1024", "unit", "uint8", "uint16"),  # lungseg.data.transforms.STATABLE (a test checks)
        help="the input's intensity domain where its data cannot tell it (Hounsfield units, CT numbers + 1024, "
        "[0, 1], 8-bit or 16-bit grey levels); checked against the values (docs/inference.md, 'Intensity')",
    )
    p.add_argument("--dicom-seg", action="store_true", help="also write a DICOM SEG (DICOM input only)")
    p.add_argument(
        "--no-postprocess",
        action="store_true",
        help="serve without the model's post-processing (largest lung components + filled holes for a "
        "lung-field model); the report says the masks differ from what the model was evaluated with",
    )
    p.add_argument(
        "--save-probabilities",
        action="store_true",
        help="also write each model's foreground probability map (float32, on the masks' grid)",
    )
    p.add_argument(
        "--continue",
        dest="resume",
        action="store_true",
        help="cohort input: keep the cases already done in --output (same models only) and predict the rest",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    p.add_argument(
        "--precision",
        default="auto",
        help="auto (default: the model's serving setting; a model without one, or auto: fp32 on every "
        "device, the arithmetic it was evaluated in), fp32 or bf16 (a CPU without native bf16 runs fp32, "
        "with a note); another "
        "value than the model was evaluated with is noted in the report's warnings",
    )
    p.add_argument(
        "--backend",
        default="torch",
        help="torch (default) or onnxruntime (CPU, fp32: the ONNX export the model folder carries, else "
        "one exported at load and checked against PyTorch on slices of the scan)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch backend: compile the network (torch.compile, inductor) once per process, every batch padded "
        "to --batch-size; the first batch waits for the compile (minutes on a CPU: see docs/inference.md)",
    )
    p.add_argument("--batch-size", type=int, default=None, help="slices per batch (default 16 on CUDA, 4 on CPU)")
    add_params_argument(p)
    return p


def params_or_defaults(args: argparse.Namespace):
    """``--params`` when the file exists; the defaults when the default ``params.yaml`` is absent
    (predict needs only the MLflow store and the evaluation threshold, so it runs outside a checkout)."""
    from lungseg.cli._common import load
    from lungseg.config import Params

    if not args.params.is_file() and args.params == Path("params.yaml"):
        return Params()
    return load(args)


def _precision_and_backend(args: argparse.Namespace) -> tuple[str, str]:
    """``--precision`` and ``--backend``, checked (one-line :class:`ConfigError` naming the allowed values)."""
    from lungseg.errors import ConfigError

    precisions, backends = ("auto", "fp32", "bf16"), ("torch", "onnxruntime")
    if args.precision not in precisions:
        raise ConfigError(f"--precision: unknown precision {args.precision!r} (allowed: {', '.join(precisions)})")
    if args.backend not in backends:
        raise ConfigError(f"--backend: unknown backend {args.backend!r} (allowed: {', '.join(backends)})")
    if args.backend == "onnxruntime" and args.precision == "bf16":
        raise ConfigError(
            "--backend onnxruntime runs the fp32 export: give --precision fp32 or auto, or --backend torch"
        )
    return args.precision, args.backend


def run(args: argparse.Namespace) -> int:
    from lungseg.errors import ConfigError

    params = params_or_defaults(args)
    if args.model and (args.lung_model or args.infection_model):
        raise ConfigError("give --model, or --lung-model / --infection-model, not both")
    if not (args.model or args.lung_model or args.infection_model):
        raise ConfigError("give a model: --model, or --lung-model and/or --infection-model")

    from lungseg.inference.predict import load_model, predict_scan
    from lungseg.tracking import resolve_tracking_uri

    t0 = time.perf_counter()
    uri = resolve_tracking_uri(params)
    ev = params.evaluate
    serving = {"tracking_uri": uri, "threshold": ev.threshold, "postprocess": ev.postprocess, "tta": ev.tta}
    serving["precision"] = ev.precision
    precision, backend = _precision_and_backend(args)
    if args.compile and backend != "torch":
        raise ConfigError(f"--compile compiles the torch backend: leave it out with --backend {backend}")
    specs = [(None, args.model)] if args.model else [("lung", args.lung_model), ("infection", args.infection_model)]
    models = {}
    for role, spec in specs:
        if not spec:
            continue
        model = load_model(spec, **serving)
        if role is not None and model.role != role:
            raise ConfigError(f"--{role}-model {spec}: its labels are {model.label_names}, a {model.role} model")
        if args.no_postprocess:
            model = model.served_as(
                postprocess="none",
                note=f"served without its post-processing {model.serving.postprocess!r} (--no-postprocess): "
                "the masks differ from what the model was evaluated with",
            )
        if precision != "auto":
            evaluated = {"auto": "fp32"}.get(model.serving.precision, model.serving.precision)  # auto runs fp32 (#24)
            model = model.served_as(
                precision=precision,
                note=f"served in {precision} (--precision), evaluated with precision {model.serving.precision!r}"
                if precision != evaluated
                else "",
                overridden=precision != evaluated,
            )
        models[model.role] = model
    options = {
        "device": args.device,
        "batch_size": args.batch_size,
        "dicom_seg": args.dicom_seg,
        "spacing": tuple(args.spacing) if args.spacing else None,
        "intensity": args.intensity,
        "save_probabilities": args.save_probabilities,
        "backend": backend,
        "compile": args.compile,
    }
    from lungseg.inference.cohort import find_cases, predict_cohort

    if find_cases(args.input) is not None:
        cohort = predict_cohort(args.input, args.output, models, resume=args.resume, **options)
        print(cohort.describe())
        return 1 if cohort.failed else 0
    if args.resume:
        raise ConfigError("--continue is for a cohort folder (NIfTI files and/or one sub-folder per case)")
    result = predict_scan(args.input, args.output, models, load_seconds=time.perf_counter() - t0, **options)
    print(result.describe())
    return 0
