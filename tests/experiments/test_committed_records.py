"""The committed result records (docs/results/**.json, the source of every number in docs/results.md)
agree with themselves and with the table specs: each summary recomputes from its own per-image
confusion counts, each record's settings are what its table, profile and overrides say, and the typed
record (RunRecord) reads every file exactly (what it writes back is the file)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from lungseg.experiments import identity, runner
from lungseg.experiments.records import RunRecord
from lungseg.experiments.specs import TABLES

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"
RECORDS = sorted(RESULTS.glob("*/*/*.json"))


def _load(path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_there_are_committed_records_for_every_table():
    tables = {p.parts[-3] for p in RECORDS}
    assert tables == set(TABLES)
    for name in TABLES:  # the cpu profile is complete: every row × seed of every table
        spec = TABLES[name]
        have = {p.stem for p in RECORDS if p.parts[-3] == name and p.parts[-2] == "cpu"}
        assert have == {f"{r.key}-seed{s}" for r in spec.rows for s in spec.seeds}


@pytest.mark.parametrize("path", RECORDS, ids=lambda p: "/".join(p.parts[-3:]))
def test_record_is_consistent(path):
    raw = _load(path)
    rec = RunRecord.read(path)
    assert rec.to_dict() == raw  # the typed record is the file format: nothing lost, nothing added
    assert rec.path == path and not rec.extra and not rec.settings.extra and not rec.data.extra
    table, profile, cell = path.parts[-3], path.parts[-2], path.stem
    assert (rec.table, rec.profile, rec.cell) == (table, profile, cell)
    spec = TABLES[table]
    row = spec.row(rec.row)
    # the settings are the spec's profile (+ the recorded command-line overrides), not stale ones
    prof = runner.effective_profile(spec, profile, rec.overrides)
    assert raw["settings"] == runner.settings_of(prof, row)
    m, rows = rec.metrics, rec.per_image
    assert len(rows) == m["n_images"] == rec.data.counts["test"]
    tp, fp, fn, tn = (np.array([r[k] for r in rows], dtype=float) for k in ("tp", "fp", "fn", "tn"))
    assert np.all(tp + fp + fn + tn == rec.data.image_size**2)
    # per image: Dice and ACC from the confusion counts (images with nothing to compare are undefined)
    for r, a, b, c, d in zip(rows, tp, fp, fn, tn, strict=True):
        if 2 * a + b + c > 0:
            assert r["dice"] == pytest.approx(2 * a / (2 * a + b + c), abs=1e-9)
        assert r["acc"] == pytest.approx((a + d) / (a + b + c + d), abs=1e-9)
    # summaries: the mean over the images' defined values, the pooled value from the summed counts
    dice = [r["dice"] for r in rows if r["dice"] is not None and math.isfinite(r["dice"])]
    assert m["dice_mean"] == pytest.approx(float(np.mean(dice)), abs=1e-9)
    assert rec.metric("dice_pooled") == pytest.approx(2 * tp.sum() / (2 * tp.sum() + fp.sum() + fn.sum()), abs=1e-9)
    assert rec.metric("acc_pooled") == pytest.approx((tp.sum() + tn.sum()) / (tp + fp + fn + tn).sum(), abs=1e-9)
    # the dataset-level mIoU the LG-Net tables compare with the paper (Eq. 18: mean of the foreground
    # and background IoU of one confusion matrix over the test set) is derivable from the record alone
    iou_fg = tp.sum() / (tp.sum() + fp.sum() + fn.sum())
    iou_bg = tn.sum() / (tn.sum() + fp.sum() + fn.sum())
    assert rec.metric("miou_pooled") == pytest.approx((iou_fg + iou_bg) / 2, abs=1e-9)
    assert rec.git.commit and rec.device.type in ("cpu", "cuda")


@pytest.mark.parametrize("path", RECORDS, ids=lambda p: "/".join(p.parts[-3:]))
def test_record_identity_is_todays_or_marked_as_older_code(path):
    """A committed record either carries the identity today's code builds for its cell (every
    constructor argument, the effective train settings, the loss and its options, the preset and its
    deviations), or is explicitly marked as made by older code (``lungseg results check --mark``) —
    so a changed default can never again leave the page describing another model unnoticed."""
    rec = RunRecord.read(path)
    status, note = identity.staleness(rec)
    assert status in ("current", "unrecorded", "stale"), f"{path}: {status}: {note}"
    if status != "current":
        assert note and rec.made_by_older_code


def test_records_made_by_older_code_are_named_in_their_block_of_the_page():
    page = (RESULTS.parent / "results.md").read_text(encoding="utf-8")
    for path in RECORDS:
        rec = RunRecord.read(path)
        if rec.made_by_older_code:
            block = page.split(f"<!-- BEGIN GENERATED: {rec.table}/{rec.profile} -->")[1].split("<!-- END")[0]
            line = next(x for x in block.splitlines() if x.startswith(f"  - {rec.made_by_older_code}: "))
            assert rec.cell in line.split(": ")[-1].split(", ")
            label = TABLES[rec.table].row(rec.row).label
            assert f"| {label} ‡ |" in block
