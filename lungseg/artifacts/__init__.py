"""Artifacts: what training writes and evaluation, inference and the registry read — the floor they all
stand on (it imports none of them).

Modules (imported on use, never here: the MLflow model copies :mod:`lungseg.artifacts.core` and
:mod:`lungseg.artifacts.pyfunc` into its own code folder, and they must not drag the rest in):

* :mod:`~lungseg.artifacts.checkpoint` — ``checkpoint.pt`` / ``best.pt``: the format, the model
  identity they are checked against, their atomic I/O.
* :mod:`~lungseg.artifacts.run_file` — ``mlflow_run.json``: the typed reader and writer of the
  training run's record.
* :mod:`~lungseg.artifacts.core` — the portable model core (torch only): resize a batch of [0, 1]
  slices to the model's size exactly as preprocessing does, probabilities, resize back, labels.
* :mod:`~lungseg.artifacts.pyfunc` — the portable MLflow model (``log_model``, ``save_model``).

See ``docs/CONTRACTS.md`` (the layers) and ``docs/training.md`` (the files).
"""
