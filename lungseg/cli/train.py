"""``lungseg train``: train a model on a preprocessed set, tracked in MLflow; with ``--nproc-per-node``,
as a DDP group that lungseg starts itself (:mod:`lungseg.training.launch`)."""

from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path

from lungseg.cli._common import add_output_folder_argument, add_params_argument, load

#: the group options besides ``--nproc-per-node`` (argparse dest → option)
GROUP_OPTIONS = {
    "nnodes": "--nnodes",
    "node_rank": "--node-rank",
    "master_addr": "--master-addr",
    "master_port": "--master-port",
}


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train a model (checkpoint every epoch, MLflow tracking)")
    p.add_argument("--data", type=Path, required=True, help="preprocessed dataset folder")
    add_output_folder_argument(
        p, "folder for checkpoints and the final model; a folder lungseg did not write is refused unless --overwrite"
    )
    p.add_argument("--resume", action="store_true", help="resume from the last checkpoint in --output")
    add_params_argument(p)
    g = p.add_argument_group(
        "multi-GPU (DDP)",
        "lungseg starts the torchrun group itself: one `error:` line, the MLflow run marked, when a process "
        "fails or is killed (docs/training.md, 'Multi-GPU and multi-node')",
    )
    g.add_argument("--nproc-per-node", type=int, metavar="N", help="processes on this node (one per GPU)")
    g.add_argument("--nnodes", type=int, metavar="N", help="nodes in the group (default 1)")
    g.add_argument("--node-rank", type=int, metavar="R", help="this node's rank, 0 … nnodes-1 (default 0)")
    g.add_argument("--master-addr", metavar="HOST", help="node 0's address (needed with --nnodes > 1)")
    g.add_argument("--master-port", type=int, metavar="PORT", help="node 0's port (default 29500)")
    return p


def run(args: argparse.Namespace) -> int:
    params = load(args)  # config errors surface before heavy imports (and before a group is started)
    if args.nproc_per_node is not None:
        return _launch(args)
    given = [option for dest, option in GROUP_OPTIONS.items() if getattr(args, dest) is not None]
    if given:
        from lungseg.errors import ConfigError

        raise ConfigError(f"{', '.join(given)}: only with --nproc-per-node (lungseg starts the group)")
    stopping = _stop_on_sigterm()
    try:
        from lungseg.training import train

        result = train(params, data_dir=args.data, output_dir=args.output, resume=args.resume)
    finally:  # not while the process ends (an exception raised in an atexit hook is a traceback)
        if stopping:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    print(result.describe())
    return 0


def _launch(args: argparse.Namespace) -> int:
    """``--nproc-per-node``: every rank runs this same command without the group options."""
    from lungseg.training.launch import Group, launch

    group = Group(
        nproc_per_node=args.nproc_per_node,
        nnodes=1 if args.nnodes is None else args.nnodes,
        node_rank=0 if args.node_rank is None else args.node_rank,
        master_addr=args.master_addr,
        master_port=29500 if args.master_port is None else args.master_port,
    )
    train_args = ["--data", str(args.data), "--output", str(args.output), "--params", str(args.params)]
    train_args += ["--resume"] * args.resume + ["--overwrite"] * args.overwrite
    return launch(group, train_args, args.output)


def _stop_on_sigterm() -> bool:
    """Under torchrun (``RANK`` and ``WORLD_SIZE`` set), SIGTERM — what torchrun sends the other processes
    when one fails, or forwards when it is itself stopped — ends this process through ``SystemExit(143)``
    instead of at once, so that rank 0's MLflow run is ended KILLED and its files closed, not left RUNNING
    (torchrun sends SIGKILL 30 s later if the process is stuck in a collective). Whether it did (the
    caller restores the default once training has ended)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return False
    if threading.current_thread() is not threading.main_thread():
        return False

    def stop(signum, _frame):
        signal.signal(signum, signal.SIG_DFL)  # a second SIGTERM ends the process at once
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    return True
