"""Loading a benchmark script of ``bench/`` (not a package) as a module, for the tests of ``tests/bench`` and
``tests/inference/test_bench_inference.py``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_bench(name: str) -> ModuleType:
    """``bench/<name>.py`` executed as module ``name`` (with ``bench/`` on ``sys.path``, as the scripts put
    it there themselves, so that their ``_report`` import resolves)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
