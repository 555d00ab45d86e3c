"""The model side of inference, shared by ``lungseg predict``, the MLflow model and the exports.

Only torch, numpy and :mod:`lungseg.models` are imported here: the MLflow model
(:mod:`lungseg.artifacts.pyfunc`) carries a copy of this module in its own code folder so that it
loads where lungseg is not installed.

Input of every function: slices already in the training intensity range, float32 in [0, 1]
(:mod:`lungseg.inference.volumes` applies the intensity rule the model was trained with).

Resizing
    *To the model* (``image_size``²): exactly :func:`lungseg.data.transforms.resize_pair` for
    images — bilinear, ``align_corners=False``, anti-aliased when either side is larger than the
    model size, clamped to [0, 1] — but on a whole batch and on the model's device. The aspect
    ratio is not kept (the training contract is square slices), so a 512×384 slice is seen
    stretched, as it was in training. Sizes that are not a multiple of the model's ``size_divisor``
    are therefore never a problem: the model only ever sees ``image_size``².
    *Back to the input size*: the **probabilities** are resized (bilinear, anti-aliased when
    shrinking) and only then thresholded (binary: ``p ≥ threshold``) or arg-maxed (multi-class).
    Labels are never interpolated. Thresholding at the model size and copying labels back by
    nearest neighbour was the alternative; it makes 8×8 blocks of a 64² model on a 512² scan,
    while resizing the probabilities gives the smooth boundary the model's output implies.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def build_network(identity: dict[str, Any], state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """The network of ``identity`` (``{name, kwargs}``, as recorded by training) in eval mode,
    with the weights ``state`` when given (``RuntimeError`` from torch when they do not fit)."""
    from lungseg.models import create_recorded

    net = create_recorded(identity)
    if state is not None:
        net.load_state_dict(state)
    return net.eval()


def resize_to_model(x: torch.Tensor, size: int) -> torch.Tensor:
    """``(N, 1, H, W)`` float in [0, 1] → ``(N, 1, size, size)``, as preprocessing resizes images."""
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    downscale = h > size or w > size
    out = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=downscale)
    return out.clamp_(0.0, 1.0)


def resize_back(probs: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """``(N, C, s, s)`` probabilities → ``(N, C, H, W)`` (bilinear; anti-aliased when shrinking)."""
    h, w = int(hw[0]), int(hw[1])
    if tuple(probs.shape[-2:]) == (h, w):
        return probs
    shrink = h < probs.shape[-2] or w < probs.shape[-1]
    out = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False, antialias=shrink)
    return out.clamp_(0.0, 1.0)


def to_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Logits ``(N, C, H, W)`` → probabilities: sigmoid for one channel, softmax over C otherwise."""
    logits = logits.float()
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


#: the mirrorings ``tta="flips"`` and ``tta="mirror"`` average over: identity, columns, rows, both
#: (nnU-Net's 2-D mirroring: every combination of the axes H and W)
FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))
#: the serving ``tta`` values :func:`forward_probabilities` knows (:data:`lungseg.artifacts.serving.TTA`)
TTA_MODES = ("none", "flips", "mirror")


def mirrored_logits(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The mean of ``net``'s logits (fp32) over the mirrorings of :data:`FLIPS`, each flipped back — nnU-Net v2's
    test-time mirroring (``nnunetv2/inference/predict_from_raw_data.py``,
    ``nnUNetPredictor._internal_maybe_mirror_and_predict``: the network's raw outputs summed over every
    combination of the mirror axes and divided by their number; softmax comes afterwards)."""
    total = None
    for dims in FLIPS:
        y = net(torch.flip(x, dims) if dims else x).float()
        y = torch.flip(y, dims) if dims else y
        total = y if total is None else total + y
    return total / len(FLIPS)


def forward_probabilities(net: nn.Module, x: torch.Tensor, tta: str = "none") -> torch.Tensor:
    """Probabilities of ``net`` on ``x`` ``(N, 1, s, s)`` (:func:`to_probabilities`). ``tta="flips"``: the
    mean of the **probabilities** over the mirrorings of :data:`FLIPS`, each flipped back (kept as it was:
    models served with it serve unchanged); ``tta="mirror"``: sigmoid/softmax of the mean **logits** over
    them (:func:`mirrored_logits`, nnU-Net's ``_internal_maybe_mirror_and_predict``, #25)."""
    if tta == "none":
        return to_probabilities(net(x))
    if tta == "mirror":
        return to_probabilities(mirrored_logits(net, x))
    if tta != "flips":
        raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")
    total = None
    for dims in FLIPS:
        p = to_probabilities(net(torch.flip(x, dims) if dims else x))
        p = torch.flip(p, dims) if dims else p
        total = p if total is None else total + p
    return total / len(FLIPS)


#: the CPU flags of native bf16 arithmetic in ``/proc/cpuinfo``: x86 AVX-512 BF16 and AMX, Arm's bf16
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def onednn_bf16() -> bool:
    """oneDNN's own check (``torch.ops.mkldnn._is_mkldnn_bf16_supported``): whether this torch build's
    oneDNN has bf16 kernels for this CPU (false on a build without oneDNN)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_bf16_flags(cpuinfo: str = "/proc/cpuinfo") -> bool | None:
    """Whether ``cpuinfo`` lists a native bf16 flag (:data:`NATIVE_BF16_FLAGS`); ``None`` where it cannot be read."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as fh:
            flags = set()
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    flags.update(value.split())
    except OSError:
        return None
    return bool(flags & NATIVE_BF16_FLAGS)


def cpu_supports_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bf16 natively — the one check of ``lungseg train`` (``train.precision``)
    and ``lungseg predict`` (``--precision``), #24: oneDNN has bf16 kernels here (:func:`onednn_bf16`)
    **and** ``/proc/cpuinfo`` lists a native bf16 flag (:func:`cpu_bf16_flags`; oneDNN also says yes on
    an AVX-512 CPU without AVX-512 BF16, where it emulates); where there is no ``/proc/cpuinfo``,
    oneDNN's check alone. Without it ``torch.autocast("cpu", bfloat16)`` still runs, emulated and
    slower than fp32 (measured ~20× for a U-Net train step on this AVX2 EPYC), so bf16 is only worth
    it where this is true. Answered once per process and ``cpuinfo``."""
    return _cpu_supports_bf16(cpuinfo)


@functools.cache
def _cpu_supports_bf16(cpuinfo: str) -> bool:
    flags = cpu_bf16_flags(cpuinfo)
    return onednn_bf16() and flags is not False


def compile_failure(exc: BaseException) -> str | None:
    """``"<Type>: <first line>"`` of the backend's own error when ``exc`` comes from ``torch.compile``
    (dynamo, or a backend such as inductor, whose error dynamo wraps), else ``None``: the one-line
    reason of a ``train.compile`` and a ``lungseg predict --compile`` failure (#24)."""
    import torch._dynamo.exc as dynamo_exc

    kinds: list[type] = [dynamo_exc.TorchDynamoException, dynamo_exc.FailOnRecompileLimitHit]
    try:
        from torch._inductor.exc import InductorError

        kinds.append(InductorError)
    except ImportError:  # older torch
        pass
    if not isinstance(exc, tuple(kinds)):
        return None
    root = exc  # the backend's own error (dynamo wraps it)
    while (inner := getattr(root, "inner_exception", None) or root.__cause__) is not None:
        root = inner
    first = (str(root).strip().splitlines() or [""])[0]
    return f"{type(root).__name__}: {first}"


#: why a compiled call is refused after it ran: torch.compile handed no graph to the backend (#24)
NO_GRAPH = "torch.compile compiled no graph: the network ran eager (torch's settings disabled or skipped the compile)"


def compile_blocked() -> str | None:
    """Why ``torch.compile`` would compile nothing in this process (so ``train.compile`` / ``predict
    --compile`` are refused before they start, #24), else ``None``: ``TORCH_COMPILE_DISABLE=1``
    (``torch._dynamo.config.disable``) makes every compiled call run eager without a word."""
    import torch._dynamo.config as dynamo_config

    if getattr(dynamo_config, "disable", False):
        return "torch.compile is disabled in this process (TORCH_COMPILE_DISABLE=1 / torch._dynamo.config.disable)"
    return None


class CountingBackend:
    """A ``torch.compile`` backend: ``backend`` (a registered name such as ``"inductor"``, or a backend
    callable) that counts the graphs it compiled (``graphs``), so that ``compile: true`` is recorded only
    when a graph really was compiled (#24)."""

    def __init__(self, backend: Any):
        self.backend, self.graphs = backend, 0

    def __call__(self, gm, example_inputs, **kwargs):
        from torch._dynamo.backends.registry import lookup_backend

        inner = lookup_backend(self.backend) if isinstance(self.backend, str) else self.backend
        compiled = inner(gm, example_inputs, **kwargs)  # (a failure raises: nothing counted)
        self.graphs += 1
        return compiled


def strict_compile():
    """The context of every call of a compiled network (#24): a compile error raises (dynamo would
    otherwise run the frame eager under ``TORCHDYNAMO_SUPPRESS_ERRORS=1``), and so does a shape past
    dynamo's recompile limit (shared by every model of one class in a process), which would otherwise
    run eager too."""
    import torch._dynamo.config as dynamo_config

    return dynamo_config.patch(suppress_errors=False, fail_on_recompile_limit_hit=True)


def run_compiled(fn, backend: CountingBackend, refuse):
    """``fn()``, a call of a network compiled with ``backend``, under :func:`strict_compile` (#24); a
    compile failure (:func:`compile_failure`) or a call after which ``backend`` has compiled no graph
    (it ran eager: :data:`NO_GRAPH`) raises ``refuse(why)``, the caller's one-line error (``train.compile``
    and ``lungseg predict --compile`` word it for their setting); any other exception propagates."""
    try:
        with strict_compile():
            out = fn()
    except Exception as exc:
        reason = compile_failure(exc)
        if reason:
            raise refuse(f"torch.compile failed ({reason})") from exc
        raise
    if not backend.graphs:
        raise refuse(NO_GRAPH)
    return out


def resolve_precision(precision: str, device_type: str) -> tuple[str, str | None]:
    """The arithmetic a forward pass on ``device_type`` runs in for a serving ``precision``
    (:data:`lungseg.artifacts.serving.PRECISION`): ``("fp32" | "bf16", note)``. ``auto`` = fp32 on every
    device: evaluation scores ``auto`` in fp32 (on the CPU), so the served labels come from the arithmetic
    that was scored (#20; bf16 on CUDA only when the settings say ``bf16``, i.e. it was evaluated in bf16,
    or the user asks for it). ``bf16`` on a CPU without bf16 support (:func:`cpu_supports_bf16`) or a GPU
    without it falls back to fp32, and ``note`` says so in one line."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be one of auto, fp32, bf16, got {precision!r}")
    if precision in ("auto", "fp32"):  # auto: what evaluation scored, fp32, on every device (#20)
        return "fp32", None
    cuda = device_type == "cuda"
    if cuda and not torch.cuda.is_bf16_supported():
        return "fp32", "bf16 asked, but this GPU has no bf16: ran in fp32"
    if not cuda and not cpu_supports_bf16():
        return "fp32", "bf16 asked, but this CPU has no native bf16 (avx512_bf16 / AMX / Arm bf16): ran in fp32"
    return "bf16", None


def to_labels(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """Probabilities ``(N, C, H, W)`` → uint8 labels ``(N, H, W)``: ``p ≥ threshold`` (one channel)
    or the arg-max class (C > 1)."""
    if probs.shape[1] == 1:
        return (probs[:, 0] >= threshold).to(torch.uint8)
    return probs.argmax(dim=1).to(torch.uint8)


class ProbabilityNet(nn.Module):
    """``net`` followed by sigmoid/softmax: what an export carries (input ``(N, 1, s, s)`` in [0, 1],
    output probabilities ``(N, C, s, s)``), so a consumer needs no knowledge of logits. ``tta="mirror"``:
    the logits averaged over the four mirrorings first (:func:`mirrored_logits`), inside the graph — so an
    ONNX export of it serves ``mirror`` exactly as PyTorch does (#25; no logits are rebuilt from
    probabilities, which saturate in fp32)."""

    def __init__(self, net: nn.Module, tta: str = "none"):
        super().__init__()
        if tta not in ("none", "mirror"):
            raise ValueError(f"an exported network carries tta none or mirror, got {tta!r}")
        self.net = net
        self.tta = tta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = mirrored_logits(self.net, x) if self.tta == "mirror" else self.net(x)  # (N, C, s, s)
        if logits.shape[1] == 1:
            return torch.sigmoid(logits)
        return torch.softmax(logits, dim=1)


def predict_batch(
    net: nn.Module,
    images: torch.Tensor,
    size: int,
    *,
    amp: bool = False,
    channels_last: bool = False,
    tta: str = "none",
) -> torch.Tensor:
    """Probabilities ``(N, C, H, W)`` of one batch ``(N, 1, H, W)`` in [0, 1] at its own size: resize to
    the model, run it (bf16 autocast when ``amp``; mirrored and averaged with ``tta="flips"`` /
    ``"mirror"``), resize the probabilities back. Call it inside ``torch.inference_mode()``; ``images`` must
    be on the model's device."""
    hw = tuple(images.shape[-2:])
    x = resize_to_model(images.float(), size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        probs = forward_probabilities(net, x, tta)
    return resize_back(probs.float(), hw)


def predict_array(
    net: nn.Module,
    images: np.ndarray,
    size: int,
    *,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    tta: str = "none",
    precision: str = "fp32",
) -> np.ndarray:
    """Probabilities ``(N, C, H, W)`` float32 for ``images`` ``(N, H, W)`` float32 in [0, 1] (one size):
    the plain loop of the MLflow model and the export parity check (fp32; ``precision="bf16"``: under
    bf16 autocast — the caller resolves a serving precision with :func:`resolve_precision`)."""
    device = torch.device(device)
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size], dtype=np.float32))
            probs = predict_batch(net, x[:, None].to(device), size, tta=tta, amp=precision == "bf16")
            out.append(probs.cpu().numpy())
    if not out:
        return np.zeros((0, 1, *images.shape[1:]), np.float32)
    return np.concatenate(out)
