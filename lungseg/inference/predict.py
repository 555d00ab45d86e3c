"""``lungseg predict``: masks and an infection-burden report for one scan, from a trained model.

Models (:func:`load_model`)
    * a training output folder (``best.pt``, else ``checkpoint.pt``, via
      :func:`lungseg.artifacts.checkpoint.load_checkpoint`) or one of those files;
    * an MLflow model URI — ``models:/<name>@<alias>``, ``models:/<name>/<version>``,
      ``models:/m-<id>``, ``runs:/<run>/<path>`` — resolved in the tracking store given (the CLI
      passes ``MLFLOW_TRACKING_URI`` or ``params.mlflow.tracking_uri``). A portable lungseg model
      (:mod:`lungseg.artifacts.pyfunc`) carries its weights and preprocessing; a model logged before
      it (``mlflow.pytorch``, no lungseg metadata) is read through the ``checkpoints/best.pt`` that
      training logged to the same run.

    The preprocessing is the one recorded with the model (``preprocess``: ``image_size``,
    ``hu_window``, ``dataset``, ``label_names``), never re-typed by the user; a checkpoint that
    does not record it is refused.

Inference (:class:`SliceInference`)
    Batches of slices of one size go to the device as they are, are resized to the model there,
    run under ``torch.inference_mode`` (CUDA: bf16 autocast + channels_last, ``cudnn.benchmark``),
    and only uint8 labels come back (:mod:`lungseg.artifacts.core`). A tqdm progress bar per
    volume on a terminal.

Roles and the cascade
    A model whose only foreground label is ``lung`` is a *lung-field* model, any other an
    *infection* model (its label names are in the report). ``--lung-model`` and
    ``--infection-model`` run both on the same scan; infection predicted outside the lung mask is
    reported on its own line (:mod:`lungseg.inference.burden`), never dropped.

Output folder (written to a temporary sibling, renamed at the end; a failure leaves nothing):
``<role>_mask.nii.gz`` (NIfTI and DICOM inputs) or ``<role>_mask/<slice>.png`` (PNG/TIFF inputs),
``<role>_mask.seg.dcm`` (DICOM input with ``dicom_seg``), ``report.json``, ``summary.txt`` (the
one-line summary) and ``overlay.png``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lungseg.artifacts import core
from lungseg.errors import CheckpointError, ConfigError, DataError

MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")
LUNG_LABELS = frozenset({"lung", "lungs", "lung field", "lung-field"})


@dataclass
class LoadedModel:
    """A network ready to run plus what it knows of its training data."""

    net: torch.nn.Module
    identity: dict[str, Any]
    preprocess: dict[str, Any]
    threshold: float
    source: str
    resolved_from: str = ""
    """Where the weights were read (a checkpoint path, or the MLflow model/run artifact)."""

    @property
    def image_size(self) -> int:
        return int(self.preprocess["image_size"])

    @property
    def label_names(self) -> list[str]:
        """Names of the label values 0..K-1 (K = 2 for a one-channel model), as recorded by training."""
        names = list(self.preprocess.get("label_names") or [])
        n = 2 if self.num_classes == 1 else self.num_classes
        return names if len(names) == n else ["background", *[f"label{i}" for i in range(1, n)]]

    @property
    def num_classes(self) -> int:
        return int(self.identity["kwargs"].get("num_classes", 1))

    @property
    def role(self) -> str:
        """``"lung"`` for a lung-field model (its only foreground label is lung), else ``"infection"``."""
        fg = [n.lower() for n in self.label_names[1:]]
        return "lung" if len(fg) == 1 and fg[0] in LUNG_LABELS else "infection"

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "resolved_from": self.resolved_from,
            "name": self.identity["name"],
            "identity": self.identity,
            "preprocess": self.preprocess,
            "threshold": self.threshold,
            "label_names": self.label_names,
            "role": self.role,
        }


def is_mlflow_uri(spec: str | Path) -> bool:
    return isinstance(spec, str) and spec.startswith(MLFLOW_SCHEMES)


def load_model(spec: str | Path, *, tracking_uri: str | None = None, threshold: float = 0.5) -> LoadedModel:
    """The model named by ``spec`` (a training folder / checkpoint file, or an MLflow URI); see the
    module docstring. ``threshold`` is used unless the MLflow model records its own."""
    if is_mlflow_uri(spec):
        return _from_mlflow(str(spec), tracking_uri, threshold)
    return _from_checkpoint(Path(spec), threshold)


def _require_preprocess(ckpt: dict[str, Any], where: str) -> dict[str, Any]:
    pre = ckpt.get("preprocess")
    if not isinstance(pre, dict) or "image_size" not in pre:
        raise CheckpointError(
            f"{where}: the checkpoint does not record its preprocessing (image size, HU window); "
            "it was trained before lungseg recorded it: train it again to predict with it"
        )
    return pre


def _network(identity: dict[str, Any], state: dict[str, Any], where: str) -> torch.nn.Module:
    try:
        return core.build_network(identity, state)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{where}: weights do not fit {identity.get('name')}: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc


def _from_checkpoint(path: Path, threshold: float) -> LoadedModel:
    from lungseg.artifacts.checkpoint import BEST, CHECKPOINT, load_checkpoint

    if path.is_dir():
        ckpt_path = path / BEST if (path / BEST).is_file() else path / CHECKPOINT
        if not ckpt_path.is_file():
            raise CheckpointError(
                f"{path}: no {BEST} or {CHECKPOINT} (give a `lungseg train` output folder or an "
                "MLflow URI such as models:/lungseg-lgnet@champion)"
            )
    elif path.is_file():
        ckpt_path = path
    else:
        raise CheckpointError(
            f"{path}: model not found (give a `lungseg train` output folder or an MLflow URI "
            "such as models:/lungseg-lgnet@champion)"
        )
    ckpt = load_checkpoint(ckpt_path)
    pre = _require_preprocess(ckpt, str(ckpt_path))
    net = _network(ckpt["model_identity"], ckpt["model_state"], str(ckpt_path))
    return LoadedModel(net, ckpt["model_identity"], pre, float(threshold), str(path), str(ckpt_path))


def _mlflow_problem(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _no_download_bars():
    """MLflow draws a progress bar per artifact download; a model load is a handful of small files."""
    from lungseg.envvars import scoped_environ

    return scoped_environ({"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"})


def _from_mlflow(uri: str, tracking_uri: str | None, threshold: float) -> LoadedModel:
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    from lungseg.tracking import scoped_tracking_uri

    store = tracking_uri or mlflow.get_tracking_uri()
    with tempfile.TemporaryDirectory(prefix="lungseg-model-") as tmp, scoped_tracking_uri(store), _no_download_bars():
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
            model = Model.load(str(local))
        except (MlflowException, OSError) as exc:
            raise DataError(
                uri, f"cannot load the model from the MLflow store {store}: {_mlflow_problem(exc)}"
            ) from exc
        meta = (model.metadata or {}).get("lungseg")
        if meta:
            from lungseg.artifacts.pyfunc import CONFIG, WEIGHTS

            weights = local / "artifacts" / WEIGHTS
            if not weights.is_file() or not (local / "artifacts" / CONFIG).is_file():
                raise CheckpointError(f"{uri}: a lungseg model without its artifacts/{WEIGHTS}")
            state = torch.load(weights, map_location="cpu", weights_only=True)
            net = _network(meta["identity"], state, uri)
            return LoadedModel(
                net,
                meta["identity"],
                dict(meta["preprocess"]),
                float(meta.get("threshold", threshold)),
                uri,
                f"{uri} (lungseg pyfunc)",
            )
        if not model.run_id:
            raise CheckpointError(
                f"{uri}: not a lungseg model (no lungseg metadata, no training run to read checkpoints/best.pt from)"
            )
        from lungseg.artifacts.checkpoint import load_checkpoint

        try:
            ckpt_file = mlflow.artifacts.download_artifacts(
                run_id=model.run_id, artifact_path="checkpoints/best.pt", dst_path=str(Path(tmp) / "run")
            )
        except (MlflowException, OSError) as exc:
            raise CheckpointError(
                f"{uri}: not a lungseg model, and its run {model.run_id} has no "
                f"checkpoints/best.pt ({_mlflow_problem(exc)})"
            ) from exc
        ckpt = load_checkpoint(ckpt_file)
        where = f"{uri} (run {model.run_id} checkpoints/best.pt)"
        pre = _require_preprocess(ckpt, where)
        net = _network(ckpt["model_identity"], ckpt["model_state"], where)
        return LoadedModel(net, ckpt["model_identity"], pre, float(threshold), uri, where)


# ----------------------------------------------------------------------------------------- inference
def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"--device: unknown device {device!r} (allowed: auto, cpu, cuda)")
    return torch.device(device)


class SliceInference:
    """Batched slice inference of one model on one device (see the module docstring)."""

    def __init__(
        self,
        model: LoadedModel,
        *,
        device: str | torch.device = "auto",
        batch_size: int | None = None,
        amp: bool = True,
        channels_last: bool = True,
    ):
        self.model = model
        self.device = resolve_device(device) if isinstance(device, str) else device
        cuda = self.device.type == "cuda"
        if batch_size is not None and int(batch_size) < 1:
            raise ConfigError(f"--batch-size: must be ≥ 1, got {batch_size}")
        self.batch_size = int(batch_size) if batch_size is not None else (16 if cuda else 4)
        self.amp = amp and cuda
        self.channels_last = channels_last and cuda
        self.net = model.net.to(self.device).eval()
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        if cuda:
            torch.backends.cudnn.benchmark = True

    def _batches(self, slices: list[np.ndarray]):
        """``[start, stop)`` runs of at most ``batch_size`` consecutive slices of one size."""
        start = 0
        while start < len(slices):
            stop = start + 1
            while stop < len(slices) and stop - start < self.batch_size and slices[stop].shape == slices[start].shape:
                stop += 1
            yield start, stop
            start = stop

    def labels(self, slices: list[np.ndarray], *, desc: str = "") -> list[np.ndarray]:
        """uint8 labels per slice (each at its own size) for float32 slices in [0, 1]."""
        from tqdm import tqdm

        out: list[np.ndarray] = []
        cuda = self.device.type == "cuda"
        bar = tqdm(
            total=len(slices), desc=desc or "predict", unit="slice", leave=False, disable=not sys.stderr.isatty()
        )
        with torch.inference_mode():
            for start, stop in self._batches(slices):
                batch = torch.from_numpy(np.stack(slices[start:stop]).astype(np.float32, copy=False))[:, None]
                if cuda:
                    batch = batch.pin_memory().to(self.device, non_blocking=True)
                probs = core.predict_batch(
                    self.net, batch, self.model.image_size, amp=self.amp, channels_last=self.channels_last
                )
                out.extend(core.to_labels(probs, self.model.threshold).cpu().numpy())
                bar.update(stop - start)
        bar.close()
        return out


# ----------------------------------------------------------------------------------------- one scan
@dataclass
class PredictResult:
    output_dir: Path
    report: dict[str, Any]
    summary: str
    seconds: float
    files: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return f"{self.summary}\n  → {self.output_dir} ({', '.join(self.files)}) in {self.seconds:.1f} s"


def predict_scan(
    input_path: str | Path,
    output_dir: str | Path,
    models: dict[str, LoadedModel],
    *,
    device: str = "auto",
    batch_size: int | None = None,
    dicom_seg: bool = False,
    spacing: tuple[float, float, float] | None = None,
) -> PredictResult:
    """Masks, report, summary and overlay for the scan at ``input_path`` (module docstring).

    ``models`` maps a role (``"lung"``, ``"infection"``) to its model; ``spacing`` = ``(row, col,
    slice)`` mm for an input that records none.
    """
    from lungseg import __version__
    from lungseg.inference import burden, volumes
    from lungseg.io import atomic_dir, atomic_write_json, atomic_write_text

    t0 = time.perf_counter()
    if not models:
        raise ConfigError("give a model: --model, or --lung-model and/or --infection-model")
    output_dir = Path(output_dir)
    scan = volumes.read_scan(input_path, spacing=spacing)
    if dicom_seg:
        volumes.check_dicom_seg_source(scan)  # before inference: fail fast
    labels: dict[str, list[np.ndarray]] = {}
    images01 = None
    warnings = list(scan.warnings)
    for role, model in models.items():
        slices01, w = volumes.to_model_range(scan, model.preprocess)
        warnings += [f"{role} model: {x}" for x in w]
        if images01 is None or role == "infection":
            images01 = slices01  # the overlay shows what the infection model saw
        engine = SliceInference(model, device=device, batch_size=batch_size)
        labels[role] = engine.labels(slices01, desc=f"{scan.stem} ({role})")
    volumes_report = burden.compute(
        labels.get("infection"),
        labels.get("lung"),
        voxel_ml=scan.voxel_ml,
        columns_towards_left=scan.columns_towards_left,
        infection_labels=models["infection"].label_names[1:] if "infection" in models else None,
        names=scan.names,
    )
    summary = burden.summary_line(scan.path.name, volumes_report)
    report = {
        "input": str(scan.path),
        "input_kind": scan.kind,
        "n_slices": len(scan.slices),
        "slice_shape": list(scan.slices[0].shape) if len({s.shape for s in scan.slices}) == 1 else "varies",
        "spacing_mm": None
        if scan.spacing is None
        else {"slice": scan.spacing[0], "row": scan.spacing[1], "col": scan.spacing[2]},
        "spacing_source": scan.spacing_source,
        "voxel_volume_ml": scan.voxel_ml,
        "side_convention": burden.side_convention(scan.columns_towards_left),
        "models": {role: m.describe() for role, m in models.items()},
        **volumes_report,
        "summary": summary,
        "warnings": warnings,
        "lungseg_version": __version__,
    }
    files = []
    with atomic_dir(output_dir) as tmp:
        for role, lab in labels.items():
            for p in volumes.write_masks(scan, lab, tmp, f"{role}_mask"):
                files.append(str(p.relative_to(tmp)).split("/")[0])
            if dicom_seg:
                m = models[role]
                target = volumes.write_dicom_seg(
                    scan,
                    lab,
                    tmp / f"{role}_mask.seg.dcm",
                    label_names=m.label_names,
                    model_name=m.identity["name"],
                    version=__version__,
                )
                files.append(target.name)
        burden.overlay_figure(
            tmp / "overlay.png", images01, labels.get("infection"), labels.get("lung"), scan.names, title=summary
        )
        report["files"] = sorted(set(files)) + ["report.json", "summary.txt", "overlay.png"]
        atomic_write_json(tmp / "report.json", report)
        atomic_write_text(tmp / "summary.txt", summary + "\n")
    return PredictResult(output_dir, report, summary, time.perf_counter() - t0, report["files"])


__all__ = [
    "LoadedModel",
    "PredictResult",
    "SliceInference",
    "is_mlflow_uri",
    "load_model",
    "predict_scan",
    "resolve_device",
]
