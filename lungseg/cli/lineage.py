"""``lungseg lineage``: which data, code, parameters and image made a model (``--check``: is the data still there)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lungseg.cli._common import add_params_argument, load


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("lineage", help="data version, code, params and image behind a model or run")
    p.add_argument("target", help="registry URI (models:/lungseg-lgnet@champion, models:/NAME/VERSION) or a run id")
    p.add_argument(
        "--check", action="store_true", help="fetch the recorded data version from the DVC remote and verify its hash"
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

    record = lineage.describe(args.target, resolve_tracking_uri(params))
    print(json.dumps(record.to_dict(), indent=2, sort_keys=True) if args.json else record.describe())
    if args.check:
        got = lineage.check(record, args.repo, remote=args.remote)
        print(f"check: {record.data.spec()} fetched from the DVC remote and hashes to {got.md5} (as recorded)")
    return 0
