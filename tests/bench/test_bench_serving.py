"""bench/bench_serving.py: every serving variant scored as evaluation scores the served model, on a real
processed split; SERVING.md is the rendering of the committed JSON."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench_helpers import load_bench
from train_helpers import processed_sample

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    return load_bench("bench_serving")


def test_committed_rendering_is_the_rendering_of_the_committed_json(bench, tmp_path):
    (tmp_path / "serving").mkdir()
    for path in (ROOT / "bench" / "results" / "serving").glob("*.json"):
        shutil.copyfile(path, tmp_path / "serving" / path.name)
    bench.render(tmp_path)
    assert (tmp_path / "SERVING.md").read_text(encoding="utf-8") == (
        ROOT / "bench" / "results" / "SERVING.md"
    ).read_text(encoding="utf-8"), "run `python bench/bench_serving.py --render-only` and commit SERVING.md"


@pytest.mark.slow
def test_a_tiny_run_scores_every_variant_against_none(bench, tmp_path_factory, tmp_path, capsys):
    import torch

    from lungseg.artifacts.checkpoint import save_checkpoint
    from lungseg.models import create_model

    data = processed_sample(tmp_path_factory)
    torch.manual_seed(0)
    net = create_model("unet", base_channels=4)
    model = tmp_path / "model"
    model.mkdir()
    identity = {"name": "unet", "kwargs": {"in_channels": 1, "num_classes": 1, "base_channels": 4}}
    save_checkpoint(
        {"model_identity": identity, "model_state": net.state_dict(), "preprocess": {"image_size": 32}},
        model / "best.pt",
    )
    args = ["--model", str(model), "--data", str(data), "--repeats", "1", "--results", str(tmp_path / "r")]
    assert bench.main([*args, "--record", "--tag", "tiny", "--note", "a test"]) == 0
    out = capsys.readouterr().out
    assert all(f"{v} " in out for v in ("none", "flips", "postprocess", "flips+postprocess"))
    d = json.loads((tmp_path / "r" / "serving" / "tiny.json").read_text(encoding="utf-8"))
    rows = {r["variant"]: r for r in d["rows"]}
    assert rows["none"]["dice_change_mean"] == 0.0 and rows["none"]["time_ratio"] == 1.0
    assert d["n_images"] == 6 and "<elsewhere>/model" in d["command"] and "a test" not in d["command"]
    assert "## unet on medseg" in (tmp_path / "r" / "SERVING.md").read_text(encoding="utf-8")
