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
    run under ``torch.inference_mode`` in the model's serving ``precision`` (``auto``: fp32 on every
    device, the arithmetic evaluation scored; CUDA: channels_last, ``cudnn.benchmark``; ``bf16``: bf16
    autocast, on a CPU without native bf16 fp32 and a note) or, with ``backend="onnxruntime"``, through
    the model's ONNX export, and only uint8 labels come back (:mod:`lungseg.artifacts.core`). A tqdm
    progress bar per volume on a terminal. What ran is the report's ``inference``.

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

import logging
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lungseg.artifacts import core
from lungseg.errors import CheckpointError, ConfigError, DataError

MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")
log = logging.getLogger(__name__)
from lungseg.artifacts.serving import is_lung_field  # noqa: E402  (one definition of a lung-field model)


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
    provenance: dict[str, Any] = field(default_factory=dict)
    """What ties a prediction to this exact model once an alias moves: ``weights_sha256`` (of the file
    the weights were read from), ``run_id`` (the training run), and for a registered model
    ``registered_model`` + ``model_version`` (an alias is resolved to its version before loading)."""
    serving: Any = None
    """The :class:`~lungseg.artifacts.serving.ServingSettings` it serves with: a registered model's own
    (what its evaluation measured), a training folder's from ``evaluate.*`` (default: its preprocessing at
    ``threshold``, post-processing ``auto``)."""
    notes: list[str] = field(default_factory=list)
    """Warnings about how it is served (e.g. without the post-processing it was evaluated with)."""
    preset: str = "default"
    """The ``train.preset`` the model was trained with (its checkpoint's record; ``default`` where the model
    does not say): ``tta: auto`` resolves by it (:func:`lungseg.artifacts.serving.resolve_tta`, #25)."""
    precision_overridden: bool = False
    """Whether ``--precision`` asked another arithmetic than the one the model was evaluated in
    (:meth:`served_as` ``overridden``): a fallback note then does not blame the evaluation (#24)."""

    def __post_init__(self) -> None:
        from lungseg.artifacts.serving import ServingSettings, resolve_postprocess, resolve_tta

        if self.serving is None:
            post = resolve_postprocess("auto", self.label_names) if self.num_classes == 1 else "none"
            tta = resolve_tta("auto", self.preset)
            self.serving = ServingSettings.for_model(self.preprocess, self.threshold, postprocess=post, tta=tta)
        self.threshold = self.serving.threshold

    def served_as(
        self,
        *,
        postprocess: str | None = None,
        tta: str | None = None,
        precision: str | None = None,
        note: str = "",
        overridden: bool = False,
    ) -> LoadedModel:
        """This model with other serving settings (``evaluate.*`` of a folder model, ``--no-postprocess``,
        ``--precision``); ``note`` is kept for the report's warnings; ``overridden``: ``precision`` is the user's
        choice over the evaluated one (recorded in :attr:`precision_overridden`)."""
        import dataclasses

        from lungseg.artifacts.serving import resolve_postprocess, resolve_tta

        changes: dict[str, str] = {}
        if postprocess is not None:
            changes["postprocess"] = (
                resolve_postprocess(postprocess, self.label_names) if self.num_classes == 1 else "none"
            )
        if tta is not None:  # auto: by the training preset, as evaluation resolves it (#25)
            changes["tta"] = resolve_tta(tta, self.preset)
        if precision is not None:
            changes["precision"] = precision
        try:
            serving = dataclasses.replace(self.serving, **changes)
        except ValueError as exc:  # a value outside the vocabulary (serving.ServingSettings)
            raise ConfigError(str(exc)) from exc
        notes = self.notes + ([note] if note and serving != self.serving else [])
        overridden = self.precision_overridden or (overridden and precision is not None)
        return dataclasses.replace(self, serving=serving, notes=notes, precision_overridden=overridden)

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
        return "lung" if is_lung_field(self.label_names) else "infection"

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "resolved_from": self.resolved_from,
            "name": self.identity["name"],
            "identity": self.identity,
            "preprocess": self.preprocess,
            "threshold": self.threshold,
            "serving": self.serving.to_dict(),
            "serving_fingerprint": self.serving.fingerprint(),
            "label_names": self.label_names,
            "role": self.role,
            **self.provenance,
        }


def is_mlflow_uri(spec: str | Path) -> bool:
    return isinstance(spec, str) and spec.startswith(MLFLOW_SCHEMES)


def load_model(
    spec: str | Path,
    *,
    tracking_uri: str | None = None,
    threshold: float = 0.5,
    postprocess: str = "auto",
    tta: str = "auto",
    precision: str = "auto",
) -> LoadedModel:
    """The model named by ``spec`` (a training folder / checkpoint file, or an MLflow URI); see the
    module docstring. A registered model serves with the settings it was evaluated with (its metadata);
    a training folder, or a model logged before serving settings were recorded, with ``threshold``,
    ``postprocess`` (``auto``: by its labels), ``tta`` (``auto``: ``mirror`` for a ``train.preset: nnunet``
    model, ``none`` otherwise — as ``lungseg evaluate`` resolves it) and ``precision`` (the CLI passes
    ``evaluate.*``)."""
    if is_mlflow_uri(spec):
        model = _from_mlflow(str(spec), tracking_uri, threshold)
        recorded = model.serving.fingerprint() if model.provenance.get("serving_recorded") else None
        return model if recorded else model.served_as(postprocess=postprocess, tta=tta, precision=precision)
    return _from_checkpoint(Path(spec), threshold).served_as(postprocess=postprocess, tta=tta, precision=precision)


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
    from lungseg.artifacts.run_file import RUN_FILE, RunFile
    from lungseg.artifacts.serving import trained_preset
    from lungseg.io import sha256_file

    ckpt = load_checkpoint(ckpt_path)
    pre = _require_preprocess(ckpt, str(ckpt_path))
    net = _network(ckpt["model_identity"], ckpt["model_state"], str(ckpt_path))
    run = RunFile.find(ckpt_path.parent / RUN_FILE)  # the training folder's record of its MLflow run
    run_id = ckpt.get("mlflow_run_id") or (run.run_id if run else None)
    provenance = {"weights_sha256": sha256_file(ckpt_path), "run_id": run_id}
    identity = ckpt["model_identity"]
    return LoadedModel(
        net, identity, pre, float(threshold), str(path), str(ckpt_path), provenance, preset=trained_preset(ckpt)
    )


def _pin_version(uri: str, store: str) -> tuple[str, dict[str, Any]]:
    """``models:/<name>@<alias>`` → ``models:/<name>/<version>`` as the store resolves it now, so the
    weights loaded are the version the report names even if the alias moves meanwhile."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    rest = uri[len("models:/") :] if uri.startswith("models:/") else ""
    if not rest or rest.startswith("m-"):
        return uri, {}
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    try:
        if "@" in rest:
            name, alias = rest.split("@", 1)
            mv = client.get_model_version_by_alias(name, alias)
        elif "/" in rest:
            name, version = rest.rsplit("/", 1)
            mv = client.get_model_version(name, version)
        else:
            return uri, {}
    except MlflowException as exc:
        raise DataError(uri, f"cannot load the model from the MLflow store {store}: {_mlflow_problem(exc)}") from exc
    return f"models:/{mv.name}/{mv.version}", {
        "registered_model": mv.name,
        "model_version": str(mv.version),
        "run_id": mv.run_id,
    }


def _mlflow_problem(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _no_download_bars():
    """MLflow draws a progress bar per artifact download; a model load is a handful of small files."""
    from lungseg.envvars import scoped_environ

    return scoped_environ({"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"})


def _serving_origin(meta: dict[str, Any], provenance: dict[str, Any]) -> str:
    """Where a logged model's serving settings come from, for the report (review of #25): ``training``
    (the training run resolved them from its params and preset; not evaluated), ``evaluation`` (``lungseg
    register`` logged the registered version with the settings its evaluation scored), or ``not recorded``
    (a model logged by a training run before lungseg recorded the origin: lungseg's defaults then, ``tta none``)."""
    if meta.get("serving_origin"):
        return str(meta["serving_origin"])
    if meta.get("serving") and provenance.get("registered_model"):
        return "evaluation"
    return "not recorded (logged before lungseg recorded it: lungseg's defaults then, tta none)"


def _from_mlflow(uri: str, tracking_uri: str | None, threshold: float) -> LoadedModel:
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    from lungseg.io import sha256_file
    from lungseg.tracking import scoped_tracking_uri

    store = tracking_uri or mlflow.get_tracking_uri()
    with tempfile.TemporaryDirectory(prefix="lungseg-model-") as tmp, scoped_tracking_uri(store), _no_download_bars():
        pinned, provenance = _pin_version(uri, store)
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=pinned, dst_path=tmp))
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
            provenance = {"run_id": model.run_id, **provenance, "weights_sha256": sha256_file(weights)}
            from lungseg.artifacts.serving import ServingSettings

            recorded = meta.get("serving")  # what the registered version was evaluated with
            provenance["serving_recorded"] = bool(recorded)
            provenance["serving_origin"] = _serving_origin(meta, provenance)
            return LoadedModel(
                net,
                meta["identity"],
                dict(meta["preprocess"]),
                float(meta.get("threshold", threshold)),
                uri,
                f"{pinned} (lungseg pyfunc)",
                provenance,
                ServingSettings.from_dict(recorded) if recorded else None,
            )
        if not model.run_id:
            raise CheckpointError(
                f"{uri}: not a lungseg model (no lungseg metadata, no training run to read checkpoints/best.pt from)"
            )
        from lungseg.artifacts.checkpoint import load_checkpoint
        from lungseg.artifacts.serving import trained_preset

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
        provenance = {"run_id": model.run_id, **provenance, "weights_sha256": sha256_file(ckpt_file)}
        return LoadedModel(
            net, ckpt["model_identity"], pre, float(threshold), uri, where, provenance, preset=trained_preset(ckpt)
        )


# ----------------------------------------------------------------------------------------- inference
def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"--device: unknown device {device!r} (allowed: auto, cpu, cuda)")
    return torch.device(device)


#: inference backends of ``lungseg predict --backend``
BACKENDS = ("torch", "onnxruntime")
#: slices of the scan the onnxruntime export is checked on against PyTorch (spread over the scan)
ONNX_CHECK_SLICES = 4


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ConfigError(f"--backend: unknown backend {backend!r} (allowed: {', '.join(BACKENDS)})")
    return backend


#: the torch.compile backend of ``lungseg predict --compile``
COMPILE_BACKEND = "inductor"
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
#: the one note of ``--compile`` with an effective bf16 precision (#24): compiled bf16 is not eager bf16
COMPILE_BF16_NOTE = (
    "--compile with bf16: the compiled network rounds bf16 otherwise than eager bf16 (what a bf16 "
    "evaluation scored), so a few mask pixels may differ from an eager bf16 run"
)
#: the compiled module → its :class:`~lungseg.artifacts.core.CountingBackend` (the graphs it compiled)
_BACKENDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _compile_refused(why: str) -> ConfigError:
    return ConfigError(f"--compile: {why}; run without --compile")


def compiled_network(net: torch.nn.Module) -> torch.nn.Module:
    """``net`` compiled (``torch.compile``, :data:`COMPILE_BACKEND`, static shapes) once per process: the
    same network object (a cohort's model, both roles' engines) gets the same compiled module, so it is
    compiled at its first batch only. The compile itself runs at that first call. Refused in one line
    where torch.compile is disabled (:func:`~lungseg.artifacts.core.compile_blocked`, #24)."""
    if why := core.compile_blocked():
        raise _compile_refused(why)
    if net not in _COMPILED:
        backend = core.CountingBackend(COMPILE_BACKEND)
        _COMPILED[net] = torch.compile(net, backend=backend, dynamic=False)
        _BACKENDS[_COMPILED[net]] = backend
    return _COMPILED[net]


class SliceInference:
    """Batched slice inference of one model on one device (see the module docstring).

    ``backend="torch"``: the network in PyTorch, in the arithmetic of the model's serving ``precision``
    (:func:`lungseg.artifacts.core.resolve_precision`: ``auto`` = fp32 on every device, as evaluated;
    ``bf16`` where the device lacks it falls back to fp32 with a note). ``backend="onnxruntime"`` (CPU):
    the model's ONNX export run by an onnxruntime ``InferenceSession`` with torch's thread count
    (:func:`lungseg.inference.export.onnxruntime_runner`: the export the model folder carries, else one
    made and checked against PyTorch on slices of the scan at the first call); always fp32. ``compile``
    (torch backend only): the network through :func:`compiled_network`, every batch padded to
    ``batch_size`` (one static shape: compiled once per process, at the first batch); a compile failure
    is a one-line :class:`ConfigError` (#24)."""

    def __init__(
        self,
        model: LoadedModel,
        *,
        device: str | torch.device = "auto",
        batch_size: int | None = None,
        amp: bool = True,
        channels_last: bool = True,
        backend: str = "torch",
        compile: bool = False,
    ):
        self.model = model
        self.backend = check_backend(backend)
        if compile and backend != "torch":
            raise ConfigError(f"--compile compiles the torch backend: leave it out with --backend {backend}")
        self.device = resolve_device(device) if isinstance(device, str) else device
        cuda = self.device.type == "cuda"
        if backend == "onnxruntime" and cuda:
            raise ConfigError("--backend onnxruntime runs on the CPU: use --device cpu (or --backend torch on CUDA)")
        if batch_size is not None and int(batch_size) < 1:
            raise ConfigError(f"--batch-size: must be ≥ 1, got {batch_size}")
        self.batch_size = int(batch_size) if batch_size is not None else (16 if cuda else 4)
        self.notes: list[str] = []
        setting = model.serving.precision
        if backend == "onnxruntime":
            self.precision = "fp32"
            if setting == "bf16":
                self.notes.append("onnxruntime runs the fp32 export: served in fp32, not the model's bf16")
        else:
            self.precision, note = core.resolve_precision(setting, self.device.type)
            if note and not model.precision_overridden:  # bf16 is the evaluated setting (#24)
                note += "; its evaluation scored bf16 (emulated where not native): masks may differ from those scored"
            self.notes += [note] if note else []
        for note in self.notes:
            log.warning(f"lungseg: note: {model.identity['name']}: {note}")
        self.amp = amp and self.precision == "bf16"
        self.channels_last = channels_last and cuda
        self.net = model.net.to(self.device).eval()
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        if cuda:
            torch.backends.cudnn.benchmark = True
        self.compile = bool(compile)
        if self.compile:
            self.net = compiled_network(self.net)
            if self.precision == "bf16":  # inductor's bf16 kernels round otherwise than eager autocast (#24)
                self.notes.append(COMPILE_BF16_NOTE)
                log.warning(f"lungseg: note: {model.identity['name']}: {COMPILE_BF16_NOTE}")
        self.onnx: dict[str, Any] | None = None
        self._runner = None

    def describe(self) -> dict[str, Any]:
        """What ran, for the report: backend, precision (asked and effective), device, threads, batch size,
        and for onnxruntime the export and its parity with PyTorch."""
        out: dict[str, Any] = {
            "backend": self.backend,
            "precision": self.precision,
            "precision_setting": self.model.serving.precision,
            "device": self.device.type,
            "threads": torch.get_num_threads(),
            "batch_size": self.batch_size,
            "compile": self.compile and _BACKENDS[self.net].graphs > 0,  # a graph really compiled (#24)
        }
        if self.onnx is not None:
            out["onnx"] = self.onnx
        return out

    def _batches(self, slices: list[np.ndarray]):
        """``[start, stop)`` runs of at most ``batch_size`` consecutive slices of one size."""
        start = 0
        while start < len(slices):
            stop = start + 1
            while stop < len(slices) and stop - start < self.batch_size and slices[stop].shape == slices[start].shape:
                stop += 1
            yield start, stop
            start = stop

    def _onnx_runner(self, slices: list[np.ndarray]):
        if self._runner is None:
            from lungseg.inference.export import onnxruntime_runner

            picks = np.unique(np.linspace(0, len(slices) - 1, min(ONNX_CHECK_SLICES, len(slices))).round().astype(int))
            tta = "mirror" if self.model.serving.tta == "mirror" else "none"  # mirror: in the exported graph (#25)
            self._runner, self.onnx = onnxruntime_runner(self.model, [slices[i] for i in picks], tta=tta)
        return self._runner

    def _probabilities(self, batch: torch.Tensor, runner) -> torch.Tensor:
        """Probabilities ``(N, C, H, W)`` of one batch at its own size, by the backend (onnxruntime: ``flips``
        averages four runs of the export here; ``mirror`` is one run of an export that mirrors inside)."""
        size, tta = self.model.image_size, self.model.serving.tta
        if runner is None and self.compile:
            return self._compiled_probabilities(batch)
        if runner is None:
            return core.predict_batch(self.net, batch, size, amp=self.amp, channels_last=self.channels_last, tta=tta)
        hw = tuple(batch.shape[-2:])
        x = core.resize_to_model(batch.float(), size)
        total = None
        for dims in core.FLIPS if tta == "flips" else ((),):  # mirror: the runner's graph averages the logits
            xi = torch.flip(x, dims) if dims else x
            p = torch.from_numpy(runner(np.ascontiguousarray(xi.numpy())))
            p = torch.flip(p, dims) if dims else p
            total = p if total is None else total + p
        n = len(core.FLIPS) if tta == "flips" else 1
        return core.resize_back(total / n if n > 1 else total, hw)

    def _compiled_probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """:meth:`_probabilities` of the compiled network: a short batch (a volume's last) is padded to
        ``batch_size`` with copies of its last slice, so that the network sees one shape, compiled once
        (each slice's output does not depend on the others in eval mode); a compile failure is one line —
        also under ``TORCHDYNAMO_SUPPRESS_ERRORS=1`` (:func:`~lungseg.artifacts.core.strict_compile`) — and
        so is a call after which no graph was ever compiled (it ran eager; #24)."""
        n = batch.shape[0]
        if n < self.batch_size:
            batch = torch.cat([batch, batch[-1:].expand(self.batch_size - n, *batch.shape[1:])])
        size, tta = self.model.image_size, self.model.serving.tta
        p = core.run_compiled(
            lambda: core.predict_batch(self.net, batch, size, amp=self.amp, channels_last=self.channels_last, tta=tta),
            _BACKENDS[self.net],
            _compile_refused,
        )
        return p[:n]

    def labels(self, slices: list[np.ndarray], *, desc: str = "") -> list[np.ndarray]:
        """uint8 labels per slice (each at its own size) for float32 slices in [0, 1]."""
        return self.run(slices, desc=desc)[0]

    def run(
        self, slices: list[np.ndarray], *, desc: str = "", probabilities: bool = False
    ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        """uint8 labels per slice (each at its own size) for float32 slices in [0, 1], and with
        ``probabilities`` the float32 foreground probability per slice (one channel: the sigmoid;
        several: 1 − p(background)) on the same grid."""
        from tqdm import tqdm

        from lungseg.artifacts.serving import postprocess_labels

        out: list[np.ndarray] = []
        fg: list[np.ndarray] | None = [] if probabilities else None
        cuda = self.device.type == "cuda"
        runner = self._onnx_runner(slices) if self.backend == "onnxruntime" and slices else None
        bar = tqdm(
            total=len(slices), desc=desc or "predict", unit="slice", leave=False, disable=not sys.stderr.isatty()
        )
        with torch.inference_mode():
            for start, stop in self._batches(slices):
                batch = torch.from_numpy(np.stack(slices[start:stop]).astype(np.float32, copy=False))[:, None]
                if cuda:
                    batch = batch.pin_memory().to(self.device, non_blocking=True)
                probs = self._probabilities(batch, runner)
                # the threshold/arg-max rule of serving.apply on the device, then its post-processing
                labels = core.to_labels(probs, self.model.threshold).cpu().numpy()
                out.extend(postprocess_labels(labels, self.model.serving))
                if fg is not None:
                    p = probs[:, 0] if probs.shape[1] == 1 else 1.0 - probs[:, 0]
                    fg.extend(p.float().cpu().numpy())
                bar.update(stop - start)
        bar.close()
        return out, fg


# ----------------------------------------------------------------------------------------- one scan
@dataclass
class PredictResult:
    output_dir: Path
    report: dict[str, Any]
    summary: str
    seconds: float
    """Reading the scan, inference and writing (model loading not included: ``load_seconds``)."""
    files: list[str] = field(default_factory=list)
    load_seconds: float | None = None

    def describe(self) -> str:
        timing = f"in {self.seconds:.1f} s (read, predict, write)"
        if self.load_seconds is not None:
            timing += f"; {self.seconds + self.load_seconds:.1f} s with model loading"
        return f"{self.summary}\n  → {self.output_dir} ({', '.join(self.files)}) {timing}"


def predict_scan(
    input_path: str | Path,
    output_dir: str | Path,
    models: dict[str, LoadedModel],
    *,
    device: str = "auto",
    batch_size: int | None = None,
    dicom_seg: bool = False,
    spacing: tuple[float, float, float] | None = None,
    intensity: str | None = None,
    load_seconds: float | None = None,
    save_probabilities: bool = False,
    backend: str = "torch",
    compile: bool = False,
) -> PredictResult:
    """Masks, report, summary and overlay for the scan at ``input_path`` (module docstring).

    ``models`` maps a role (``"lung"``, ``"infection"``) to its model; ``spacing`` = ``(row, col,
    slice)`` mm for an input that records none; ``intensity`` (``hu``, ``unit``, ``uint8``) the input's
    intensity domain where the data cannot tell it (:mod:`lungseg.inference.volumes`);
    ``load_seconds``: how long loading the models took, for the report; ``save_probabilities``: also
    write each model's foreground probability map (float32, on the masks' grid) as ``<role>_probabilities``;
    ``backend``: ``torch`` or ``onnxruntime``, ``compile``: the torch network compiled (:class:`SliceInference`).
    The precision is each model's serving setting (``LoadedModel.served_as(precision=…)``); what ran is in
    the report's ``inference``.
    """
    from lungseg.inference import volumes
    from lungseg.io import check_output_dir

    t0 = time.perf_counter()
    if not models:
        raise ConfigError("give a model: --model, or --lung-model and/or --infection-model")
    check_backend(backend)
    output_dir = check_output_dir(output_dir, keep=(input_path,))  # before reading or inference
    scan = volumes.read_scan(input_path, spacing=spacing, intensity=intensity)
    if dicom_seg:
        volumes.check_dicom_seg_source(scan)  # before inference: fail fast
    dev = resolve_device(device)
    labels, probs, images01, warnings, ran = _infer(
        scan, models, dev, batch_size, save_probabilities, backend, compile=compile
    )
    t_infer = time.perf_counter() - t0
    report = _report(scan, models, labels, warnings, dev)
    report["inference"] = ran
    report["timing_s"] = {"load_models": load_seconds, "read_and_predict": t_infer}  # writing follows
    files = _write_outputs(output_dir, input_path, scan, models, labels, probs, images01, report, dicom_seg)
    return PredictResult(output_dir, report, report["summary"], time.perf_counter() - t0, files, load_seconds)


def _infer(
    scan,
    models: dict[str, LoadedModel],
    device: torch.device,
    batch_size: int | None,
    probabilities: bool,
    backend: str = "torch",
    *,
    compile: bool = False,
):
    """Labels per role, foreground probabilities per role (``probabilities``), the [0, 1] slices the
    infection model saw (for the overlay), the warnings, what ran per role (:meth:`SliceInference.describe`)."""
    from lungseg.inference import volumes

    labels: dict[str, list[np.ndarray]] = {}
    probs: dict[str, list[np.ndarray]] = {}
    images01 = None
    ran: dict[str, dict[str, Any]] = {}
    warnings = list(scan.warnings)
    for role, model in models.items():
        warnings += [f"{role} model: {x}" for x in model.notes]
        slices01, w = volumes.to_model_range(scan, model.preprocess)
        warnings += [f"{role} model: {x}" for x in w]
        if images01 is None or role == "infection":
            images01 = slices01  # the overlay shows what the infection model saw
        engine = SliceInference(model, device=device, batch_size=batch_size, backend=backend, compile=compile)
        labels[role], fg = engine.run(slices01, desc=f"{scan.stem} ({role})", probabilities=probabilities)
        warnings += [f"{role} model: {x}" for x in engine.notes]
        ran[role] = engine.describe()
        if fg is not None:
            probs[role] = fg
    return labels, probs, images01, warnings, ran


def _environment(device: torch.device) -> dict[str, Any]:
    """Where and with what a prediction ran (as TotalSegmentator's ``--report`` records it)."""
    import datetime
    import platform

    from lungseg import __version__

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {
        "lungseg_version": __version__,
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": f"{device.type} ({name}, {torch.get_num_threads()} CPU threads)",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def _report(scan, models: dict[str, LoadedModel], labels, warnings: list[str], device: torch.device) -> dict[str, Any]:
    from lungseg.inference import burden, volumes

    volumes_report = burden.compute(
        labels.get("infection"),
        labels.get("lung"),
        voxel_ml=scan.voxel_ml,
        columns_towards_left=scan.columns_towards_left,
        infection_labels=models["infection"].label_names[1:] if "infection" in models else None,
        names=scan.names,
    )
    summary = burden.summary_line(scan.path.name, volumes_report)
    environment = _environment(device)
    return {
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
        "intensity": {
            **scan.intensity.to_dict(),
            "conversion": {role: volumes.conversion(scan, m.preprocess) for role, m in models.items()},
            "model_trained_on": {role: volumes.trained_on(m.preprocess) for role, m in models.items()},
        },
        "models": {role: m.describe() for role, m in models.items()},
        **volumes_report,
        "summary": summary,
        "warnings": warnings,
        "lungseg_version": environment["lungseg_version"],
        "environment": environment,
    }


def _write_outputs(output_dir, input_path, scan, models, labels, probs, images01, report, dicom_seg: bool) -> list[str]:
    """Masks (and DICOM SEGs, probabilities), overlay, report and summary into ``output_dir``, atomically."""
    from lungseg import __version__
    from lungseg.inference import burden, volumes
    from lungseg.io import atomic_dir, atomic_write_json, atomic_write_text

    files = []
    with atomic_dir(output_dir, keep=(input_path,)) as tmp:
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
        for role, fg in probs.items():
            for p in volumes.write_masks(scan, fg, tmp, f"{role}_probabilities", dtype=np.float32):
                files.append(str(p.relative_to(tmp)).split("/")[0])
        burden.overlay_figure(
            tmp / "overlay.png",
            images01,
            labels.get("infection"),
            labels.get("lung"),
            scan.names,
            title=report["summary"],
        )
        report["files"] = sorted(set(files)) + ["report.json", "summary.txt", "overlay.png"]
        atomic_write_json(tmp / "report.json", report)
        atomic_write_text(tmp / "summary.txt", report["summary"] + "\n")
    return report["files"]


__all__ = [
    "BACKENDS",
    "LoadedModel",
    "PredictResult",
    "SliceInference",
    "check_backend",
    "is_mlflow_uri",
    "load_model",
    "predict_scan",
    "resolve_device",
]
