"""``lungseg pipeline``: compile, submit or locally run the Kubeflow (KFP v2) pipeline.

Registered as a plugin subcommand through the ``lungseg.subcommands`` entry point (see
``pyproject.toml``), so that ``lungseg`` never imports ``pipelines`` (imports flow one way:
pipelines → components → lungseg).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lungseg.cli._common import add_params_argument, load


def _add_image_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--image",
        default=None,
        help="run every component in this image, e.g. registry.example/lungseg@sha256:… (pinned)",
    )
    g.add_argument(
        "--image-record",
        type=Path,
        default=None,
        help="pin to the registry digest of a pushed build (.image/<flavour>.json of scripts/image.py)",
    )


def _add_gpu_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", type=int, default=1, help="train on this many GPU nodes (default 1)")
    p.add_argument(
        "--gpus-per-node",
        type=int,
        default=1,
        help="GPUs per node (default 1); more than one GPU in all: the train step is a Kubeflow Trainer "
        "TrainJob running torchrun (DDP), see docs/pipeline.md",
    )


def _add_data_source_arguments(p: argparse.ArgumentParser, stage_default: str) -> None:
    p.add_argument("--repo", type=Path, default=Path("."), help="the git/DVC repository of --data (default: here)")
    p.add_argument(
        "--stage-uri",
        default=None,
        help=f"where --data is staged, as <stage-uri>/<DVC hash>/ (default {stage_default})",
    )


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("pipeline", help="Kubeflow pipeline: compile | submit | run-local")
    act = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    c = act.add_parser("compile", help="write the pipeline YAML")
    c.add_argument("--output", type=Path, default=Path("pipelines/lungseg_pipeline.yaml"))
    _add_image_arguments(c)
    _add_gpu_arguments(c)
    s = act.add_parser("submit", help="submit to a Kubeflow Pipelines endpoint with kfp.Client")
    s.add_argument("--host", required=True, help="KFP API endpoint, e.g. https://kubeflow.example/pipeline")
    s.add_argument("--experiment", default="lungseg")
    s.add_argument("--dataset", default="medseg")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--data",
        metavar="PATH@REV",
        help="a DVC-tracked dataset at a git revision (e.g. data/raw/medseg@v1): staged on S3 by its hash "
        "and recorded with every run",
    )
    src.add_argument("--input-uri", help="raw data already on S3 (s3://...): recorded as unversioned")
    _add_data_source_arguments(s, "s3://lungseg/staged")
    _add_image_arguments(s)
    _add_gpu_arguments(s)
    add_params_argument(s)
    r = act.add_parser(
        "run-local",
        help="run the same pipeline here: subprocesses or the component image",
        description="A trial run: by default it tracks and registers into its own MLflow store "
        "WORKDIR/mlflow.db, not MLFLOW_TRACKING_URI or mlflow.tracking_uri, so it never "
        "moves the production champion; --tracking-uri registers elsewhere.",
    )
    r.add_argument("--dataset", default="medseg")
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--data",
        metavar="PATH@REV",
        help="a DVC-tracked dataset at a git revision (e.g. data/raw/medseg@HEAD): staged by its hash "
        "and recorded with every run",
    )
    src.add_argument(
        "--input",
        help="raw dataset: a folder, or s3://bucket/prefix (read with AWS_* and "
        "AWS_ENDPOINT_URL_S3); recorded as unversioned",
    )
    _add_data_source_arguments(r, "WORKDIR/data")
    r.add_argument("--workdir", type=Path, default=Path(".kfp-local"), help="KFP local pipeline root")
    r.add_argument(
        "--runner",
        choices=("subprocess", "docker"),
        default="subprocess",
        help="subprocess: components in this Python environment; docker: in the component image",
    )
    r.add_argument(
        "--image",
        default=None,
        help="docker runner: the image (default ghcr.io/lungseg/lungseg:<version>-cpu, built by make image)",
    )
    r.add_argument(
        "--tracking-uri",
        default=None,
        help="register into this MLflow store (default: the trial store WORKDIR/mlflow.db)",
    )
    add_params_argument(r)
    return p


def run(args: argparse.Namespace) -> int:
    import os
    import sys

    from pipelines import ops as pipeline_ops

    if args.action == "compile":
        image = pipeline_ops.resolve_image(args.image, args.image_record)
        path = pipeline_ops.compile_pipeline(
            args.output, image=image, nodes=args.nodes, gpus_per_node=args.gpus_per_node
        )
        gpus = args.nodes * args.gpus_per_node
        print(
            f"wrote {path}"
            + (f" (image {image})" if image else "")
            + (f" (train: TrainJob, {args.nodes}×{args.gpus_per_node} GPUs)" if gpus > 1 else "")
        )
        return 0
    params = load(args)
    if args.action == "submit":
        image = pipeline_ops.resolve_image(args.image, args.image_record)
        run_id = pipeline_ops.submit(
            params,
            host=args.host,
            experiment=args.experiment,
            dataset=args.dataset,
            input_uri=args.input_uri,
            image=image,
            data=args.data,
            repo=args.repo,
            stage_uri=args.stage_uri or pipeline_ops.DEFAULT_STAGE_URI,
            nodes=args.nodes,
            gpus_per_node=args.gpus_per_node,
        )
        print(f"submitted run {run_id}")
        return 0
    if args.tracking_uri is None and os.environ.get("MLFLOW_TRACKING_URI"):
        print(
            "note: run-local registers into its own trial store, not MLFLOW_TRACKING_URI "
            f"({os.environ['MLFLOW_TRACKING_URI']}); pass --tracking-uri to register there",
            file=sys.stderr,
        )
    outputs = pipeline_ops.run_local(
        params,
        dataset=args.dataset,
        input_dir=args.input,
        workdir=args.workdir,
        runner=args.runner,
        image=args.image,
        tracking_uri=args.tracking_uri,
        data=args.data,
        repo=args.repo,
        stage_uri=args.stage_uri,
    )
    print(outputs)
    return 0
