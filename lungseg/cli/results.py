"""``lungseg results``: re-run the papers' comparison tables and publish them (``docs/results.md``).

``lungseg results run --table NAME [--profile cpu|cpu-long|cpu-paper|gpu] [--seeds 0 1 2] [--data-root DIR]
[--workdir DIR] [--results-dir DIR]`` trains and evaluates every missing cell (row × seed) of a table and
writes one JSON record a run; ``lungseg results report`` regenerates the tables of the results page from
those records alone; ``lungseg results check`` compares every record's identity with what today's code
builds for its cell (``--mark`` marks records made by older code), that each record is what its file,
table and numbers say and that the page is what the records generate (:mod:`lungseg.experiments.audit`;
``--strict`` also refuses records made from uncommitted code); ``lungseg results list`` shows the
tables, rows and profiles.

Paths are arguments. Their defaults are resolved here, at the command line, from the working directory
(run from the repository root) or the environment — never from where the package is installed:

=================  ============================  =========================
flag               default                       environment variable
=================  ============================  =========================
``--data-root``    ``../shared/data``            ``LUNGSEG_SHARED_DATA``
``--results-dir``  ``docs/results``              ``LUNGSEG_RESULTS_DIR``
``--report``       ``docs/results.md``           ``LUNGSEG_RESULTS_REPORT``
``--workdir``      ``.results-work``             —
=================  ============================  =========================
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

#: (environment variable, default relative to the working directory) of each path flag
PATH_DEFAULTS = {
    "data_root": ("LUNGSEG_SHARED_DATA", "../shared/data"),
    "results_dir": ("LUNGSEG_RESULTS_DIR", "docs/results"),
    "report": ("LUNGSEG_RESULTS_REPORT", "docs/results.md"),
}


def default_path(name: str, environ: Mapping[str, str] | None = None) -> Path:
    """The default of a path flag: its environment variable if set, else a path relative to the
    working directory (``docs/results``, …: the repository layout, when run from its root)."""
    env, fallback = PATH_DEFAULTS[name]
    environ = os.environ if environ is None else environ
    return Path(environ.get(env) or fallback)


def _path_help(name: str, what: str) -> str:
    env, fallback = PATH_DEFAULTS[name]
    return f"{what} (default: ${env}, else {fallback} relative to the working directory; now {default_path(name)})"


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("results", help="re-run the papers' comparison tables; regenerate docs/results.md")
    rsub = p.add_subparsers(dest="results_command", metavar="ACTION", required=True)

    _add_run(rsub)
    _add_report(rsub)
    _add_check(rsub)
    rsub.add_parser("list", help="the tables, their rows and profiles")
    return p


def _add_run(rsub) -> None:
    from lungseg.experiments.specs import TABLES
    from lungseg.experiments.tables import PROFILES

    r = rsub.add_parser("run", help="train + evaluate the missing cells of a table (resumable)")
    r.add_argument(
        "--table",
        required=True,
        action="append",
        choices=[*TABLES, "all"],
        help="table to run (repeatable; 'all' = every table that has the profile)",
    )
    r.add_argument(
        "--profile",
        choices=PROFILES,
        default="cpu",
        help="cpu = shrunk, cpu-long = 128² / 30 epochs (infection tables), cpu-paper = the paper "
        "recipe at a CPU size (lgnet-table1), gpu = the papers' recipe and sizes (default: cpu)",
    )
    r.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: the table's, 0 1 2)")
    r.add_argument("--rows", nargs="+", default=None, help="only these row keys (see `lungseg results list`)")
    r.add_argument(
        "--data-root",
        type=Path,
        default=default_path("data_root"),
        help=_path_help("data_root", "folder holding the raw datasets"),
    )
    r.add_argument(
        "--workdir",
        type=Path,
        default=Path(".results-work"),
        help="preprocessed-data cache and training outputs (default: .results-work)",
    )
    r.add_argument(
        "--results-dir",
        type=Path,
        default=default_path("results_dir"),
        help=_path_help("results_dir", "where run records go"),
    )
    r.add_argument("--force", action="store_true", help="re-run cells that already have a record")
    r.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    for name, tp in (("image-size", int), ("base-channels", int), ("epochs", int), ("batch-size", int), ("lr", float)):
        r.add_argument(f"--{name}", type=tp, default=None, help=f"override the profile's {name} (recorded in each run)")
    r.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default=None,
        help="train.precision of every run (recorded in each run; default: the profile's, auto). bf16 on a CPU "
        "without native bf16 is refused unless LUNGSEG_FORCE_BF16_EMULATION=1 (emulated, several times slower)",
    )
    r.add_argument("--keep-checkpoints", action="store_true", help="keep *.pt files in the workdir")
    r.add_argument(
        "--score-at-source",
        action="store_true",
        help="also score the test masks at their source resolution (probabilities resized back and "
        "thresholded, as lungseg predict does; stored as source_resolution in each record)",
    )
    r.add_argument("--no-report", action="store_true", help="do not regenerate the results page afterwards")
    r.add_argument(
        "--report", type=Path, default=default_path("report"), help=_path_help("report", "results page to regenerate")
    )


def _add_report(rsub) -> None:
    rep = rsub.add_parser("report", help="regenerate the tables of docs/results.md from the JSON records")
    rep.add_argument(
        "--results-dir",
        type=Path,
        default=default_path("results_dir"),
        help=_path_help("results_dir", "where the run records are"),
    )
    rep.add_argument(
        "--output",
        "--report",
        dest="output",
        type=Path,
        default=default_path("report"),
        help=_path_help("report", "results page to regenerate"),
    )
    rep.add_argument("--print", action="store_true", help="print the generated blocks instead of writing")


def _add_check(rsub) -> None:
    chk = rsub.add_parser(
        "check",
        help="compare every record's identity with what today's code builds for its cell; --mark marks older ones",
    )
    chk.add_argument(
        "--results-dir",
        type=Path,
        default=default_path("results_dir"),
        help=_path_help("results_dir", "where the run records are"),
    )
    chk.add_argument(
        "--mark",
        action="store_true",
        help="write the mark into records made by older code: no identity → 'unrecorded' with what git "
        "history says of their commit; a recorded identity that differs → 'stale' (needs --stale-reason)",
    )
    chk.add_argument("--stale-reason", default=None, help="why recorded identities differ (e.g. the commit)")
    chk.add_argument(
        "--renote", action="store_true", help="with --mark: write the notes of records marked unrecorded again"
    )
    chk.add_argument(
        "--report",
        type=Path,
        default=None,
        help="the results page that must be what the records generate "
        f"(default: {PATH_DEFAULTS['report'][1]} or ${PATH_DEFAULTS['report'][0]}, compared when it exists)",
    )
    chk.add_argument("--no-page", action="store_true", help="do not compare the results page with the records")
    chk.add_argument(
        "--strict",
        action="store_true",
        help="refuse records made from uncommitted code (git.dirty true, or not recorded) instead of warning",
    )


def _check(args: argparse.Namespace) -> int:
    """``lungseg results check``: one line per record not current; ``error: <file>: <problem>`` for
    each record neither current nor marked as made by older code, each record that is not what its
    file, table and numbers say (:func:`lungseg.experiments.audit.record_problems`) and each way the
    page is not what the records generate; ``warning: <file>: …`` for each record made from
    uncommitted code (an error with ``--strict``). Exit 1 on any error."""
    from lungseg.experiments import identity
    from lungseg.experiments.report import mix_problems

    results_dir = _require_results_dir(args.results_dir)
    if args.mark:
        written = identity.mark_records(results_dir, Path.cwd(), args.stale_reason, renote=args.renote)
        print(f"marked {len(written)} record(s)")
    found = identity.check_records(results_dir)
    for status in ("unrecorded", "stale", "differs", "missing", "invalid"):
        for record, note in found.get(status, []):
            print(f"{status}: {record.table}/{record.profile}/{record.cell}: {note}")
    counts = ", ".join(f"{len(v)} {k}" for k, v in sorted(found.items()))
    print(f"{sum(len(v) for v in found.values())} records: {counts}")
    errors = [
        f"{record.path}: identity {status}: {note}"
        for status in ("differs", "missing", "invalid")
        for record, note in found.get(status, [])
    ]
    unmarked = len(errors)
    records = [r for v in found.values() for r, _ in v]
    errors += _record_errors(records)
    errors += mix_problems(records)  # a row mixing records of different tta or precision (reviews of #25, #24)
    warnings = _code_state_lines(records)
    errors += warnings if getattr(args, "strict", False) else []
    for line in [] if getattr(args, "strict", False) else warnings:
        print(f"warning: {line}", file=sys.stderr)
    errors += _page_errors(args, results_dir)
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    if errors:
        hint = " (records neither current nor marked as made by older code: re-run them, or --mark)"
        print(
            f"error: {results_dir}: {len(errors)} problem(s) above{hint if unmarked else ''}",
            file=sys.stderr,
        )
        return 1
    return 0


def _record_errors(records) -> list[str]:
    """``<file>: <problem>`` for each record that is not what its file, table and numbers say."""
    from lungseg.experiments.audit import record_problems

    return [
        f"{r.path}: {problem}" for r in sorted(records, key=lambda r: str(r.path)) for problem in record_problems(r)
    ]


def _code_state_lines(records) -> list[str]:
    """``<file>: made from a dirty tree …`` for each record made from uncommitted (or unrecorded) code."""
    from lungseg.experiments.audit import code_state_note

    notes = [(r.path, code_state_note(r)) for r in sorted(records, key=lambda r: str(r.path))]
    return [f"{path}: {note}" for path, note in notes if note]


def _page_errors(args: argparse.Namespace, results_dir: Path) -> list[str]:
    """``<page>: <problem>`` for each way the results page is not what the records generate; the
    default page is compared when it exists and the records are the default folder's, a page named by
    ``--report`` must exist."""
    from lungseg.experiments.report import page_problems

    named = getattr(args, "report", None)
    other_records = Path(results_dir).resolve() != default_path("results_dir").resolve()
    if getattr(args, "no_page", False) or (named is None and other_records):
        return []
    page = Path(named) if named is not None else default_path("report")
    if not page.is_file():
        return [f"{page}: results page not found"] if named is not None else []
    return [f"{page}: {problem} (run lungseg results report)" for problem in page_problems(page, results_dir)]


def _command(args: argparse.Namespace, table: str) -> str:
    """The ``lungseg results run`` command line that reproduces one table's cells (stored in each record)."""
    parts = ["lungseg", "results", "run", "--table", table, "--profile", args.profile]
    if args.seeds is not None:
        parts += ["--seeds", *map(str, args.seeds)]
    if args.rows:
        parts += ["--rows", *args.rows]
    if Path(args.data_root) != default_path("data_root"):
        parts += ["--data-root", str(args.data_root)]
    for name in ("image_size", "base_channels", "epochs", "batch_size", "lr", "precision"):
        value = getattr(args, name, None)
        if value is not None:
            parts += [f"--{name.replace('_', '-')}", str(value)]
    if args.device != "auto":
        parts += ["--device", args.device]
    if getattr(args, "score_at_source", False):
        parts += ["--score-at-source"]
    if getattr(args, "precision", None) == "bf16" and os.environ.get("LUNGSEG_FORCE_BF16_EMULATION") == "1":
        parts = ["LUNGSEG_FORCE_BF16_EMULATION=1", *parts]  # the run was forced to emulate bf16 (#24)
    return " ".join(shlex.quote(p) for p in parts)


def selected_tables(tables: list[str], profile: str) -> list[str]:
    """The tables ``--table`` names, in order; ``all`` = every table that defines ``profile``
    (``cpu-long`` exists for the infection tables only). A named table without the profile is kept,
    so that the runner rejects it with a message naming the valid profiles."""
    from lungseg.experiments.specs import TABLES

    if "all" in tables:
        return [name for name, spec in TABLES.items() if profile in spec.profiles]
    return list(dict.fromkeys(tables))


def _require_results_dir(path: Path) -> Path:
    from lungseg.errors import DataError

    if not path.is_dir():
        raise DataError(
            path,
            "results folder not found: run from the repository root, or pass --results-dir "
            "(or set LUNGSEG_RESULTS_DIR)",
        )
    return path


def _list() -> int:
    from lungseg.experiments.specs import TABLES

    for name, spec in TABLES.items():
        print(f"{name}: {spec.title}")
        print(f"  dataset {spec.dataset} (<data-root>/{spec.input_subdir}), seeds {list(spec.seeds)}")
        for pname, prof in spec.profiles.items():
            print(
                f"  profile {pname}: {prof.describe()}"
                + (f", train {prof.extra_train}" if prof.extra_train else "")
                + (f", model kwargs {prof.model_overrides}" if prof.model_overrides else "")
            )
        for row in spec.rows:
            print(f"  row {row.key}: {row.label} = {row.model} {row.model_kwargs or ''}")
    return 0


def run(args: argparse.Namespace) -> int:
    from lungseg.experiments import report as rep
    from lungseg.experiments.specs import get_table

    if args.results_command == "list":
        return _list()
    if args.results_command == "check":
        return _check(args)

    if args.results_command == "report":
        results_dir = _require_results_dir(args.results_dir)
        if args.print:
            for key, body in rep.render_blocks(results_dir).items():
                print(f"## {key}\n\n{body}\n")
            return 0
        print(f"wrote {rep.update_report(args.output, results_dir)}")
        return 0

    from lungseg.experiments.runner import run_table

    names = selected_tables(args.table, args.profile)
    overrides = {
        "image_size": args.image_size,
        "base_channels": args.base_channels,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "precision": getattr(args, "precision", None),  # train.precision (#24)
    }
    failed = 0
    for name in names:
        outcomes = run_table(
            get_table(name),
            profile=args.profile,
            seeds=args.seeds,
            rows=args.rows,
            data_root=args.data_root,
            workdir=args.workdir,
            results_dir=args.results_dir,
            force=args.force,
            overrides=overrides,
            device=args.device,
            command=_command(args, name),
            keep_checkpoints=args.keep_checkpoints,
            score_at_source=args.score_at_source,
        )
        failed += sum(o.status == "failed" for o in outcomes)
        done = sum(o.status == "done" for o in outcomes)
        print(
            f"{name}: {done} run, {sum(o.status == 'skipped' for o in outcomes)} skipped, "
            f"{sum(o.status == 'failed' for o in outcomes)} failed"
        )
    if not args.no_report and Path(args.results_dir).is_dir():
        print(f"wrote {rep.update_report(args.report, args.results_dir)}")
    if failed:
        print(f"error: {failed} cell(s) failed (tracebacks in {args.workdir / 'failures.log'})", file=sys.stderr)
        return 1
    return 0
