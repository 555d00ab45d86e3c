"""Parameter and FLOP table of the zoo (``lungseg models table``; ``docs/models.md`` is its output).

FLOPs come from :class:`torch.utils.flop_counter.FlopCounterMode` on one image (batch 1) in
eval mode, with the model and the input on the ``meta`` device, so nothing is allocated or
computed. The counter counts 2 FLOPs per multiply-add of convolutions, matmuls and
``scaled_dot_product_attention``; element-wise ops, norms and pooling are not counted.
Models are built with their defaults, so LG-Net and PR-Net use the default ``max_tokens``
(4096 tokens, pooled attention above 64×64); exact attention at 512² would be far larger.
The count is of ``forward`` (the prediction): the extra training outputs of deep-supervised models
(Inf-Net's side and edge maps, AWSnet's side heads) are not in it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from . import create_model, list_models


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_stats(name: str, sizes: Sequence[int], base_channels: int, **kwargs) -> dict:
    """``{"params": int, "flops": {size: int}}`` for model ``name`` at ``base_channels``."""
    with torch.device("meta"):
        model = create_model(name, base_channels=base_channels, **kwargs).eval()
    out = {"params": count_params(model), "flops": {}}
    for s in sizes:
        x = torch.empty(1, model.in_channels, s, s, device="meta")
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(x)
        out["flops"][s] = counter.get_total_flops()
    return out


def markdown_table(sizes: Sequence[int] = (256, 512), base_channels: int = 64) -> str:
    """Markdown table: model, size divisor, parameters (M), GFLOPs per image at each size."""
    sizes = list(sizes)
    head = "| model | size divisor | params (M) | " + " | ".join(f"GFLOPs @ {s}²" for s in sizes) + " |"
    rows = [head, "|" + " --- |" * (3 + len(sizes))]
    for name in list_models():
        st = model_stats(name, sizes, base_channels)
        with torch.device("meta"):
            div = create_model(name, base_channels=base_channels).size_divisor
        flops = " | ".join(f"{st['flops'][s] / 1e9:.2f}" for s in sizes)
        rows.append(f"| {name} | {div} | {st['params'] / 1e6:.3f} | {flops} |")
    note = (
        f"\nbase_channels={base_channels}, in_channels=1, num_classes=1, batch 1; FLOPs = 2·MACs of "
        "conv/matmul/attention (torch.utils.flop_counter) of `forward` (training-only heads not counted); "
        "LG-Net and PR-Net with default max_tokens=4096."
    )
    return "\n".join(rows) + "\n" + note
