"""bench/bench_inference.py: a tiny real run measures every method on the same volume, and the
committed INFERENCE.md is the rendering of the committed JSON results (no hand edits)."""

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
    return load_bench("bench_inference")


def test_committed_rendering_is_the_rendering_of_the_committed_json(bench, tmp_path):
    (tmp_path / "inference").mkdir()
    for path in (RESULTS / "inference").glob("*.json"):
        shutil.copyfile(path, tmp_path / "inference" / path.name)
    bench.render(tmp_path)
    assert (tmp_path / "INFERENCE.md").read_text(encoding="utf-8") == (RESULTS / "INFERENCE.md").read_text(
        encoding="utf-8"
    ), "run `python bench/bench_inference.py --render-only` and commit INFERENCE.md"


def test_a_tiny_run_measures_every_method_on_real_slices(bench, tmp_path, capsys):
    code = bench.main(
        [
            "--device",
            "cpu",
            "--data",
            str(ROOT / "data" / "sample" / "medseg-covid100" / "tr_im"),
            "--slices",
            "3",
            "--size",
            "32",
            "--base",
            "4",
            "--batch",
            "2",
            "--repeats",
            "1",
            "--results",
            str(tmp_path),
            "--record",
            "--tag",
            "tiny",
            "--note",
            "a test run",
        ]
    )
    assert code == 0
    (path,) = (tmp_path / "inference").glob("*-tiny.json")
    d = json.loads(path.read_text(encoding="utf-8"))
    assert [r["method"] for r in d["rows"]] == ["lungseg", "monai-simple", "monai-sliding-window"]
    for r in d["rows"]:
        assert r["slices_per_s"] > 0 and r["label_agreement_with_lungseg"] == 1.0  # same model, same labels
    assert "--note" not in d["command"] and d["note"] == "a test run"
    assert "## " in (tmp_path / "INFERENCE.md").read_text(encoding="utf-8")


def _tiny(tmp_path, *extra: str) -> list[str]:
    return [
        "--device", "cpu", "--data", str(ROOT / "data" / "sample" / "medseg-covid100" / "tr_im"),
        "--slices", "2", "--size", "32", "--base", "4", "--batch", "2", "--repeats", "1",
        "--results", str(tmp_path), *extra,
    ]  # fmt: skip


def test_a_plain_run_prints_the_ratios_and_writes_nothing(bench, tmp_path, capsys):
    """The ratio vs MONAI was printed only with --record."""
    assert bench.main(_tiny(tmp_path)) == 0
    out = capsys.readouterr().out
    assert (
        "lungseg / monai-simple: " in out
        and "lungseg / monai-sliding-window: " in out
        and "x (> 1 = lungseg faster)" in out
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_the_cohort_path_is_timed_against_one_call_per_case(bench, tmp_path, capsys):
    assert bench.main(_tiny(tmp_path, "--cohort", "2", "--record", "--tag", "cohort")) == 0
    assert "cohort of 2 x 2 slices: one call" in capsys.readouterr().out
    (path,) = (tmp_path / "inference").glob("*-cohort.json")
    c = json.loads(path.read_text(encoding="utf-8"))["cohort"]
    assert c["cases"] == 2 and c["cohort_seconds"] > 0 and c["per_call_seconds"] > 0
    assert c["ratio_cohort_over_per_call"] == pytest.approx(c["per_call_seconds"] / c["cohort_seconds"])
    assert "one call, model loaded once" in (tmp_path / "INFERENCE.md").read_text(encoding="utf-8")


def test_a_tiny_variants_run_compares_fp32_bf16_onnxruntime_and_monai(bench, tmp_path, capsys):
    """#24: one process, the same weights: lungseg fp32 / bf16 / onnxruntime and MONAI's SimpleInferer, with
    the parity of each against fp32, rendered into INFERENCE.md (no timing asserted: a shared machine)."""
    from lungseg.artifacts import core

    detect = core.cpu_supports_bf16
    sample = ROOT / "data" / "sample" / "medseg-covid100" / "tr_im"
    args = ["--variants", "--models", "unet", "--data", str(sample), "--slices", "3", "--size", "32", "--base", "4"]
    args += ["--batch", "2", "--repeats", "1", "--thread-counts", "1", "--results", str(tmp_path), "--record"]
    assert bench.main(args) == 0
    assert core.cpu_supports_bf16 is detect  # the forced bf16 does not leak out of the bench
    (record,) = (tmp_path / "inference").glob("*-variants.json")
    d = json.loads(record.read_text(encoding="utf-8"))
    rows = {r["method"]: r for r in d["rows"]}
    assert set(rows) == {"lungseg-fp32", "lungseg-bf16", "lungseg-onnxruntime", "monai-simple-fp32"}
    assert rows["lungseg-fp32"]["max_abs_dp"] == 0 and rows["lungseg-onnxruntime"]["max_abs_dp"] <= 1e-5
    assert 0 < rows["lungseg-bf16"]["max_abs_dp"] <= 0.1  # bf16 did run (forced where the CPU lacks it)
    assert all(r["dice_vs_fp32"] > 0.99 for r in rows.values())
    assert rows["monai-simple-fp32"]["speed_vs_monai_fp32"] == 1.0 and d["loads"]
    for r in rows.values():  # the CPU other processes took during the block, and the flag judged from it
        assert r["other_cores"] >= 0 and r["busy"] == (r["other_cores"] > 0.25)
    page = (tmp_path / "INFERENCE.md").read_text(encoding="utf-8")
    assert "fp32 vs bf16 vs onnxruntime vs MONAI" in page and "| unet | 1 | lungseg-onnxruntime |" in page


def test_busy_rows_are_marked_and_old_records_say_the_measure_is_missing(bench, tmp_path):
    """#24 review F6: a variants row whose model/thread block ran while other processes took CPU is
    marked † with a warning under the table, and its runs' spread is shown; a record made before the
    measure says so instead of passing for quiet."""
    row = {
        "model": "unet",
        "threads": 1,
        "method": "lungseg-fp32",
        "slices_per_s": 2.0,
        "all_seconds": [3.2, 4.0, 9.5],
        "speed_vs_lungseg_fp32": 1.0,
        "speed_vs_monai_fp32": 1.1,
        "max_abs_dp": 0.0,
        "dice_vs_fp32": 1.0,
    }
    record = {
        "kind": "variants",
        "device": "CPU x (1 thread)",
        "slug": "cpu-x-1-thread-variants",
        "date": "2026-12-06",
        "torch": "t",
        "onnxruntime": "o",
        "monai": "m",
        "python": "p",
        "bf16_native": False,
        "command": "python bench/bench_inference.py --variants",
        "settings": {"models": "unet", "base": 4, "size": 32, "slices": 3, "batch": 2, "repeats": 3},
        "loads": ["unet, 1 thread(s), before: load average 0.1 0.1 0.1"],
        "rows": [{**row, "other_cores": 0.9, "busy": True}],
    }
    (tmp_path / "inference").mkdir()
    (tmp_path / "inference" / "a.json").write_text(json.dumps(record), encoding="utf-8")
    (tmp_path / "inference" / "b.json").write_text(json.dumps({**record, "rows": [row]}), encoding="utf-8")
    page = bench.render(tmp_path).read_text(encoding="utf-8")
    assert "| unet | 1 | lungseg-fp32 | 2.0 | 3.20–9.50 | 1.00× | 1.10× | 0 | 1.00000 | 0.90 † |" in page
    assert "† **busy**: other processes used more than 0.25 cores" in page
    assert "| 3.20–9.50 | 1.00× | 1.10× | 0 | 1.00000 | — |" in page
    assert "(Recorded before the other processes' CPU was measured" in page


def test_the_compile_variant_records_its_first_run_and_parity(bench, tmp_path, monkeypatch):
    """#24: ``--variants --compile`` adds ``lungseg-compile`` (``lungseg predict --compile``) with the time
    of its first run (the compile) beside its steady time, rendered under the table. The compiler is a
    backend that runs the traced graph as is (inductor takes minutes here: its parity is test_compile.py's)."""
    import torch

    from lungseg.inference import predict as predict_mod

    torch._dynamo.reset()
    monkeypatch.setattr(predict_mod, "COMPILE_BACKEND", lambda gm, example_inputs, **kw: gm.forward)
    sample = ROOT / "data" / "sample" / "medseg-covid100" / "tr_im"
    args = ["--variants", "--compile", "--no-bf16", "--models", "unet", "--data", str(sample), "--slices", "3"]
    args += ["--size", "32", "--base", "4", "--batch", "2", "--repeats", "1", "--thread-counts", "1"]
    assert bench.main([*args, "--results", str(tmp_path), "--record"]) == 0
    (record,) = (tmp_path / "inference").glob("*-variants.json")
    rows = {r["method"]: r for r in json.loads(record.read_text(encoding="utf-8"))["rows"]}
    assert set(rows) == {"lungseg-fp32", "lungseg-onnxruntime", "lungseg-compile", "monai-simple-fp32"}
    assert rows["lungseg-compile"]["max_abs_dp"] <= 1e-5 and rows["lungseg-compile"]["dice_vs_fp32"] > 0.99
    assert rows["lungseg-compile"]["first_run_seconds"] > 0 and rows["monai-simple-fp32"]["first_run_seconds"] is None
    page = (tmp_path / "INFERENCE.md").read_text(encoding="utf-8")
    assert "| unet | 1 | lungseg-compile |" in page
    assert "unet, 1 thread(s), lungseg-compile (`lungseg predict --compile`): first run (compiling) " in page
    torch._dynamo.reset()
