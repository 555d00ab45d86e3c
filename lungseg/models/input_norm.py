"""An intensity normalisation that belongs to a trained network: nnU-Net's CT normalisation (issue #25).

A model trained on data preprocessed with ``preprocess.normalization: ct_zscore`` records the
training split's foreground statistics in its identity (``identity["input_norm"]``: the
:class:`lungseg.data.normalize.CTNormStats` record, ``{"scheme": "ct", "mean", "std",
"percentile_00_5", "percentile_99_5", ...}``). :func:`lungseg.models.create_recorded` then builds the
network with :func:`attach`: every forward (and a deep-supervision model's ``forward_heads``) first
clips its input to the percentiles and z-scores it with the mean and std — nnU-Net's
``CTNormalization.run`` (``nnunetv2/preprocessing/normalization/default_normalization_schemes.py``).
So training, validation, ``evaluate``, ``predict``, the served MLflow model and an ONNX export (the
pre-hook is traced) all apply the same numbers, and the input stays what every lungseg contract
says: the slice in [0, 1] (the HU window, a linear map of HU, so z-scoring it equals z-scoring the
HU inside the window). The hook holds no parameters: the state dict is the bare network's.

This module knows nothing of the data layer (models are the bottom layer): the record is a dict.
"""

from __future__ import annotations

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


class _PreHook:
    def __init__(self, norm: CTNorm):
        self.norm = norm

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (self.norm(args[0]), *args[1:])


class _Heads:
    """A deep-supervision model's ``forward_heads`` with the input normalised first."""

    def __init__(self, heads, norm: CTNorm):
        self.heads, self.norm = heads, norm

    def __call__(self, x: torch.Tensor, *args, **kwargs):
        return self.heads(self.norm(x), *args, **kwargs)


def attach(net: nn.Module, record: dict[str, Any]) -> nn.Module:
    """``net`` normalising its input by ``record`` in every forward (a forward pre-hook) and in
    ``forward_heads`` where it has one; ``net.input_norm`` holds the record. Returns ``net``."""
    norm = CTNorm(record)
    net.register_forward_pre_hook(_PreHook(norm))
    if callable(getattr(net, "forward_heads", None)):
        net.forward_heads = _Heads(net.forward_heads, norm)
    net.input_norm = norm.record
    return net


__all__ = ["CTNorm", "KEYS", "attach"]
