"""Kubeflow Pipelines v2 components of lungseg: thin lightweight Python components, one library
call each, all running in the one project image (:data:`IMAGE`).

They import ``lungseg`` inside the function body (a lightweight component ships only its own
source), so the same functions run in a cluster pod and under ``kfp.local.SubprocessRunner``.
"""

from components.image import IMAGE
from components.stages import evaluate_op, preprocess_op, register_op, train_op

__all__ = ["IMAGE", "preprocess_op", "train_op", "evaluate_op", "register_op"]
