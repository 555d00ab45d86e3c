"""``lungseg lineage``: which data, code, parameters and image made a model (``--check``: is the data still there).

A decision record (``reports/medseg-registration.json``) as the target is read only in the tracking store it
names: in another store it is invalid (one ``error:`` line).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lungseg.cli._common import add_params_argument, load


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("lineage", help="data version, code, params and image behind a model or run")
    p.add_argument(
        "target",
        help="registry URI (models:/lungseg-lgnet@champion, models:/NAME/VERSION), a run id, or a decision record "
        "of `lungseg register --output` (reports/medseg-registration.json: valid only in the store it names)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="get the recorded data version back and verify its hash: from the DVC remote, or from git at the "
        "recorded commit for a git-tracked folder",
    )
    p.add_argument("--repo", type=Path, default=Path("."), help="the git/DVC repository the data version lives in")
    p.add_argument("--remote", default=None, help="DVC remote for --check (default: the repository's default)")
    p.add_argument("--json", action="store_true", help="print the record as JSON")
    add_params_argument(p)
    return p


def run(args: argparse.Namespace) -> int:
    params = load(args)  # config errors surface before heavy imports
    import json

    from lungseg import lineage
    from lungseg.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(params)
    target, decision = args.target, None
    if not target.startswith("models:/") and Path(target).suffix == ".json":
        target, decision = lineage.decision_target(args.target, uri)
    record = lineage.describe(target, uri)
    if decision is not None:
        lineage.check_decision(record, decision, args.target, uri)
    print(json.dumps(record.to_dict(), indent=2, sort_keys=True) if args.json else record.describe())
    if args.check:
        got = lineage.check(record, args.repo, remote=args.remote)
        where = "taken from git at that commit" if got.in_git else "fetched from the DVC remote"
        print(f"check: {record.data.where()} {where} and hashes to {got.md5} (as recorded)")
    return 0
