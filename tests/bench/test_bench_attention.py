"""bench/bench_attention.py: a tiny real run on two threads measures the reference, blocked and parallel
PCM kernels (#24) with their difference to the reference, LG-Net's train step with the blocked and the
parallel kernel, and records the other processes' CPU and the busy flag judged from it; the page
renders them."""

from __future__ import annotations

import json

import pytest

from bench_helpers import load_bench


@pytest.fixture(scope="module")
def bench():
    return load_bench("bench_attention")


@pytest.mark.slow
def test_a_tiny_two_thread_run_records_the_parallel_kernel_and_the_other_processes_cpu(bench, tmp_path):
    import torch

    threads = torch.get_num_threads()
    args = ["--threads", "2", "--kernel-tokens", "64", "--kernel-dims", "4x8", "--reps", "1", "--no-dsa"]
    args += ["--models", "unet", "lgnet/blocked", "lgnet/parallel", "--size", "32", "--base", "4", "--iters", "1"]
    try:
        assert bench.main([*args, "--results", str(tmp_path), "--record", "--tag", "t"]) == 0
    finally:
        torch.set_num_threads(threads)
    (record,) = (tmp_path / "attention").glob("*-t.json")
    d = json.loads(record.read_text(encoding="utf-8"))
    kernels = {r["impl"]: r for r in d["kernel"]}
    assert set(kernels) == {"reference", "blocked", "parallel"}
    assert kernels["parallel"]["max_abs_diff"] <= 1e-5 and kernels["blocked"]["max_abs_diff"] <= 1e-5
    models = {r["model"]: r for r in d["models"]}
    assert set(models) == {"unet", "lgnet/blocked", "lgnet/parallel"}
    assert models["lgnet/parallel"]["gflops_per_img"] == models["lgnet/blocked"]["gflops_per_img"]  # the same math
    load = d["load"]
    assert load["other_cores"] >= 0 and load["busy"] == (load["other_cores"] > 0.25)
    page = (tmp_path / "ATTENTION.md").read_text(encoding="utf-8")
    assert "| parallel |" in page and "other processes used" in page
