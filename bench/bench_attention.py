#!/usr/bin/env python
"""Benchmark of LG-Net's PCM kernels (reference vs blocked vs FlexAttention) and of what they buy
the whole models (not a test).

Three parts, all measured in one run:

1. **Kernel**: one PCM call on a square map of N tokens, θ with c channels, values with C channels,
   batch B: forward time (no grad), train time (forward + backward), useful GFLOP/s
   (3 × the forward's ``2·B·N²·(c + C)`` matmul FLOPs per train step), peak extra memory of the
   train step, and the largest difference to the reference (output and both gradients).
   Implementations: ``reference`` (today's autograd ops, checkpointed chunks of 1024 rows),
   ``blocked`` (the custom autograd op), ``parallel`` (CPU with several threads: the blocked op's
   blocks split over the threads, #24), ``flex`` (CUDA only: compiled FlexAttention). Beside them,
   PR-Net's DSA softmax attention (forward + backward, useful GFLOP/s = 3 × ``4·B·h·N²·d``): SDPA with
   the per-head q/k/v strided (the first version) and contiguous (``dsa_impl="reference"``), and
   the blocked kernel (``dsa_impl="blocked"``, the default on one CPU thread), with its largest
   difference to the contiguous SDPA (output and the three gradients).
2. **Models**: train-step throughput (forward + BCE + backward + Adam, batch ``--batch``) of U-Net,
   LG-Net (``pcm_impl`` reference and auto) and PR-Net (``dsa_impl`` reference and auto) at
   ``--size``/``--base``. FLOPs per image are counted as ``bench/bench_models.py`` counts them
   (``_report.textbook_flops``: :class:`torch.utils.flop_counter.FlopCounterMode` on a forward in
   eval mode on the ``meta`` device), always on the reference PCM / DSA and with SDPA's math kernel,
   so that every implementation (and thread count) is credited with
   the same textbook FLOPs; train FLOP/s = 3 × that × images/s.
   The ratio to U-Net's train FLOP/s is the issue's goal (≥ 0.5).
3. **Exact attention at 512²** (``--exact512``): LG-Net base 64 at 512² has skips of 256², 128²
   and 64² below the first; one global PCM of each (batch 1, c = C/2, C = 128, 256, 512) runs
   unpooled through the blocked kernel (and flex on CUDA): train time and peak memory, beside the
   N×N fp32 matrix an unblocked implementation would hold.

Peak memory: CUDA = ``max_memory_allocated`` above the inputs; CPU = the peak RSS (``VmHWM``, reset
just before the call) above the RSS just before it, each measurement in a fresh subprocess.

Timing: every timed call is repeated ``--reps`` times (models: ``--iters``), interleaved across the
variants, and the minimum is kept: on a shared machine the minimum is the least disturbed run.

Results are printed; ``--record`` also writes ``bench/results/attention/<device>[-<tag>].json`` and
re-renders ``bench/results/ATTENTION.md`` from every ``attention/*.json`` there (``--render-only``: only
that). ``--tag`` keeps a partial run (e.g. only the models) beside the full record of the same device.

Usage::

    python bench/bench_attention.py --threads 1                         # print only
    python bench/bench_attention.py --threads 1 --record --note "why"   # CPU record
    python bench/bench_attention.py --threads 1 --kernel-tokens --models unet prnet/reference prnet/auto \
        --record --tag prnet --note "why"                               # a partial run beside it
    python bench/bench_attention.py --device cuda --size 512 --base 64 --batch 4 --exact512 --record
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _report import OtherWork, add_record_arguments, busy_flag, check_tag, device_label, write_record  # noqa: E402
from _report import textbook_flops as _textbook_flops  # noqa: E402

from lungseg.io import atomic_write_text  # noqa: E402
from lungseg.models import create_model  # noqa: E402
from lungseg.models.attention import flex_available, pcm, softmax_attention_blocked  # noqa: E402
from lungseg.models.attention.dsa_parallel import softmax_attention_parallel  # noqa: E402

MIB = 2**20


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _status_bytes(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process from /proc/self/status (Linux), in bytes."""
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (``VmHWM``) to its current RSS (Linux ≥ 4.0: clear_refs 5).
    (``ru_maxrss`` cannot be used: it survives fork and exec, so a child starts with its parent's.)"""
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _pcm_inputs(n_side: int, c: int, cv: int, batch: int, device, dtype, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    theta = torch.randn(batch, c, n_side, n_side, generator=g, dtype=dtype).to(device).requires_grad_()
    value = torch.rand(batch, cv, n_side, n_side, generator=g, dtype=dtype).to(device).requires_grad_()
    grad = torch.randn(batch, cv, n_side, n_side, generator=g, dtype=dtype).to(device)
    return theta, value, grad


def _pcm_call(impl: str):
    return lambda t, v: pcm(t, v, max_tokens=None, impl=impl)


def _train(fn, theta, value, grad):
    y = fn(theta, value)
    return (y, *torch.autograd.grad(y, (theta, value), grad))


def peak_train_memory(impl: str, n_side: int, c: int, cv: int, batch: int, device: str, dtype: str) -> dict:
    """Peak extra memory of one PCM train call, measured in this process (call it in a fresh one)."""
    dev, dty = torch.device(device), getattr(torch, dtype)
    theta, value, grad = _pcm_inputs(n_side, c, cv, batch, dev, dty)
    fn = _pcm_call(impl)
    gc.collect()
    if dev.type == "cuda":
        _train(fn, theta, value, grad)  # compile / autotune outside the measurement
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t = time.perf_counter()
        _train(fn, theta, value, grad)
        torch.cuda.synchronize()
        return {
            "peak_mib": (torch.cuda.max_memory_allocated() - base) / MIB,
            "bound": "exact",
            "once_s": time.perf_counter() - t,
        }
    small = _pcm_inputs(4, c, cv, 1, dev, dty)
    _train(fn, *small)  # library initialisation (MKL/OpenMP buffers) outside the measurement
    del small
    gc.collect()
    reset = _reset_peak_rss()
    before_rss, before_hwm = _status_bytes("VmRSS"), _status_bytes("VmHWM")
    t = time.perf_counter()
    _train(fn, theta, value, grad)
    once = time.perf_counter() - t
    after_hwm = _status_bytes("VmHWM")
    if reset or after_hwm > before_hwm:
        return {"peak_mib": (after_hwm - before_rss) / MIB, "bound": "exact", "once_s": once}
    # no reset and the call never exceeded the earlier high-water mark: only an upper bound is known
    return {"peak_mib": (before_hwm - before_rss) / MIB, "bound": "at most", "once_s": once}


def peak_in_child(impl, n_side, c, cv, batch, device, dtype, threads) -> dict:
    if torch.device(device).type == "cuda":
        return peak_train_memory(impl, n_side, c, cv, batch, device, dtype)  # CUDA counters are per call
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--_peak",
        impl,
        str(n_side),
        str(c),
        str(cv),
        str(batch),
        device,
        dtype,
        "--threads",
        str(threads),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", check=False)
    if out.returncode != 0:
        return {"peak_mib": None, "bound": f"child failed: {out.stderr.strip().splitlines()[-1:]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _best_times(fns: dict, reps: int, device, warmup: bool = True) -> dict:
    """Minimum wall time of each callable over ``reps`` interleaved rounds (after one warm-up call
    each unless ``warmup=False``: the caller has just run them)."""
    if warmup:
        for f in fns.values():
            f()
    _sync(device)
    best = {k: math.inf for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            _sync(device)
            t = time.perf_counter()
            f()
            _sync(device)
            best[k] = min(best[k], time.perf_counter() - t)
    return best


# ---------------------------------------------------------------------------------------------
# 1. kernels
# ---------------------------------------------------------------------------------------------


def kernel_rows(args, device, dtype) -> list[dict]:
    impls = ["reference", "blocked"]
    impls += ["parallel"] if device.type == "cpu" and args.threads > 1 else []  # blocks over the threads (#24)
    impls += ["flex"] if device.type == "cuda" and flex_available() else []
    rows = []
    for n_tokens in args.kernel_tokens:
        side = math.isqrt(n_tokens)
        if side * side != n_tokens:
            raise SystemExit(f"--kernel-tokens {n_tokens}: use square numbers (the map is side×side)")
        for dims in args.kernel_dims:
            c, cv = (int(x) for x in dims.split("x"))
            theta, value, grad = _pcm_inputs(side, c, cv, args.kernel_batch, device, dtype)
            # one train call per implementation: the difference to the reference, and the warm-up
            outs = {impl: _train(_pcm_call(impl), theta, value, grad) for impl in impls}
            err = {
                impl: max((a.float() - b.float()).abs().max().item() for a, b in zip(o, outs["reference"]))
                for impl, o in outs.items()
            }
            del outs
            fwd, train = {}, {}
            for impl in impls:
                fn = _pcm_call(impl)

                def forward(fn=fn):
                    with torch.no_grad():
                        fn(theta, value)

                fwd[impl] = forward
                train[impl] = lambda fn=fn: _train(fn, theta, value, grad)
            t_fwd = _best_times(fwd, args.reps, device)
            t_train = _best_times(train, args.reps, device, warmup=False)
            flops = 2 * args.kernel_batch * n_tokens**2 * (c + cv)  # forward matmul FLOPs
            for impl in impls:
                mem = peak_in_child(
                    impl, side, c, cv, args.kernel_batch, str(device), str(dtype).split(".")[-1], args.threads
                )
                mem.pop("once_s", None)
                row = {
                    "tokens": n_tokens,
                    "c": c,
                    "C": cv,
                    "batch": args.kernel_batch,
                    "impl": impl,
                    "fwd_s": t_fwd[impl],
                    "train_s": t_train[impl],
                    "train_gflop_s": 3 * flops / t_train[impl] / 1e9,
                    "max_abs_diff": err[impl],
                    **mem,
                }
                rows.append(row)
                print(f"kernel N={n_tokens} c={c} C={cv}: {row}", flush=True)
            theta = value = grad = None  # free them (not `del`: the closures above name them)
            gc.collect()
    return rows


DSA_KERNELS = {
    "strided": (F.scaled_dot_product_attention, False),  # SDPA, per-head q/k/v strided (first version)
    "contiguous": (F.scaled_dot_product_attention, True),  # SDPA, contiguous (dsa_impl="reference")
    "blocked": (softmax_attention_blocked, True),  # dsa_impl="blocked" (the default on one CPU thread)
    "parallel": (softmax_attention_parallel, True),  # dsa_impl="parallel": blocked, head-maps over the threads (#24)
}


def dsa_rows(args, device, dtype) -> list[dict]:
    """PR-Net's DSA attention at the shapes of PR-Net's skips at 128², base 16 (levels 1–3 after
    pooling): SDPA with strided vs contiguous per-head tensors, and the blocked kernel."""
    rows = []
    for n_tokens, heads, d in ((4096, 2, 8), (4096, 4, 8), (1024, 8, 8)):
        g = torch.Generator(device="cpu").manual_seed(0)
        base = [
            torch.randn(args.kernel_batch, heads * d, n_tokens, generator=g, dtype=dtype).to(device) for _ in range(3)
        ]
        grad = torch.randn(args.kernel_batch, heads, n_tokens, d, generator=g, dtype=dtype).to(device)

        def make(kernel: str):
            fn, contiguous = DSA_KERNELS[kernel]

            def run():
                ts = [b.detach().requires_grad_() for b in base]
                qkv = [t.reshape(args.kernel_batch, heads, d, n_tokens).transpose(2, 3) for t in ts]
                if contiguous:
                    qkv = [t.contiguous() for t in qkv]
                y = fn(*qkv)
                return (y, *torch.autograd.grad(y, ts, grad))

            return run

        runs = {k: make(k) for k in DSA_KERNELS if k in args.dsa_kernels or k == "contiguous"}
        want = runs["contiguous"]()
        err = {k: max((a - b).abs().max().item() for a, b in zip(f(), want)) for k, f in runs.items()}
        best = _best_times(runs, args.reps, device, warmup=False)
        flops = 4 * args.kernel_batch * heads * n_tokens**2 * d
        for layout, t in best.items():
            rows.append(
                {
                    "tokens": n_tokens,
                    "heads": heads,
                    "head_dim": d,
                    "batch": args.kernel_batch,
                    "layout": layout,
                    "train_s": t,
                    "train_gflop_s": 3 * flops / t / 1e9,
                    "max_abs_diff": err[layout],
                }
            )
            print(f"dsa {rows[-1]}", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------
# 2. models
# ---------------------------------------------------------------------------------------------

MODEL_VARIANTS = {
    "unet": ("unet", {}),
    "lgnet/reference": ("lgnet", {"pcm_impl": "reference"}),
    "lgnet/auto": ("lgnet", {"pcm_impl": "auto"}),
    "lgnet/blocked": ("lgnet", {"pcm_impl": "blocked"}),
    "lgnet/parallel": ("lgnet", {"pcm_impl": "parallel"}),  # blocked, (image, block) pairs over the threads (#24)
    "prnet/reference": ("prnet", {"dsa_impl": "reference"}),
    "prnet/auto": ("prnet", {"dsa_impl": "auto"}),
    "prnet/blocked": ("prnet", {"dsa_impl": "blocked"}),
    "prnet/parallel": ("prnet", {"dsa_impl": "parallel"}),
    "prnet/heads1": ("prnet", {"heads": 1}),  # not the default: one head (d = C) shows what the head dim costs
}
DEFAULT_MODELS = ["unet", "lgnet/reference", "lgnet/auto", "prnet/reference", "prnet/auto"]


def textbook_flops(name: str, kwargs: dict, size: int, base: int) -> int:
    """Forward FLOPs of one image of model ``name`` (``kwargs``): :func:`_report.textbook_flops`, counted
    on the ``meta`` device with the reference PCM / DSA and SDPA's math kernel (the textbook matmuls
    of every implementation)."""
    return _textbook_flops(lambda: create_model(name, base_channels=base, **kwargs), size)


def model_rows(args, device) -> list[dict]:
    cuda = device.type == "cuda"
    x = torch.randn(args.batch, 1, args.size, args.size, device=device)
    y = (torch.rand(args.batch, 1, args.size, args.size, device=device) > 0.5).float()
    if cuda:
        x = x.to(memory_format=torch.channels_last)
    steps, flops = {}, {}
    for key in args.models:
        name, kw = MODEL_VARIANTS[key]
        flops[key] = textbook_flops(name, kw, args.size, args.base)
        torch.manual_seed(0)
        m = create_model(name, base_channels=args.base, **kw).to(device).train()
        if cuda:
            m = m.to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(m.parameters(), lr=1e-4)

        def step(m=m, opt=opt):
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                out = m(x)
            F.binary_cross_entropy_with_logits(out.float(), y).backward()
            opt.step()

        for _ in range(args.warmup - 1):
            step()
        steps[key] = step
    best = _best_times(steps, args.iters, device)
    rows = []
    unet = 3 * flops["unet"] * args.batch / best["unet"] if "unet" in best else None
    for key in args.models:
        rate = 3 * flops[key] * args.batch / best[key]
        rows.append(
            {
                "model": key,
                "gflops_per_img": flops[key] / 1e9,
                "step_s": best[key],
                "img_s": args.batch / best[key],
                "train_gflop_s": rate / 1e9,
                "ratio_vs_unet": None if unet is None else rate / unet,
            }
        )
        print(f"model {rows[-1]}", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------
# 3. exact attention at 512²
# ---------------------------------------------------------------------------------------------


def exact512_rows(args, device, dtype) -> list[dict]:
    impls = ["blocked"] + (["flex"] if device.type == "cuda" and flex_available() else [])
    rows = []
    for level, side, cv in ((1, 256, 128), (2, 128, 256), (3, 64, 512)):
        if level not in args.exact512_levels:
            continue
        c = cv // 2
        n = side * side
        for impl in impls:
            # one train call, timed and measured in a fresh process (minutes on a CPU at level 1)
            mem = peak_in_child(impl, side, c, cv, 1, str(device), str(dtype).split(".")[-1], args.threads)
            rows.append(
                {
                    "level": level,
                    "side": side,
                    "tokens": n,
                    "c": c,
                    "C": cv,
                    "impl": impl,
                    "train_s": mem.pop("once_s", None),
                    "fwd_gflops": 2 * n * n * (c + cv) / 1e9,
                    "dense_nxn_mib": n * n * 4 / MIB,
                    **mem,
                }
            )
            print(f"exact512 {rows[-1]}", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------
# record and render
# ---------------------------------------------------------------------------------------------


def _f(v, fmt="{:.2f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def render(results_dir: Path) -> None:
    parts = [
        "# PCM / attention benchmark results",
        "",
        "Generated by `bench/bench_attention.py` from every `attention/*.json` here (no hand edits).",
        "GFLOP/s are useful FLOPs: 3 × the forward's textbook matmul FLOPs per train step, the same count",
        "for every implementation. Times are the minimum over the stated repetitions. Peak memory is the",
        "train call's peak above its inputs (CPU: a fresh process's peak RSS, page-granular; CUDA: allocator).",
    ]
    for path in sorted((results_dir / "attention").glob("*.json")):
        d = json.loads(path.read_text(encoding="utf-8"))
        parts += ["", f"## {d['device']}" + (f" ({d['tag']})" if d.get("tag") else ""), ""]
        if d.get("note"):
            parts += [f"> {d['note']}", ""]
        parts += [
            f"- date: {d['date']}; torch {d['torch']}, python "
            f"{d['python']}, threads {d['threads']}, dtype {d['dtype']}",
            f"- command: `{d['command']}`",
        ]
        if d.get("load"):
            load = d["load"]
            line = f"- load average (1 min): {load['before']} before, {load['after']} after"
            if load.get("other_cores") is not None:
                line += f"; other processes used {load['other_cores']:.2f} cores on average during the run"
            parts.append(line + (" — **the machine was busy: numbers rough**" if load.get("busy") else ""))
        if d.get("kernel"):
            parts += [
                "",
                "### PCM kernel (one call, no pooling)",
                "",
                "| tokens N | c | C | batch | impl | forward s | train s | train GFLOP/s | peak MiB | "
                "max abs diff vs reference |",
                "|" + " --- |" * 10,
            ]
            for r in d["kernel"]:
                peak = _f(r.get("peak_mib"), "{:.0f}") + ("" if r.get("bound") == "exact" else f" ({r.get('bound')})")
                parts.append(
                    f"| {r['tokens']} | {r['c']} | {r['C']} | {r['batch']} | {r['impl']} | {r['fwd_s']:.3f} "
                    f"| {r['train_s']:.3f} | {r['train_gflop_s']:.1f} | {peak} | {r['max_abs_diff']:.1e} |"
                )
        if d.get("dsa"):
            parts += [
                "",
                "### PR-Net DSA attention (forward + backward)",
                "",
                "Kernels: SDPA with strided per-head q/k/v (`strided`) or contiguous ones (`contiguous`,",
                '`dsa_impl="reference"`), `blocked` (`dsa_impl="blocked"`, the default on one CPU thread) and,',
                'where measured, `parallel` (`dsa_impl="parallel"`: the blocked kernel over chunks of head-maps,',
                "one per torch thread; the default on several CPU threads, #24).",
                "",
                "| tokens N | heads | head dim | batch | kernel | train s | train GFLOP/s "
                "| max abs diff vs contiguous |",
                "|" + " --- |" * 8,
            ]
            for r in d["dsa"]:
                parts.append(
                    f"| {r['tokens']} | {r['heads']} | {r['head_dim']} | {r['batch']} | {r['layout']} "
                    f"| {r['train_s']:.3f} | {r['train_gflop_s']:.1f} | {_f(r.get('max_abs_diff'), '{:.1e}')} |"
                )
        if d.get("models"):
            s = d["model_settings"]
            parts += [
                "",
                f"### Models: train step at {s['size']}², base {s['base']}, batch {s['batch']} "
                f"(min of {s['iters']} steps)",
                "",
                "| model | GFLOPs/img (textbook) | step s | images/s | train GFLOP/s | ratio vs U-Net |",
                "|" + " --- |" * 6,
            ]
            for r in d["models"]:
                parts.append(
                    f"| {r['model']} | {r['gflops_per_img']:.2f} | {r['step_s']:.3f} | {r['img_s']:.2f} "
                    f"| {r['train_gflop_s']:.1f} | {_f(r['ratio_vs_unet'])} |"
                )
        if d.get("exact512"):
            parts += [
                "",
                "### Exact (unpooled) global PCM of LG-Net's deepest three skips at 512², base 64, batch 1",
                "",
                "One train call (forward + backward) each, timed once in a fresh process.",
                "",
                "| level | map | tokens N | c | C | impl | forward GFLOPs | train s | peak MiB | dense N×N fp32 MiB |",
                "|" + " --- |" * 10,
            ]
            for r in d["exact512"]:
                peak = _f(r.get("peak_mib"), "{:.0f}") + ("" if r.get("bound") == "exact" else f" ({r.get('bound')})")
                parts.append(
                    f"| {r['level']} | {r['side']}² | {r['tokens']} | {r['c']} | {r['C']} | {r['impl']} "
                    f"| {r['fwd_gflops']:.0f} | {_f(r['train_s'], '{:.1f}')} | {peak} | {r['dense_nxn_mib']:.0f} |"
                )
    atomic_write_text(results_dir / "ATTENTION.md", "\n".join(parts) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--dtype", default=None, help="kernel dtype (default float32)")
    ap.add_argument("--kernel-tokens", type=int, nargs="*", default=[1024, 4096, 16384])
    ap.add_argument("--kernel-dims", nargs="*", default=["8x16", "32x64"], help="cxC pairs (θ and value channels)")
    ap.add_argument("--kernel-batch", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions per kernel variant")
    ap.add_argument("--no-dsa", action="store_true", help="skip the DSA layout rows")
    ap.add_argument("--dsa-kernels", nargs="*", default=list(DSA_KERNELS), help=f"subset of {list(DSA_KERNELS)}")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--base", type=int, default=16)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--models", nargs="*", default=DEFAULT_MODELS, help=f"subset of {list(MODEL_VARIANTS)}")
    ap.add_argument("--exact512", action="store_true", help="also run the exact 512² skips (minutes on CPU)")
    ap.add_argument("--exact512-levels", type=int, nargs="*", default=[1, 2, 3], help="which of levels 1 2 3")
    add_record_arguments(
        ap,
        ROOT / "bench" / "results",
        "ATTENTION.md",
        "suffix of the result file (keeps a partial run beside the full one)",
    )
    ap.add_argument("--_peak", nargs=7, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    args.threads = threads
    if args._peak:
        impl, side, c, cv, batch, device, dtype = args._peak
        print(json.dumps(peak_train_memory(impl, int(side), int(c), int(cv), int(batch), device, dtype)))
        return 0
    if args.render_only:
        render(args.results)
        print(f"wrote {args.results / 'ATTENTION.md'}")
        return 0
    check_tag(ap, args.tag)
    unknown = set(args.models) - set(MODEL_VARIANTS)
    if unknown:
        ap.error(f"--models: unknown {sorted(unknown)}; valid: {list(MODEL_VARIANTS)}")
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else torch.float32
    load_before, other = round(os.getloadavg()[0], 2), OtherWork()
    print(f"torch threads {threads}; load average {os.getloadavg()} on {os.cpu_count()} cores", flush=True)
    result = {"kernel": kernel_rows(args, device, dtype) if args.kernel_tokens else []}
    result["dsa"] = [] if args.no_dsa else dsa_rows(args, device, dtype)
    result["models"] = model_rows(args, device) if args.models else []
    result["exact512"] = exact512_rows(args, device, dtype) if args.exact512 else []
    other_cores = other.cores()
    busy = device.type == "cpu" and busy_flag(other_cores, load_before, threads)
    load = {"before": load_before, "after": round(os.getloadavg()[0], 2), "other_cores": other_cores, "busy": busy}
    print(f"load average after: {os.getloadavg()}; other processes used {other_cores} cores", flush=True)
    if not args.record:
        return 0
    name, label = device_label(device, threads)
    record = {
        "device": name,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": threads,
        "dtype": str(dtype).split(".")[-1],
        "command": "python bench/bench_attention.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model_settings": {
            "size": args.size,
            "base": args.base,
            "batch": args.batch,
            "iters": args.iters,
            "amp": "bf16 autocast + channels_last" if device.type == "cuda" else "fp32",
        },
        "load": load,
        **result,
        **({"note": args.note} if args.note else {}),
        **({"tag": args.tag} if args.tag else {}),
    }
    out = write_record(record, args.results, "attention", label, args.tag)
    render(args.results)
    print(f"wrote {out} and {args.results / 'ATTENTION.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
