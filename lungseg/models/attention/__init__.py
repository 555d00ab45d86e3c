"""Attention pieces of the zoo, one module per kernel:

- :mod:`~lungseg.models.attention.tokens`: the ``max_tokens`` budget shared by PCM and DSA (pool to
  a grid of at most ``max_tokens`` pixels, attend there, resize back) and its justification;
- :mod:`~lungseg.models.attention.pcm_attention`: PCM and LG-Attention (LG-Net), computed by the
  ``pcm_impl`` kernels ``reference`` / ``blocked`` / ``parallel`` / ``flex``;
- :mod:`~lungseg.models.attention.dsa_attention`: DSA, gated conv and PAM (PR-Net), computed by the
  ``dsa_impl`` kernels ``reference`` / ``blocked`` / ``parallel`` (the blocked kernel over chunks of
  head-maps, one thread each: :mod:`~lungseg.models.attention.dsa_parallel`);
- :mod:`~lungseg.models.attention.workers`: the chunks of a blocked kernel on several CPU threads
  (the ``parallel`` PCM and DSA);
- :mod:`~lungseg.models.attention.gate`: the additive attention gate (Attention U-Net).

Every public name is re-exported here (``from lungseg.models.attention import LGAttention`` as
before the split; the modules' classes, parameters and state_dict keys are unchanged). A
module-level setting is read where it is defined: patch ``dsa_attention.DSA_BLOCK_ELEMS``, not
this package's copy of the name.
"""

from __future__ import annotations

from .dsa_attention import (
    DSA_BLOCK_ELEMS,
    DSA_IMPLS,
    DilatedSelfAttention,
    GatedConv,
    ProgressiveAttention,
    check_dsa_impl,
    default_heads,
    dsa_block_shape,
    resolve_dsa_impl,
    softmax_attention_blocked,
)
from .gate import AttentionGate
from .pcm_attention import (
    PCM_BLOCK_ELEMS,
    PCM_IMPLS,
    LGAttention,
    block_rows_for,
    check_pcm_impl,
    flex_available,
    from_quadrants,
    pcm,
    pixel_correlation,
    pixel_correlation_blocked,
    pixel_correlation_flex,
    pixel_weighted_aggregation,
    quadrants,
    resolve_pcm_impl,
)
from .tokens import DEFAULT_MAX_TOKENS, pool, token_grid, unpool

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DSA_BLOCK_ELEMS",
    "DSA_IMPLS",
    "PCM_BLOCK_ELEMS",
    "PCM_IMPLS",
    "AttentionGate",
    "DilatedSelfAttention",
    "GatedConv",
    "LGAttention",
    "ProgressiveAttention",
    "block_rows_for",
    "check_dsa_impl",
    "check_pcm_impl",
    "default_heads",
    "dsa_block_shape",
    "flex_available",
    "from_quadrants",
    "pcm",
    "pixel_correlation",
    "pixel_correlation_blocked",
    "pixel_correlation_flex",
    "pixel_weighted_aggregation",
    "pool",
    "quadrants",
    "resolve_dsa_impl",
    "resolve_pcm_impl",
    "softmax_attention_blocked",
    "token_grid",
    "unpool",
]
