"""``preprocess(dataset, input_dir, output_dir, cfg)``: raw data → one canonical, validated folder.

Steps (identical for every reader): read slices (:mod:`lungseg.data.readers`) → resize to
``image_size``² (:func:`lungseg.data.transforms.resize_pair`) → assign splits
(:mod:`lungseg.data.splits`) → write ``images.npy``, ``masks.npy``, ``manifest.csv``, ``meta.json``
into a temporary sibling folder → Great Expectations checks (:mod:`lungseg.data.validation`) →
``validation.json`` → rename into place (:func:`lungseg.io.atomic_dir`). Any error leaves no
output folder behind and a previous output intact.

Few large files, not one PNG a slice: DVC hashes and transfers them fast, and training memory-maps
them. ``image_sha256``/``mask_sha256`` in the manifest are hashes of each slice's *processed*
bytes (as stored in the arrays), so a row can be checked against the arrays and duplicate slices
across splits can be spotted. ``spacing_mm`` is the source pixel spacing scaled by
``orig / image_size`` per axis, or null when the source records none (PNG, npy).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lungseg.errors import DataError


@dataclass
class PreprocessSummary:
    dataset: str
    output_dir: Path
    counts: dict[str, int]
    num_labels: int
    image_size: int
    foreground_fraction: float
    """Mean over slices of the non-background fraction."""
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    validation_seconds: float = 0.0

    @property
    def n_slices(self) -> int:
        return sum(self.counts.values())

    def describe(self) -> str:
        c = self.counts
        lines = [
            f"{self.dataset}: {self.n_slices} slices (train {c.get('train', 0)}, val {c.get('val', 0)}, "
            f"test {c.get('test', 0)}) at {self.image_size}x{self.image_size}, {self.num_labels} labels, "
            f"foreground {100 * self.foreground_fraction:.1f} % → {self.output_dir}",
            f"  {self.seconds:.1f} s (validation {self.validation_seconds:.1f} s), "
            f"{len(self.warnings)} warning(s) in meta.json",
        ]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _sha256(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def preprocess(
    dataset: str, input_dir: str | Path, output_dir: str | Path, cfg, data_version: dict[str, Any] | None = None
) -> PreprocessSummary:
    """Read ``input_dir`` with reader ``dataset`` and write the canonical folder ``output_dir``.

    ``meta.json["source"]`` records the raw data's version (:func:`lungseg.lineage.input_version`:
    its DVC content hash, and path/rev/commit when known). ``data_version`` is the version a pipeline
    resolved and staged for this run: the input must hash to it (``DataError`` otherwise).
    ``meta.json["label_names"]`` are the reader's, or the user's (:func:`label_names`).

    ``cfg`` is a :class:`lungseg.config.PreprocessConfig`: its values were checked when it was built
    (:mod:`lungseg.config`; ``image_size`` against the model's ``size_divisor`` where ``params.yaml``
    names one), not again here. Raises ``DataError`` (bad/missing input, unknown dataset) or
    ``ValidationFailed`` (Great Expectations checks; report at ``<output_dir>.validation-failed.json``).
    """
    from lungseg.data import normalize, readers, validation
    from lungseg.io import atomic_dir, atomic_write_json
    from lungseg.lineage import input_version

    t0 = time.perf_counter()
    info = readers.get_reader(dataset)
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise DataError(input_dir, "input folder not found")
    source = input_version(input_dir, data_version).to_dict()
    source.pop("staged_uri", None)  # where a copy was staged is the run's business, not the data's
    report_path = output_dir.parent / f"{output_dir.name}.validation-failed.json"

    with atomic_dir(output_dir) as tmp:
        raw = info.func(input_dir, cfg)
        names, names_source = label_names(raw, cfg, input_dir, dataset)
        df, images, masks = _resize_and_describe(raw.slices, cfg.image_size)
        if df is None:
            raise DataError(input_dir, f"no slices found by reader {dataset!r}")
        df, plan = _assign_splits(df, cfg, input_dir)
        image_arr = np.stack(images)[:, None].astype(np.float32, copy=False)
        mask_arr = np.stack(masks).astype(np.uint8, copy=False)
        del images, masks
        meta = _meta(dataset, raw, df, plan, cfg, input_dir, source)
        train = (df["split"] == "train").to_numpy()  # issue #25: preprocess.normalization (ct_zscore: its statistics)
        meta["preprocess"].update(normalize.preprocess_record(image_arr, mask_arr, train, cfg.normalization))
        meta.update(label_names=names, label_names_source=names_source)
        np.save(tmp / "images.npy", image_arr)
        np.save(tmp / "masks.npy", mask_arr)
        df.to_csv(tmp / "manifest.csv", index=False)
        atomic_write_json(tmp / "meta.json", meta)
        summary = validation.validate(
            df,
            image_arr,
            mask_arr,
            num_labels=raw.num_labels,
            expected_counts=plan.counts,
            patient_level=plan.level == "patient",
            report_path=report_path,
        )
        atomic_write_json(tmp / "validation.json", validation.file_report(summary))
    if report_path.exists():  # a stale failure report from an earlier run no longer applies
        report_path.unlink()
    return PreprocessSummary(
        dataset=dataset,
        output_dir=output_dir,
        counts=plan.counts,
        num_labels=raw.num_labels,
        image_size=cfg.image_size,
        foreground_fraction=meta["foreground_fraction"],
        warnings=meta["warnings"],
        seconds=time.perf_counter() - t0,
        validation_seconds=summary["seconds"]["total"],
    )


#: the file beside the raw data that names its labels (a JSON list, or nnU-Net's ``{"name": value}``)
LABELS_FILE = "labels.json"


def label_names(raw, cfg, input_dir: Path, dataset: str) -> tuple[list[str], str]:
    """The label names to record and where they came from: ``preprocess.label_names`` (params), else
    ``<input>/labels.json`` — a list ``["background", "lung"]`` or nnU-Net's mapping
    ``{"background": 0, "lung": 1}`` —, else the reader's. A reader with published labels (MedSeg,
    Kaggle, …) keeps them: a different name there is an error, not a rename. One name per label value
    (``num_labels``), unique and non-empty."""
    given = getattr(cfg, "label_names", None)
    file = input_dir / LABELS_FILE
    from_file = _read_labels_file(file) if file.is_file() else None
    if given is not None and from_file is not None and list(given) != from_file:
        raise DataError(file, f"names the labels {from_file}, but preprocess.label_names says {list(given)}")
    names, where = (list(given), "params preprocess.label_names") if given is not None else (from_file, LABELS_FILE)
    if names is None:
        return list(raw.label_names), f"reader {dataset}"
    where_path = file if where == LABELS_FILE else input_dir
    if len(names) != raw.num_labels:
        raise DataError(where_path, f"{where}: {len(names)} names {names} for {raw.num_labels} label values")
    if where == LABELS_FILE and (len(set(names)) != len(names) or not all(n.strip() for n in names)):
        raise DataError(where_path, f"{where}: label names must be unique, non-empty strings, got {names}")
    from lungseg.data.readers.base import BINARY_LABELS

    if list(raw.label_names) not in (list(BINARY_LABELS), names):
        raise DataError(
            where_path,
            f"{where}: the {dataset} reader's labels are {raw.label_names} (published with the data); "
            f"{names} would rename them",
        )
    return names, where


def _read_labels_file(path: Path) -> list[str]:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(path, f"not valid JSON: {exc}") from exc
    if isinstance(data, dict) and isinstance(data.get("labels"), dict):
        data = data["labels"]  # nnU-Net's dataset.json
    if isinstance(data, list) and all(isinstance(n, str) for n in data):
        return data
    if isinstance(data, dict) and all(isinstance(v, int) and not isinstance(v, bool) for v in data.values()):
        values = sorted(data.values())
        if values != list(range(len(values))):
            raise DataError(path, f"label values must be 0..{len(values) - 1}, got {values}")
        return [name for name, _ in sorted(data.items(), key=lambda kv: kv[1])]
    raise DataError(path, 'expected a list of names ["background", "lung"] or a mapping {"background": 0, "lung": 1}')


def _resize_and_describe(slices, size: int):
    """``(manifest rows as a DataFrame, images, masks)`` of the resized slices; ``(None, [], [])`` when none."""
    import pandas as pd

    from lungseg.data import transforms

    images, masks, rows = [], [], []
    for s in slices:
        image, mask = transforms.resize_pair(s.image, s.mask, size)
        spacing = None
        if s.spacing is not None:
            spacing = (s.spacing[0] * s.image.shape[0] / size, s.spacing[1] * s.image.shape[1] / size)
        rows.append(
            {
                "id": s.id,
                "source": s.source,
                "patient_id": s.patient_id,
                "hint": s.split,
                "orig_height": s.image.shape[0],
                "orig_width": s.image.shape[1],
                "height": size,
                "width": size,
                "foreground_fraction": float(np.count_nonzero(mask)) / mask.size,
                "image_sha256": _sha256(image),
                "mask_sha256": _sha256(mask),
                "spacing_row_mm": None if spacing is None else round(spacing[0], 6),
                "spacing_col_mm": None if spacing is None else round(spacing[1], 6),
                **s.extra,
            }
        )
        images.append(image)
        masks.append(mask)
    return (pd.DataFrame(rows) if rows else None), images, masks


def _assign_splits(df, cfg, input_dir: Path):
    """The manifest with its ``index`` and ``split`` columns (in the contract's column order) and the plan."""
    from lungseg.data import splits, validation

    dup = df["id"][df["id"].duplicated()]
    if len(dup):
        raise DataError(input_dir, f"duplicate slice id(s): {', '.join(dup.astype(str).unique()[:5])}")
    plan = splits.assign_splits(
        df["hint"].tolist(),
        df["patient_id"].tolist(),
        df["id"].tolist(),
        val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction,
        seed=cfg.seed,
        where=input_dir,
        ignore_published=cfg.split == "seeded",
    )
    df.insert(0, "index", np.arange(len(df)))
    df.insert(4, "split", plan.splits)
    df = df.drop(columns="hint")
    base = validation.MANIFEST_COLUMNS
    df = df[base + [c for c in df.columns if c not in base]]
    if df["spacing_row_mm"].isna().all():
        df = df.drop(columns=["spacing_row_mm", "spacing_col_mm"])
    return df, plan


def _meta(dataset: str, raw, df, plan, cfg, input_dir: Path, source: dict[str, Any]) -> dict[str, Any]:
    from lungseg import __version__

    warnings = list(raw.warnings)
    if not any(w.startswith("slice-level") for w in warnings):
        warnings += plan.warnings
    spacing_mm = None
    if "spacing_row_mm" in df:
        sp = df[["spacing_row_mm", "spacing_col_mm"]].drop_duplicates()
        if len(sp) == 1 and not sp.isna().any(axis=None):
            spacing_mm = [float(sp.iloc[0, 0]), float(sp.iloc[0, 1])]
        else:
            warnings.append(
                "pixel spacing differs between slices (or is missing for some): "
                "see manifest columns spacing_row_mm / spacing_col_mm"
            )
    return {
        "dataset": dataset,
        "num_labels": raw.num_labels,
        "label_names": raw.label_names,
        "image_size": cfg.image_size,
        "spacing_mm": spacing_mm,
        "split_protocol": raw.split_protocol
        if cfg.split == "published"
        else f"seeded (preprocess.split): test {cfg.test_fraction:g}, val {cfg.val_fraction:g} of the rest, seed "
        f"{cfg.seed}; the source's split not used ({raw.split_protocol})",
        "split_level": plan.level,
        "counts": plan.counts,
        "warnings": warnings,
        "source_dir": str(input_dir),  # as given: the output must not depend on where the checkout lives
        "source": source,
        "lungseg_version": __version__,
        "preprocess": {
            "image_size": cfg.image_size,
            "hu_window": list(cfg.hu_window),
            "val_fraction": cfg.val_fraction,
            "test_fraction": cfg.test_fraction,
            "seed": cfg.seed,
            **({"split": cfg.split} if cfg.split != "published" else {}),
            "multiclass": cfg.multiclass,
        },
        "foreground_fraction": float(df["foreground_fraction"].mean()),
    }
