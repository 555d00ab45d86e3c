"""``lungseg results``: re-run the papers' comparison tables and publish them (``docs/results.md``).

``lungseg results run --table NAME [--profile cpu|gpu] [--seeds 0 1 2] [--data-root DIR] [--workdir DIR]``
trains and evaluates every missing cell (row × seed) of a table and writes one JSON record a run;
``lungseg results report`` regenerates the tables of ``docs/results.md`` from those records alone;
``lungseg results list`` shows the tables, rows and profiles.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def add_parser(sub) -> argparse.ArgumentParser:
    from lungseg.experiments.tables import DEFAULT_DATA_ROOT, DEFAULT_REPORT, DEFAULT_RESULTS_DIR, PROFILES, TABLES

    p = sub.add_parser("results", help="re-run the papers' comparison tables; regenerate docs/results.md")
    rsub = p.add_subparsers(dest="results_command", metavar="ACTION", required=True)

    r = rsub.add_parser("run", help="train + evaluate the missing cells of a table (resumable)")
    r.add_argument("--table", required=True, action="append", choices=[*TABLES, "all"],
                   help="table to run (repeatable; 'all' = every table)")
    r.add_argument("--profile", choices=PROFILES, default="cpu", help="cpu = shrunk, cpu-long = 128² / 30 epochs (infection tables), gpu = paper sizes (default: cpu)")
    r.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: the table's, 0 1 2)")
    r.add_argument("--rows", nargs="+", default=None, help="only these row keys (see `lungseg results list`)")
    r.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT,
                   help=f"folder holding the raw datasets (default: {DEFAULT_DATA_ROOT})")
    r.add_argument("--workdir", type=Path, default=Path(".results-work"),
                   help="preprocessed-data cache and training outputs (default: .results-work)")
    r.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR,
                   help=f"where run records go (default: {DEFAULT_RESULTS_DIR})")
    r.add_argument("--force", action="store_true", help="re-run cells that already have a record")
    r.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    for name, tp in (("image-size", int), ("base-channels", int), ("epochs", int), ("batch-size", int), ("lr", float)):
        r.add_argument(f"--{name}", type=tp, default=None, help=f"override the profile's {name} (recorded in each run)")
    r.add_argument("--keep-checkpoints", action="store_true", help="keep *.pt files in the workdir")
    r.add_argument("--no-report", action="store_true", help="do not regenerate docs/results.md afterwards")
    r.add_argument("--report", type=Path, default=DEFAULT_REPORT, help=f"report to regenerate (default: {DEFAULT_REPORT})")

    rep = rsub.add_parser("report", help="regenerate the tables of docs/results.md from the JSON records")
    rep.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR)
    rep.add_argument("--output", type=Path, default=DEFAULT_REPORT)
    rep.add_argument("--print", action="store_true", help="print the generated blocks instead of writing")

    rsub.add_parser("list", help="the tables, their rows and profiles")
    return p


def _command(args: argparse.Namespace, table: str) -> str:
    """The ``lungseg results run`` command line that reproduces one table's cells (stored in each record)."""
    parts = ["lungseg", "results", "run", "--table", table, "--profile", args.profile]
    if args.seeds is not None:
        parts += ["--seeds", *map(str, args.seeds)]
    if args.rows:
        parts += ["--rows", *args.rows]
    from lungseg.experiments.tables import DEFAULT_DATA_ROOT

    if Path(args.data_root) != DEFAULT_DATA_ROOT:
        parts += ["--data-root", str(args.data_root)]
    for name in ("image_size", "base_channels", "epochs", "batch_size", "lr"):
        value = getattr(args, name)
        if value is not None:
            parts += [f"--{name.replace('_', '-')}", str(value)]
    if args.device != "auto":
        parts += ["--device", args.device]
    return " ".join(shlex.quote(p) for p in parts)


def selected_tables(tables: list[str], profile: str) -> list[str]:
    """The tables ``--table`` names, in order; ``all`` = every table that defines ``profile``
    (``cpu-long`` exists for the infection tables only). A named table without the profile is kept,
    so that the runner rejects it with a message naming the valid profiles."""
    from lungseg.experiments.tables import TABLES

    if "all" in tables:
        return [name for name, spec in TABLES.items() if profile in spec.profiles]
    return list(dict.fromkeys(tables))


def run(args: argparse.Namespace) -> int:
    from lungseg.experiments import report as rep
    from lungseg.experiments.tables import TABLES, get_table

    if args.results_command == "list":
        for name, spec in TABLES.items():
            print(f"{name}: {spec.title}")
            print(f"  dataset {spec.dataset} (<data-root>/{spec.input_subdir}), seeds {list(spec.seeds)}")
            for pname, prof in spec.profiles.items():
                print(f"  profile {pname}: image {prof.image_size}, base {prof.base_channels}, {prof.epochs} epochs, "
                      f"batch {prof.batch_size}, lr {prof.lr:g}"
                      + (f", model kwargs {prof.model_overrides}" if prof.model_overrides else ""))
            for row in spec.rows:
                print(f"  row {row.key}: {row.label} = {row.model} {row.model_kwargs or ''}")
        return 0

    if args.results_command == "report":
        if args.print:
            for key, body in rep.render_blocks(args.results_dir).items():
                print(f"## {key}\n\n{body}\n")
            return 0
        path = rep.update_report(args.output, args.results_dir)
        print(f"wrote {path}")
        return 0

    from lungseg.experiments.runner import run_table

    names = selected_tables(args.table, args.profile)
    overrides = {"image_size": args.image_size, "base_channels": args.base_channels, "epochs": args.epochs,
                 "batch_size": args.batch_size, "lr": args.lr}
    failed = 0
    for name in names:
        spec = get_table(name)
        command = _command(args, name)
        outcomes = run_table(
            spec, profile=args.profile, seeds=args.seeds, rows=args.rows, data_root=args.data_root,
            workdir=args.workdir, results_dir=args.results_dir, force=args.force, overrides=overrides,
            device=args.device, command=command, keep_checkpoints=args.keep_checkpoints,
        )
        failed += sum(o.status == "failed" for o in outcomes)
        done = sum(o.status == "done" for o in outcomes)
        print(f"{name}: {done} run, {sum(o.status == 'skipped' for o in outcomes)} skipped, "
              f"{sum(o.status == 'failed' for o in outcomes)} failed")
    if not args.no_report:
        print(f"wrote {rep.update_report(args.report, args.results_dir)}")
    if failed:
        print(f"error: {failed} cell(s) failed (tracebacks in {args.workdir / 'failures.log'})", file=sys.stderr)
        return 1
    return 0
