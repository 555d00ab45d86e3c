"""Build real registration inputs: an MLflow run holding a tiny torch model + an evaluation folder.

The tests create what ``lungseg train``/``evaluate`` would, in seconds: a real run with
``mlflow.pytorch.log_model``, its weights saved as ``best.pt``, and the ``mlflow_run.json`` /
``metrics.json`` of docs/CONTRACTS.md — including the binding of the evaluation to the model
(``run_id``, ``model_sha256`` = sha256 of ``best.pt``) that ``lungseg register`` checks.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import torch

from lungseg.registry import scoped_mlflow_uri


def log_tiny_model(tracking_uri: str, experiment: str = "registry-tests", model_uri_style: str = "models") -> dict:
    """A real run with a logged model; returns the ``mlflow_run.json`` content
    (``model_uri`` as ``models:/m-…``, or ``runs:/<run_id>/model`` with ``model_uri_style="runs"``)."""
    with scoped_mlflow_uri(tracking_uri):
        exp = mlflow.set_experiment(experiment)
        with mlflow.start_run() as run:
            module = torch.nn.Conv2d(1, 1, 3, padding=1)
            info = mlflow.pytorch.log_model(
                module, name="model", serialization_format="pickle", pip_requirements=["torch"]
            )
    return {
        "state_dict": module.state_dict(),
        "run_id": run.info.run_id,
        "tracking_uri": tracking_uri,
        "experiment_id": exp.experiment_id,
        "model_uri": info.model_uri if model_uri_style == "models" else f"runs:/{run.info.run_id}/model",
        "lost_logging": False,
    }


def write_candidate(
    root: Path, run_info: dict, *, dice: float, fingerprint: str | None, split="test"
) -> tuple[Path, Path]:
    """``root/model/{mlflow_run.json, best.pt}`` and ``root/eval/metrics.json`` (bound to that model);
    returns (model_dir, eval_dir)."""
    from lungseg.io import sha256_file

    model_dir, eval_dir = root / "model", root / "eval"
    model_dir.mkdir(parents=True, exist_ok=True)
    eval_dir.mkdir(parents=True, exist_ok=True)
    info = {k: v for k, v in run_info.items() if k != "state_dict"}
    torch.save({"model_state": run_info.get("state_dict"), "run_id": info["run_id"]}, model_dir / "best.pt")
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
    }
    if fingerprint is not None:
        metrics["data_fingerprint"] = fingerprint
    (eval_dir / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    return model_dir, eval_dir
