"""An intensity normalisation that belongs to a trained network: nnU-Net's CT normalisation (issue #25).

A model trained on data preprocessed with ``preprocess.normalization: ct_zscore`` records the
training split's foreground statistics in its identity (``identity["input_norm"]``: the
:class:`lungseg.data.normalize.CTNormStats` record, ``{"scheme": "ct", "mean", "std",
"percentile_00_5", "percentile_99_5", ...}``). :func:`lungseg.models.create_recorded` then builds the
network with :func:`attach`: every forward (and a deep-supervision model's ``forward_heads``) first
clips its input to the percentiles and z-scores it with the mean and std (exactly once per call,
however the two call each other) — nnU-Net's
``CTNormalization.run`` (``nnunetv2/preprocessing/normalization/default_normalization_schemes.py``).
So training, validation, ``evaluate``, ``predict``, the served MLflow model and an ONNX export (the
pre-hook is traced) all apply the same numbers, and the input stays what every lungseg contract
says: the slice in [0, 1] (the HU window, a linear map of HU, so z-scoring it equals z-scoring the
HU inside the window). The hook holds no parameters: the state dict is the bare network's.

This module knows nothing of the data layer (models are the bottom layer): the record is a dict.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from torch import nn

KEYS = ("mean", "std", "percentile_00_5", "percentile_99_5")


class CTNorm:
    """``(clip(x, p0.5, p99.5) − mean) / max(std, 1e-8)`` (picklable, so a model carrying it can be saved)."""

    def __init__(self, record: dict[str, Any]):
        missing = [k for k in KEYS if k not in record]
        if record.get("scheme") != "ct" or missing:
            raise ValueError(
                f"input_norm: expected a CT normalisation record (scheme ct, {', '.join(KEYS)}), got {record}"
            )
        self.record = dict(record)
        self.lo, self.hi = float(record["percentile_00_5"]), float(record["percentile_99_5"])
        self.mean, self.std = float(record["mean"]), max(float(record["std"]), 1e-8)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x.clamp(self.lo, self.hi) - self.mean) / self.std


class _Once:
    """The input normalised exactly once per outer call (review of #25: UNet++'s and U²-Net-P's
    ``forward`` call ``self.forward_heads``, so a pre-hook on ``forward`` plus a wrapped
    ``forward_heads`` z-scored their input twice). One guard per network, shared by the forward
    pre-hook, the forward hook that closes it (``always_call``: closed on an exception too) and the
    ``forward_heads`` wrapper: whichever entry is outermost normalises; a nested entry (``forward``
    → ``forward_heads``, ``forward_heads`` → ``self(...)``) passes its input through. The depth is
    per thread (a served model answers concurrent requests) and is not pickled."""

    def __init__(self, norm: CTNorm):
        self.norm = norm
        self._local = threading.local()

    def __getstate__(self) -> dict:
        return {"norm": self.norm}

    def __setstate__(self, state: dict) -> None:
        self.norm, self._local = state["norm"], threading.local()

    @property
    def depth(self) -> int:
        return getattr(self._local, "depth", 0)

    def enter(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` normalised if this is the outermost entry, else ``x``; the depth goes up by one."""
        depth = self.depth
        self._local.depth = depth + 1
        return self.norm(x) if depth == 0 else x

    def leave(self) -> None:
        self._local.depth = max(self.depth - 1, 0)


class _PreHook:
    def __init__(self, once: _Once):
        self.once = once

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (self.once.enter(args[0]), *args[1:])


class _PostHook:
    def __init__(self, once: _Once):
        self.once = once

    def __call__(self, module: nn.Module, args: tuple, output):
        self.once.leave()


class _Heads:
    """A deep-supervision model's ``forward_heads`` with the input normalised once (see :class:`_Once`)."""

    def __init__(self, heads, once: _Once):
        self.heads, self.once = heads, once

    def __call__(self, x: torch.Tensor, *args, **kwargs):
        x = self.once.enter(x)
        try:
            return self.heads(x, *args, **kwargs)
        finally:
            self.once.leave()


def attach(net: nn.Module, record: dict[str, Any]) -> nn.Module:
    """``net`` normalising its input by ``record`` exactly once per call of ``net(x)`` or of
    ``net.forward_heads(x)`` where it has one, however the two call each other (:class:`_Once`);
    ``net.input_norm`` holds the record. Returns ``net``."""
    if getattr(net, "input_norm", None) is not None:
        raise ValueError("input_norm: the network already normalises its input (attach it once)")
    once = _Once(CTNorm(record))
    net.register_forward_pre_hook(_PreHook(once))
    net.register_forward_hook(_PostHook(once), always_call=True)
    if callable(getattr(net, "forward_heads", None)):
        net.forward_heads = _Heads(net.forward_heads, once)
    net.input_norm = once.norm.record
    return net


__all__ = ["CTNorm", "KEYS", "attach"]
