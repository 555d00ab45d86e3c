"""bench/bench_epoch.py times lungseg's training epoch against the sum of its pure train steps on real
slices with tiny settings on the CPU, and writes only with --record. No timing is asserted: the ratio
is what the script measures (on a GPU, by whoever records it)."""

from __future__ import annotations

import json
import statistics

import pytest
import torch

from bench_helpers import load_bench


@pytest.fixture(scope="module")
def bench():
    return load_bench("bench_epoch")


TINY = ["--device", "cpu", "--size", "32", "--base", "2", "--batch", "2", "--images", "9", "--repeats", "2"]


@pytest.mark.slow
def test_a_plain_run_measures_both_and_writes_nothing(bench, tmp_path, capsys):
    before = torch.get_num_threads()
    try:
        result = bench.main([*TINY, "--threads", "1", "--results", str(tmp_path)])
        assert torch.get_num_threads() == 1  # pinned for the run
    finally:
        torch.set_num_threads(before)
    assert list(tmp_path.iterdir()) == []  # nothing written without --record
    out = capsys.readouterr().out
    assert "torch threads 1 (pinned); load average [" in out and "not recorded (pass --record" in out
    rows, summary = result["rows"], result["summary"]
    assert [r["epoch"] for r in rows] == [1, 2]  # each repetition its own epoch, after the warm-up (epoch 0)
    for r in rows:
        assert r["steps_s"] > 0 and r["epoch_s"] > 0 and r["ratio"] == r["epoch_s"] / r["steps_s"]
        assert r["validate_s"] > 0 and r["checkpoint_s"] > 0
    # 9 images in batches of 2: the last batch of one image is dropped, as the loop drops it
    assert summary["images_per_epoch"] == 8
    assert summary["ratio"] == pytest.approx(statistics.median(r["ratio"] for r in rows))
    assert result["data_on_device"] is None and result["threads"] == 1
    assert set(result["load"]) == {"before", "after", "cpu_count", "other_cores", "busy"}
    assert result["settings"]["source"] == "data/sample/medseg-covid100"


@pytest.mark.slow
def test_record_writes_the_json_and_renders_it(bench, tmp_path):
    before = torch.get_num_threads()
    try:
        bench.main([*TINY, "--threads", "1", "--results", str(tmp_path), "--record", "--tag", "t", "--note", "why"])
    finally:
        torch.set_num_threads(before)
    (recorded,) = (tmp_path / "epoch").glob("*.json")
    assert recorded.name.startswith("cpu-") and recorded.name.endswith("-1-thread-t.json")
    data = json.loads(recorded.read_text(encoding="utf-8"))
    assert data["note"] == "why" and data["tag"] == "t" and len(data["rows"]) == 2
    assert data["command"].startswith("python bench/bench_epoch.py --device cpu") and "--record" in data["command"]
    assert "slug" not in data and data["settings"]["checkpoint_every"] == 1
    md = (tmp_path / "EPOCH.md").read_text(encoding="utf-8")
    assert "(t)\n\n> why\n\n- date: " in md
    assert f"| **{data['summary']['ratio']:.3f}** |" in md and "- load: " in md
    assert bench.render(tmp_path).read_text(encoding="utf-8") == md  # --render-only gives the same file


@pytest.mark.slow
def test_the_timed_steps_are_the_loops_steps(bench, tiny_data):
    """What is timed as "steps" is the loop's own training minus its bookkeeping: from the same start,
    the pure steps over the staged batches and lungseg's epoch end with bitwise the same weights and
    Adam state (same batches — epoch_batches, which train_epoch iterates — same updates)."""
    import argparse
    import copy

    args = argparse.Namespace(model="unet", base=2, batch=2, images=9, repeats=1, data_on_device="auto", size=32)
    b = bench.Bench(args, tiny_data, torch.device("cpu"))
    assert len(b.x) == 9 and b.y.dtype == torch.long and b.data_on_device is None
    start = copy.deepcopy((b.model.state_dict(), b.optimizer.state_dict()))
    b.steps(3)
    after_steps = copy.deepcopy((b.model.state_dict(), b.optimizer.state_dict()))
    b.model.load_state_dict(start[0])
    b.optimizer.load_state_dict(start[1])
    b.epoch(3)
    for key, value in after_steps[0].items():
        assert torch.equal(b.model.state_dict()[key], value), key
    steps_adam, epoch_adam = after_steps[1]["state"], b.optimizer.state_dict()["state"]
    assert steps_adam.keys() == epoch_adam.keys() and steps_adam
    for i in steps_adam:
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(steps_adam[i][key], epoch_adam[i][key]), (i, key)
    assert int(steps_adam[0]["step"]) == 4  # 9 images in batches of 2: the last batch of one is dropped


def test_impossible_settings_are_refused_before_measuring(bench, tmp_path, capsys):
    for argv, message in [
        (["--images", "1", "--batch", "2"], "--images 1: at least one batch"),
        (["--model", "nope"], "--model 'nope': unknown"),
        (["--tag", "Bad Tag"], "--tag 'Bad Tag'"),
        (["--source", str(tmp_path)], "not a MedSeg-layout folder"),
    ]:
        with pytest.raises(SystemExit) as exc:
            bench.main(["--device", "cpu", *argv, "--results", str(tmp_path)])
        assert exc.value.code == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
