#!/usr/bin/env python
"""Throughput and peak-memory benchmark of the zoo against MONAI peers (not a test).

For every model: train-step throughput (forward + BCE loss + backward + Adam step, images/s),
inference throughput (``inference_mode``, eval, images/s) and, on CUDA, the peak allocated memory
of the train step. Each number is also given as a ratio ``ours / peer`` against a MONAI network
measured in the same process with the same input, batch and width:

- ``unet``, ``segnet``, ``u2net_p``, ``lgnet``, ``prnet`` → ``monai.networks.nets.BasicUNet``
  (classic double-conv U-Net; features ``base·(1,2,4,8,16), base``, ReLU, BatchNorm, deconv up),
- ``attention_unet`` → ``AttentionUnet`` (channels ``base·(1..16)``, strides 2),
- ``unetpp`` → ``BasicUNetPlusPlus`` (same features/act/norm as BasicUNet).

FLOPs per image: the forward of one image counted on the model's math (``_report.textbook_flops``:
the reference attention kernels on the ``meta`` device), so that they do not depend on the kernel
that runs or on the thread count; the README table's "train FLOP/s ÷ U-Net's" is GFLOPs/img × train
img/s over U-Net's in the same run.

CUDA: bf16 autocast + channels_last, ``cudnn.benchmark``. CPU: fp32, with the torch thread count
**pinned** (``--threads``, default 1: on a machine shared with other jobs, threads that compete for
busy cores run tens of times slower) and the load average printed before and after the run (and
recorded): numbers taken on a busy machine are not comparable, and the output says so.

Without ``--record`` nothing is written: the results are printed (as the README section they
would become). ``--record`` writes ``bench/results/<device>[-<tag>].json`` (``--tag`` keeps a
re-run beside the first instead of replacing it) and re-renders ``bench/results/README.md`` from
all JSON files, with each file's ``note`` (``--note``: why a run was made, how to read it) under
its heading. ``--render-only`` re-renders the README without measuring; ``--recount-flops FILE…``
rewrites the FLOPs of records made with today's models before the count was fixed (timings kept).

Usage::

    python bench/bench_models.py --device cpu --threads 2 --sizes 128 --base 16 --batch 2 --iters 3   # prints only
    python bench/bench_models.py --device cpu --threads 2 --sizes 128 --base 16 --batch 2 --iters 3 --record
    python bench/bench_models.py --device cuda --sizes 256 512 --base 64 --batch 4 --iters 10 --record
    python bench/bench_models.py --render-only
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _report import OtherWork, busy_flag, is_busy, load_record, load_text, textbook_flops  # noqa: E402

from lungseg.io import atomic_write_text  # noqa: E402
from lungseg.models import create_model, list_models  # noqa: E402

PEER_OF = {"attention_unet": "AttentionUnet", "unetpp": "BasicUNetPlusPlus"}  # others: BasicUNet


def make_peer(kind: str, base: int) -> torch.nn.Module:
    from monai.networks import nets

    feats = (base, 2 * base, 4 * base, 8 * base, 16 * base, base)
    common = dict(spatial_dims=2, in_channels=1, out_channels=1)
    if kind == "AttentionUnet":
        return nets.AttentionUnet(channels=feats[:5], strides=(2, 2, 2, 2), **common)
    cls = getattr(nets, kind)
    return cls(features=feats, act=("relu", {"inplace": True}), norm=("batch", {}), bias=False, **common)


def flops(build, size: int) -> int | None:
    """Forward FLOPs of one image of ``build()``'s model, counted on its math (the reference attention
    kernels on the ``meta`` device: :func:`_report.textbook_flops`), not on the kernel that runs here —
    the same for every kernel and thread count (#24)."""
    try:
        return textbook_flops(build, size)
    except Exception:  # noqa: BLE001 - a peer that cannot be counted just has no FLOPs entry
        return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(model: torch.nn.Module, size: int, batch: int, iters: int, warmup: int, device: torch.device) -> dict:
    cuda = device.type == "cuda"
    model = model.to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 1, size, size, device=device)
    y = (torch.rand(batch, 1, size, size, device=device) > 0.5).float()
    if cuda:
        x = x.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)

    def train_step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            out = model(x)
            out = out[0] if isinstance(out, (list, tuple)) else out  # BasicUNetPlusPlus returns a list
            loss = F.binary_cross_entropy_with_logits(out.float(), y)
        loss.backward()
        opt.step()

    out: dict = {}
    model.train()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        train_step()
    _sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        train_step()
    _sync(device)
    out["train_img_s"] = batch * iters / (time.perf_counter() - t)
    if cuda:
        out["train_peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    opt.zero_grad(set_to_none=True)
    opt = None  # free it (not `del`: train_step names it)
    model.eval()
    with torch.inference_mode():
        for _ in range(warmup):
            with autocast():
                model(x)
        _sync(device)
        t = time.perf_counter()
        for _ in range(iters):
            with autocast():
                model(x)
        _sync(device)
    out["infer_img_s"] = batch * iters / (time.perf_counter() - t)
    return out


def run_one(build, size, args, device) -> dict:
    try:
        model = build()
        res = {"params": sum(p.numel() for p in model.parameters()), "gflops_per_img": None}
        f = flops(build, size)
        res["gflops_per_img"] = None if f is None else f / 1e9
        res.update(measure(model, size, args.batch, args.iters, args.warmup, device))
    except torch.OutOfMemoryError as e:
        res = {"error": f"OOM: {str(e).splitlines()[0]}"}
    finally:
        model = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return res


def device_label(device: torch.device) -> tuple[str, str]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"
    return name, re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def load_note(load: dict | None) -> str:
    """The load average seen before/after a run, as a README line."""
    if not load:
        return "not recorded (run made before the load was recorded)"
    return load_text(load)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


#: How the FLOPs of a new record are counted (its ``flops`` field), and what a record without the field did.
FLOPS_COUNTED = (
    "the model's math: the reference attention kernels on the meta device (bench/_report.py textbook_flops), "
    "the same for every kernel and thread count"
)
FLOPS_BEFORE = (
    "counted on the kernel that ran (recorded before #24's fix: LG-Net's and PR-Net's counts depend on the "
    "kernel, and the parallel DSA kernel's worker threads were not counted)"
)


def unet_flop_ratio(rows: list[dict], row: dict) -> float | None:
    """``row``'s training FLOP/s (forward GFLOPs/img × train img/s) over U-Net's at the same size in the
    same run (the issue's goal: ≥ 0.5 for LG-Net and PR-Net); ``None`` without both counts."""
    unet = next((u["ours"] for u in rows if u["model"] == "unet" and u["size"] == row["size"]), None)
    ours = row["ours"]
    if unet is None or "error" in unet or not unet.get("gflops_per_img") or ours.get("gflops_per_img") is None:
        return None
    return ours["gflops_per_img"] * ours["train_img_s"] / (unet["gflops_per_img"] * unet["train_img_s"])


def render_section(d: dict) -> list[str]:
    """One result file as its README section."""
    parts = [
        "",
        f"## {d['device']}" + (f" ({d['tag']})" if d.get("tag") else ""),
        "",
        *([f"> {d['note']}", ""] if d.get("note") else []),
        f"- date: {d['date']}; torch {d['torch']}, monai {d['monai']}, python {d['python']}",
        f"- command: `{d['command']}`",
        f"- settings: batch {d['batch']}, base_channels {d['base']}, iters {d['iters']} (warmup {d['warmup']}), "
        f"{'bf16 autocast + channels_last' if d['amp'] else 'fp32'}"
        + (f", torch threads {d['threads']} (pinned)" if d.get("threads") else ""),
        *([f"- load: {load_note(d.get('load'))}"] if "load" in d else []),
        f"- flops: {d.get('flops', FLOPS_BEFORE)}",
        "",
        "| model | size | peer | params (M) | GFLOPs/img | peer GFLOPs/img | train img/s | ratio | "
        "train FLOP/s ÷ U-Net's | infer img/s | ratio | train peak GiB | ratio |",
        "|" + " --- |" * 13,
    ]
    for r in d["rows"]:
        o, p = r["ours"], r["peer"]
        if "error" in o:
            parts.append(f"| {r['model']} | {r['size']} | {r['peer_name']} | {o['error']} |" + " |" * 9)
            continue

        def f(v, fmt="{:.2f}"):
            return "n/a" if v is None else fmt.format(v)

        def ratio(k):
            return f(o[k] / p[k]) if p.get(k) and o.get(k) is not None else "n/a"

        parts.append(
            f"| {r['model']} | {r['size']} | {r['peer_name']} | {o['params'] / 1e6:.2f} | {f(o['gflops_per_img'])} "
            f"| {f(p.get('gflops_per_img'))} | {o['train_img_s']:.1f} | {ratio('train_img_s')} "
            f"| {f(unet_flop_ratio(d['rows'], r))} | {o['infer_img_s']:.1f} | {ratio('infer_img_s')} "
            f"| {f(o.get('train_peak_mem_gib'))} | {ratio('train_peak_mem_gib')} |"
        )
    return parts


def recount_flops(path: Path) -> None:
    """Rewrite a result file's FLOPs counted on the models' math (:func:`flops`; its timings kept): for a
    record made with today's models before the count was fixed (#24). FLOPs are a property of the model,
    size and width, not of the run; the ``flops`` field says when they were recounted."""
    d = json.loads(path.read_text(encoding="utf-8"))
    base = d["base"]
    for r in d["rows"]:
        if "error" not in r["ours"]:
            r["ours"]["gflops_per_img"] = flops(lambda: create_model(r["model"], base_channels=base), r["size"]) / 1e9
        if r["peer"] and "error" not in r["peer"]:
            count = flops(lambda: make_peer(r["peer_name"], base), r["size"])
            r["peer"]["gflops_per_img"] = None if count is None else count / 1e9
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    d["flops"] = f"{FLOPS_COUNTED} (recounted {when} by --recount-flops; the timings are those of {d['date']})"
    atomic_write_text(path, json.dumps(d, indent=1) + "\n")


def render_readme(results_dir: Path) -> None:
    parts = [
        "# Model benchmark results",
        "",
        "Generated by `bench/bench_models.py` (re-rendered from every `*.json` here on each run).",
        "Ratios are ours / MONAI peer measured in the same process (>1 = ours faster or, for memory, larger).",
        "Throughput in images/s; train = forward + BCE + backward + Adam step. Peak memory is CUDA only.",
        "CPU runs share 2 cores with other jobs and use few iterations: treat their ratios as rough.",
        "GPU: LG-Net/PR-Net use the default max_tokens=4096; the peer for them, SegNet and U²-Net-P is",
        "BasicUNet at the same base width (a different FLOP budget: see the GFLOPs columns).",
        "GFLOPs/img: the forward of one image, counted as each section's `flops` line says. Train FLOP/s ÷",
        "U-Net's = (GFLOPs/img × train img/s) ÷ U-Net's in the same run (issue #24's goal: ≥ 0.5 for",
        "LG-Net and PR-Net), meaningful only where the count is the model's math.",
    ]
    records = [json.loads(path.read_text(encoding="utf-8")) for path in sorted(results_dir.glob("*.json"))]
    parts += goal_summary(records)
    for d in records:
        parts += render_section(d)
    atomic_write_text(results_dir / "README.md", "\n".join(parts) + "\n")


def goal_summary(records: list[dict]) -> list[str]:
    """Issue #24's goal over every record, newest first: LG-Net's and PR-Net's train FLOP/s ÷ U-Net's
    per run, so the current numbers and their spread are read before the sections (each run's own
    section follows). Only records whose FLOPs are the models' math and that measured all three."""
    lines = []
    for d in sorted(records, key=lambda d: d["date"], reverse=True):
        rows = {(r["model"], r["size"]): r for r in d["rows"]}
        for model, size in rows:
            if model != "lgnet" or ("prnet", size) not in rows or ("unet", size) not in rows:
                continue
            if not str(d.get("flops", "")).startswith(FLOPS_COUNTED):
                continue
            ratios = [unet_flop_ratio(d["rows"], rows[m, size]) for m in ("lgnet", "prnet")]
            if None in ratios:
                continue
            load = d.get("load") or {}
            other = load.get("other_cores")
            if other is None:  # flagged, if at all, by the load after the run (it counts the bench's threads)
                quiet = "not measured (old flag: busy)" if load.get("busy") else "not measured"
            else:
                quiet = "busy" if load.get("busy") else "quiet"
            lines.append(
                f"| {d['date']} | {d['device']}"
                + (f" ({d['tag']})" if d.get("tag") else "")
                + f" | {size}² | {d['iters']} | {ratios[0]:.2f} | {ratios[1]:.2f} | "
                + ("—" if other is None else f"{other:.2f}")
                + f" | {quiet} |"
            )
    if not lines:
        return []
    return [
        "",
        "## Issue #24's goal, every run (newest first)",
        "",
        "Train FLOP/s ÷ U-Net's in the same run (goal ≥ 0.5). Other processes' CPU: cores' worth used by other",
        "processes during the run (measured since 2026-12-06 21:30; a busy run's ratios are rough). Earlier runs",
        "were flagged by the load after the run, which counts the bench's own threads. LG-Net's PCM on 2 threads:",
        "the blocked kernel before 2026-12-06 21:30 UTC, the parallel one (`pcm_impl: auto`, #24) since.",
        "",
        "| date | device (tag) | size | timed iterations | LG-Net | PR-Net | other processes' CPU | machine |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *lines,
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sizes", type=int, nargs="+", default=[128])
    ap.add_argument("--base", type=int, default=16)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--models", nargs="+", default=None, help=f"subset of {list_models()}")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads on the CPU, pinned for the whole run and recorded (default 1)",
    )
    ap.add_argument(
        "--record",
        action="store_true",
        help="write the result into --results and re-render its README (default: only print)",
    )
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--tag", default=None, help="suffix of the result file (keeps a re-run beside the first)")
    ap.add_argument("--note", default=None, help="why this run was made / how to read it (shown in the README)")
    ap.add_argument("--render-only", action="store_true", help="only re-render README.md from the JSON files")
    ap.add_argument(
        "--recount-flops",
        type=Path,
        nargs="+",
        default=None,
        help="recount the FLOPs of these result files on the models' math (timings kept) and re-render",
    )
    args = ap.parse_args(argv)
    if args.recount_flops:
        for path in args.recount_flops:
            recount_flops(path)
            print(f"recounted {path}")
        render_readme(args.results)
        return 0
    if args.render_only:
        render_readme(args.results)
        print(f"wrote {args.results / 'README.md'}")
        return 0
    if args.tag is not None and not re.fullmatch(r"[a-z0-9][a-z0-9-]*", args.tag):
        ap.error(f"--tag {args.tag!r}: use lower-case letters, digits and '-'")
    if args.threads < 1:
        ap.error(f"--threads {args.threads}: must be ≥ 1")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)  # pinned: the default (every core) is what a busy machine punishes most
    load_before, other = loadavg(), OtherWork()
    print(
        f"torch threads {torch.get_num_threads()} (pinned); load average {load_before} on {os.cpu_count()} cores",
        flush=True,
    )
    if device.type == "cpu" and is_busy(load_before[0], args.threads):
        print(
            f"warning: the machine is busy (1-min load {load_before[0]} with {os.cpu_count()} cores): CPU numbers "
            "taken now are not comparable with a quiet run",
            flush=True,
        )
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    import monai

    name, label = device_label(device)
    rows, peer_cache, windows = [], {}, []  # windows: the other processes' CPU while each model ran
    for size in args.sizes:
        for model_name in args.models or list_models():
            peer_name = PEER_OF.get(model_name, "BasicUNet")
            if (peer_name, size) not in peer_cache:
                window = OtherWork()
                peer_cache[peer_name, size] = run_one(lambda: make_peer(peer_name, args.base), size, args, device)
                windows.append(window.cores())
                print(f"{size} peer {peer_name}: {peer_cache[peer_name, size]}", flush=True)
            window = OtherWork()
            ours = run_one(lambda: create_model(model_name, base_channels=args.base), size, args, device)
            windows.append(window.cores())
            print(f"{size} {model_name}: {ours}", flush=True)
            rows.append(
                {
                    "model": model_name,
                    "size": size,
                    "peer_name": peer_name,
                    "ours": ours,
                    "peer": peer_cache[peer_name, size],
                }
            )
    load_after, other_cores = loadavg(), other.cores()
    # busy when other processes took CPU over the whole run or during any one model's measurement (a
    # spike during U-Net's alone would skew every ratio to U-Net while the run's average stays low)
    worst = max((w for w in windows if w is not None), default=None)
    busy = device.type == "cpu" and (
        busy_flag(other_cores, load_before[0], args.threads) or (worst is not None and busy_flag(worst, 0.0, 1))
    )
    result = {
        "device": name,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "python": platform.python_version(),
        "command": "python bench/bench_models.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "batch": args.batch,
        "base": args.base,
        "iters": args.iters,
        "warmup": args.warmup,
        "amp": device.type == "cuda",
        "threads": torch.get_num_threads(),
        "load": {**load_record(load_before, load_after, other_cores, busy), "other_cores_max_per_model": worst},
        "flops": FLOPS_COUNTED,
        "rows": rows,
        **({"tag": args.tag} if args.tag else {}),
        **({"note": args.note} if args.note else {}),
    }
    print(
        f"load average after: {load_after}; other processes used {other_cores} cores"
        + ("  (busy: numbers not comparable)" if busy else "")
    )
    if not args.record:
        print("\n".join(render_section(result)))
        print("\nnot recorded (pass --record to write it into the committed results)")
        return 0
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / (f"{label}-{args.tag}.json" if args.tag else f"{label}.json")
    atomic_write_text(out, json.dumps(result, indent=1) + "\n")
    render_readme(args.results)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
