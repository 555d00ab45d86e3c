"""Great Expectations checks on a processed dataset, run before it is renamed into place.

One ephemeral GX context, one pandas data source, one suite, one validation run per dataset
(GX import costs ~4 s; the run itself well under a second for thousands of slices). The batch is
the manifest joined with per-slice pixel statistics computed from the arrays that are about to
be written, so the checks see exactly what training will read:

* non-empty dataset; row count = number of arrays; ids unique and present;
* every split in {train, val, test} present, and each split's size equal to the split plan;
* image values in [0, 1], no NaN; mask labels in 0..K-1; image and mask shapes equal;
* with patient-level splits, no patient in two splits.

A failure raises :class:`~lungseg.errors.ValidationFailed`; the report (failing expectations and the
ids of failing slices) is written to ``<output>.validation-failed.json`` beside the output.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from lungseg.errors import ValidationFailed
from lungseg.io import atomic_write_json

MANIFEST_COLUMNS = [
    "index",
    "id",
    "source",
    "patient_id",
    "split",
    "orig_height",
    "orig_width",
    "height",
    "width",
    "foreground_fraction",
    "image_sha256",
    "mask_sha256",
]


def pixel_stats(images: np.ndarray, masks: np.ndarray):
    """Per-slice statistics (pandas DataFrame) the expectations run on."""
    import pandas as pd

    flat = images.reshape(len(images), -1)
    mflat = masks.reshape(len(masks), -1)
    return pd.DataFrame(
        {
            "img_min": np.nanmin(flat, axis=1) if flat.size else [],
            "img_max": np.nanmax(flat, axis=1) if flat.size else [],
            "img_nan": np.isnan(flat).sum(axis=1),
            "mask_min": mflat.min(axis=1) if mflat.size else [],
            "mask_max": mflat.max(axis=1) if mflat.size else [],
            "img_h": [images.shape[-2]] * len(images),
            "img_w": [images.shape[-1]] * len(images),
            "mask_h": [masks.shape[-2]] * len(masks),
            "mask_w": [masks.shape[-1]] * len(masks),
        }
    )


def build_batch(manifest, images: np.ndarray, masks: np.ndarray, expected_counts: dict[str, int]):
    """The single DataFrame validated: manifest + pixel statistics + split bookkeeping."""
    df = manifest.reset_index(drop=True).copy()
    stats = pixel_stats(images, masks)
    if len(stats) == len(df):
        df = df.join(stats)
    df["n_in_split"] = df.groupby("split")["id"].transform("size").astype("int64") if len(df) else []
    df["expected_n_in_split"] = df["split"].map(expected_counts).fillna(-1).astype("int64")
    pid = df["patient_id"].fillna("").astype(str)
    df["patient_n_splits"] = df.assign(_pid=pid).groupby("_pid")["split"].transform("nunique") if len(df) else []
    return df


def _suite(gx, gxe, *, n_arrays: int, num_labels: int, patient_level: bool, columns: list[str]):
    suite = gx.ExpectationSuite(name="lungseg-processed")
    add = suite.add_expectation
    for col in MANIFEST_COLUMNS:
        add(gxe.ExpectColumnToExist(column=col))
    add(gxe.ExpectTableRowCountToBeBetween(min_value=1))
    add(gxe.ExpectTableRowCountToEqual(value=n_arrays))
    add(gxe.ExpectColumnValuesToBeUnique(column="id"))
    for col in ("id", "split", "image_sha256", "mask_sha256"):
        add(gxe.ExpectColumnValuesToNotBeNull(column=col))
    add(gxe.ExpectColumnDistinctValuesToEqualSet(column="split", value_set=["train", "val", "test"]))
    add(gxe.ExpectColumnPairValuesToBeEqual(column_A="n_in_split", column_B="expected_n_in_split"))
    if "img_min" in columns:
        add(gxe.ExpectColumnValuesToBeBetween(column="img_min", min_value=0.0, max_value=1.0))
        add(gxe.ExpectColumnValuesToBeBetween(column="img_max", min_value=0.0, max_value=1.0))
        add(gxe.ExpectColumnValuesToBeBetween(column="img_nan", min_value=0, max_value=0))
        add(gxe.ExpectColumnValuesToBeBetween(column="mask_min", min_value=0, max_value=num_labels - 1))
        add(gxe.ExpectColumnValuesToBeBetween(column="mask_max", min_value=0, max_value=num_labels - 1))
        add(gxe.ExpectColumnPairValuesToBeEqual(column_A="img_h", column_B="mask_h"))
        add(gxe.ExpectColumnPairValuesToBeEqual(column_A="img_w", column_B="mask_w"))
    add(gxe.ExpectColumnValuesToBeBetween(column="foreground_fraction", min_value=0.0, max_value=1.0))
    if patient_level:
        add(gxe.ExpectColumnValuesToBeBetween(column="patient_n_splits", min_value=1, max_value=1))
    return suite


def validate(
    manifest,
    images: np.ndarray,
    masks: np.ndarray,
    *,
    num_labels: int,
    expected_counts: dict[str, int],
    patient_level: bool,
    report_path: str | Path,
) -> dict[str, Any]:
    """Run the suite; return a JSON-able summary, or write ``report_path`` and raise ``ValidationFailed``."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    t0 = time.perf_counter()
    import great_expectations as gx
    import great_expectations.expectations as gxe

    t_import = time.perf_counter() - t0
    batch = build_batch(manifest, images, masks, expected_counts)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = gx.data_context.types.base.ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("lungseg")
    asset = source.add_dataframe_asset("processed")
    batch_def = asset.add_batch_definition_whole_dataframe("all")
    suite = context.suites.add(
        _suite(
            gx,
            gxe,
            n_arrays=len(images),
            num_labels=num_labels,
            patient_level=patient_level,
            columns=list(batch.columns),
        )
    )
    vdef = context.validation_definitions.add(gx.ValidationDefinition(name="processed", data=batch_def, suite=suite))
    result = vdef.run(
        batch_parameters={"dataframe": batch},
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["id"]},
    )
    seconds = time.perf_counter() - t0
    raw = result.to_json_dict()
    checks = []
    failing_ids: set[str] = set()
    for r in raw["results"]:
        cfg = r["expectation_config"]
        res = r.get("result") or {}
        ids = sorted({str(u.get("id")) for u in res.get("unexpected_index_list") or [] if isinstance(u, dict)})
        failing_ids.update(ids if not r["success"] else [])
        checks.append(
            {
                "expectation": cfg["type"],
                "kwargs": {k: v for k, v in cfg["kwargs"].items() if k != "batch_id"},
                "success": bool(r["success"]),
                "observed_value": res.get("observed_value"),
                "unexpected_count": res.get("unexpected_count"),
                "failing_ids": ids[:50],
            }
        )
    summary = {
        "success": bool(raw["success"]),
        "n_expectations": len(checks),
        "n_failed": sum(not c["success"] for c in checks),
        "failing_ids": sorted(failing_ids)[:200],
        "great_expectations_version": gx.__version__,
        "seconds": {"total": round(seconds, 3), "import": round(t_import, 3)},
        "checks": checks,
    }
    if not summary["success"]:
        atomic_write_json(report_path, file_report(summary))
        failed = [
            c["expectation"] + (f"({c['kwargs'].get('column', '')})" if c["kwargs"].get("column") else "")
            for c in checks
            if not c["success"]
        ]
        ids = ", ".join(summary["failing_ids"][:10]) or "-"
        raise ValidationFailed(
            f"{summary['n_failed']} data check(s) failed: {'; '.join(failed)}; failing ids: {ids}", report=report_path
        )
    return summary


def file_report(summary: dict[str, Any]) -> dict[str, Any]:
    """What goes into ``validation.json``: the summary without its timings, so that the same data
    always gives the same bytes (DVC hashes the output folder; a timing would change it every run)."""
    return {k: v for k, v in summary.items() if k != "seconds"}
