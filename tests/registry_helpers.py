"""Build real registration inputs: an MLflow run holding a tiny torch model + an evaluation folder.

The tests create what ``lungseg train``/``evaluate`` would, in seconds: a real run with
``mlflow.pytorch.log_model`` of a real lungseg network (a U-Net of base width 2), its weights saved as
a lungseg ``best.pt`` (identity, weights, preprocessing: ``lungseg register`` logs the served model
from it), and the ``mlflow_run.json`` / ``metrics.json`` of docs/CONTRACTS.md — including the binding
of the evaluation to the model (``run_id``, ``model_sha256`` = sha256 of ``best.pt``) that
``lungseg register`` checks, the serving settings and the trivial baselines the evaluation records.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import torch

from lungseg.artifacts.serving import ServingSettings
from lungseg.registry import scoped_mlflow_uri

#: the tiny real network every helper run "trained"
IDENTITY = {"name": "unet", "kwargs": {"in_channels": 1, "num_classes": 1, "base_channels": 2}}
PREPROCESS = {
    "image_size": 16,
    "hu_window": [-1000.0, 400.0],
    "dataset": "synthetic",
    "num_labels": 2,
    "label_names": ["background", "infection"],
}
#: default trivial baselines (low, so the registry tests' numbers beat them by the margin)
BASELINES = {
    "all_background": {"dice_mean": 0.0, "iou_mean": 0.0, "hd95_mean": None},
    "all_foreground": {"dice_mean": 0.02, "iou_mean": 0.01, "hd95_mean": 40.0},
}


def register_params(tracking_uri: str, name: str, **register_cfg):
    """:class:`lungseg.config.Params` of a ``register`` under ``name`` in ``tracking_uri`` with ``register_cfg``."""
    from lungseg.config import params_from_dict

    return params_from_dict(
        {"register": {"model_name": name, **register_cfg}, "mlflow": {"tracking_uri": tracking_uri}}
    )


def tiny_network(seed: int = 0) -> torch.nn.Module:
    from lungseg.artifacts.checkpoint import build_model

    torch.manual_seed(seed)
    return build_model(IDENTITY)


def log_tiny_model(tracking_uri: str, experiment: str = "registry-tests", model_uri_style: str = "models") -> dict:
    """A real run with a logged model; returns the ``mlflow_run.json`` content
    (``model_uri`` as ``models:/m-…``, or ``runs:/<run_id>/model`` with ``model_uri_style="runs"``)."""
    with scoped_mlflow_uri(tracking_uri):
        exp = mlflow.set_experiment(experiment)
        with mlflow.start_run() as run:
            module = tiny_network()
            info = mlflow.pytorch.log_model(
                module, name="model", serialization_format="pickle", pip_requirements=["torch"]
            )
    return {
        "state_dict": module.state_dict(),
        "run_id": run.info.run_id,
        "tracking_uri": tracking_uri,
        "experiment_id": exp.experiment_id,
        "model_uri": info.model_uri if model_uri_style == "models" else f"runs:/{run.info.run_id}/model",
        "lost_logging": 0,
    }


def write_candidate(
    root: Path,
    run_info: dict,
    *,
    dice: float,
    fingerprint: str | None,
    split="test",
    threshold: float = 0.5,
    baselines: dict | None = None,
    preprocessing_mismatch: list[str] | None = None,
    eval_run_id: str | None = None,
    identity: dict | None = None,
    preprocess: dict | None = None,
    extra_metrics: dict | None = None,
) -> tuple[Path, Path]:
    """``root/model/{mlflow_run.json, best.pt}`` and ``root/eval/metrics.json`` (bound to that model,
    served at ``threshold``; ``eval_run_id`` written to ``mlflow_logging.json``); returns (model_dir, eval_dir).
    ``identity``/``preprocess``: another network (a fresh one of that identity) trained on other data
    (default :data:`IDENTITY`, :data:`PREPROCESS`); ``extra_metrics``: more keys in ``metrics.json``."""
    from lungseg.artifacts.checkpoint import build_model
    from lungseg.io import sha256_file

    model_dir, eval_dir = root / "model", root / "eval"
    preprocess = PREPROCESS if preprocess is None else preprocess
    state = run_info.get("state_dict") if identity is None else build_model(identity).state_dict()
    serving = ServingSettings.for_model(preprocess, threshold)
    model_dir.mkdir(parents=True, exist_ok=True)
    eval_dir.mkdir(parents=True, exist_ok=True)
    info = {k: v for k, v in run_info.items() if k != "state_dict"}
    ckpt = {
        "model_identity": IDENTITY if identity is None else identity,
        "model_state": state,
        "preprocess": preprocess,
        "image_size": preprocess["image_size"],
        "epoch": 1,
        "mlflow_run_id": info["run_id"],
    }
    torch.save(ckpt, model_dir / "best.pt")
    info["best_sha256"] = sha256_file(model_dir / "best.pt")
    (model_dir / "mlflow_run.json").write_text(json.dumps(info), encoding="utf-8")
    metrics = {
        "dice_mean": dice,
        "iou_mean": dice * 0.8,
        "split": split,
        "n_images": 4,
        "checkpoint": "best.pt",
        "run_id": info["run_id"],
        "model_sha256": info["best_sha256"],
        "serving": serving.to_dict(),
        "serving_fingerprint": serving.fingerprint(),
        "baselines": BASELINES if baselines is None else baselines,
        "preprocessing_mismatch": list(preprocessing_mismatch or []),
        **(extra_metrics or {}),
    }
    if fingerprint is not None:
        metrics["data_fingerprint"] = fingerprint
    (eval_dir / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    if eval_run_id is not None:
        (eval_dir / "mlflow_logging.json").write_text(json.dumps({"run_id": eval_run_id}), encoding="utf-8")
    return model_dir, eval_dir
