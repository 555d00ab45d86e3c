"""bench/bench_ddp.py runs its three kinds of configuration (plain, DDP on one process, DDP on two)
through lungseg's training epoch on the CPU (gloo) with tiny settings, and writes only with --record.
No timing is asserted: speed is what the script measures, on a multi-GPU machine."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(ROOT / "bench"))  # importable by name: mp.spawn's workers unpickle bench_ddp._worker
    import bench_ddp

    yield bench_ddp
    sys.path.remove(str(ROOT / "bench"))


TINY = [
    "--device",
    "cpu",
    "--world",
    "1",
    "2",
    "--size",
    "32",
    "--base",
    "4",
    "--images",
    "8",
    "--batch-per-gpu",
    "2",
    "--epochs",
    "2",
    "--threads",
    "1",
]


@pytest.mark.slow
def test_plain_and_ddp_configurations_run_and_are_recorded_only_on_request(bench, tmp_path):
    result = bench.main([*TINY, "--results", str(tmp_path)])
    assert [r["config"] for r in result["rows"]] == ["plain", "ddp×1", "ddp×2"]
    assert [r["global_batch"] for r in result["rows"]] == [2, 2, 4]
    assert [r["images_per_epoch"] for r in result["rows"]] == [8, 8, 8]
    assert all(r["images_per_s"] > 0 for r in result["rows"]) and result["backend"] == "gloo"
    assert result["rows"][0]["scaling_efficiency"] is None and result["rows"][1]["scaling_efficiency"] == 1.0
    assert list(tmp_path.iterdir()) == []  # nothing written without --record

    result.update(tag="tiny", note="test run")  # what --record --tag tiny --note "test run" writes
    bench.record(result, tmp_path)
    bench.render(tmp_path)
    (recorded,) = (tmp_path / "ddp").glob("*.json")
    assert recorded.name.endswith("-tiny.json")
    data = json.loads(recorded.read_text(encoding="utf-8"))
    assert data["note"] == "test run" and len(data["rows"]) == 3
    md = (tmp_path / "DDP.md").read_text(encoding="utf-8")
    assert "> test run" in md and "| ddp×2 | 4 |" in md


def test_impossible_settings_are_refused_before_measuring(bench, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(
            ["--device", "cpu", "--world", "2", "--images", "2", "--batch-per-gpu", "2", "--results", str(tmp_path)]
        )
    assert exc.value.code == 2 and "--images ≥ batch-per-gpu × the largest world size" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
