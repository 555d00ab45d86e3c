"""``lungseg export``: a trained model as ONNX or TorchScript, with a parity check on real slices.

What is exported
    :class:`lungseg.artifacts.core.ProbabilityNet` — the network followed by its sigmoid/softmax, in
    fp32 on the CPU: input ``slices`` float32 ``(N, 1, s, s)`` in [0, 1] (``s`` = the recorded
    ``image_size``; resize and intensity are the consumer's job, as written in ``export.json``),
    output ``probabilities`` ``(N, C, s, s)``. With ``tta="mirror"`` (what ``lungseg predict --backend
    onnxruntime`` exports at load for a model served with ``tta: mirror``, #25) the graph itself averages
    the logits over the four mirrorings before the sigmoid/softmax (:func:`lungseg.artifacts.core.mirrored_logits`),
    so its output is the PyTorch path's to the parity checked; ``export.json`` records ``tta``.

How (first that exports *and* passes the parity check wins; every failed attempt is recorded)
    ONNX: (1) torch's TorchScript-based exporter (``torch.onnx.export(dynamo=False)``) with a dynamic
    batch axis; (2) the same with a fixed batch of 1; (3) the ``torch.export``-based exporter
    (``dynamo=True``, needs onnxscript) with a dynamic batch; (4) that with a fixed batch of 1. The
    file is run with onnxruntime (CPU). TorchScript: ``torch.jit.trace`` (``torch.jit.script``
    compiles none of the zoo: their forward passes use Python features TorchScript lacks), saved
    and re-loaded with ``torch.jit.load``. Which models take which path, and why some do not
    export, is in ``docs/inference.md``.

Parity check (printed by the command, in ``export.json``)
    The check slices (a real scan, read and brought to the model's intensity range like
    ``lungseg predict`` does) are resized to ``s``² and run through PyTorch and through the exported
    model (in batches of 4, so a dynamic batch axis is exercised with more than the export's example
    size; one by one for a fixed batch). Reported: ``max_abs_diff`` of the probabilities and the
    ``dice`` between the two label masks (pooled over every slice; both empty → 1). A result with
    ``max_abs_diff > tolerance`` does not pass.

Output folder (temporary sibling renamed at the end): ``model.onnx`` or ``model.pt`` and
``export.json`` (format, exporter, batch, input/output names and shapes, the model's identity,
preprocessing, threshold and labels, the parity numbers, failed attempts, versions).
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lungseg.artifacts import core
from lungseg.errors import ConfigError, LungsegError

FORMATS = ("onnx", "torchscript")
CHECK_BATCH = 4
INPUT_NAME, OUTPUT_NAME = "slices", "probabilities"


class ExportError(LungsegError):
    """The model could not be exported, or the export does not reproduce PyTorch's output."""


@dataclass
class ExportResult:
    output_dir: Path
    format: str
    file: str
    exporter: str
    batch: str | int
    parity: dict[str, Any]
    seconds: float
    failed_attempts: list[str] = field(default_factory=list)
    tta: str = "none"
    """The test-time augmentation inside the exported graph (the model's serving ``tta``, review of #25)."""

    def describe(self) -> str:
        p = self.parity
        return (
            f"exported {self.format} ({self.exporter}, batch {self.batch}, tta {self.tta}) "
            f"→ {self.output_dir / self.file} "
            f"in {self.seconds:.1f} s\n  parity vs PyTorch on {p['n_slices']} real slice(s): max |Δp| "
            f"{p['max_abs_diff']:.2e}, Dice of masks {p['dice']:.6f} (tolerance {p['tolerance']:g})"
        )


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Pooled Dice of two label arrays (foreground = label > 0); both empty → 1."""
    a, b = a > 0, b > 0
    denom = int(a.sum()) + int(b.sum())
    return 1.0 if denom == 0 else 2.0 * int((a & b).sum()) / denom


def check_batch(slices: list[np.ndarray], size: int) -> np.ndarray:
    """Float32 ``(N, 1, size, size)``: each [0, 1] slice resized to the model as preprocessing does."""
    if not slices:
        raise ConfigError("the parity check needs at least one slice")
    out = [
        core.resize_to_model(torch.from_numpy(np.ascontiguousarray(s, dtype=np.float32))[None, None], size)
        for s in slices
    ]
    return torch.cat(out).numpy()


def _run_torch(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return np.concatenate(
            [net(torch.from_numpy(x[i : i + CHECK_BATCH])).numpy() for i in range(0, len(x), CHECK_BATCH)]
        )


def _run_chunks(fn, x: np.ndarray, batch: str | int) -> np.ndarray:
    step = CHECK_BATCH if batch == "dynamic" else int(batch)
    outs = []
    for i in range(0, len(x), step):
        chunk = x[i : i + step]
        if len(chunk) < step and batch != "dynamic":  # a fixed batch: pad the last chunk
            pad = np.zeros((step - len(chunk), *chunk.shape[1:]), chunk.dtype)
            outs.append(fn(np.concatenate([chunk, pad]))[: len(chunk)])
        else:
            outs.append(fn(chunk))
    return np.concatenate(outs)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}"


@contextlib.contextmanager
def _quiet():
    """The exporters print progress, deprecation notes and, when they fail, the whole TorchScript graph
    (from C++, on file descriptor 2): keep the command's output to its result. Both the Python
    streams and descriptors 1 and 2 go to a temporary file for the duration; what failed is
    reported from the exception instead."""
    import os
    import sys
    import tempfile

    buf = io.StringIO()
    with (
        tempfile.TemporaryFile() as sink,
        warnings.catch_warnings(),
        contextlib.redirect_stdout(buf),
        contextlib.redirect_stderr(buf),
    ):
        warnings.simplefilter("ignore")
        for stream in (sys.__stdout__, sys.__stderr__):
            if stream is not None:
                stream.flush()
        saved = [os.dup(1), os.dup(2)]
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _onnx_attempt(net, example: torch.Tensor, path: Path, *, dynamo: bool, dynamic: bool):
    import onnxruntime as ort

    kwargs: dict[str, Any] = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME], "dynamo": dynamo}
    if dynamo:
        kwargs["external_data"] = False
        if dynamic:
            kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=4096)},)
    elif dynamic:
        kwargs["dynamic_axes"] = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    with _quiet():
        torch.onnx.export(net, (example,), str(path), **kwargs)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {INPUT_NAME: x})[0]


def _torchscript_attempt(net, example: torch.Tensor, path: Path):
    with _quiet():
        traced = torch.jit.trace(net, example, check_trace=False)
        traced.save(str(path))
    loaded = torch.jit.load(str(path), map_location="cpu").eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return loaded(torch.from_numpy(x)).numpy()

    return run


def _parity(ref: np.ndarray, got: np.ndarray, threshold: float, tolerance: float) -> dict[str, Any]:
    if got.shape != ref.shape:
        raise ValueError(f"output shape {got.shape} differs from PyTorch's {ref.shape}")
    diff = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64)))) if ref.size else 0.0
    lab_ref = core.to_labels(torch.from_numpy(ref), threshold).numpy()
    lab_got = core.to_labels(torch.from_numpy(got.astype(np.float32)), threshold).numpy()
    return {
        "n_slices": int(len(ref)),
        "max_abs_diff": diff,
        "dice": dice(lab_ref, lab_got),
        "differing_pixels": int((lab_ref != lab_got).sum()),
        "tolerance": float(tolerance),
        "passed": bool(np.isfinite(diff) and diff <= tolerance),
    }


def export_model(
    model,
    fmt: str,
    output_dir: str | Path,
    check_slices: list[np.ndarray],
    *,
    tolerance: float = 1e-3,
    check_input: str = "",
    tta: str = "none",
) -> ExportResult:
    """Export ``model`` (a :class:`lungseg.inference.predict.LoadedModel`) as ``fmt`` into ``output_dir``
    after checking it against PyTorch on ``check_slices`` (float32 [0, 1], any size); see the module
    docstring; ``tta``: ``none`` (the network) or ``mirror`` (its logits averaged over the mirrorings in the
    graph). :class:`ExportError` when no way of exporting passes."""
    from lungseg import __version__
    from lungseg.io import atomic_dir, atomic_write_json, sha256_file

    if fmt not in FORMATS:
        raise ConfigError(f"--format: unknown format {fmt!r} (allowed: {', '.join(FORMATS)})")
    if not tolerance > 0:
        raise ConfigError(f"--tolerance: must be > 0, got {tolerance}")
    t0 = time.perf_counter()
    size = int(model.preprocess["image_size"])
    if tta not in ("none", "mirror"):
        raise ConfigError(f"an export carries tta none or mirror, not {tta!r}")
    net = core.ProbabilityNet(model.net.to("cpu").float(), tta=tta).eval()
    x = check_batch(check_slices, size)
    ref = _run_torch(net, x)
    name = model.identity["name"]
    file = "model.onnx" if fmt == "onnx" else "model.pt"
    if fmt == "onnx":
        attempts = [
            ("torch.onnx (TorchScript-based)", False, "dynamic"),
            ("torch.onnx (TorchScript-based)", False, 1),
            ("torch.onnx (dynamo)", True, "dynamic"),
            ("torch.onnx (dynamo)", True, 1),
        ]
    else:
        attempts = [("torch.jit.trace", None, "dynamic")]
    failed: list[str] = []
    with atomic_dir(output_dir) as tmp:
        chosen = None
        for exporter, dynamo, batch in attempts:
            path = tmp / file
            example = torch.from_numpy(x[:2] if batch == "dynamic" else x[:1]).clone()
            if batch == "dynamic" and len(example) < 2:
                example = torch.cat([example, example])
            try:
                if fmt == "onnx":
                    run = _onnx_attempt(net, example, path, dynamo=bool(dynamo), dynamic=batch == "dynamic")
                else:
                    run = _torchscript_attempt(net, example, path)
                parity = _parity(ref, _run_chunks(run, x, batch), model.threshold, tolerance)
            except Exception as exc:  # noqa: BLE001 - each exporter fails in its own ways; recorded, next one tried
                failed.append(f"{exporter}, batch {batch}: {_one_line(exc)}")
                path.unlink(missing_ok=True)
                continue
            if not parity["passed"]:
                failed.append(
                    f"{exporter}, batch {batch}: parity failed (max |Δp| {parity['max_abs_diff']:.3g} > {tolerance:g})"
                )
                path.unlink(missing_ok=True)
                continue
            chosen = (exporter, batch, parity)
            break
        if chosen is None:
            raise ExportError(f"{model.source}: {name} does not export to {fmt}: " + " | ".join(failed))
        exporter, batch, parity = chosen
        for extra in tmp.glob(f"{file}.*"):  # an exporter's side files (external data) of failed attempts
            extra.unlink()
        info = _export_info(model, fmt, file, exporter, batch, parity, failed, size, check_input, tmp / file)
        info["lungseg_version"] = __version__
        info["tta"] = tta
        info["file_sha256"] = sha256_file(tmp / file)  # a carried export is used only while its file is this one
        atomic_write_json(tmp / "export.json", info)
    return ExportResult(Path(output_dir), fmt, file, exporter, batch, parity, time.perf_counter() - t0, failed, tta)


def _export_info(model, fmt, file, exporter, batch, parity, failed, size, check_input, path: Path) -> dict[str, Any]:
    versions = {"torch": torch.__version__}
    opset = None
    if fmt == "onnx":
        import onnx
        import onnxruntime

        versions.update(onnx=onnx.__version__, onnxruntime=onnxruntime.__version__)
        proto = onnx.load(str(path), load_external_data=False)
        opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    n = "N" if batch == "dynamic" else int(batch)
    classes = int(model.identity["kwargs"].get("num_classes", 1))
    return {
        "format": fmt,
        "file": file,
        "exporter": exporter,
        "batch": batch,
        "opset": opset,
        "input": {
            "name": INPUT_NAME,
            "shape": [n, 1, size, size],
            "dtype": "float32",
            "range": "[0, 1]: the training intensity range (see preprocess); resize slices to image_size first",
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": [n, classes, size, size],
            "dtype": "float32",
            "meaning": "sigmoid probability of the foreground" if classes == 1 else "softmax over labels",
        },
        "model": model.identity["name"],
        "identity": model.identity,
        "preprocess": model.preprocess,
        "threshold": model.threshold,
        "label_names": model.label_names,
        "source": model.source,
        "weights_sha256": model.provenance.get("weights_sha256"),
        "parity": {**parity, "check_input": check_input},
        "failed_attempts": failed,
        "versions": versions,
    }


def carried_onnx(model, tta: str = "none") -> tuple[Path, dict[str, Any]] | None:
    """The ONNX export a model's folder carries: ``export.json`` + ``model.onnx`` in the training folder
    itself or one folder below it (``lungseg export --output <model folder>/onnx``), exported from these
    very weights (its ``weights_sha256`` equals the loaded model's; an export without it is not used) with
    this ``tta`` (an ``export.json`` without ``tta`` is a ``none`` export), whose ``model.onnx`` is still the
    file exported (its sha256 is ``export.json``'s ``file_sha256``; one replaced since, or an export that
    records none, is not used: a one-line note, and the caller exports at load).
    None for an MLflow model (a registered version carries no export) or when there is none."""
    import json
    import logging

    from lungseg.io import sha256_file

    sha = model.provenance.get("weights_sha256")
    where = Path(model.resolved_from or "")
    if not sha or not where.is_file():
        return None
    folder = where.parent
    for info_file in [folder / "export.json", *sorted(folder.glob("*/export.json"))]:
        try:
            info = json.loads(info_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        onnx_file = info_file.parent / str(info.get("file", ""))
        if (
            isinstance(info, dict)
            and info.get("format") == "onnx"
            and info.get("weights_sha256") == sha
            and info.get("tta", "none") == tta
            and (info.get("parity") or {}).get("passed")
            and onnx_file.is_file()
        ):
            if info.get("file_sha256") == sha256_file(onnx_file):
                return onnx_file, info
            logging.getLogger(__name__).warning(
                f"lungseg: note: {onnx_file} is not the file its export.json checked "
                f"({'its sha256 differs' if info.get('file_sha256') else 'export.json records no file_sha256'}): "
                "not used, exporting at load"
            )
    return None


def onnxruntime_runner(
    model, check_slices: list[np.ndarray], *, threads: int | None = None, tolerance: float = 1e-3, tta: str = "none"
):
    """``(run, record)``: ``run`` maps float32 ``(N, 1, s, s)`` in [0, 1] to the probabilities
    ``(N, C, s, s)`` of ``model``'s ONNX export in an onnxruntime ``InferenceSession`` (CPU, ``threads``
    intra-op threads, default torch's ``torch.get_num_threads()``, which follows ``OMP_NUM_THREADS``).
    The export is the one the model's folder carries (:func:`carried_onnx`), else made now by
    :func:`export_model` and checked against PyTorch on ``check_slices`` (:class:`ExportError` when no
    export passes ``tolerance``); ``tta="mirror"``: an export whose graph averages the mirrored logits
    (:func:`export_model`). ``record``: where the file came from, exporter, batch, parity, threads, tta."""
    import tempfile

    import onnxruntime as ort

    n_threads = int(threads or torch.get_num_threads())
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = n_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3  # errors only: onnxruntime's warnings go to the C++ stderr
    carried = carried_onnx(model, tta)
    t0 = time.perf_counter()
    if carried is not None:
        path, info = carried
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        origin, exporter, batch, parity = str(path), info.get("exporter"), info.get("batch"), info.get("parity")
    else:
        with tempfile.TemporaryDirectory(prefix="lungseg-onnx-") as tmp:
            result = export_model(model, "onnx", Path(tmp) / "onnx", check_slices, tolerance=tolerance, tta=tta)
            path = result.output_dir / result.file
            session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        origin, exporter, batch, parity = "exported at load", result.exporter, result.batch, result.parity
    step = None if batch == "dynamic" else int(batch)

    def run(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if step is None:
            return session.run(None, {INPUT_NAME: x})[0]
        return _run_chunks(lambda c: session.run(None, {INPUT_NAME: c})[0], x, step)

    record = {
        "file": origin,
        "exporter": exporter,
        "batch": batch,
        "parity": parity,
        "threads": n_threads,
        "tta": tta,
        "onnxruntime": ort.__version__,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return run, record


__all__ = [
    "ExportError",
    "ExportResult",
    "FORMATS",
    "carried_onnx",
    "check_batch",
    "dice",
    "export_model",
    "onnxruntime_runner",
]
