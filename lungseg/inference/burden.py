"""The infection-burden report of one scan: volumes in mL, % of lung affected, left / right.

Volumes
    ``voxels × voxel volume`` with the voxel volume = slice step × row spacing × column spacing
    (mm³) / 1000 → mL, from the input's own geometry (:class:`lungseg.inference.volumes.Scan`). Without
    a known spacing (PNG/TIFF slices without ``--spacing``) every ``ml`` is ``null`` and the report
    gives voxel counts and percentages only. Volumes are counted on the masks written in the input's
    geometry (at the input's resolution), not at the model's size.

Lung and infection
    ``lung`` = the lung-field model's foreground; ``infection`` = every non-background label of the
    infection model (per label under ``by_label`` for a multi-class model). With both models:
    ``infection.in_lung`` (infection ∩ lung) is what the percentage uses
    (``percent_of_lung_affected = in_lung / lung × 100``), and ``infection.outside_lung`` is the
    infection predicted outside the lung mask — reported, never silently dropped: a large value
    says that one of the two models is wrong on this scan. With the infection model alone there
    is no percentage (nothing to divide by).

Left / right
    Connected components of the lung mask are found **per axial slice** (``scipy.ndimage.label``,
    4-connectivity), and each component goes to the side of the image midline (column
    ``(W - 1) / 2``) that its centroid lies on. Image side → patient side from the input's
    orientation: NIfTI is cut in the radiological view (columns go from the patient's right to
    left) and DICOM slices are read as stored, so the image's right is the patient's **left**
    when the row direction cosine points to the patient's left (+x in DICOM's LPS, the usual
    axial orientation); PNG/TIFF slices carry no orientation and the radiological view is assumed
    (the report says so). Per slice rather than 3-D: the lungs can touch through the trachea
    or the mediastinum in 3-D but are separate in almost every axial slice. A component straddling
    the midline (lungs touching in that slice) goes whole to one side; the report keeps the counts so
    that can be checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def side_convention(columns_towards_left: bool | None) -> str:
    if columns_towards_left is None:
        return "unknown orientation: no left/right split"
    if columns_towards_left:
        return (
            "radiological: the patient's left is on the image's right (column index grows towards the patient's left)"
        )
    return "neurological: the patient's left is on the image's left (column index grows towards the patient's right)"


def _ml(voxels: int, voxel_ml: float | None) -> float | None:
    return None if voxel_ml is None else float(voxels) * float(voxel_ml)


def _amount(voxels: int, voxel_ml: float | None) -> dict[str, Any]:
    return {"voxels": int(voxels), "ml": _ml(voxels, voxel_ml)}


def _percent(part: int, whole: int) -> float | None:
    return None if whole == 0 else 100.0 * float(part) / float(whole)


def split_sides(lung: np.ndarray, columns_towards_left: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(left, right)`` boolean masks of one 2-D lung mask (see the module docstring)."""
    from scipy import ndimage

    comp, n = ndimage.label(lung > 0)
    if n == 0:
        empty = np.zeros(lung.shape, bool)
        return empty, empty
    cols = np.broadcast_to(np.arange(lung.shape[1]), lung.shape)
    sizes = np.bincount(comp.ravel(), minlength=n + 1)
    centroid = np.bincount(comp.ravel(), weights=cols.ravel(), minlength=n + 1) / np.maximum(sizes, 1)
    image_right = centroid > (lung.shape[1] - 1) / 2.0
    image_right[0] = False
    on_image_right = image_right[comp] & (comp > 0)
    on_image_left = ~image_right[comp] & (comp > 0)
    return (on_image_right, on_image_left) if columns_towards_left else (on_image_left, on_image_right)


def compute(
    infection: list[np.ndarray] | None,
    lung: list[np.ndarray] | None,
    *,
    voxel_ml: float | None,
    columns_towards_left: bool | None,
    infection_labels: list[str] | None = None,
    names: list[str] | None = None,
) -> dict[str, Any]:
    """``{"volumes": …, "percent_of_lung_affected": …, "slices": [...]}`` of one scan from its masks
    (one 2-D uint8 label array per slice, each at the input's size); see the module docstring."""
    with_infection, with_lung = infection is not None, lung is not None
    if not (with_infection or with_lung):
        raise ValueError("compute() needs an infection and/or a lung mask")
    n = len(infection if with_infection else lung)
    labels = list(infection_labels or ["infection"])
    side = columns_towards_left if with_lung else None  # None: no left/right split
    tot, by_label, per_slice = _count_scan(infection, lung, side, labels, names or [f"{i}" for i in range(n)], n)
    return {
        "volumes": _volumes(
            tot, labels, by_label, voxel_ml, with_infection=with_infection, with_lung=with_lung, split=side is not None
        ),
        "percent_of_lung_affected": _percent(tot["in_lung"], tot["lung"]) if with_lung and with_infection else None,
        "slices": per_slice,
    }


def _count_scan(
    infection: list[np.ndarray] | None,
    lung: list[np.ndarray] | None,
    columns_towards_left: bool | None,
    labels: list[str],
    names: list[str],
    n: int,
) -> tuple[dict[str, int], dict[str, list[int]], list[dict[str, Any]]]:
    """The voxel totals of the scan's ``n`` slices, per label ``[voxels, voxels in the lung]``, and
    one row per slice."""
    tot = {k: 0 for k in ("lung", "left", "right", "inf", "in_lung", "outside", "inf_left", "inf_right")}
    by_label = {name: [0, 0] for name in labels}
    per_slice = [
        _count_slice(names[i], _at(infection, i), _at(lung, i), columns_towards_left, labels, tot, by_label)
        for i in range(n)
    ]
    return tot, by_label, per_slice


def _at(masks: list[np.ndarray] | None, i: int) -> np.ndarray | None:
    return None if masks is None else masks[i]


def _count_slice(
    name: str,
    lab: np.ndarray | None,
    lung: np.ndarray | None,
    columns_towards_left: bool | None,
    labels: list[str],
    tot: dict[str, int],
    by_label: dict[str, list[int]],
) -> dict[str, Any]:
    """Add one slice's voxel counts to the scan's totals ``tot`` and ``by_label`` (label name →
    ``[voxels, voxels in the lung]``); return its row of ``slices``. ``columns_towards_left`` None:
    no left/right split."""
    inf = None if lab is None else lab > 0
    lm = None if lung is None else lung > 0
    row: dict[str, Any] = {"name": name}
    sides = None
    if lm is not None:
        tot["lung"] += int(lm.sum())
        row["lung_voxels"] = int(lm.sum())
        if columns_towards_left is not None:
            sides = split_sides(lung, columns_towards_left)
            tot["left"] += int(sides[0].sum())
            tot["right"] += int(sides[1].sum())
    if inf is not None:
        tot["inf"] += int(inf.sum())
        row["infection_voxels"] = int(inf.sum())
        _count_labels(lab, lm, labels, by_label)
        if lm is not None:
            _count_infection_in_lung(inf, lm, sides, tot, row)
    return row


def _count_labels(lab: np.ndarray, lm: np.ndarray | None, labels: list[str], by_label: dict[str, list[int]]) -> None:
    """Per label k = 1, 2, …: its voxels and (with a lung mask ``lm``) those in the lung."""
    for k, name in enumerate(labels, start=1):
        by_label[name][0] += int((lab == k).sum())
        if lm is not None:
            by_label[name][1] += int(((lab == k) & lm).sum())


def _count_infection_in_lung(
    inf: np.ndarray,
    lm: np.ndarray,
    sides: tuple[np.ndarray, np.ndarray] | None,
    tot: dict[str, int],
    row: dict[str, Any],
) -> None:
    """Infection inside / outside the lung mask, and per side when ``sides`` = ``(left, right)``."""
    tot["in_lung"] += int((inf & lm).sum())
    tot["outside"] += int((inf & ~lm).sum())
    row["infection_outside_lung_voxels"] = int((inf & ~lm).sum())
    if sides is not None:
        tot["inf_left"] += int((inf & sides[0]).sum())
        tot["inf_right"] += int((inf & sides[1]).sum())


def _volumes(
    tot: dict[str, int],
    labels: list[str],
    by_label: dict[str, list[int]],
    voxel_ml: float | None,
    *,
    with_infection: bool,
    with_lung: bool,
    split: bool,
) -> dict[str, Any]:
    """The report's ``volumes``: ``lung`` and ``infection`` (None for a mask not given)."""
    return {
        "lung": _lung_volumes(tot, voxel_ml, split=split) if with_lung else None,
        "infection": _infection_volumes(tot, labels, by_label, voxel_ml, with_lung=with_lung, split=split)
        if with_infection
        else None,
    }


def _lung_volumes(tot: dict[str, int], voxel_ml: float | None, *, split: bool) -> dict[str, Any]:
    out = _amount(tot["lung"], voxel_ml)
    if split:
        out["left"] = _amount(tot["left"], voxel_ml)
        out["right"] = _amount(tot["right"], voxel_ml)
    return out


def _infection_volumes(
    tot: dict[str, int],
    labels: list[str],
    by_label: dict[str, list[int]],
    voxel_ml: float | None,
    *,
    with_lung: bool,
    split: bool,
) -> dict[str, Any]:
    """The ``infection`` entry: total, label names, per label (several labels), in / outside the lung
    and per side with its % of that side's lung (``with_lung``, ``split``)."""
    out = _amount(tot["inf"], voxel_ml)
    out["label_names"] = labels
    if len(labels) > 1:
        out["by_label"] = {
            name: {**_amount(v[0], voxel_ml), **({"in_lung": _amount(v[1], voxel_ml)} if with_lung else {})}
            for name, v in by_label.items()
        }
    if not with_lung:
        return out
    out["in_lung"] = _amount(tot["in_lung"], voxel_ml)
    out["outside_lung"] = _amount(tot["outside"], voxel_ml)
    if split:
        for side, key in (("left", "inf_left"), ("right", "inf_right")):
            out[side] = {**_amount(tot[key], voxel_ml), "percent_of_lung": _percent(tot[key], tot[side])}
    return out


def _fmt(amount: dict[str, Any] | None) -> str:
    if amount is None:
        return "n/a"
    return f"{amount['ml']:.1f} mL" if amount["ml"] is not None else f"{amount['voxels']} voxels"


def _fmt_pct(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.1f} %"


def summary_line(name: str, report: dict[str, Any]) -> str:
    """One human-readable line: lung volume (left, right), infection in the lung and its %, infection
    outside the lung mask."""
    lung, inf = report["volumes"]["lung"], report["volumes"]["infection"]
    parts = []
    if lung is not None:
        s = f"lung {_fmt(lung)}"
        if "left" in lung:
            s += f" (left {_fmt(lung['left'])}, right {_fmt(lung['right'])})"
        parts.append(s)
    if inf is not None and lung is not None:
        s = f"infection in the lung {_fmt(inf['in_lung'])} = {_fmt_pct(report['percent_of_lung_affected'])} of the lung"
        if "left" in inf:
            s += (
                f" (left {_fmt_pct(inf['left']['percent_of_lung'])}, right {_fmt_pct(inf['right']['percent_of_lung'])})"
            )
        parts.append(s)
        parts.append(f"infection outside the lung mask {_fmt(inf['outside_lung'])}")
    elif inf is not None:
        parts.append(f"infection {_fmt(inf)} (no lung model: % of lung not computed)")
    return f"{name}: " + "; ".join(parts)


def overlay_figure(
    path: Path,
    images: list[np.ndarray],
    infection: list[np.ndarray] | None,
    lung: list[np.ndarray] | None,
    names: list[str],
    *,
    title: str = "",
    max_panels: int = 6,
) -> Path:
    """The slices with the most infection (else lung), up to ``max_panels`` in slice order: the image the
    model saw, the lung contour (cyan) and the infection (red)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = infection if infection is not None else lung
    score = [int((k > 0).sum()) for k in key]
    chosen = sorted(sorted(range(len(images)), key=lambda i: (-score[i], i))[:max_panels])
    cols = len(chosen)
    fig, axes = plt.subplots(1, cols, figsize=(3.2 * cols, 3.6), squeeze=False)
    for ax, i in zip(axes[0], chosen):
        ax.imshow(images[i], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        if lung is not None and lung[i].any():
            ax.contour(lung[i] > 0, levels=[0.5], colors="cyan", linewidths=0.8)
        if infection is not None and infection[i].any():
            ax.imshow(
                np.ma.masked_where(infection[i] == 0, infection[i]), cmap="autumn", alpha=0.5, interpolation="nearest"
            )
        ax.set_title(f"{names[i]}", fontsize=8)
        ax.axis("off")
    if title:
        import textwrap

        fig.suptitle("\n".join(textwrap.wrap(title, 40 * cols)), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ["compute", "overlay_figure", "side_convention", "split_sides", "summary_line"]
