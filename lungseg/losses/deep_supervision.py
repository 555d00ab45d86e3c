"""Deep supervision: one loss over several outputs of a model, ``Σ_k w_k · L_k(head_k, target_k)``.

Models whose paper trains several outputs (Inf-Net, AWSnet; see
:class:`lungseg.models.blocks.SegmentationModel`) return them from ``forward_heads`` (main output
first) and declare ``deep_supervision_weights`` (one weight per head) and optionally
``deep_supervision_targets`` (per head ``"mask"`` or ``"edge"``). Training wraps its loss::

    loss_fn = DeepSupervisionLoss(loss_fn, model.deep_supervision_weights, model.deep_supervision_targets)
    loss = loss_fn(model.forward_heads(x), masks)

- ``"mask"`` heads: the wrapped loss (any lungseg loss: logits ``(B, K, h, w)``, integer masks
  ``(B, H, W)``), weighted and summed by :class:`monai.losses.DeepSupervisionLoss`; a head smaller
  than the mask is compared with the mask resized by nearest-exact interpolation (MONAI's rule).
- ``"edge"`` heads: one-channel logits against the mask's boundary (:func:`boundary_map`) with
  binary cross-entropy (pixel mean) — Inf-Net's edge supervision (``BCE(lateral_edge, edges)``
  in its ``MyTrain_LungInf.py``).

Weights are used as given (not normalised), as the papers sum their losses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.losses import DeepSupervisionLoss as MonaiDeepSupervisionLoss
from monai.transforms import LabelToContour
from torch import nn
from torch.nn import functional as F

TARGETS = ("mask", "edge")


def boundary_map(masks: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, H, W)`` labels → float ``(B, 1, H, W)`` in {0, 1}: the inner boundary of the foreground.

    A pixel is boundary when it is foreground (label > 0) and one of its 8 neighbours is background
    (outside the image counts as background): MONAI's ``LabelToContour`` (3×3 Laplacian, clamped to
    [0, 1]) on the foreground map. Class-agnostic, for one-channel edge heads. ``like`` gives the
    dtype/device (default float32 on the masks' device).
    """
    fg = (masks > 0).to(torch.float32)  # (B, H, W): LabelToContour reads the batch as channels
    edge = LabelToContour()(fg).unsqueeze(1)  # (B, 1, H, W)
    return edge if like is None else edge.to(device=like.device, dtype=like.dtype)


class _OnChannelTarget(nn.Module):
    """Adapts a lungseg loss (integer masks ``(B, H, W)``) to MONAI's ``(B, 1, H, W)`` float target."""

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss = loss

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(logits, target[:, 0].round().to(torch.long))


class DeepSupervisionLoss(nn.Module):
    """``Σ_k w_k · L_k(outputs[k], target_k)`` over the outputs of ``forward_heads``.

    ``loss``: the loss of every ``"mask"`` head; ``weights``: one per head, >= 0; ``targets``: one of
    ``"mask"``/``"edge"`` per head (default: all ``"mask"``). The first head (the model's main
    output) must be a ``"mask"`` head. Call with the list of head logits and the masks ``(B, H, W)``.
    """

    def __init__(self, loss: nn.Module, weights: Sequence[float], targets: Sequence[str] | None = None):
        super().__init__()
        weights = [float(w) for w in weights]
        targets = ["mask"] * len(weights) if targets is None else list(targets)
        if not weights:
            raise ValueError("deep supervision needs at least one head weight")
        if len(targets) != len(weights):
            raise ValueError(f"{len(weights)} head weights but {len(targets)} head targets")
        if any(w < 0 for w in weights):
            raise ValueError(f"head weights must be >= 0, got {weights}")
        if bad := sorted(set(targets) - set(TARGETS)):
            raise ValueError(f"unknown head target(s) {bad} (valid: {', '.join(TARGETS)})")
        if targets[0] != "mask":
            raise ValueError("the first head (the model's main output) must be trained against the mask")
        self.weights, self.targets = weights, targets
        self.mask_heads = [i for i, t in enumerate(targets) if t == "mask"]
        self.edge_heads = [i for i, t in enumerate(targets) if t == "edge"]
        self.base = loss
        self.mask_loss = MonaiDeepSupervisionLoss(_OnChannelTarget(loss), weights=[weights[i] for i in self.mask_heads])

    def _check(self, outputs: Sequence[torch.Tensor]) -> None:
        if isinstance(outputs, torch.Tensor) or len(outputs) != len(self.weights):
            got = "one tensor" if isinstance(outputs, torch.Tensor) else f"{len(outputs)} outputs"
            raise ValueError(f"deep supervision over {len(self.weights)} heads needs forward_heads' list, got {got}")
        for i in self.edge_heads:
            if outputs[i].shape[1] != 1:
                raise ValueError(f"edge head {i} must have one channel, got shape {tuple(outputs[i].shape)}")

    def components(self, outputs: Sequence[torch.Tensor], masks: torch.Tensor) -> list[torch.Tensor]:
        """The unweighted loss of every head, in head order."""
        self._check(outputs)
        parts = []
        for i, out in enumerate(outputs):
            if self.targets[i] == "mask":
                parts.append(self.mask_loss.get_loss(out.float(), masks.unsqueeze(1).float()))
            else:
                parts.append(self._edge_loss(out, masks))
        return parts

    @staticmethod
    def _edge_loss(out: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        target = boundary_map(masks, like=out.float())
        if target.shape[-2:] != out.shape[-2:]:
            target = F.interpolate(target, size=out.shape[-2:], mode="nearest-exact")
        return F.binary_cross_entropy_with_logits(out.float(), target)

    def forward(self, outputs: Sequence[torch.Tensor], masks: torch.Tensor) -> torch.Tensor:
        self._check(outputs)
        total = self.mask_loss([outputs[i] for i in self.mask_heads], masks.unsqueeze(1).float())
        for i in self.edge_heads:
            total = total + self.weights[i] * self._edge_loss(outputs[i], masks)
        return total
