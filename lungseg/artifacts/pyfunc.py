"""The registered model: a portable MLflow ``pyfunc`` that carries its network, weights and preprocessing.

What it is
    :class:`LungsegModel` (an ``mlflow.pyfunc.PythonModel``) with two artifacts — ``weights.pt`` (the
    state dict, loaded with ``weights_only=True``) and ``lungseg_model.json`` (model identity,
    preprocessing, threshold, label names) — and a copy of the few lungseg modules it needs
    (``lungseg/__init__.py``, ``errors.py``, ``models/``, ``artifacts/__init__.py``, ``core.py`` and
    this file) as MLflow ``code_paths``. MLflow puts that copy on ``sys.path`` when it loads the model,
    so the model loads and serves where lungseg is not installed (a serving image, ``mlflow models
    serve --env-manager virtualenv``); its pip requirements are only mlflow, torch, numpy and
    cloudpickle, pinned to the versions that logged it.

Contract (the signature)
    *Input*: float32 tensor ``(N, H, W)`` — a batch of axial slices **already in the training
    intensity range [0, 1]** (HU → ``hu_window`` for HU sources; see ``preprocess`` in the metadata
    and ``docs/inference.md``), any H and W: slices are resized to ``image_size``² as preprocessing
    does and the output is resized back (:mod:`lungseg.artifacts.core`). Values outside [0, 1] are
    refused (``ValueError``; HTTP 400 when served): raw HU given by mistake would otherwise give
    confident nonsense.
    *Output*: the per-pixel **probabilities** float32 — ``(N, H, W)`` foreground probability for a
    binary model, ``(N, C, H, W)`` class probabilities for a multi-class one. The parameter
    ``output="labels"`` (``params={"output": "labels"}``; ``"params"`` in a REST request) returns
    uint8 labels ``(N, H, W)`` instead (``p ≥ threshold`` / arg-max), the labels ``lungseg predict``
    writes.
    *Metadata* (``MLmodel`` → ``metadata.lungseg``): ``identity``, ``preprocess`` (``image_size``,
    ``hu_window``, ``dataset``, ``label_names``, …), ``threshold``, ``serving`` (every setting that
    changes the output: :class:`~lungseg.artifacts.serving.ServingSettings`) and ``serving_fingerprint``,
    ``label_names``, ``input``, ``output``, ``lungseg_version``. The labels output goes through
    :func:`lungseg.artifacts.serving.apply` with the recorded ``serving``.

The input example is a synthetic phantom (:func:`synthetic_slices`: an elliptic body with two dark
lungs and a brighter patch), never patient data.

:func:`log_model` is what training calls to log the model to its run; :func:`save_model` writes the
same folder locally. Only ``lungseg.models``, ``lungseg.errors`` and :mod:`lungseg.artifacts.core`
are imported here (training imports this module).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow.exceptions
import mlflow.protos.databricks_pb2
import mlflow.pyfunc
import numpy as np

FLAVOR_KEY = "lungseg"
WEIGHTS = "weights.pt"
CONFIG = "lungseg_model.json"
OUTPUTS = ("probabilities", "labels")
INPUT_DOC = "float32 (N, H, W) slices in the training intensity range [0, 1]; any H, W (resized to image_size and back)"
OUTPUT_DOC = (
    "probabilities float32: (N, H, W) foreground for binary models, (N, C, H, W) for multi-class; "
    "params output=labels gives uint8 (N, H, W) labels (p >= threshold / arg-max)"
)
#: the lungseg files the model carries (relative to the package folder)
CODE_FILES = (
    "__init__.py",
    "errors.py",
    "artifacts/__init__.py",
    "artifacts/core.py",
    "artifacts/pyfunc.py",
    "artifacts/pyfunc_entry.py",
    "artifacts/serving.py",
)
CODE_DIRS = ("models",)


class LungsegModel(mlflow.pyfunc.PythonModel):
    """Probabilities (or labels) of a lungseg network for a batch of [0, 1] slices of any size."""

    def load_context(self, context) -> None:
        import torch

        from lungseg.artifacts.core import build_network

        self.info = json.loads(Path(context.artifacts["config"]).read_text(encoding="utf-8"))
        state = torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True)
        self.net = build_network(self.info["identity"], state)
        self.size = int(self.info["preprocess"]["image_size"])
        self.threshold = float(self.info["threshold"])
        from lungseg.artifacts.serving import ServingSettings

        # the settings it was evaluated with (register logs them); older models: their threshold only
        recorded = self.info.get("serving")
        self.serving = (
            ServingSettings.from_dict(recorded)
            if recorded
            else ServingSettings.for_model(self.info["preprocess"], self.threshold)
        )

    def predict(self, context, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        from lungseg.artifacts.core import predict_array, resolve_precision
        from lungseg.artifacts.serving import apply

        output = (params or {}).get("output", "probabilities")
        try:
            if output not in OUTPUTS:
                raise ValueError(f"params.output must be one of {', '.join(OUTPUTS)}, got {output!r}")
            x = check_input(model_input)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        precision = resolve_precision(self.serving.precision, "cpu")[0]  # bf16 only on a CPU with it (#24)
        probs = predict_array(self.net, x, self.size, batch_size=8, tta=self.serving.tta, precision=precision)
        if output == "labels":
            return apply(probs, self.serving)
        return probs[:, 0] if probs.shape[1] == 1 else probs


class InvalidInput(mlflow.exceptions.MlflowException, ValueError):
    """A bad request, answered over REST as a 400 whose message is the one-line reason — no stack trace
    (which exposed server paths), and not MLflow's rewrite ``Failed to predict data '<the whole input>'``:
    the scoring server reassigns ``message``, and this exception keeps its first one. In process it is a
    ``ValueError`` too."""

    def __init__(self, reason: str):
        self._reason: str | None = None
        super().__init__(reason, error_code=mlflow.protos.databricks_pb2.INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str | None:
        return self._reason

    @message.setter
    def message(self, value: str) -> None:
        if self._reason is None:
            self._reason = str(value)


def check_input(model_input) -> np.ndarray:
    """``model_input`` as float32 ``(N, H, W)`` (one ``(H, W)`` slice is a batch of one); ``ValueError``
    naming the problem when it is not a batch of finite slices in [0, 1]."""
    x = np.asarray(model_input, dtype=np.float32)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[0] == 0 or min(x.shape[1:]) < 1:
        raise ValueError(f"expected float32 slices (N, H, W), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("input contains NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"input values [{lo:.4g}, {hi:.4g}] are outside [0, 1]: give slices in the training "
            "intensity range (HU → hu_window, see the model's metadata), not raw HU"
        )
    return x


def synthetic_slices(n: int = 2, size: int = 32) -> np.ndarray:
    """A synthetic CT-like phantom ``(n, size, size)`` float32 in [0, 1]: air 0, body 0.6, two lungs
    0.15, a 0.45 patch in one lung (shifted a little per slice). The input example: no patient data."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    out = np.zeros((n, size, size), np.float32)
    for i in range(n):
        img = np.where(((xx - 0.5) / 0.45) ** 2 + ((yy - 0.5) / 0.35) ** 2 <= 1, 0.6, 0.0)
        for cx in (0.32, 0.68):
            img = np.where(((xx - cx) / 0.14) ** 2 + ((yy - 0.5) / 0.22) ** 2 <= 1, 0.15, img)
        cy = 0.45 + 0.05 * i
        img = np.where(((xx - 0.66) / 0.06) ** 2 + ((yy - cy) / 0.06) ** 2 <= 1, 0.45, img)
        out[i] = img
    return out


def _code_copy(target: Path) -> Path:
    """Copy the modules the model needs into ``target/lungseg`` (the ``code_paths`` entry)."""
    src = Path(__file__).resolve().parents[1]
    dst = target / "lungseg"
    for rel in CODE_FILES:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, dst / rel)
    for rel in CODE_DIRS:
        shutil.copytree(src / rel, dst / rel, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dst


def _requirements() -> list[str]:
    import cloudpickle
    import torch

    return [
        f"mlflow=={mlflow.__version__}",
        f"torch=={torch.__version__.split('+')[0]}",
        f"numpy=={np.__version__}",
        f"cloudpickle=={cloudpickle.__version__}",
    ]


def model_info(
    identity: dict[str, Any], preprocess: dict[str, Any], threshold: float, serving=None, serving_origin=None
) -> dict[str, Any]:
    """What ``lungseg_model.json`` and the MLmodel metadata record. ``serving``
    (:class:`~lungseg.artifacts.serving.ServingSettings`; default: ``preprocess`` at ``threshold``) is
    recorded whole with its fingerprint, and its threshold is the model's ``threshold``;
    ``serving_origin`` (``training``: resolved by the training run, not evaluated; review of #25) when given."""
    from lungseg import __version__
    from lungseg.artifacts.serving import ServingSettings

    if serving is None:
        serving = ServingSettings.for_model(preprocess, threshold)
    return {
        "identity": identity,
        "preprocess": preprocess,
        "threshold": serving.threshold,
        "serving": serving.to_dict(),
        "serving_fingerprint": serving.fingerprint(),
        "label_names": list(preprocess.get("label_names") or []),
        "input": INPUT_DOC,
        "output": OUTPUT_DOC,
        "lungseg_version": __version__,
        **({"serving_origin": serving_origin} if serving_origin else {}),
    }


def signature_for(num_classes: int):
    """Input ``(N, H, W)`` float32; output probabilities ``(N, H, W)`` or ``(N, C, H, W)``; param ``output``."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

    out_shape = (-1, -1, -1) if num_classes == 1 else (-1, num_classes, -1, -1)
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, -1))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), out_shape)]),
        params=ParamSchema([ParamSpec("output", "string", "probabilities")]),
    )


def _prepare(
    tmp: Path, net, identity: dict[str, Any], preprocess: dict[str, Any], threshold: float, serving=None, origin=None
) -> dict[str, Any]:
    """The arguments of ``pyfunc.save_model`` / ``Model.log`` shared by :func:`save_model` and :func:`log_model`."""
    import torch

    if "image_size" not in preprocess:
        raise ValueError("preprocess must record image_size (the model's input size)")
    state = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    torch.save(state, tmp / WEIGHTS)
    info = model_info(identity, preprocess, threshold, serving, origin)
    (tmp / CONFIG).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return dict(
        python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
        artifacts={"weights": str(tmp / WEIGHTS), "config": str(tmp / CONFIG)},
        code_paths=[str(_code_copy(tmp / "code"))],
        signature=signature_for(int(identity["kwargs"].get("num_classes", 1))),
        input_example=(synthetic_slices(), {"output": "probabilities"}),
        pip_requirements=_requirements(),
        metadata={FLAVOR_KEY: info},
    )


def save_model(
    path: str | Path,
    net,
    *,
    identity: dict[str, Any],
    preprocess: dict[str, Any],
    threshold: float = 0.5,
    serving=None,
) -> Path:
    """Write the MLflow model folder to ``path`` (must not exist or be empty); ``serving`` as in :func:`log_model`."""
    with tempfile.TemporaryDirectory(prefix="lungseg-pyfunc-") as tmp:
        mlflow.pyfunc.save_model(str(path), **_prepare(Path(tmp), net, identity, preprocess, threshold, serving))
    return Path(path)


def log_model(
    net,
    *,
    identity: dict[str, Any],
    preprocess: dict[str, Any],
    threshold: float = 0.5,
    serving=None,
    run_id: str | None = None,
    name: str = "model",
    serving_origin: str | None = None,
) -> str:
    """Log the portable model of ``net`` to MLflow run ``run_id`` (the active run when None) in the
    current tracking store; returns its model URI (``models:/m-…``) to register.

    ``identity`` and ``preprocess`` are what training records in ``best.pt`` (``model_identity``,
    ``preprocess``); ``threshold`` is the binary decision threshold of the labels output, or ``serving``
    (:class:`~lungseg.artifacts.serving.ServingSettings`, what ``lungseg register`` passes: the settings
    the model was evaluated with) gives it and every other setting that changes the output — recorded
    in the metadata as ``serving`` and ``serving_fingerprint`` (``serving_origin: training`` where the
    training run resolved them, not an evaluation: :func:`lungseg.training.mlflow_run.training_serving`). The logged
    model is created in **the run's experiment** first: MLflow's ``log_model(run_id=…)`` alone puts it
    in the *active* experiment (``Default``, whose artifacts live in the working directory's
    ``mlruns/``).
    """
    from mlflow.models import Model

    model_id = None
    if run_id is not None:
        client = mlflow.MlflowClient()
        experiment_id = client.get_run(run_id).info.experiment_id
        model_id = client.create_logged_model(experiment_id, name=name, source_run_id=run_id).model_id
    with tempfile.TemporaryDirectory(prefix="lungseg-pyfunc-") as tmp:
        info = Model.log(
            artifact_path=None,
            name=name,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            model_id=model_id,
            **_prepare(Path(tmp), net, identity, preprocess, threshold, serving, serving_origin),
        )
    return info.model_uri


__all__ = ["LungsegModel", "check_input", "log_model", "model_info", "save_model", "signature_for", "synthetic_slices"]
