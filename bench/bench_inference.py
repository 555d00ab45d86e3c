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

Results are written only with ``--record``: ``bench/results/inference/<device>[-<tag>].json``, and
``bench/results/INFERENCE.md`` is re-rendered from every JSON there (``--render-only`` re-renders).
Usage::

    python bench/bench_inference.py --device cpu --slices 32 --size 256 --base 16 --batch 4
    python bench/bench_inference.py --device cuda --slices 300 --size 512 --base 32 --batch 16 --record
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
    result = measure(args)
    if args.record:
        folder = args.results / "inference"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{result.pop('slug')}{'-' + args.tag if args.tag else ''}.json"
        atomic_write_text(target, json.dumps(result, indent=2) + "\n")
        print(f"wrote {target} and {render(args.results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
