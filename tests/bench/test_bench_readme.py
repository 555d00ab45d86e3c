"""bench/results/README.md is rendered from the committed JSON files, notes included (no hand edits)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench_helpers import load_bench

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"


@pytest.fixture(scope="module")
def bench():
    return load_bench("bench_models")


def test_committed_readme_is_the_rendering_of_the_committed_json(bench, tmp_path):
    for path in RESULTS.glob("*.json"):
        shutil.copyfile(path, tmp_path / path.name)
    bench.render_readme(tmp_path)
    assert (tmp_path / "README.md").read_text(encoding="utf-8") == (RESULTS / "README.md").read_text(
        encoding="utf-8"
    ), "run `python bench/bench_models.py --render-only` and commit the README"


def test_note_and_tag_are_rendered_under_their_heading(bench, tmp_path):
    result = json.loads((RESULTS / "cpu-x86-64-2-threads.json").read_text(encoding="utf-8"))
    result.update(tag="rerun", note="why this run exists")
    (tmp_path / "x.json").write_text(json.dumps(result), encoding="utf-8")
    bench.render_readme(tmp_path)
    text = (tmp_path / "README.md").read_text(encoding="utf-8")
    heading = f"## {result['device']} (rerun)\n\n> why this run exists\n\n- date: {result['date']}"
    assert heading in text
    assert f"| unet | {result['rows'][0]['size']} | BasicUNet |" in text


def test_bad_tag_is_refused_before_measuring(bench, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--device", "cpu", "--tag", "Bad Tag", "--results", str(tmp_path)])
    assert exc.value.code == 2
    assert "--tag 'Bad Tag'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


TINY = [
    "--device",
    "cpu",
    "--models",
    "unet",
    "--sizes",
    "32",
    "--base",
    "2",
    "--batch",
    "2",
    "--iters",
    "1",
    "--warmup",
    "0",
    "--threads",
    "1",
]


@pytest.mark.slow
def test_a_plain_run_writes_nothing_and_prints_threads_and_load(bench, tmp_path, capsys):
    """`python bench/bench_models.py` without flags overwrote the committed results; now it only prints."""
    import torch

    before = torch.get_num_threads()
    try:
        assert bench.main([*TINY, "--results", str(tmp_path)]) == 0
        assert torch.get_num_threads() == 1  # pinned for the run
    finally:
        torch.set_num_threads(before)
    out = capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []
    assert "torch threads 1 (pinned); load average [" in out and "load average after: [" in out
    assert "| unet | 32 | BasicUNet |" in out and "not recorded (pass --record" in out


@pytest.mark.slow
def test_record_writes_the_json_with_threads_and_load_and_renders_them(bench, tmp_path):
    import torch

    before = torch.get_num_threads()
    try:
        assert bench.main([*TINY, "--results", str(tmp_path), "--record", "--tag", "t"]) == 0
    finally:
        torch.set_num_threads(before)
    (result,) = tmp_path.glob("*-t.json")
    d = json.loads(result.read_text(encoding="utf-8"))
    assert d["threads"] == 1 and "1 threads" in d["device"]
    load = d["load"]
    assert set(load) == {"before", "after", "cpu_count", "other_cores", "other_cores_max_per_model", "busy"}
    assert len(load["before"]) == 3 and load["other_cores_max_per_model"] >= 0
    # judged by the other processes (over the run and during each model), not by the load after the run
    assert load["busy"] == (load["other_cores"] > 0.25 or load["other_cores_max_per_model"] > 0.25)
    readme = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert ", torch threads 1 (pinned)" in readme and "- load: " in readme


def test_the_goal_summary_lists_every_run_newest_first_with_its_machine_state(bench):
    """#24: the README opens with LG-Net's and PR-Net's train FLOP/s ÷ U-Net's of every run, newest
    first, each with the other processes' CPU and whether the run was quiet, busy or not measured."""
    unet = {"model": "unet", "size": 128, "peer_name": "BasicUNet", "peer": {}}
    rows = [
        {**unet, "ours": {"gflops_per_img": 1.0, "train_img_s": 10.0}},
        {**unet, "model": "lgnet", "ours": {"gflops_per_img": 8.0, "train_img_s": 0.75}},
        {**unet, "model": "prnet", "ours": {"gflops_per_img": 10.0, "train_img_s": 0.5}},
    ]
    base = {"device": "CPU x (2 threads)", "iters": 10, "flops": bench.FLOPS_COUNTED, "rows": rows}
    old = {**base, "date": "2026-12-06 19:20 UTC", "load": {"busy": True}}
    new = {**base, "date": "2026-12-06 21:44 UTC", "tag": "q", "load": {"other_cores": 0.0, "busy": False}}
    busy = {**base, "date": "2026-12-06 21:40 UTC", "load": {"other_cores": 0.8, "busy": True}}
    uncounted = {**base, "date": "2026-12-06 22:00 UTC", "flops": "forward FLOPs of the kernel that ran"}
    lines = bench.goal_summary([old, new, busy, uncounted])
    table = [line for line in lines if line.startswith("| 2026")]
    assert table == [
        "| 2026-12-06 21:44 UTC | CPU x (2 threads) (q) | 128² | 10 | 0.60 | 0.50 | 0.00 | quiet |",
        "| 2026-12-06 21:40 UTC | CPU x (2 threads) | 128² | 10 | 0.60 | 0.50 | 0.80 | busy |",
        "| 2026-12-06 19:20 UTC | CPU x (2 threads) | 128² | 10 | 0.60 | 0.50 | — | not measured (old flag: busy) |",
    ]
