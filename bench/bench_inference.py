#!/usr/bin/env python
"""Slice-inference throughput of ``lungseg predict``'s engine against MONAI's inferers (not a test).

One real volume, one model, one process: the volume is built from real CT slices (the MedSeg
slices of ``--data``, 8-bit → [0, 1], resized to the model size with the preprocessing resize and
repeated until ``--slices``), the model is ``create_model(--model, base_channels=--base)`` at
``--size``² (speed does not depend on the weights, so they are the initial ones). Every method
goes from the same float32 ``(Z, S, S)`` numpy volume to uint8 labels ``(Z, S, S)`` in numpy:

* ``lungseg``: :class:`lungseg.inference.predict.SliceInference` — batches to the device,
  ``torch.inference_mode``, on CUDA bf16 autocast + channels_last + ``cudnn.benchmark``, sigmoid and
  threshold on the device, uint8 back;
* ``monai-simple``: ``monai.inferers.SimpleInferer`` on the same batches (plain batched inference);
* ``monai-sliding-window``: ``monai.inferers.SlidingWindowInferer(roi_size=(S, S), sw_batch_size=batch)``
  (one window per slice since roi = slice size).

The MONAI methods run the *same model object* under the same ``inference_mode`` and, on CUDA, the
same bf16 autocast (what a MONAI user would write); they differ in how batches are fed and results
brought back. Reported: seconds for the whole volume (median of ``--repeats`` interleaved rounds —
lungseg, MONAI simple, MONAI sliding window, again — after a warm-up),
slices/s, the ratio lungseg / MONAI (> 1 = lungseg faster), and the agreement of the label volumes.

Every run prints the ratios. ``--cohort N`` also measures the cohort path of ``lungseg predict``: N NIfTI
cases (``--slices`` slices each, uint8 like the real slices) predicted by one ``lungseg predict --input
FOLDER`` call (the model loaded once) against N calls of one case each (a process, the imports and a
model load per case), both as the user runs them (subprocesses of the installed command, a checkpoint
folder of the same model): cases/s and the ratio.

``--variants`` (issue #24) measures instead, per model of ``--models`` (default U-Net, LG-Net, PR-Net at
``--size``/``--base``, the same initial weights for every method) and per thread count of ``--thread-counts``
(default 1 and 2), in one process and interleaved rounds: lungseg's engine in fp32, in bf16 (autocast; on a
CPU without native bf16 — this one: AVX2 — lungseg would fall back to fp32, so the bench forces the autocast
to show what it would cost), with ``--backend onnxruntime`` (the ONNX export in an ``InferenceSession`` with
the same thread count), and MONAI's ``SimpleInferer`` at MONAI's default (fp32). Printed: slices/s, the
ratio of each against lungseg fp32 and against MONAI, the parity of each against lungseg fp32 (max |Δp| of
the probabilities, Dice of the masks) and the load average before and after each model.
``--e2e N`` also times ``lungseg predict`` as a user runs it (a subprocess, imports and model loading
included) on an N-slice NIfTI of the real 512² MedSeg slices with ``--checkpoint`` (default the demo's
LG-Net, ``models/medseg``), with each backend, per thread count; ``report.json``'s own timings are kept.

Results are written only with ``--record``: ``bench/results/inference/<device>[-<tag>].json``, and
``bench/results/INFERENCE.md`` is re-rendered from every JSON there (``--render-only`` re-renders).
Usage::

    python bench/bench_inference.py --device cpu --slices 32 --size 256 --base 16 --batch 4
    python bench/bench_inference.py --device cuda --slices 300 --size 512 --base 32 --batch 16 --record
    nice -n 10 python bench/bench_inference.py --variants --slices 16 --size 128 --base 16 --e2e 100 --record
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _report import OTHER_BUSY_CORES, OtherWork, busy_flag  # noqa: E402

from lungseg.io import atomic_write_text  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "medseg-covid100" / "tr_im"


def real_volume(data: Path, n: int, size: int) -> np.ndarray:
    """``(n, size, size)`` float32 in [0, 1] from the real slices in ``data`` (repeated as needed)."""
    from PIL import Image

    from lungseg.artifacts import core

    files = sorted(p for p in data.iterdir() if p.suffix.lower() == ".png")
    if not files:
        raise SystemExit(f"{data}: no PNG slices")
    out = []
    for i in range(n):
        img = np.asarray(Image.open(files[i % len(files)]), dtype=np.float32) / 255.0
        out.append(core.resize_to_model(torch.from_numpy(img)[None, None], size)[0, 0].numpy())
    return np.stack(out)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_lungseg(engine, volume: np.ndarray) -> np.ndarray:
    return np.stack(engine.labels(list(volume)))


def run_monai(inferer, net, volume: np.ndarray, batch: int, device: torch.device, amp: bool) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for i in range(0, len(volume), batch):
            x = torch.from_numpy(volume[i : i + batch])[:, None].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = inferer(x, net)
            out.append((torch.sigmoid(logits.float())[:, 0] >= 0.5).to(torch.uint8).cpu().numpy())
    return np.concatenate(out)


def timed(fn, device: torch.device, repeats: int) -> tuple[float, np.ndarray]:
    times, result = [], None
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        result = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def device_name(device: torch.device) -> tuple[str, str]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"
    return name, re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def measure(args) -> dict:
    from monai.inferers import SimpleInferer, SlidingWindowInferer

    from lungseg.inference.predict import LoadedModel, SliceInference
    from lungseg.models import create_model

    device = torch.device(args.device)
    volume = real_volume(args.data, args.slices, args.size)
    net = create_model(args.model, base_channels=args.base).eval()
    identity = {"name": args.model, "kwargs": {"in_channels": 1, "num_classes": 1, "base_channels": args.base}}
    loaded = LoadedModel(net, identity, {"image_size": args.size}, 0.5, f"bench:{args.model}")
    engine = SliceInference(loaded, device=device, batch_size=args.batch)  # moves net (channels_last on CUDA)
    amp = engine.amp
    methods = {
        "lungseg": lambda: run_lungseg(engine, volume),
        "monai-simple": lambda: run_monai(SimpleInferer(), engine.net, volume, args.batch, device, amp),
        "monai-sliding-window": lambda: run_monai(
            SlidingWindowInferer(roi_size=(args.size, args.size), sw_batch_size=args.batch),
            engine.net,
            volume,
            args.batch,
            device,
            amp,
        ),
    }
    warm = volume[: max(args.batch, 2)]
    run_lungseg(engine, warm)  # warm-up (CUDA: cudnn autotuning, allocator)
    run_monai(SimpleInferer(), engine.net, warm, args.batch, device, amp)
    times: dict[str, list[float]] = {name: [] for name in methods}
    labels = {}
    for _ in range(args.repeats):  # interleaved rounds: a load spike on a shared machine hits every method
        for name, fn in methods.items():
            seconds, labels[name] = timed(fn, device, 1)
            times[name].append(seconds)
    rows = []
    for name in methods:
        seconds = statistics.median(times[name])
        rows.append(
            {"method": name, "seconds": seconds, "slices_per_s": len(volume) / seconds, "all_seconds": times[name]}
        )
        print(
            f"{name:22s} {seconds:8.3f} s  {len(volume) / seconds:8.1f} slices/s  (runs: "
            f"{', '.join(f'{t:.2f}' for t in times[name])})",
            flush=True,
        )
    ours = rows[0]["slices_per_s"]
    for r in rows:
        r["ratio_lungseg_over_this"] = ours / r["slices_per_s"]
        r["label_agreement_with_lungseg"] = float((labels[r["method"]] == labels["lungseg"]).mean())
        if r["method"] != "lungseg":
            print(f"lungseg / {r['method']}: {r['ratio_lungseg_over_this']:.2f}x (> 1 = lungseg faster)", flush=True)
    cohort = measure_cohort(args, net, identity) if args.cohort else None
    name, slug = device_name(device)
    return {
        "device": name,
        "slug": slug,
        "date": dt.date.today().isoformat(),
        "torch": torch.__version__,
        "monai": __import__("monai").__version__,
        "python": platform.python_version(),
        "command": "python bench/bench_inference.py " + shlex.join(_without_note(sys.argv[1:])),
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "settings": {
            "model": args.model,
            "base": args.base,
            "size": args.size,
            "slices": args.slices,
            "batch": args.batch,
            "repeats": args.repeats,
            "amp_channels_last": bool(amp),
            "data": Path(os.path.relpath(Path(args.data).resolve(), ROOT)).as_posix(),  # committed: no machine path
        },
        "rows": rows,
        "cohort": cohort,
        "tag": args.tag,
        "note": args.note,
    }


def measure_cohort(args, net: torch.nn.Module, identity: dict) -> dict:
    """Cases/s of one ``lungseg predict`` call over a cohort folder vs one call per case (module docstring)."""
    import subprocess
    import tempfile

    import nibabel as nib

    from lungseg.artifacts.checkpoint import BEST, save_checkpoint

    with tempfile.TemporaryDirectory(prefix="bench-cohort-") as tmp:
        root = Path(tmp)
        (root / "model").mkdir()
        preprocess = {"image_size": args.size, "dataset": "medseg", "hu_window": [-1000.0, 400.0]}
        save_checkpoint(
            {"model_identity": identity, "model_state": net.state_dict(), "preprocess": preprocess},
            root / "model" / BEST,
        )
        cases = root / "cases"
        cases.mkdir()
        volume = real_volume(args.data, args.slices, args.size)
        for i in range(args.cohort):
            grey = np.round(volume * 255).astype(np.uint8)  # (z, rows, cols), the real slices' own domain
            img = nib.Nifti1Image(np.ascontiguousarray(np.transpose(grey, (2, 1, 0))), np.diag([0.7, 0.7, 5.0, 1]))
            img.set_data_dtype(np.uint8)
            nib.save(img, cases / f"case_{i}.nii.gz")
        command = [sys.executable, "-m", "lungseg", "predict", "--model", str(root / "model"), "--device", args.device]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}

        def call(extra: list[str]) -> float:
            t = time.perf_counter()
            subprocess.run(command + extra, check=True, capture_output=True, env=env, cwd=root)
            return time.perf_counter() - t

        once = call(["--input", str(cases), "--output", str(root / "cohort")])
        per_call = sum(
            call(["--input", str(cases / f"case_{i}.nii.gz"), "--output", str(root / f"one-{i}")])
            for i in range(args.cohort)
        )
    result = {
        "cases": args.cohort,
        "slices_per_case": args.slices,
        "cohort_seconds": once,
        "per_call_seconds": per_call,
        "cohort_cases_per_s": args.cohort / once,
        "per_call_cases_per_s": args.cohort / per_call,
        "ratio_cohort_over_per_call": per_call / once,
    }
    print(
        f"cohort of {args.cohort} x {args.slices} slices: one call {once:.1f} s ({result['cohort_cases_per_s']:.2f} "
        f"cases/s), one call per case {per_call:.1f} s ({result['per_call_cases_per_s']:.2f} cases/s): "
        f"{result['ratio_cohort_over_per_call']:.2f}x",
        flush=True,
    )
    return result


def _load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def _bench_model(name: str, base: int, size: int):
    from lungseg.inference.predict import LoadedModel
    from lungseg.models import create_model

    torch.manual_seed(0)
    net = create_model(name, base_channels=base).eval()
    identity = {"name": name, "kwargs": {"in_channels": 1, "num_classes": 1, "base_channels": base}}
    return LoadedModel(net, identity, {"image_size": size}, 0.5, f"bench:{name}", "", {})


def _parity(ref: tuple, got: tuple) -> dict:
    from lungseg.inference.export import dice

    lab_r, p_r = (np.stack(x) for x in ref)
    lab_g, p_g = (np.stack(x) for x in got)
    return {"max_abs_dp": float(np.abs(p_g - p_r).max()), "dice_vs_fp32": dice(lab_g, lab_r)}


def _variant_methods(model, volume: np.ndarray, batch: int, bf16: bool = True, compile: bool = False) -> dict:
    """name → (engine or None, run()) for one model at the current thread count (module docstring)."""
    from monai.inferers import SimpleInferer

    from lungseg.inference.predict import SliceInference

    cpu = torch.device("cpu")
    engines = {
        "lungseg-fp32": SliceInference(model.served_as(precision="fp32"), device=cpu, batch_size=batch),
        "lungseg-bf16": SliceInference(model.served_as(precision="bf16"), device=cpu, batch_size=batch),
        "lungseg-onnxruntime": SliceInference(model, device=cpu, batch_size=batch, backend="onnxruntime"),
    }
    if not bf16:
        del engines["lungseg-bf16"]
    if compile:  # fp32, compiled at its first run (the parity pass): that run's time is recorded
        engines["lungseg-compile"] = SliceInference(
            model.served_as(precision="fp32"), device=cpu, batch_size=batch, compile=True
        )
    methods = {k: (e, (lambda e=e: run_lungseg(e, volume))) for k, e in engines.items()}
    methods["monai-simple-fp32"] = (None, lambda: run_monai(SimpleInferer(), model.net, volume, batch, cpu, False))
    return methods


def measure_variants(args) -> dict:
    """fp32 / bf16 / onnxruntime / MONAI per model and thread count (module docstring: ``--variants``)."""
    from lungseg.artifacts import core

    native = core.cpu_supports_bf16()
    detect, core.cpu_supports_bf16 = core.cpu_supports_bf16, lambda *a: True  # bf16 even where lungseg falls back
    try:
        return _measure_variants(args, native)
    finally:
        core.cpu_supports_bf16 = detect


def _measure_variants(args, native: bool) -> dict:
    volume = real_volume(args.data, args.slices, args.size)
    rows, loads = [], []
    for name in args.models.split(","):
        model = _bench_model(name, args.base, args.size)
        for threads in args.thread_counts:
            torch.set_num_threads(threads)
            loads.append(f"{name}, {threads} thread(s), before: {_load()}")
            print(loads[-1], flush=True)
            load1, other = os.getloadavg()[0], OtherWork()
            methods = _variant_methods(model, volume, args.batch, bf16=not args.no_bf16, compile=args.compile)
            ref = methods["lungseg-fp32"][0].run(list(volume), probabilities=True)  # also the warm-up
            parity, first = {}, {}
            for k, (e, _) in methods.items():
                if e:  # each engine's first run (the compiled one compiles here)
                    t = time.perf_counter()
                    parity[k] = _parity(ref, e.run(list(volume), probabilities=True))
                    first[k] = time.perf_counter() - t
            run_monai_labels = methods["monai-simple-fp32"][1]()
            parity["monai-simple-fp32"] = {"max_abs_dp": None, "dice_vs_fp32": _dice(run_monai_labels, ref[0])}
            times: dict[str, list[float]] = {k: [] for k in methods}
            for _ in range(args.repeats):
                for k, (_, fn) in methods.items():
                    times[k].append(timed(fn, torch.device("cpu"), 1)[0])
            med = {k: statistics.median(v) for k, v in times.items()}
            other_cores = other.cores()  # the CPU other processes took while this model and thread count ran
            busy = busy_flag(other_cores, load1, threads)
            for k in methods:
                rows.append(
                    {
                        "model": name,
                        "threads": threads,
                        "method": k,
                        "seconds": med[k],
                        "slices_per_s": len(volume) / med[k],
                        "speed_vs_lungseg_fp32": med["lungseg-fp32"] / med[k],
                        "speed_vs_monai_fp32": med["monai-simple-fp32"] / med[k],
                        "all_seconds": times[k],
                        "first_run_seconds": first.get(k),
                        "other_cores": other_cores,
                        "busy": busy,
                        **parity[k],
                    }
                )
                r = rows[-1]
                print(
                    f"{name:6s} {threads}t {k:20s} {med[k]:7.3f} s {r['slices_per_s']:7.1f} sl/s  "
                    f"x{r['speed_vs_lungseg_fp32']:.2f} vs fp32  x{r['speed_vs_monai_fp32']:.2f} vs MONAI  "
                    f"max|dp| {r['max_abs_dp'] if r['max_abs_dp'] is not None else '-'}  Dice {r['dice_vs_fp32']:.5f}",
                    flush=True,
                )
            loads.append(f"{name}, {threads} thread(s), after: {_load()}")
            print(loads[-1], flush=True)
    return {"rows": rows, "loads": loads, "bf16_native": native}


def _dice(a, b) -> float:
    from lungseg.inference.export import dice

    return dice(np.asarray(a), np.stack(b))


def measure_e2e(args) -> dict:
    """``lungseg predict`` end to end on an ``args.e2e``-slice 512² NIfTI of real slices (module docstring)."""
    import subprocess
    import tempfile

    import nibabel as nib
    from PIL import Image

    files = sorted(p for p in Path(args.data).iterdir() if p.suffix.lower() == ".png")[: args.e2e]
    zyx = np.stack([np.asarray(Image.open(f).convert("L")) for f in files])
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        scan = Path(tmp) / "scan.nii.gz"
        xyz = np.ascontiguousarray(np.flip(np.transpose(zyx, (2, 1, 0)), axis=(0, 1)))
        img = nib.Nifti1Image(xyz, np.diag([0.7, 0.7, 5.0, 1.0]))
        img.set_data_dtype(np.uint8)
        nib.save(img, scan)
        carried, export_s = _carried_copy(Path(args.checkpoint), Path(tmp), zyx)
        runs = [("torch", args.checkpoint), ("onnxruntime", args.checkpoint), ("onnxruntime (carried)", carried)]
        for threads in args.thread_counts:
            for backend, model_dir in runs:
                out = Path(tmp) / f"out-{backend.split()[0]}-{threads}-{len(rows)}"
                env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
                cmd = [sys.executable, "-m", "lungseg", "predict", "--model", str(model_dir), "--input"]
                cmd += [str(scan), "--output", str(out), "--device", "cpu", "--backend", backend.split()[0]]
                load, load1, other = _load(), os.getloadavg()[0], OtherWork()
                t = time.perf_counter()
                done = subprocess.run(
                    cmd, check=True, capture_output=True, env=env, cwd=tmp, text=True, encoding="utf-8"
                )
                wall = time.perf_counter() - t
                other_cores = other.cores()  # the waited-for subprocess counts as this process's own CPU
                found = re.search(r"in ([0-9.]+) s \(read, predict, write\)", done.stdout)
                rep = json.loads((out / "report.json").read_text(encoding="utf-8"))
                rows.append(
                    {
                        "threads": threads,
                        "backend": backend,
                        "wall_seconds": wall,
                        "read_predict_write_seconds": float(found.group(1)) if found else None,
                        "report_timing_s": rep["timing_s"],
                        "slices": len(zyx),
                        "shape": list(zyx.shape[1:]),
                        "load_before": load,
                        "other_cores": other_cores,
                        "busy": busy_flag(other_cores, load1, threads),
                        "summary": rep["summary"],
                    }
                )
                print(
                    f"e2e {len(zyx)} x {zyx.shape[1]}² {backend} {threads}t: {wall:.1f} s wall, "
                    f"{rows[-1]['read_predict_write_seconds']} s read+predict+write, "
                    f"report {rep['timing_s']}, {load}",
                    flush=True,
                )
    checkpoint = Path(os.path.relpath(Path(args.checkpoint).resolve(), ROOT)).as_posix()
    return {"checkpoint": checkpoint, "rows": rows, "export_seconds": export_s}


def _carried_copy(checkpoint: Path, tmp: Path, zyx: np.ndarray) -> tuple[Path, float]:
    """A copy of the model folder carrying its ONNX export (``<copy>/onnx``, what ``lungseg export --output``
    writes), checked on 4 of the real slices; the copy and the export's seconds."""
    import shutil

    from lungseg.inference.export import export_model
    from lungseg.inference.predict import load_model

    copy = tmp / "model-with-onnx"
    shutil.copytree(checkpoint, copy)
    model = load_model(copy)
    t = time.perf_counter()
    export_model(model, "onnx", copy / "onnx", [z.astype(np.float32) / 255.0 for z in zyx[::25][:4]])
    return copy, time.perf_counter() - t


def variants_record(args) -> dict:
    """The record of a ``--variants`` run (``kind: variants``), with the e2e timings when ``--e2e``."""
    import onnxruntime

    record = measure_variants(args)
    e2e = measure_e2e(args) if args.e2e else None
    counts = " and ".join(map(str, args.thread_counts))
    name = f"CPU {platform.processor() or platform.machine()} ({counts} thread{'s' if counts != '1' else ''})"
    return {
        "kind": "variants",
        "device": name,
        "slug": re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") + "-variants",
        "date": dt.date.today().isoformat(),
        "torch": torch.__version__,
        "monai": __import__("monai").__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
        "command": "python bench/bench_inference.py " + shlex.join(_without_note(sys.argv[1:])),
        "settings": {
            "models": args.models,
            "base": args.base,
            "size": args.size,
            "slices": args.slices,
            "batch": args.batch,
            "repeats": args.repeats,
            "thread_counts": args.thread_counts,
            "data": Path(os.path.relpath(Path(args.data).resolve(), ROOT)).as_posix(),
        },
        **record,
        "e2e": e2e,
        "tag": args.tag,
        "note": args.note,
    }


def _render_variants(d: dict) -> list[str]:
    s = d["settings"]
    parts = [
        "",
        f"## {d['device']}: fp32 vs bf16 vs onnxruntime vs MONAI" + (f" ({d['tag']})" if d.get("tag") else ""),
        "",
        *([f"> {d['note']}", ""] if d.get("note") else []),
        f"- date: {d['date']}; torch {d['torch']}, onnxruntime {d['onnxruntime']}, monai {d['monai']}, "
        f"python {d['python']}; native bf16 on this CPU: {'yes' if d['bf16_native'] else 'no (bf16 emulated)'}",
        f"- command: `{d['command']}`",
        f"- settings: {s['models']} base {s['base']}, initial weights (the same for every method), {s['slices']} "
        f"real slices at {s['size']}², batch {s['batch']}, median of {s['repeats']} interleaved rounds",
        "- load: " + "; ".join(d["loads"]),
        "",
        "| model | threads | method | slices/s | runs s (min–max) | speed vs lungseg fp32 | speed vs MONAI fp32 "
        "| max \\|Δp\\| vs fp32 | Dice of masks vs fp32 | other processes' cores |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in d["rows"]:
        dp = "—" if r["max_abs_dp"] is None else f"{r['max_abs_dp']:.2g}"
        runs = f"{min(r['all_seconds']):.2f}–{max(r['all_seconds']):.2f}" if r.get("all_seconds") else "—"
        parts.append(
            f"| {r['model']} | {r['threads']} | {r['method']} | {r['slices_per_s']:.1f} | {runs} | "
            f"{r['speed_vs_lungseg_fp32']:.2f}× | {r['speed_vs_monai_fp32']:.2f}× | {dp} | {r['dice_vs_fp32']:.5f} | "
            f"{_other(r)} |"
        )
    parts += _busy_lines(d["rows"] + list((d.get("e2e") or {}).get("rows", [])))
    for r in d["rows"]:
        if r["method"] == "lungseg-compile" and r.get("first_run_seconds") is not None:
            parts += [
                "",
                f"{r['model']}, {r['threads']} thread(s), lungseg-compile (`lungseg predict --compile`): first run "
                f"(compiling) {r['first_run_seconds']:.1f} s against {r['seconds']:.1f} s once compiled — the "
                f"compile ≈ {r['first_run_seconds'] - r['seconds']:.1f} s",
            ]
    e = d.get("e2e")
    if e:
        parts += [
            "",
            f"`lungseg predict` end to end (a subprocess: imports, model loading, read → masks → report) on a "
            f"{e['rows'][0]['slices']}-slice {e['rows'][0]['shape'][0]}² NIfTI of real MedSeg slices with "
            f"`{e['checkpoint']}` (onnxruntime: exported at load, or the export a copy of the folder carries — "
            f"made once beforehand in {e['export_seconds']:.1f} s):",
            "",
            "| backend | threads | read → masks → report s | load models s | command wall s (with imports) "
            "| load average before | other processes' cores |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in e["rows"]:
            t = r["report_timing_s"]
            parts.append(
                f"| {r['backend']} | {r['threads']} | {r['read_predict_write_seconds']:.1f} | {t['load_models']:.1f} | "
                f"{r['wall_seconds']:.1f} | {r['load_before'].removeprefix('load average ')} | {_other(r)} |"
            )
    return parts


def _other(row: dict) -> str:
    """A row's other-process CPU (cores, ``—`` in records made before it was measured), † when busy."""
    if row.get("other_cores") is None:
        return "—"
    return f"{row['other_cores']:.2f}" + (" †" if row.get("busy") else "")


def _busy_lines(rows: list[dict]) -> list[str]:
    """The warning under a table with busy rows, or the note that the record predates the measure."""
    if any(r.get("busy") for r in rows):
        return [
            "",
            f"† **busy**: other processes used more than {OTHER_BUSY_CORES} cores on average while that model and "
            "thread count (or that command) ran — its numbers are rough, not a quiet machine's.",
        ]
    if rows and all(r.get("other_cores") is None for r in rows):
        return ["", "(Recorded before the other processes' CPU was measured: judge the run by its load lines.)"]
    return []


def _without_note(argv: list[str]) -> list[str]:
    """The command line minus ``--note TEXT`` (the note is shown on its own)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--note":
            skip = True
        elif not a.startswith("--note="):
            out.append(a)
    return out


def render(results_dir: Path) -> Path:
    parts = [
        "# Inference benchmark results",
        "",
        "Generated by `bench/bench_inference.py` from every `inference/*.json` here (do not edit by hand).",
        "Slices/s for a volume of real CT slices, from a float32 numpy volume in [0, 1] to uint8 labels in numpy,",
        "lungseg's `SliceInference` against MONAI's `SimpleInferer` and `SlidingWindowInferer` on the same model",
        "object in the same process (ratio > 1 = lungseg faster). CPU runs share 2 cores with other jobs: rough.",
    ]
    for path in sorted((results_dir / "inference").glob("*.json")):
        d = json.loads(path.read_text(encoding="utf-8"))
        if d.get("kind") == "variants":
            parts += _render_variants(d)
            continue
        s = d["settings"]
        parts += [
            "",
            f"## {d['device']}" + (f" ({d['tag']})" if d.get("tag") else ""),
            "",
            *([f"> {d['note']}", ""] if d.get("note") else []),
            f"- date: {d['date']}; torch {d['torch']}, monai {d['monai']}, python {d['python']}; "
            f"torch threads {d['threads']} (OMP_NUM_THREADS={d['omp_num_threads']})",
            f"- command: `{d['command']}`",
            f"- settings: {s['model']} base {s['base']}, {s['slices']} slices of {s['size']}², batch {s['batch']}, "
            f"median of {s['repeats']} interleaved rounds, "
            f"{'bf16 autocast + channels_last' if s['amp_channels_last'] else 'fp32'}",
            "",
            "| method | volume s | slices/s | lungseg / this | labels equal to lungseg's |",
            "| --- | --- | --- | --- | --- |",
        ]
        for r in d["rows"]:
            parts.append(
                f"| {r['method']} | {r['seconds']:.3f} | {r['slices_per_s']:.1f} | "
                f"{r['ratio_lungseg_over_this']:.2f} | {100 * r['label_agreement_with_lungseg']:.3f} % |"
            )
        c = d.get("cohort")
        if c:
            parts += [
                "",
                f"Cohort path (`lungseg predict` as a command, {c['cases']} NIfTI cases of {c['slices_per_case']} "
                "slices): one call over the folder (model loaded once) vs one call per case.",
                "",
                "| path | seconds | cases/s |",
                "| --- | --- | --- |",
                f"| one call, model loaded once | {c['cohort_seconds']:.1f} | {c['cohort_cases_per_s']:.2f} |",
                f"| one call per case | {c['per_call_seconds']:.1f} | {c['per_call_cases_per_s']:.2f} |",
                f"| ratio | {c['ratio_cohort_over_per_call']:.2f}x | |",
            ]
    target = results_dir / "INFERENCE.md"
    atomic_write_text(target, "\n".join(parts) + "\n")
    return target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of real PNG slices")
    ap.add_argument("--model", default="unet")
    ap.add_argument("--base", type=int, default=16)
    ap.add_argument("--size", type=int, default=256, help="model input size (the volume is resized to it)")
    ap.add_argument("--slices", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cohort", type=int, default=0, help="also time the cohort path with this many cases")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--variants", action="store_true", help="fp32 / bf16 / onnxruntime / MONAI per model (CPU)")
    ap.add_argument("--models", default="unet,lgnet,prnet", help="--variants: comma-separated models")
    ap.add_argument("--thread-counts", type=int, nargs="+", default=[1, 2], help="--variants/--e2e: torch threads")
    ap.add_argument("--no-bf16", action="store_true", help="--variants: leave the (emulated, slow) bf16 rows out")
    ap.add_argument("--compile", action="store_true", help="--variants: also lungseg predict --compile (minutes)")
    ap.add_argument("--e2e", type=int, default=0, help="--variants: also time predict on an N-slice 512² NIfTI")
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "models" / "medseg", help="--e2e: the model")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--record", action="store_true", help="write the JSON and re-render INFERENCE.md")
    ap.add_argument("--tag", default=None, help="suffix of the result file (keeps a re-run beside the first)")
    ap.add_argument("--note", default=None, help="why this run was made (shown in INFERENCE.md)")
    ap.add_argument("--render-only", action="store_true")
    args = ap.parse_args(argv)
    if args.render_only:
        print(f"wrote {render(args.results)}")
        return 0
    if args.tag is not None and not re.fullmatch(r"[a-z0-9][a-z0-9-]*", args.tag):
        ap.error(f"--tag {args.tag!r}: use lower-case letters, digits and '-'")
    if args.threads:
        torch.set_num_threads(args.threads)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device")
    result = variants_record(args) if args.variants else measure(args)
    if args.record:
        folder = args.results / "inference"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{result.pop('slug')}{'-' + args.tag if args.tag else ''}.json"
        atomic_write_text(target, json.dumps(result, indent=2) + "\n")
        print(f"wrote {target} and {render(args.results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
