"""Kubeflow Pipelines v2 components of lungseg: thin lightweight Python components, one library
call each, all running in the one project image (:data:`IMAGE`; :func:`for_image` for another).

They import ``lungseg`` inside the function body (a lightweight component ships only its own
source; the image has the package), so the same functions run in a cluster pod, in the image under
``kfp.local.DockerRunner`` and in this environment under ``kfp.local.SubprocessRunner``.

The components themselves are loaded on first use (PEP 562): a running component imports helpers
such as :mod:`components.inputs`, and KFP's executor forbids loading ``kfp.dsl``'s component
machinery again inside a component (a circular import in its runtime mode).
"""

from components.image import IMAGE

_STAGES = ("for_image", "preprocess_op", "train_op", "train_distributed_op", "evaluate_op", "register_op")
__all__ = ["IMAGE", *_STAGES]


def __getattr__(name: str):
    if name in _STAGES:
        from components import stages

        return getattr(stages, name)
    raise AttributeError(f"module 'components' has no attribute {name!r}")
