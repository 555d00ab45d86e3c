"""Evaluation: predict a split with the trained model and write an honest report.

Outputs (written to a temporary folder, renamed into ``output_dir`` at the end):

* ``per_image.csv`` — one row per image: manifest id and every metric of
  :func:`lungseg.metrics.per_image_metrics` (Dice, IoU, mIoU, ACC, SEN, SPE, MAE, AUC, HD, HD95).
* ``metrics.json`` — the full summary: :func:`lungseg.metrics.aggregate` (``*_mean`` over images and
  ``*_pooled`` from summed confusion counts) plus ``split, n_images, checkpoint, threshold,
  data_fingerprint`` (the evaluation set, see :func:`lungseg.provenance.manifest_fingerprint`),
  ``split_level``, the data warnings, the **model it belongs to** (``run_id`` of the training run,
  ``model_sha256`` of the evaluated checkpoint file: ``lungseg register`` refuses an evaluation
  whose model is not the one being registered) and the preprocessing check (below). NaN (an
  undefined mean, e.g. HD when every image has an empty side) is written as ``null`` so the file
  stays strict JSON.
* ``headline.json`` — the DVC metrics file: the few headline numbers (:data:`HEADLINE`), so
  ``dvc metrics show`` / ``dvc exp show`` stay readable; everything else is in ``metrics.json``.
* ``overlays.png`` — image, ground truth and prediction for the best and worst ``n_overlays``
  images by Dice.
* ``roc.csv`` (fpr, tpr, threshold), ``pr.csv`` (recall, precision, threshold), ``curves.csv``
  (threshold sweep of the pooled Dice/precision/recall/FPR) at 101 thresholds 0.00…1.00, all pooled
  over every pixel of the split (DVC plots), drawn in ``curves.png``; ``roc_auc_pooled`` in metrics.json.
* ``mlflow_logging.json`` — the training run it was logged to and what logging was lost (if any).

Serving settings (issue #20)
    The evaluation is of the model *as it will be served*: :class:`~lungseg.artifacts.serving.ServingSettings`
    built from the checkpoint's ``preprocess`` and ``evaluate.threshold`` (post-processing and TTA:
    ``"none"`` until implemented). ``metrics.json`` records them (``serving``) and their fingerprint
    (``serving_fingerprint``); the MLflow run has them as params ``serving.*`` and the tag
    ``lungseg.serving_fingerprint``. ``lungseg register`` logs the registered model with exactly these
    settings, so the registered version serves as it was evaluated.

Trivial predictors
    The same metric code also scores the constant predictors on the same set — ``all_background``
    (no pixel is foreground) and ``all_foreground`` (every pixel is; multi-class: ``all_<label>`` per
    class) — into ``metrics.json["baselines"]`` (each: the ``*_mean`` / ``*_pooled`` numbers) and
    ``best_trivial_dice_mean`` (also in ``headline.json``); MLflow metrics ``baseline.<name>.<metric>``.
    ``lungseg register`` never promotes a model that does not beat the best of them by a margin.

Preprocessing check
    The data must be preprocessed as the model's training data was (``preprocess`` recorded in the
    checkpoint by training: ``image_size``, ``hu_window``, ``multiclass``, ``num_labels``,
    ``label_names``): a 64² model run on a 128² set silently scores something else. A difference is
    a :class:`~lungseg.errors.DataError` naming both values, unless ``allow_preprocessing_mismatch``
    (``lungseg evaluate --allow-preprocessing-mismatch``); then it is evaluated and the differences
    are recorded in ``metrics.json`` (``preprocessing_mismatch``). A checkpoint written before
    training recorded its preprocessing is checked on ``image_size`` only, and ``metrics.json``
    (``preprocessing_unchecked``) and a warning say what could not be checked.

Which checkpoint
    ``best.pt`` (the weights ``lungseg train`` logged as the MLflow model). When it is missing, or
    unreadable while ``checkpoint.pt`` is intact, the last epoch's ``checkpoint.pt`` is evaluated
    instead with a warning naming the problem and the fallback (``checkpoint_fallback`` in
    ``metrics.json``); such a report cannot be registered (it is not the registered weights).

MLflow
    Each evaluation is its own MLflow run, nested under the training run of
    ``<model_dir>/mlflow_run.json`` (tag ``mlflow.parentRunId``; the UI shows it under the training
    run), with the summary's numbers as metrics, tags ``lungseg.stage=evaluate``, ``eval_split``,
    ``eval_data_fingerprint``, ``model_sha256``, ``checkpoint``, and the report's files as
    artifacts. The training run itself is never written to, so a second evaluation (another set,
    another threshold) never overwrites the first. Logging goes through
    :class:`lungseg.tracking.ResilientRun`: a tracking server that is down costs the logging
    (recorded in ``mlflow_logging.json``, warned), never the report.
HD/HD95 are in mm when the processed set records a pixel spacing, else in pixels.
Multi-class models (num_classes > 1) get per-class Dice/IoU from
:func:`lungseg.metrics.per_image_metrics_multiclass`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lungseg.artifacts.checkpoint import BEST, CHECKPOINT, build_model, load_checkpoint
from lungseg.artifacts.run_file import RunFile
from lungseg.artifacts.serving import ServingSettings, resolve_postprocess, resolve_tta, trained_preset
from lungseg.artifacts.serving import apply as apply_serving
from lungseg.config import Params
from lungseg.data.dataset import load_split
from lungseg.errors import CheckpointError, ConfigError, DataError, TrainingError
from lungseg.io import atomic_dir, atomic_write_json, check_output_dir, sha256_file
from lungseg.metrics import aggregate, per_image_metrics, per_image_metrics_multiclass
from lungseg.provenance import manifest_fingerprint

log = logging.getLogger(__name__)

#: the keys of ``headline.json`` (those present: binary or multi-class), in this order
HEADLINE = (
    "n_images",
    "dice_mean",
    "dice_pooled",
    "iou_mean",
    "sen_mean",
    "spe_mean",
    "hd95_mean",
    "roc_auc_pooled",
    "dice_mean_fg_mean",
    "iou_mean_fg_mean",
    "threshold",
    "best_trivial_dice_mean",
)
#: preprocessing settings a model's data and the evaluated data must share
CHECKED_PREPROCESSING = ("image_size", "hu_window", "multiclass", "num_labels", "label_names")


@dataclass
class EvalResult:
    output_dir: Path
    split: str
    n_images: int
    summary: dict[str, Any]
    seconds: float
    logging: dict[str, Any] | None = None

    def describe(self) -> str:
        keys = [
            k
            for k in (
                "dice_mean",
                "dice_pooled",
                "iou_mean",
                "miou_mean",
                "acc_mean",
                "sen_mean",
                "spe_mean",
                "hd95_mean",
                "dice_mean_fg_mean",
            )
            if k in self.summary
        ]
        vals = "  ".join(f"{k} {self.summary[k]:.4f}" for k in keys if self.summary[k] is not None)
        s = f"evaluated {self.n_images} {self.split} image(s) in {self.seconds:.1f} s → {self.output_dir}\n  {vals}"
        tta = (self.summary.get("serving") or {}).get("tta")
        if tta and tta != "none":  # auto resolves by the training preset (#25): say what was scored
            s += f"\n  test-time augmentation: {tta}"
        if self.logging and self.logging.get("run_id"):
            parent = self.logging.get("parent_run_id")
            s += f"\n  logged to MLflow run {self.logging['run_id']} (under training run {parent})"
            if self.logging.get("lost_logging"):
                s += f" ({self.logging['lost_logging']} logging call(s) lost)"
        return s


@torch.no_grad()
def predict(
    model: torch.nn.Module, images: np.ndarray, batch_size: int = 8, tta: str = "none", precision: str = "auto"
) -> np.ndarray:
    """Probabilities: ``(N, H, W)`` foreground (sigmoid) for 1-channel models, else ``(N, C, H, W)`` softmax;
    with ``tta="flips"`` / ``"mirror"`` averaged over the mirrorings
    (:func:`lungseg.artifacts.core.forward_probabilities`, what the served model does); ``precision="bf16"``:
    under bf16 autocast (the served arithmetic, #24)."""
    from lungseg.artifacts.core import forward_probabilities

    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            probs = forward_probabilities(model, x, tta).float()
        out.append((probs[:, 0] if probs.shape[1] == 1 else probs).numpy())
    return np.concatenate(out)


def _finite_or_none(summary: dict[str, Any]) -> dict[str, Any]:
    def conv(v):
        if isinstance(v, (float, np.floating)):
            return None if not math.isfinite(float(v)) else float(v)
        if isinstance(v, np.integer):
            return int(v)
        return v

    return {k: conv(v) for k, v in summary.items()}


def _choose_checkpoint(model_dir: Path) -> tuple[Path, dict[str, Any], str | None]:
    """(path, checkpoint, fallback reason): ``best.pt``, else — missing, or unreadable while
    ``checkpoint.pt`` is intact — ``checkpoint.pt`` with the reason (also printed as a warning)."""
    best, last = model_dir / BEST, model_dir / CHECKPOINT
    if best.is_file():
        try:
            return best, load_checkpoint(best), None
        except CheckpointError as exc:
            if not last.is_file():
                raise
            try:
                ckpt = load_checkpoint(last)
            except CheckpointError:
                raise exc from None
            reason = f"{exc}"
    elif last.is_file():
        ckpt, reason = load_checkpoint(last), f"{best}: not found"
    else:
        raise CheckpointError(f"{model_dir}: neither {BEST} nor {CHECKPOINT} found (run `lungseg train` first)")
    log.warning(
        f"lungseg: warning: {reason}; evaluating {last} instead (the last epoch, {ckpt.get('epoch')}, not the best "
        f"one; this report cannot be registered: restore {BEST}, e.g. `dvc checkout`, and evaluate again)"
    )
    return last, ckpt, reason


def check_preprocessing(ckpt: dict[str, Any], meta: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(mismatches, unchecked) between the preprocessing a checkpoint was trained with and the
    processed set's ``meta.json`` (see the module docstring); each entry says key and both values."""
    trained = dict(ckpt.get("preprocess") or {})
    if not trained and ckpt.get("image_size") is not None:  # written before training recorded it
        trained = {"image_size": ckpt["image_size"]}
    data = {
        **dict(meta.get("preprocess") or {}),
        "image_size": meta.get("image_size"),
        "num_labels": meta.get("num_labels"),
        "label_names": meta.get("label_names"),
    }
    mismatch, unchecked = [], []
    for key in CHECKED_PREPROCESSING:
        a, b = _norm(trained.get(key)), _norm(data.get(key))
        if a is None or b is None:
            unchecked.append(key)
        elif a != b:
            mismatch.append(f"{key}: data {b}, model {a}")
    return mismatch, unchecked


def _norm(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def evaluate(
    params: Params,
    model_dir: str | Path,
    data_dir: str | Path,
    output_dir: str | Path,
    *,
    allow_preprocessing_mismatch: bool = False,
) -> EvalResult:
    """Evaluate the model trained into ``model_dir`` on ``params.evaluate.split`` of ``data_dir``, served
    with ``evaluate.threshold``, ``evaluate.postprocess`` and ``evaluate.tta``
    (:mod:`lungseg.artifacts.serving`): the metrics are those of the labels the served model makes."""
    t0 = time.perf_counter()
    cfg = params.evaluate
    model_dir, data_dir, output_dir = Path(model_dir), Path(data_dir), Path(output_dir)
    check_output_dir(output_dir)
    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir}: training output folder not found (run `lungseg train` first)")
    ckpt_path, ckpt, fallback = _choose_checkpoint(model_dir)
    run_file = model_dir / "mlflow_run.json"
    run_info = _read_run_file(run_file)  # a bad run file fails before any output
    split = load_split(data_dir, cfg.split)
    if len(split.images) == 0:
        raise DataError(data_dir, f"split {cfg.split!r} is empty")
    mismatch, unchecked = check_preprocessing(ckpt, split.meta)
    if mismatch and not allow_preprocessing_mismatch:
        raise DataError(
            data_dir,
            f"preprocessed differently from the data {ckpt_path} was trained on "
            f"({'; '.join(mismatch)}): preprocess the data with the model's settings, or pass "
            "--allow-preprocessing-mismatch to evaluate anyway (recorded in metrics.json)",
        )
    if mismatch:
        log.warning(f"lungseg: warning: evaluating on differently preprocessed data ({'; '.join(mismatch)}), as asked")
    if unchecked:
        log.warning(
            f"lungseg: warning: {ckpt_path} does not record the training data's {', '.join(unchecked)}: "
            "not checked against this data (re-train to record them)"
        )
    serving = _serving_settings(ckpt, split.meta, cfg.threshold, cfg.postprocess, cfg.tta, cfg.precision)
    model = _network(ckpt, ckpt_path, split, data_dir)

    probs = predict(model, split.images, tta=serving.tta, precision=serving.precision)
    masks = np.asarray(split.masks)
    ids = split.manifest["id"].astype(str).tolist()
    spacing = split.meta.get("spacing_mm")
    if probs.ndim == 3:
        served = apply_serving(probs, serving)  # the labels the served model makes
        df = per_image_metrics(probs, masks, threshold=serving.threshold, spacing=spacing, ids=ids, labels=served)
    else:
        df = per_image_metrics_multiclass(probs, masks, ids=ids)
    summary = _finite_or_none(aggregate(df))
    baselines = trivial_baselines(probs.shape, masks, serving.threshold, spacing, ids, split.meta.get("label_names"))
    summary.update(
        {
            "split": cfg.split,
            "n_images": len(df),
            "threshold": cfg.threshold,
            "checkpoint": ckpt_path.name,
            "checkpoint_epoch": ckpt.get("epoch"),
            "model": ckpt["model_identity"]["name"],
            "run_id": (run_info or {}).get("run_id") or ckpt.get("mlflow_run_id"),
            "model_sha256": sha256_file(ckpt_path),
            "data_fingerprint": manifest_fingerprint(split.manifest.to_dict("records")),
            "split_level": split.meta.get("split_level"),
            "data_warnings": split.meta.get("warnings", []),
            "hd_unit": "mm" if spacing else "pixel",
            "preprocessing_mismatch": mismatch,
            "preprocessing_unchecked": unchecked,
            "allow_preprocessing_mismatch": bool(mismatch),
            "serving": serving.to_dict(),
            "serving_fingerprint": serving.fingerprint(),
            "baselines": baselines,
            "best_trivial_dice_mean": _best_trivial(baselines, "dice_mean"),
            **({"checkpoint_fallback": fallback} if fallback else {}),
        }
    )

    with atomic_dir(output_dir) as tmp:
        df.to_csv(tmp / "per_image.csv", index=False)
        _overlays(tmp / "overlays.png", split.images, masks, probs, df, cfg.n_overlays, cfg.threshold)
        if probs.ndim == 3:
            summary["roc_auc_pooled"] = _curves(tmp, probs, masks)
        atomic_write_json(tmp / "metrics.json", summary)
        atomic_write_json(tmp / "headline.json", {k: summary[k] for k in HEADLINE if k in summary})

    logging = _log_evaluation_run(run_info, run_file, output_dir, summary, cfg.split, split.meta)
    atomic_write_json(output_dir / "mlflow_logging.json", logging)
    return EvalResult(output_dir, cfg.split, len(df), summary, time.perf_counter() - t0, logging)


def _serving_settings(
    ckpt: dict[str, Any], meta: dict[str, Any], threshold: float, postprocess: str, tta: str, precision: str = "auto"
) -> ServingSettings:
    """The settings this evaluation serves the model with (``postprocess: auto`` resolved by the model's
    labels, ``tta: auto`` by the preset it was trained with: ``mirror`` under ``nnunet``, #25); a value
    outside the vocabulary is a :class:`ConfigError` (never evaluated as something else)."""
    pre = dict(ckpt.get("preprocess") or {})
    if not pre and ckpt.get("image_size") is not None:
        pre = {"image_size": ckpt["image_size"]}
    names = pre.get("label_names") or meta.get("label_names")
    try:
        post = resolve_postprocess(postprocess, names)
        if post != "none" and int(ckpt["model_identity"]["kwargs"].get("num_classes", 1)) != 1:
            raise ValueError(f"postprocess {post!r} is for binary models")
        tta = resolve_tta(tta, trained_preset(ckpt))
        return ServingSettings.for_model(pre, threshold, postprocess=post, tta=tta, precision=precision)
    except ValueError as exc:
        raise ConfigError(f"evaluate: {exc}") from exc


#: the numbers of a trivial predictor's summary kept in ``metrics.json["baselines"]``
def _kept(key: str) -> bool:
    return key == "n_images" or key.endswith("_mean") or key.endswith("_pooled")


def trivial_baselines(
    shape: tuple[int, ...],
    masks: np.ndarray,
    threshold: float,
    spacing,
    ids: list[str],
    label_names: list[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """The constant predictors scored with the model's own metric code on the same images: binary
    ``all_background`` / ``all_foreground`` (probability 0 / 1 everywhere); multi-class
    ``all_background`` and ``all_<label>`` per foreground class (one-hot)."""
    out: dict[str, dict[str, Any]] = {}
    if len(shape) == 3:
        for name, value in (("all_background", 0.0), ("all_foreground", 1.0)):
            probs = np.full(shape, value, np.float32)
            df = per_image_metrics(probs, masks, threshold=threshold, spacing=spacing, ids=ids)
            out[name] = {k: v for k, v in _finite_or_none(aggregate(df)).items() if _kept(k)}
            out[name]["roc_auc_pooled"] = _pooled_auc(probs, masks)  # 0.5: a constant score ranks nothing
        return out
    n_classes = shape[1]
    names = list(label_names or []) + [f"class_{c}" for c in range(len(label_names or []), n_classes)]
    for c in range(n_classes):
        probs = np.zeros(shape, np.float32)
        probs[:, c] = 1.0
        df = per_image_metrics_multiclass(probs, masks, ids=ids)
        name = "all_background" if c == 0 else f"all_{names[c]}"
        out[name] = {k: v for k, v in _finite_or_none(aggregate(df)).items() if _kept(k)}
    return out


def _pooled_auc(probs: np.ndarray, masks: np.ndarray) -> float | None:
    """``roc_auc_pooled`` as :func:`_curves` computes it (sklearn, every pixel); None with one class only."""
    from sklearn.metrics import roc_auc_score

    y = (np.asarray(masks) > 0).reshape(-1)
    return float(roc_auc_score(y, np.asarray(probs).reshape(-1))) if 0 < y.sum() < y.size else None


def _best_trivial(baselines: dict[str, dict[str, Any]], metric: str) -> float | None:
    values = [b[metric] for b in baselines.values() if isinstance(b.get(metric), (int, float))]
    return max(values) if values else None


def _baseline_metrics(baselines: dict[str, dict[str, Any]]) -> dict[str, float]:
    return {
        f"baseline.{name}.{k}": float(v)
        for name, numbers in baselines.items()
        for k, v in numbers.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def _network(ckpt: dict[str, Any], ckpt_path: Path, split, data_dir: Path) -> torch.nn.Module:
    """The checkpoint's network with its weights, checked against the split (size divisor, labels)."""
    model = build_model(ckpt["model_identity"])
    try:
        model.load_state_dict(ckpt["model_state"])
    except RuntimeError as exc:
        raise CheckpointError(f"{ckpt_path}: weights do not fit {ckpt['model_identity']['name']}: {exc}") from exc
    divisor = int(getattr(model, "size_divisor", 1))
    if split.images.shape[-1] % divisor or split.images.shape[-2] % divisor:
        raise DataError(
            data_dir,
            f"images are {split.images.shape[-2]}x{split.images.shape[-1]} but "
            f"{ckpt['model_identity']['name']} needs multiples of {divisor}",
        )
    num_labels = int(split.meta["num_labels"])
    if (ckpt["model_identity"]["kwargs"]["num_classes"] == 1) != (num_labels == 2):
        raise CheckpointError(
            f"{ckpt_path}: model has {ckpt['model_identity']['kwargs']['num_classes']} output "
            f"channel(s) but {data_dir} has {num_labels} labels"
        )
    return model


def _read_run_file(run_file: Path) -> dict[str, Any] | None:
    """The training run of ``mlflow_run.json`` (``None`` when the training was not logged: a warning);
    ``DataError`` naming the file when it is unreadable or lacks ``run_id``/``tracking_uri``.
    A repository-relative ``tracking_uri`` is resolved against the repository of ``run_file``."""
    if not run_file.is_file():
        log.warning(f"lungseg: warning: {run_file} not found: the evaluation is not logged to MLflow")
        return None
    run = RunFile.from_file(run_file).require("tracking_uri")
    return {**run.to_dict(), "tracking_uri": run.resolved_tracking_uri()}


def _log_evaluation_run(
    info: dict[str, Any] | None,
    run_file: Path,
    output_dir: Path,
    summary: dict[str, Any],
    split: str,
    meta: dict[str, Any] | None = None,
) -> dict:
    """A new MLflow run for this evaluation, nested under the training run ``info`` (read from
    ``run_file`` by :func:`_read_run_file`; ``None``: not logged): metrics, tags, the report's files.

    Returns what happened (``run_id`` of the evaluation run, ``parent_run_id``, ``lost_logging``,
    ``lost_calls``); a tracking server that is down costs the logging (recorded and warned), never
    the evaluation.
    """
    from lungseg.tracking import ResilientRun

    if info is None:
        return {
            "run_id": None,
            "parent_run_id": None,
            "lost_logging": 0,
            "lost_calls": [],
            "reason": f"{run_file} not found",
        }
    fingerprint = str(summary.get("data_fingerprint"))
    tags = {
        "mlflow.parentRunId": info["run_id"],
        "lungseg.stage": "evaluate",
        "eval_split": split,
        "eval_data_fingerprint": fingerprint,
        "model_sha256": str(summary.get("model_sha256")),
        "checkpoint": str(summary.get("checkpoint")),
        "model": str(summary.get("model")),
        "lungseg.serving_fingerprint": str(summary.get("serving_fingerprint")),
        "lungseg.preprocessing_mismatch": "; ".join(summary.get("preprocessing_mismatch") or []) or "none",
    }
    # lineage (#16): the code that evaluated, the raw data version of the evaluated set, the image/KFP run
    from lungseg import lineage
    from lungseg.provenance import git_commit

    tags[lineage.CODE_COMMIT_TAG] = git_commit()
    tags.update(lineage.source_tags(meta or {}))
    tags.update(lineage.run_context_tags())
    try:
        run = ResilientRun.start(
            info["tracking_uri"],
            info.get("experiment") or "",
            run_id=None,
            experiment_id=_experiment_of(info),
            run_name=f"evaluate-{split}-{fingerprint[7:15]}",
            tags=tags,
        )
    except TrainingError as exc:  # the store is unreachable: the report stands, the logging is lost
        log.warning(f"lungseg: warning: evaluation not logged to MLflow: {exc}")
        return {
            "run_id": None,
            "parent_run_id": info["run_id"],
            "lost_logging": 1,
            "lost_calls": [f"all evaluation logging: {exc}"],
        }
    with run:  # FINISHED, or FAILED/KILLED when interrupted; closed (last flush) either way
        run.log_metrics(
            {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}, step=0
        )
        run.log_metrics(_baseline_metrics(summary.get("baselines") or {}), step=0)
        run.log_params({f"serving.{k}": v for k, v in (summary.get("serving") or {}).items()})
        for name in (
            "per_image.csv",
            "metrics.json",
            "headline.json",
            "overlays.png",
            "roc.csv",
            "pr.csv",
            "curves.csv",
            "curves.png",
        ):
            if (output_dir / name).is_file():
                run.log_artifact(output_dir / name)
    return {"run_id": run.run_id, "parent_run_id": info["run_id"], **run.summary()}


def _experiment_of(info: dict[str, Any]) -> str | None:
    """The experiment id of the training run (from ``mlflow_run.json``; looked up by MLflow if absent)."""
    if info.get("experiment_id"):
        return str(info["experiment_id"])
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        return str(MlflowClient(info["tracking_uri"]).get_run(info["run_id"]).info.experiment_id)
    except (MlflowException, OSError):
        return None


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
            ax.set_title(f"{title}" if col else f"{kind}: {df['id'].iloc[i]} (Dice {score.iloc[i]:.3f})", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


THRESHOLDS = np.round(np.linspace(0.0, 1.0, 101), 2)


def pooled_curves(probs: np.ndarray, masks: np.ndarray) -> dict[str, np.ndarray]:
    """Pooled (all pixels of the split) confusion counts at :data:`THRESHOLDS` (prediction = ``p >= t``)."""
    p = probs.reshape(-1).astype(np.float64)
    g = masks.reshape(-1) != 0
    fg, bg = np.sort(p[g]), np.sort(p[~g])
    tp = len(fg) - np.searchsorted(fg, THRESHOLDS, side="left")
    fp = len(bg) - np.searchsorted(bg, THRESHOLDS, side="left")
    fn, tn = len(fg) - tp, len(bg) - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "threshold": THRESHOLDS,
            "tp": tp,
            "fp": fp,
            "tn": tn,
            "fn": fn,
            "tpr": np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), np.nan),
            "fpr": np.where(fp + tn > 0, fp / np.maximum(fp + tn, 1), np.nan),
            "precision": np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 1.0),
            "dice": np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 1.0),
        }


def _curves(out: Path, probs: np.ndarray, masks: np.ndarray) -> float | None:
    """``roc.csv`` (fpr, tpr, threshold), ``pr.csv`` (recall, precision, threshold), ``curves.csv``
    (threshold sweep: pooled dice, precision, recall, fpr) and ``curves.png``; returns the pooled ROC AUC
    (``sklearn.metrics.roc_auc_score`` on every pixel) or None when the split has one class only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    c = pooled_curves(probs, masks)
    pd.DataFrame({"fpr": c["fpr"], "tpr": c["tpr"], "threshold": c["threshold"]}).to_csv(out / "roc.csv", index=False)
    pd.DataFrame({"recall": c["tpr"], "precision": c["precision"], "threshold": c["threshold"]}).to_csv(
        out / "pr.csv", index=False
    )
    pd.DataFrame(
        {
            "threshold": c["threshold"],
            "dice": c["dice"],
            "precision": c["precision"],
            "recall": c["tpr"],
            "fpr": c["fpr"],
        }
    ).to_csv(out / "curves.csv", index=False)
    y = masks.reshape(-1) != 0
    auc = float(roc_auc_score(y, probs.reshape(-1))) if 0 < y.sum() < y.size else None
    fig, (a, b, d) = plt.subplots(1, 3, figsize=(11, 3.2))
    a.plot(c["fpr"], c["tpr"], marker="."), a.plot([0, 1], [0, 1], "k:")
    a.set_xlabel("FPR"), a.set_ylabel("TPR"), a.set_title(f"ROC (pooled, AUC {auc:.3f})" if auc else "ROC (pooled)")
    b.plot(c["tpr"], c["precision"], marker="."), b.set_xlabel("recall"), b.set_ylabel("precision")
    b.set_title("PR (pooled)")
    (
        d.plot(c["threshold"], c["dice"]),
        d.set_xlabel("threshold"),
        d.set_ylabel("pooled Dice"),
        d.set_title("Dice vs threshold"),
    )
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=90)
    plt.close(fig)
    return auc
