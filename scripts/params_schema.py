#!/usr/bin/env python3
"""Write ``docs/params.schema.json``, the JSON schema of ``params.yaml``
(:func:`lungseg.config.params_json_schema`), generated from the typed config.

    python scripts/params_schema.py            # rewrite the committed file
    python scripts/params_schema.py --check    # exit 1 when it is not current (what the test checks)

Run it after changing a section of :mod:`lungseg.config`, a model's constructor options or the
model/loss registries. Editors that read JSON schemas (VS Code's YAML extension:
``# yaml-language-server: $schema=docs/params.schema.json``) then complete and check ``params.yaml``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SCHEMA = Path(__file__).resolve().parents[1] / "docs" / "params.schema.json"


def render() -> str:
    from lungseg.config import params_json_schema

    return json.dumps(params_json_schema(), indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the committed schema is not current")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = SCHEMA.is_file() and SCHEMA.read_text(encoding="utf-8") == text
        if not current:
            print(f"error: {SCHEMA}: not current; run python scripts/params_schema.py", file=sys.stderr)
        return 0 if current else 1
    SCHEMA.write_text(text, encoding="utf-8")
    print(f"wrote {SCHEMA}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
