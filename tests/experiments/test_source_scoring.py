"""Scoring a cell at the source resolution of its test masks (``lungseg results run --score-at-source``):
probabilities resized back to the mask's size and thresholded there, as ``lungseg predict`` serves them."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lungseg.cli import results as cli
from lungseg.config import PreprocessConfig
from lungseg.experiments import runner, source_scoring
from lungseg.experiments.records import RunRecord
from lungseg.experiments.specs import TABLES


class Echo(torch.nn.Module):
    """A 'model' whose foreground probability is its input (logits 40·(x − 0.5))."""

    def forward(self, x):
        return 40 * (x - 0.5)


def _square(h, w, top, left, bottom, right):
    m = np.zeros((h, w), np.uint8)
    m[top:bottom, left:right] = 1
    return m


def _by_hand(small, mask):
    """Dice of ``Echo`` on ``small`` against ``mask``: probabilities first, resized bilinearly (no
    anti-aliasing when enlarging), then thresholded at 0.5."""
    probs = torch.sigmoid(40 * (torch.from_numpy(small[None]) - 0.5))
    pred = F.interpolate(probs, size=mask.shape, mode="bilinear", align_corners=False)[0, 0].numpy() >= 0.5
    tp = int((pred & (mask == 1)).sum())
    return 2 * tp / (pred.sum() + mask.sum())


def test_probabilities_are_resized_back_before_thresholding():
    # 8² model input of a 32² mask whose square sits on the 4× grid: the probabilities resized back put
    # the 0.5 level on the square's edges; only its 4 corner pixels fall below it (0.625² < 0.5)
    small = np.zeros((1, 1, 8, 8), np.float32)
    small[0, 0, 2:6, 2:6] = 1
    exact = {"a": _square(32, 32, 8, 8, 24, 24)}
    out = source_scoring.score_at_source(Echo(), small, ["a"], exact)
    assert out["sizes"] == [[32, 32]] and out["threshold"] == 0.5
    (row,) = out["per_image"]
    assert row["tp"] + row["fp"] + row["tn"] + row["fn"] == 32 * 32
    assert (row["tp"], row["fn"], row["fp"]) == (256 - 4, 4, 0)
    assert row["dice"] == pytest.approx(_by_hand(small[0], exact["a"])) == pytest.approx(2 * 252 / (252 + 256))
    # labels copied back by nearest neighbour would have scored 1.0 here: the resize is of probabilities
    # detail the 8² input cannot carry is scored at the source size: one extra 1-px line of mask
    fine = exact["a"].copy()
    fine[2, 2:30] = 1
    out = source_scoring.score_at_source(Echo(), small, ["a"], {"a": fine})
    assert out["metrics"]["dice_mean"] == pytest.approx(_by_hand(small[0], fine))
    assert out["per_image"][0]["fn"] == 28 + 4


def test_each_mask_keeps_its_own_non_square_size():
    small = np.zeros((2, 1, 8, 8), np.float32)
    small[:, 0, 2:6, 2:6] = 1
    masks = {"a": _square(24, 40, 6, 10, 18, 30), "b": _square(16, 16, 4, 4, 12, 12)}
    out = source_scoring.score_at_source(Echo(), small, ["a", "b"], masks)
    assert out["sizes"] == [[16, 16], [24, 40]]
    a, b = out["per_image"]
    assert a["tp"] + a["fp"] + a["tn"] + a["fn"] == 24 * 40 and b["tp"] + b["fp"] + b["tn"] + b["fn"] == 256
    assert a["dice"] == pytest.approx(_by_hand(small[0], masks["a"]))
    assert b["dice"] == pytest.approx(_by_hand(small[1], masks["b"]))
    assert out["metrics"]["n_images"] == 2


def test_source_masks_are_read_at_their_source_size(shared_data):
    spec = TABLES["lgnet-table1"]
    masks = source_scoring.source_masks(
        spec.dataset, spec.input_dir(shared_data), ["tr_im_0008"], PreprocessConfig(image_size=64)
    )
    assert masks["tr_im_0008"].shape == (512, 512) and set(np.unique(masks["tr_im_0008"])) <= {0, 1}
    with pytest.raises(Exception, match="source masks not found for 1 test slice"):
        source_scoring.source_masks(
            spec.dataset, spec.input_dir(shared_data), ["nope"], PreprocessConfig(image_size=64)
        )


def test_the_option_is_on_the_command_line_and_in_the_reproducing_command():
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["results", "run", "--table", "lgnet-table1", "--score-at-source"])
    assert args.score_at_source is True
    assert cli._command(args, "lgnet-table1").endswith("--score-at-source")
    plain = parser.parse_args(["results", "run", "--table", "lgnet-table1"])
    assert plain.score_at_source is False and "--score-at-source" not in cli._command(plain, "lgnet-table1")


def test_a_record_keeps_its_source_resolution_scores():
    data = {"table": "lgnet-table1", "row": "unet", "seed": 0, "source_resolution": {"metrics": {"dice_mean": 0.5}}}
    rec = RunRecord.from_dict(data)
    assert rec.source_resolution == {"metrics": {"dice_mean": 0.5}} and rec.to_dict()["source_resolution"]
    assert "source_resolution" not in RunRecord.from_dict({"row": "unet"}).to_dict()


@pytest.mark.slow
def test_tiny_medseg_cell_scored_at_512(tmp_path, shared_data, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    spec = TABLES["lgnet-table1"]
    outcomes = runner.run_table(
        spec,
        profile="cpu",
        seeds=[0],
        rows=["unet"],
        data_root=shared_data,
        workdir=tmp_path / "work",
        results_dir=tmp_path / "results",
        overrides={"base_channels": 4, "epochs": 1},
        device="cpu",
        keep_going=False,
        score_at_source=True,
        log=lambda s: None,
    )
    assert [o.status for o in outcomes] == ["done"]
    rec = json.loads((tmp_path / "results" / "lgnet-table1" / "cpu" / "unet-seed0.json").read_text(encoding="utf-8"))
    src = rec["source_resolution"]
    assert src["sizes"] == [[512, 512]] and src["metrics"]["n_images"] == 20 == len(src["per_image"])
    assert all(r["tp"] + r["fp"] + r["tn"] + r["fn"] == 512 * 512 for r in src["per_image"])
    assert [r["id"] for r in src["per_image"]] == [r["id"] for r in rec["per_image"]]
    assert 0 <= src["metrics"]["dice_mean"] <= 1 and rec["metrics"]["n_images"] == 20
    served = rec["metrics"]["serving"]  # the block is scored as the record's evaluation served the model (#25)
    assert (src["tta"], src["postprocess"], src["threshold"]) == (served["tta"], served["postprocess"], 0.5)


class Shift(torch.nn.Module):
    """Logits ``40·(x − 0.5)`` moved one pixel right: not mirror-equivariant, so ``tta: mirror`` changes them."""

    def forward(self, x):
        return 40 * (torch.roll(x, shifts=1, dims=-1) - 0.5)


def test_the_block_is_scored_with_the_records_mirroring():
    """Review of #25: ``--score-at-source`` ran the network without the record's ``tta`` (``mirror`` under
    the nnunet preset), so the block scored another model than the record's evaluation."""
    rng = np.random.default_rng(0)
    small = rng.random((1, 1, 8, 8)).astype(np.float32)
    mask = _square(32, 32, 4, 6, 20, 26)
    x = torch.from_numpy(small)
    by_hand = []  # the logits of each mirroring, flipped back, averaged; sigmoid; resized; thresholded
    for dims in ((), (-1,), (-2,), (-2, -1)):
        flipped = torch.flip(x, dims) if dims else x
        out = Shift()(flipped)
        by_hand.append(torch.flip(out, dims) if dims else out)
    probs = torch.sigmoid(torch.stack(by_hand).mean(0))
    pred = F.interpolate(probs, size=mask.shape, mode="bilinear", align_corners=False)[0, 0].numpy() >= 0.5
    tp, fp = int((pred & (mask == 1)).sum()), int((pred & (mask == 0)).sum())
    out = source_scoring.score_at_source(Shift(), small, ["a"], {"a": mask}, tta="mirror")
    assert (out["tta"], out["postprocess"]) == ("mirror", "none")
    assert (out["per_image"][0]["tp"], out["per_image"][0]["fp"]) == (tp, fp)
    plain = source_scoring.score_at_source(Shift(), small, ["a"], {"a": mask})
    assert plain["tta"] == "none" and plain["per_image"][0]["dice"] != out["per_image"][0]["dice"]


def test_the_block_is_scored_with_the_records_post_processing():
    small = np.zeros((1, 1, 16, 16), np.float32)
    small[0, 0, 2:10, 2:10] = 1  # a lung of 64 px with a hole of one pixel ...
    small[0, 0, 5, 5] = 0
    small[0, 0, 14, 14] = 1  # ... and a speck (1 px < 10 % of 64): dropped by the post-processing
    mask = _square(16, 16, 2, 2, 10, 10)
    post = "largest_components+fill_holes"
    out = source_scoring.score_at_source(Echo(), small, ["a"], {"a": mask}, postprocess=post)
    row = out["per_image"][0]
    assert out["postprocess"] == post and (row["tp"], row["fp"], row["fn"]) == (64, 0, 0)
    row = source_scoring.score_at_source(Echo(), small, ["a"], {"a": mask})["per_image"][0]
    assert (row["tp"], row["fp"], row["fn"]) == (63, 1, 1)


def test_the_serving_is_the_records_or_resolved_as_evaluate_resolves_it():
    recorded = {"threshold": 0.4, "image_size": 32, "hu_window": None, "dataset": None}
    recorded.update(postprocess="largest_components+fill_holes", tta="mirror")
    assert source_scoring.serving_of({}, {}, 0.5, recorded) == (0.4, "mirror", "largest_components+fill_holes")
    preset = {"config": {"preset": "nnunet"}, "preprocess": {"label_names": ["background", "infection"]}}
    assert source_scoring.serving_of(preset, {}, 0.5, None) == (0.5, "mirror", "none")
    lung = {"config": {"preset": "default"}}
    assert source_scoring.serving_of(lung, {"label_names": ["background", "lung"]}, 0.5, None) == (
        0.5,
        "none",
        "largest_components+fill_holes",
    )
