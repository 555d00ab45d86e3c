"""One tiny real cell (Kaggle 64 px lungs, U-Net base 4, 1 epoch, 1 seed) through the real
preprocess → train → evaluate → record → report path, and the resume (skip) on a second call."""

from __future__ import annotations

import hashlib
import json

import pytest

from lungseg.experiments import audit, identity, report, runner
from lungseg.experiments.specs import TABLES

SPEC = TABLES["prnet-kaggle"]


@pytest.fixture()
def tracking(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")


@pytest.mark.slow
def test_tiny_cell_records_real_metrics_and_resumes(tmp_path, shared_data, tracking):
    results, work = tmp_path / "results", tmp_path / "work"
    kw = dict(
        profile="cpu",
        seeds=[0],
        rows=["unet"],
        data_root=shared_data,
        workdir=work,
        results_dir=results,
        overrides={"base_channels": 4, "epochs": 1},
        device="cpu",
        keep_going=False,
        log=lambda s: None,
        command="pytest tiny cell",
    )
    outcomes = runner.run_table(SPEC, **kw)
    assert [o.status for o in outcomes] == ["done"]
    path = results / "prnet-kaggle" / "cpu" / "unet-seed0.json"
    rec = json.loads(path.read_text(encoding="utf-8"))

    assert rec["table"] == "prnet-kaggle" and rec["row"] == "unet" and rec["seed"] == 0
    assert rec["settings"]["base_channels"] == 4 and rec["settings"]["epochs"] == 1
    assert rec["overrides"] == {"base_channels": 4, "epochs": 1}
    assert rec["params"]["train"]["model"] == "unet"
    m = rec["metrics"]
    assert m["n_images"] == 27  # the PR-Net paper's 27 test slices (split prnet-211-26-27, seed 0)
    for key in ("dice_mean", "iou_mean", "acc_mean", "spe_mean", "dice_pooled"):
        assert 0.0 <= m[key] <= 1.0
    assert len(rec["per_image"]) == 27
    per_image_dice = [r["dice"] for r in rec["per_image"]]
    assert sum(per_image_dice) / 27 == pytest.approx(m["dice_mean"], abs=1e-6)  # the record agrees with itself
    assert rec["device"]["type"] == "cpu" and rec["device"]["name"]
    assert rec["wall_time_s"]["total"] > 0
    # the record carries the fully resolved identity it trained, which is what today's code builds
    ident = rec["identity"]
    assert ident["status"] == "recorded" and rec["record_version"] == 2
    assert ident == identity.expected_identity(SPEC, "cpu", SPEC.row("unet"), overrides=rec["overrides"])
    assert ident["model"]["kwargs"]["base_channels"] == 4 and ident["train"]["epochs"] == 1
    assert ident["loss"] == {"name": "bce_dice", "options": {}, "form": "foreground-only Dice"}

    data_dir = work / "data" / "kaggle-64-64-prnet-211-26-27"  # the cache is named by size and split
    sha = hashlib.sha256((data_dir / "masks.npy").read_bytes()).hexdigest()
    assert rec["data"]["processed_sha256"]["masks.npy"] == sha
    assert len(rec["data"]["raw_sha256"]) == 64
    assert rec["data"]["counts"]["test"] == 27

    mtime = path.stat().st_mtime_ns
    again = runner.run_table(SPEC, **kw)
    assert [o.status for o in again] == ["skipped"]
    assert path.stat().st_mtime_ns == mtime

    (typed,) = report.load_records(results, "prnet-kaggle", "cpu")
    assert typed.to_dict() == rec and typed.settings.model == "unet" and typed.metric("dice_mean") == m["dice_mean"]
    assert "preset" not in rec["settings"] and rec["params"]["train"]["preset"] == "default"
    # what the runner writes is what `lungseg results check` accepts: params, settings, numbers, file
    assert audit.record_problems(typed) == [] and identity.staleness(typed)[0] == "current"
    block = report.render_block(SPEC, "cpu", [typed])
    assert f"{100 * m['dice_mean']:.1f} (n=1)" in block
    assert "pytest tiny cell" in block
