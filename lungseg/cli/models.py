"""``lungseg models``: list the model zoo, or print its parameter/FLOP table."""

from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("models", help="list models or print their parameters/FLOPs")
    p.add_argument("action", choices=["list", "table"], nargs="?", default="list")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="input sizes for `table`")
    p.add_argument("--base-channels", type=int, default=64, help="width for `table` (papers: 64)")
    return p


def run(args: argparse.Namespace) -> int:
    from lungseg import models

    if args.action == "list":
        for name in models.list_models():
            print(name)
        return 0
    from lungseg.models.summary import markdown_table

    print(markdown_table(sizes=args.sizes, base_channels=args.base_channels))
    return 0
