"""The ``lungseg`` command line: a thin layer over the library.

Each subcommand lives in its own module here with two functions, ``add_parser(subparsers)``
and ``run(args) -> int``. Modules import only argparse-level things at import time; the heavy
libraries (torch, mlflow, kfp, great-expectations) are imported inside ``run`` so that
``lungseg --help`` answers fast.

Errors derived from :class:`lungseg.errors.LungsegError` are printed as ``error: <message>``
and exit with their ``exit_code``; anything else is a bug and propagates with its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from lungseg import __version__

#: subcommand name → module under ``lungseg.cli``
SUBCOMMANDS = {
    "preprocess": "preprocess",
    "train": "train",
    "evaluate": "evaluate",
    "register": "register",
    "models": "models",
    "results": "results",
    "predict": "predict",
    "export": "export",
    "lineage": "lineage",
    "store": "store",
}

#: entry-point group through which other packages add subcommands (``pipelines`` adds ``pipeline``)
PLUGIN_GROUP = "lungseg.subcommands"


def _subcommand_modules():
    for module_name in SUBCOMMANDS.values():
        yield importlib.import_module(f"lungseg.cli.{module_name}")
    from importlib.metadata import entry_points

    for ep in sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        yield ep.load()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lungseg",
        description="Train, track and ship lung CT segmentation models (LG-Net, PR-Net, baselines).",
    )
    parser.add_argument("--version", action="version", version=f"lungseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _subcommand_modules():
        sp = module.add_parser(sub)
        sp.set_defaults(_run=module.run)
    return parser


#: arguments that may name a command's input files or folders (an output folder must not hold them)
INPUT_ARGUMENTS = ("input", "model", "data", "evaluation", "lung_model", "infection_model", "check_input", "params")


def _check_output_folder(args: argparse.Namespace) -> None:
    """A command with an output folder (``--output`` + ``--overwrite``) checks it before any work:
    a file there, a non-empty folder lungseg did not write (unless ``--overwrite``), the current folder
    or a folder holding one of the command's inputs is refused (:func:`lungseg.io.check_output_dir`)."""
    if not hasattr(args, "overwrite") or getattr(args, "output", None) is None:
        return
    from pathlib import Path

    from lungseg.io import check_output_dir

    inputs = [getattr(args, name, None) for name in INPUT_ARGUMENTS]
    keep = tuple(Path(str(x)) for x in inputs if x is not None and Path(str(x)).exists())
    allowed = getattr(args, "_output_inside_input", None)  # an input a command may write into (export's model)
    keep = tuple(x for x in keep if not (allowed and allowed(args, x)))
    check_output_dir(args.output, keep=keep)


def _output_lock(args: argparse.Namespace):
    """The output folder's one-writer lock for the whole command (:func:`lungseg.io.output_lock`): a
    second command writing the same output meanwhile is refused in one line."""
    import contextlib

    if not hasattr(args, "overwrite") or getattr(args, "output", None) is None:
        return contextlib.nullcontext()
    from lungseg.io import output_lock

    return output_lock(args.output)


def main(argv: list[str] | None = None) -> int:
    from lungseg.cli._logging import configure_logging
    from lungseg.errors import LungsegError

    configure_logging()  # the library logs; the command line prints its messages on stderr

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from lungseg.io import overwrite_allowed, written_by

        with overwrite_allowed(getattr(args, "overwrite", False)), written_by(f"lungseg {args.command}"):
            _check_output_folder(args)
            with _output_lock(args):
                return int(args._run(args) or 0)
    except LungsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
