"""``lungseg pipeline``: compile, submit or locally run the Kubeflow (KFP v2) pipeline.

Registered as a plugin subcommand through the ``lungseg.subcommands`` entry point (see
``pyproject.toml``), so that ``lungseg`` never imports ``pipelines`` (imports flow one way:
pipelines → components → lungseg).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lungseg.cli._common import add_params_argument, load


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("pipeline", help="Kubeflow pipeline: compile | submit | run-local")
    act = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    c = act.add_parser("compile", help="write the pipeline YAML")
    c.add_argument("--output", type=Path, default=Path("pipelines/lungseg_pipeline.yaml"))
    s = act.add_parser("submit", help="submit to a Kubeflow Pipelines endpoint with kfp.Client")
    s.add_argument("--host", required=True, help="KFP API endpoint, e.g. https://kubeflow.example/pipeline")
    s.add_argument("--experiment", default="lungseg")
    s.add_argument("--dataset", default="medseg")
    s.add_argument("--input-uri", required=True, help="where the raw data is for the cluster (s3://...)")
    add_params_argument(s)
    r = act.add_parser("run-local", help="run the same pipeline here with kfp.local.SubprocessRunner")
    r.add_argument("--dataset", default="medseg")
    r.add_argument("--input", type=Path, required=True, help="raw dataset folder")
    r.add_argument("--workdir", type=Path, default=Path(".kfp-local"), help="KFP local pipeline root")
    add_params_argument(r)
    return p


def run(args: argparse.Namespace) -> int:
    from pipelines import ops as pipeline_ops

    if args.action == "compile":
        path = pipeline_ops.compile_pipeline(args.output)
        print(f"wrote {path}")
        return 0
    params = load(args)
    if args.action == "submit":
        run_id = pipeline_ops.submit(
            params, host=args.host, experiment=args.experiment, dataset=args.dataset, input_uri=args.input_uri
        )
        print(f"submitted run {run_id}")
        return 0
    outputs = pipeline_ops.run_local(params, dataset=args.dataset, input_dir=args.input, workdir=args.workdir)
    print(outputs)
    return 0
