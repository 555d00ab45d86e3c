"""What every component does around its one library call, written once (imported inside the
component functions: a lightweight component ships only its own source, the image has this package).

* :func:`stage_params` — the JSON-string parameters of the stage's ``params.yaml`` sections → typed
  :class:`lungseg.config.Params` (the same checks as ``params.yaml`` gets).
* :func:`run_stage` — the CLI's contract: a user error (:class:`lungseg.errors.LungsegError`) is one
  ``error: …`` line on stderr and exit status 2 (``SystemExit``), never a traceback.
* :func:`publish_metrics` — a ``metrics.json`` of the library into the KFP ``Metrics`` artifact.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def stage_params(**sections: str):
    """``stage_params(train=train_params, mlflow=mlflow_params)`` → ``Params`` with those sections."""
    from lungseg.config import params_from_dict

    return params_from_dict({name: json.loads(text) for name, text in sections.items()}, "pipeline parameters")


def run_stage(call: Callable[[], T]) -> T:
    """``call()``; a :class:`~lungseg.errors.LungsegError` becomes ``error: …`` and ``SystemExit(2)``."""
    from lungseg.cli._logging import configure_logging
    from lungseg.errors import LungsegError

    configure_logging()  # the library's messages in the task's log, as on the command line
    try:
        return call()
    except LungsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from exc


def publish_metrics(metrics, summary_file: str | Path) -> dict[str, Any]:
    """Log every finite number of ``summary_file`` (a stage's JSON summary) to the KFP ``metrics``
    artifact, and write the summary as the artifact's file too (KFP's local cache treats an
    artifact without a file as a cache miss). Returns the summary."""
    summary = json.loads(Path(summary_file).read_text(encoding="utf-8"))
    for key, value in summary.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            metrics.log_metric(key, float(value))  # KFP metrics cannot hold NaN (e.g. undefined HD)
    Path(metrics.path).parent.mkdir(parents=True, exist_ok=True)
    Path(metrics.path).write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    return summary
