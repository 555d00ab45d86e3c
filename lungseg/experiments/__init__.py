"""Re-running the papers' comparison tables on the real public data (GitHub issue 6).

Data (what to run, what the papers printed):

* :mod:`lungseg.experiments.specs` — the four tables (:data:`~lungseg.experiments.specs.TABLES`):
  dataset, rows = model + kwargs, metrics, seeds, ``cpu``/``cpu-long``/``cpu-paper``/``gpu`` profiles.
* :mod:`lungseg.experiments.published` — the papers' own numbers, quoted as printed, kept apart from ours.

Machinery (how):

* :mod:`lungseg.experiments.tables` — the spec types (``TableSpec``, ``Row``, ``Profile``, ``Metric``,
  ``Published``) and their validation.
* :mod:`lungseg.experiments.records` — the typed run record (``RunRecord``): the JSON file format.
* :mod:`lungseg.experiments.runner` — preprocess once per dataset, then for every row and seed
  ``lungseg.training.train`` + ``lungseg.evaluation.evaluate`` and one record per run under
  ``<results>/<table>/<profile>/<row>-seed<k>.json`` (finished cells are skipped on re-run).
* :mod:`lungseg.experiments.report` — mean ± std over seeds from the records alone, and the
  generated blocks of the results page.

No module here knows where a repository is: the results folder, the page and the data root are
arguments; ``lungseg results`` (:mod:`lungseg.cli.results`) chooses their defaults from the working
directory and the environment.
"""

from __future__ import annotations

__all__ = ["specs", "published", "tables", "records", "runner", "report"]
