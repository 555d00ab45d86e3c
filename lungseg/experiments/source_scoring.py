"""Score a trained cell at the source resolution of its test masks (``lungseg results run
--score-at-source``).

The tables' metrics are computed at the processed size (64², 128²): the masks the model is scored
against were resized to it (nearest neighbour). The papers measure against the masks as published
(MedSeg 512²; COVID-SemiSeg crops of ~158–507 px). This scores the same model as ``lungseg predict``
serves it: the model runs on the processed test image, its **probabilities** are resized back to
the source mask's size (:func:`lungseg.artifacts.core.resize_back`: bilinear, anti-aliased when
shrinking) and only then thresholded and post-processed (:func:`lungseg.artifacts.serving.apply`), and
the labels are scored against the source mask with the evaluation's own metric code
(:func:`lungseg.metrics.per_image_metrics`, :func:`lungseg.metrics.aggregate`). Distances (HD, HD95) are
then in pixels of the source mask. The serving settings are the record's (its evaluation's
``metrics.serving``: threshold, ``tta`` — ``mirror`` under ``train.preset: nnunet`` —, ``postprocess``),
recorded in the block as ``threshold``/``tta``/``postprocess`` (review of #25: the block was scored
without the mirroring and the post-processing the record's evaluation applied).

The source masks are read again with the table's reader from the raw folder (``--data-root``), by
the ids of the processed test split. Binary tables only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: what a record stores under ``source_resolution``: how it was scored, the summary and per-image rows
SOURCE_KEY = "source_resolution"


def source_masks(dataset: str, input_dir: str | Path, ids: Sequence[str], preprocess_cfg) -> dict[str, Any]:
    """``{id: mask at its source size}`` for ``ids``, read with reader ``dataset`` from ``input_dir``
    (``DataError`` naming the folder when one is missing or a mask is not binary)."""
    import numpy as np

    from lungseg.data.readers import get_reader
    from lungseg.errors import DataError

    wanted, out = set(ids), {}
    for raw in get_reader(dataset).func(Path(input_dir), preprocess_cfg).slices:
        if raw.id in wanted:
            mask = np.asarray(raw.mask)
            if mask.ndim != 2 or mask.max(initial=0) > 1:
                raise DataError(input_dir, f"slice {raw.id}: source mask is not a binary 2-D mask")
            out[raw.id] = mask.astype(np.uint8)
    missing = sorted(wanted - set(out))
    if missing:
        raise DataError(input_dir, f"source masks not found for {len(missing)} test slice(s): {', '.join(missing[:5])}")
    return out


def score_at_source(
    net,
    images,
    ids: Sequence[str],
    masks: Mapping[str, Any],
    *,
    threshold: float = 0.5,
    device: str = "cpu",
    tta: str = "none",
    postprocess: str = "none",
) -> dict[str, Any]:
    """Metrics of ``net`` on ``images`` ``(N, 1, s, s)`` (the processed test images, ids ``ids``)
    against ``masks[id]`` at their own sizes, served with ``tta`` and ``postprocess`` at ``threshold``:
    ``{"threshold", "tta", "postprocess", "sizes", "metrics", "per_image"}``."""
    import torch

    from lungseg.artifacts.core import forward_probabilities, resize_back
    from lungseg.artifacts.serving import ServingSettings, apply
    from lungseg.experiments.runner import clean_json
    from lungseg.metrics import aggregate, per_image_metrics

    settings = ServingSettings(threshold=threshold, tta=tta, postprocess=postprocess)
    net = net.eval().to(device)
    rows = []
    with torch.inference_mode():
        for i, image_id in enumerate(ids):
            x = torch.as_tensor(images[i : i + 1], dtype=torch.float32, device=device)
            gt = masks[image_id]
            probs = resize_back(forward_probabilities(net, x, tta=tta), tuple(gt.shape))[0, 0].cpu().numpy()
            labels = apply(probs[None], settings)  # thresholded, then post-processed, as served
            df = per_image_metrics(probs[None], gt[None], threshold=threshold, ids=[image_id], labels=labels)
            rows.append(df)
    import pandas as pd

    table = pd.concat(rows, ignore_index=True)
    sizes = sorted({tuple(int(v) for v in masks[i].shape) for i in ids})
    return clean_json(
        {
            "threshold": threshold,
            "tta": tta,
            "postprocess": postprocess,
            "sizes": [list(s) for s in sizes],
            "metrics": aggregate(table),
            "per_image": table.to_dict(orient="records"),
        }
    )


def score_cell_at_source(
    train_dir: Path,
    data_dir: Path,
    dataset: str,
    input_dir: Path,
    *,
    threshold: float,
    device: str = "cpu",
    serving: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """:func:`score_at_source` of the ``best.pt`` in ``train_dir`` on the test split of ``data_dir``,
    the source masks read from ``input_dir``, served with ``serving`` (the record's evaluation's
    ``metrics.serving``: its threshold, tta and postprocess) — without it, as ``lungseg evaluate``
    resolves ``auto`` for this checkpoint at ``threshold`` (:func:`serving_of`)."""
    from lungseg.artifacts.checkpoint import BEST, load_checkpoint
    from lungseg.artifacts.core import build_network
    from lungseg.config import PreprocessConfig
    from lungseg.data.dataset import load_split
    from lungseg.errors import DataError

    ckpt = load_checkpoint(train_dir / BEST)
    if int(ckpt["model_identity"]["kwargs"].get("num_classes", 1)) != 1:
        raise DataError(data_dir, "scoring at the source resolution is for binary tables only")
    net = build_network(ckpt["model_identity"], ckpt["model_state"])
    test = load_split(data_dir, "test")
    ids = [str(i) for i in test.manifest["id"]]
    pre = {k: v for k, v in (test.meta.get("preprocess") or {}).items() if k in PreprocessConfig.model_fields}
    masks = source_masks(dataset, input_dir, ids, PreprocessConfig(**pre))
    threshold, tta, post = serving_of(ckpt, test.meta, threshold, serving)
    return score_at_source(net, test.images, ids, masks, threshold=threshold, device=device, tta=tta, postprocess=post)


def serving_of(
    ckpt: dict[str, Any], meta: dict[str, Any], threshold: float, serving: Mapping[str, Any] | None
) -> tuple[float, str, str]:
    """``(threshold, tta, postprocess)``: the recorded ``serving``'s, or (none recorded) ``auto`` resolved as
    ``lungseg evaluate`` resolves it (``tta``: by the checkpoint's preset; ``postprocess``: by its labels)."""
    from lungseg.artifacts.serving import ServingSettings, resolve_postprocess, resolve_tta, trained_preset

    if serving:
        s = ServingSettings.from_dict(dict(serving))
        return s.threshold, s.tta, s.postprocess
    names = (ckpt.get("preprocess") or {}).get("label_names") or meta.get("label_names")
    return threshold, resolve_tta("auto", trained_preset(ckpt)), resolve_postprocess("auto", names)
