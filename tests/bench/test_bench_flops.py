"""The benchmarks' FLOPs are a property of a model's math, not of the attention kernel or the thread
count (#24): the ``parallel`` DSA kernel's GEMMs run in worker threads that the thread-local
FlopCounterMode never saw (PR-Net at 128², base 16 counted 5.77 GFLOPs at 2 threads against 13.26 at
one), and the blocked kernels' GEMMs carry an extra ones row and padding."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from bench_helpers import load_bench
from lungseg.models import create_model
from lungseg.models.attention import DilatedSelfAttention


@pytest.fixture(scope="module")
def report():
    return load_bench("_report")


@pytest.fixture(scope="module")
def bench():
    return load_bench("bench_models")


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _cpu_count(model: nn.Module, size: int) -> int:
    """FLOPs of one forward on real CPU tensors, as the bench counted before, with SDPA's math kernel
    (the CPU flash kernel has no FLOP formula: the counter would skip it)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad(), sdpa_kernel([SDPBackend.MATH]):
        model.eval()(torch.zeros(1, 1, size, size))
    return counter.get_total_flops()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "option", "kernels"),
    [
        ("prnet", "dsa_impl", ["auto", "reference", "blocked", "parallel"]),
        ("lgnet", "pcm_impl", ["auto", "reference", "blocked", "flex"]),
    ],
)
def test_counted_flops_are_the_same_for_every_kernel_and_thread_count(report, threads, name, option, kernels):
    size, base = 32, 4
    threads(1)
    reference = _cpu_count(create_model(name, base_channels=base, **{option: "reference"}), size)
    assert reference > _cpu_count(create_model("unet", base_channels=base), size)  # attention counted
    for n in (1, 2):
        threads(n)
        for kernel in kernels:
            counted = report.textbook_flops(
                lambda k=kernel: create_model(name, base_channels=base, **{option: k}), size
            )
            assert counted == reference, (name, kernel, n)


def test_a_dsa_is_counted_as_its_convs_and_two_attention_matmuls(report, threads):
    """Hand count: 1×1 stem conv 2·1·C·HW; q, k, v convs 3 × 2·C·C·9·HW; QKᵀ and PV 2 × 2·N²·C."""
    c, hw = 16, 8
    n = hw * hw
    expected = 2 * 1 * c * n + 3 * 2 * c * c * 9 * n + 2 * 2 * n * n * c
    threads(2)
    for kernel in ("auto", "reference", "blocked", "parallel"):

        def build(kernel=kernel):
            dsa = DilatedSelfAttention(c, 2, heads=2, max_tokens=None, dsa_impl=kernel)
            return nn.Sequential(nn.Conv2d(1, c, 1, bias=False), dsa)

        assert report.textbook_flops(build, hw) == expected, kernel


@pytest.mark.slow
def test_the_model_bench_records_prnet_at_two_threads_with_the_one_thread_count(bench, threads):
    """``run_one`` (what ``--record`` writes): PR-Net at 2 threads, where ``auto`` runs the parallel kernel."""
    args = type("Args", (), {"batch": 1, "iters": 1, "warmup": 0})()
    counts = {}
    for n in (1, 2):
        threads(n)
        res = bench.run_one(lambda: create_model("prnet", base_channels=4), 32, args, torch.device("cpu"))
        counts[n] = res["gflops_per_img"]
    threads(1)
    assert counts[1] == counts[2] == _cpu_count(create_model("prnet", base_channels=4, dsa_impl="reference"), 32) / 1e9


def test_train_flop_rate_over_unet_is_rendered_from_the_counts(bench):
    def row(model, gflops, img_s):
        return {
            "model": model,
            "size": 128,
            "peer_name": "BasicUNet",
            "ours": {"gflops_per_img": gflops, "train_img_s": img_s},
        }

    rows = [row("unet", 1.5, 16.0), row("prnet", 12.0, 1.0)]
    assert bench.unet_flop_ratio(rows, rows[1]) == pytest.approx(12.0 / 24.0)
    assert bench.unet_flop_ratio(rows, rows[0]) == pytest.approx(1.0)
    assert bench.unet_flop_ratio([rows[1]], rows[1]) is None  # no U-Net in the run
    d = {"device": "CPU x", "date": "d", "torch": "t", "monai": "m", "python": "p", "command": "c", "batch": 1}
    d.update(base=16, iters=1, warmup=0, amp=False, flops="the model's math")
    d["rows"] = [{**r, "ours": {**r["ours"], "params": 1, "infer_img_s": 1.0}, "peer": {}} for r in rows]
    text = "\n".join(bench.render_section(d))
    assert "- flops: the model's math" in text
    assert "| prnet | 128 | BasicUNet | 0.00 | 12.00 | n/a | 1.0 | n/a | 0.50 | 1.0 |" in text
    del d["flops"]
    assert "- flops: counted on the kernel that ran" in "\n".join(bench.render_section(d))


def test_recount_rewrites_only_the_flops_of_a_record_and_renders_it(bench, report, tmp_path):
    """``--recount-flops``: a record of today's models made before the fix gets the counts of the math; its
    timings and load stay as measured."""
    import json

    def row(model, gflops):
        ours = {"params": 1, "gflops_per_img": gflops, "train_img_s": 2.0, "infer_img_s": 3.0}
        peer = {"params": 1, "gflops_per_img": 9.0, "train_img_s": 1.0, "infer_img_s": 1.0}
        return {"model": model, "size": 32, "peer_name": "BasicUNet", "ours": ours, "peer": peer}

    d = {"device": "CPU x (2 threads)", "date": "2026-12-06 16:48 UTC", "torch": "t", "monai": "m", "python": "p"}
    d.update(
        command="c",
        batch=2,
        base=4,
        iters=3,
        warmup=1,
        amp=False,
        threads=2,
        rows=[row("unet", 7.0), row("prnet", 0.1)],
    )
    path = tmp_path / "cpu-x.json"
    path.write_text(json.dumps(d), encoding="utf-8")
    assert bench.main(["--recount-flops", str(path), "--results", str(tmp_path)]) == 0
    got = json.loads(path.read_text(encoding="utf-8"))
    want = {m: report.textbook_flops(lambda m=m: create_model(m, base_channels=4), 32) / 1e9 for m in ("unet", "prnet")}
    peer = report.textbook_flops(lambda: bench.make_peer("BasicUNet", 4), 32) / 1e9
    for r, m in zip(got["rows"], ("unet", "prnet")):
        assert r["ours"] == {"params": 1, "gflops_per_img": want[m], "train_img_s": 2.0, "infer_img_s": 3.0}
        assert r["peer"]["gflops_per_img"] == peer and r["peer"]["train_img_s"] == 1.0
    assert "recounted" in got["flops"] and "the timings are those of 2026-12-06 16:48 UTC" in got["flops"]
    assert {k: v for k, v in got.items() if k not in ("rows", "flops")} == {k: v for k, v in d.items() if k != "rows"}
    assert "- flops: the model's math" in (tmp_path / "README.md").read_text(encoding="utf-8")
