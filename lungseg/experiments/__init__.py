"""Re-running the papers' comparison tables on the real public data (GitHub issue 6).

* :mod:`lungseg.experiments.tables` — the declarative table specs (dataset, rows = model +
  kwargs, metrics, seeds, ``cpu``/``gpu`` profiles, and the papers' published numbers, kept
  apart from ours).
* :mod:`lungseg.experiments.runner` — preprocess once per dataset, then for every row and seed
  ``lungseg.training.train`` + ``lungseg.evaluation.evaluate`` and one JSON record per run under
  ``docs/results/<table>/<profile>/<row>-seed<k>.json`` (finished cells are skipped on re-run).
* :mod:`lungseg.experiments.report` — mean ± std over seeds from the JSON records alone, and the
  generated blocks of ``docs/results.md``.

CLI: ``lungseg results run --table NAME`` and ``lungseg results report``.
"""

from __future__ import annotations

__all__ = ["tables", "runner", "report"]
