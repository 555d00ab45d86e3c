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
    if infection is None and lung is None:
        raise ValueError("compute() needs an infection and/or a lung mask")
    n = len(infection if infection is not None else lung)
    names = names or [f"{i}" for i in range(n)]
    labels = list(infection_labels or ["infection"])
    tot = {k: 0 for k in ("lung", "left", "right", "inf", "in_lung", "outside", "inf_left", "inf_right")}
    by_label = {name: [0, 0] for name in labels}
    per_slice = []
    split = lung is not None and columns_towards_left is not None
    for i in range(n):
        lab = None if infection is None else infection[i]
        inf = None if lab is None else lab > 0
        lm = None if lung is None else lung[i] > 0
        row: dict[str, Any] = {"name": names[i]}
        if lm is not None:
            tot["lung"] += int(lm.sum())
            row["lung_voxels"] = int(lm.sum())
            if split:
                left, right = split_sides(lung[i], columns_towards_left)
                tot["left"] += int(left.sum())
                tot["right"] += int(right.sum())
        if inf is not None:
            tot["inf"] += int(inf.sum())
            row["infection_voxels"] = int(inf.sum())
            for k, name in enumerate(labels, start=1):
                by_label[name][0] += int((lab == k).sum())
                if lm is not None:
                    by_label[name][1] += int(((lab == k) & lm).sum())
            if lm is not None:
                tot["in_lung"] += int((inf & lm).sum())
                tot["outside"] += int((inf & ~lm).sum())
                row["infection_outside_lung_voxels"] = int((inf & ~lm).sum())
                if split:
                    tot["inf_left"] += int((inf & left).sum())
                    tot["inf_right"] += int((inf & right).sum())
        per_slice.append(row)

    lung_out = None
    if lung is not None:
        lung_out = _amount(tot["lung"], voxel_ml)
        if split:
            lung_out["left"] = _amount(tot["left"], voxel_ml)
            lung_out["right"] = _amount(tot["right"], voxel_ml)
    inf_out = None
    if infection is not None:
        inf_out = _amount(tot["inf"], voxel_ml)
        inf_out["label_names"] = labels
        if len(labels) > 1:
            inf_out["by_label"] = {
                name: {**_amount(v[0], voxel_ml), **({"in_lung": _amount(v[1], voxel_ml)} if lung is not None else {})}
                for name, v in by_label.items()
            }
        if lung is not None:
            inf_out["in_lung"] = _amount(tot["in_lung"], voxel_ml)
            inf_out["outside_lung"] = _amount(tot["outside"], voxel_ml)
            if split:
                inf_out["left"] = {
                    **_amount(tot["inf_left"], voxel_ml),
                    "percent_of_lung": _percent(tot["inf_left"], tot["left"]),
                }
                inf_out["right"] = {
                    **_amount(tot["inf_right"], voxel_ml),
                    "percent_of_lung": _percent(tot["inf_right"], tot["right"]),
                }
    percent = _percent(tot["in_lung"], tot["lung"]) if lung is not None and infection is not None else None
    return {
        "volumes": {"lung": lung_out, "infection": inf_out},
        "percent_of_lung_affected": percent,
        "slices": per_slice,
    }


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
