"""Evaluation: predict a split with the trained model and write an honest report.

Outputs (written to a temporary folder, renamed into ``output_dir`` at the end):

* ``per_image.csv`` — one row per image: manifest id and every metric of
  :func:`lungseg.metrics.per_image_metrics` (Dice, IoU, mIoU, ACC, SEN, SPE, MAE, AUC, HD, HD95).
* ``metrics.json`` — DVC metrics: :func:`lungseg.metrics.aggregate` (``*_mean`` over images and
  ``*_pooled`` from summed confusion counts) plus ``split, n_images, checkpoint, threshold,
  data_fingerprint`` (the evaluation set, see :func:`lungseg.data.dataset.manifest_fingerprint`),
  ``split_level`` and the data warnings. NaN (an undefined mean, e.g. HD when every image has an
  empty side) is written as ``null`` so the file stays strict JSON.
* ``overlays.png`` — image, ground truth and prediction for the best and worst ``n_overlays``
  images by Dice.
* ``roc.csv`` / ``pr.csv`` and ``curves.png`` — pooled ROC and precision–recall points.

Everything is logged to the training run in MLflow (``eval_*`` metrics, artifacts under
``evaluation/``), through the resilient :class:`lungseg.tracking.RunLogger`.
HD/HD95 are in mm when the processed set records a pixel spacing, else in pixels.
Multi-class models (num_classes > 1) get per-class Dice/IoU from
:func:`lungseg.metrics.per_image_metrics_multiclass`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lungseg.config import Params
from lungseg.data.dataset import load_split, manifest_fingerprint
from lungseg.errors import CheckpointError, DataError
from lungseg.io import atomic_dir, atomic_write_json
from lungseg.metrics import aggregate, per_image_metrics, per_image_metrics_multiclass
from lungseg.training.loop import BEST, CHECKPOINT, build_model, load_checkpoint


@dataclass
class EvalResult:
    output_dir: Path
    split: str
    n_images: int
    summary: dict[str, Any]
    seconds: float

    def describe(self) -> str:
        keys = [k for k in ("dice_mean", "dice_pooled", "iou_mean", "miou_mean", "acc_mean", "sen_mean",
                            "spe_mean", "hd95_mean", "dice_mean_fg_mean") if k in self.summary]  # fmt: skip
        vals = "  ".join(f"{k} {self.summary[k]:.4f}" for k in keys if self.summary[k] is not None)
        return f"evaluated {self.n_images} {self.split} image(s) in {self.seconds:.1f} s → {self.output_dir}\n  {vals}"


@torch.no_grad()
def predict(model: torch.nn.Module, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Probabilities: ``(N, H, W)`` foreground (sigmoid) for 1-channel models, else ``(N, C, H, W)`` softmax."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        logits = model(torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))).float()
        probs = torch.sigmoid(logits[:, 0]) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)
        out.append(probs.numpy())
    return np.concatenate(out)


def _finite_or_none(summary: dict[str, Any]) -> dict[str, Any]:
    def conv(v):
        if isinstance(v, (float, np.floating)):
            return None if not math.isfinite(float(v)) else float(v)
        if isinstance(v, np.integer):
            return int(v)
        return v

    return {k: conv(v) for k, v in summary.items()}


def evaluate(params: Params, model_dir: str | Path, data_dir: str | Path, output_dir: str | Path) -> EvalResult:
    """Evaluate the model trained into ``model_dir`` on ``params.evaluate.split`` of ``data_dir``."""
    from lungseg.tracking import RunLogger

    t0 = time.perf_counter()
    cfg = params.evaluate
    model_dir, data_dir, output_dir = Path(model_dir), Path(data_dir), Path(output_dir)
    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir}: training output folder not found (run `lungseg train` first)")
    ckpt_path = model_dir / BEST if (model_dir / BEST).is_file() else model_dir / CHECKPOINT
    ckpt = load_checkpoint(ckpt_path)
    split = load_split(data_dir, cfg.split)
    if len(split.images) == 0:
        raise DataError(data_dir, f"split {cfg.split!r} is empty")
    model = build_model(ckpt["model_identity"])
    try:
        model.load_state_dict(ckpt["model_state"])
    except RuntimeError as exc:
        raise CheckpointError(f"{ckpt_path}: weights do not fit {ckpt['model_identity']['name']}: {exc}") from exc
    num_labels = int(split.meta["num_labels"])
    if (ckpt["model_identity"]["kwargs"]["num_classes"] == 1) != (num_labels == 2):
        raise CheckpointError(f"{ckpt_path}: model has {ckpt['model_identity']['kwargs']['num_classes']} output "
                              f"channel(s) but {data_dir} has {num_labels} labels")  # fmt: skip

    probs = predict(model, split.images)
    masks = np.asarray(split.masks)
    ids = split.manifest["id"].astype(str).tolist()
    spacing = split.meta.get("spacing_mm")
    if probs.ndim == 3:
        df = per_image_metrics(probs, masks, threshold=cfg.threshold, spacing=spacing, ids=ids)
    else:
        df = per_image_metrics_multiclass(probs, masks, ids=ids)
    summary = _finite_or_none(aggregate(df))
    summary.update({
        "split": cfg.split, "n_images": len(df), "threshold": cfg.threshold, "checkpoint": str(ckpt_path),
        "checkpoint_epoch": ckpt.get("epoch"), "model": ckpt["model_identity"]["name"],
        "data_fingerprint": manifest_fingerprint(split.manifest.to_dict("records")),
        "split_level": split.meta.get("split_level"), "data_warnings": split.meta.get("warnings", []),
        "hd_unit": "mm" if spacing else "pixel",
    })  # fmt: skip

    with atomic_dir(output_dir) as tmp:
        df.to_csv(tmp / "per_image.csv", index=False)
        atomic_write_json(tmp / "metrics.json", summary)
        _overlays(tmp / "overlays.png", split.images, masks, probs, df, cfg.n_overlays, cfg.threshold)
        if probs.ndim == 3:
            _curves(tmp, probs, masks)

    run_file = model_dir / "mlflow_run.json"
    if run_file.is_file() and json.loads(run_file.read_text()).get("run_id"):
        logger = RunLogger(params.mlflow, run_id=json.loads(run_file.read_text())["run_id"])
        step = int(ckpt.get("epoch") or 0)
        logger.log_metrics({f"eval_{k}": v for k, v in summary.items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool)}, step=step)  # fmt: skip
        logger.set_tags({"eval_split": cfg.split, "eval_data_fingerprint": summary["data_fingerprint"]})
        for name in ("per_image.csv", "metrics.json", "overlays.png", "roc.csv", "pr.csv", "curves.png"):
            if (output_dir / name).is_file():
                logger.log_artifact(output_dir / name, "evaluation")
        # the run's status was set by training; record what this step lost without re-terminating it
        while logger.pending:
            logger._drop(logger.pending.popleft()[0])
        if logger.lost:
            print(f"lungseg: warning: {logger.lost} evaluation logging call(s) lost", flush=True)
    return EvalResult(output_dir, cfg.split, len(df), summary, time.perf_counter() - t0)


def _overlays(path: Path, images, masks, probs, df, n: int, threshold: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    score = df["dice"] if "dice" in df else df["dice_mean_fg"]
    order = np.argsort(score.to_numpy(dtype=float))
    n = max(1, min(n, len(order)))
    picks = [("best", i) for i in order[::-1][:n]] + [("worst", i) for i in order[:n]]
    fig, axes = plt.subplots(len(picks), 3, figsize=(7.5, 2.5 * len(picks)), squeeze=False)
    for row, (kind, i) in enumerate(picks):
        pred = probs[i] >= threshold if probs.ndim == 3 else probs[i].argmax(0)
        for col, (title, overlay) in enumerate((("image", None), ("ground truth", masks[i]), ("prediction", pred))):
            ax = axes[row, col]
            ax.imshow(images[i, 0], cmap="gray", vmin=0, vmax=1)
            if overlay is not None:
                ax.imshow(np.ma.masked_equal(np.asarray(overlay, dtype=float), 0), cmap="autumn", alpha=0.5)
            ax.set_title(f"{title}" if col else f"{kind}: {df['id'].iloc[i]} (Dice {score.iloc[i]:.3f})",
                         fontsize=8)  # fmt: skip
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _curves(out: Path, probs: np.ndarray, masks: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    y, p = masks.reshape(-1).astype(np.uint8), probs.reshape(-1)
    if y.min() == y.max():
        return  # one class only: ROC/PR undefined; the summary's auc_n_undefined says so
    fpr, tpr, _ = roc_curve(y, p, drop_intermediate=True)
    prec, rec, _ = precision_recall_curve(y, p, drop_intermediate=True)
    keep = lambda a: np.linspace(0, len(a) - 1, min(len(a), 200)).astype(int)  # noqa: E731
    r, q = keep(fpr), keep(rec)
    (out / "roc.csv").write_text("fpr,tpr\n" + "".join(f"{a:.6f},{b:.6f}\n" for a, b in zip(fpr[r], tpr[r])))
    (out / "pr.csv").write_text("recall,precision\n" + "".join(f"{a:.6f},{b:.6f}\n" for a, b in zip(rec[q], prec[q])))
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.2))
    a.plot(fpr, tpr), a.plot([0, 1], [0, 1], "k:"), a.set_xlabel("FPR"), a.set_ylabel("TPR"), a.set_title("ROC (pooled)")
    b.plot(rec, prec), b.set_xlabel("recall"), b.set_ylabel("precision"), b.set_title("PR (pooled)")
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=90)
    plt.close(fig)
