"""Evaluation reports (see :mod:`lungseg.evaluation.report`)."""

from lungseg.evaluation.report import EvalResult, evaluate, predict

__all__ = ["EvalResult", "evaluate", "predict"]
