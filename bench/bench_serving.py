#!/usr/bin/env python
"""What the serving options buy and cost: test-time flips and post-processing, on a real test split (not a test).

For one trained model (a ``lungseg train`` folder) and one processed set, every variant of the serving
settings (:mod:`lungseg.artifacts.serving`) is scored the way ``lungseg evaluate`` scores the served model
— probabilities (:func:`lungseg.evaluation.report.predict`, mirrored with ``tta: flips``), labels by
:func:`lungseg.artifacts.serving.apply`, per-image metrics of those labels — and timed (median of
``--repeats`` interleaved rounds of the prediction + labelling). Printed: Dice (mean over images), its
paired change against ``none`` (mean of per-image differences, with how many images got better / worse),
seconds per image and the time ratio.

    python bench/bench_serving.py --model models/medseg --data data/processed/medseg --split test
    python bench/bench_serving.py --model M --data D --record --tag lung-kaggle --note "..."

``--record`` writes ``bench/results/serving/<tag>.json`` and re-renders ``bench/results/SERVING.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
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

from _report import add_record_arguments, check_tag  # noqa: E402

from lungseg.io import atomic_write_text  # noqa: E402

RESULTS = ROOT / "bench" / "results"
VARIANTS = {
    "none": {"tta": "none", "postprocess": "none"},
    "flips": {"tta": "flips", "postprocess": "none"},
    "postprocess": {"tta": "none", "postprocess": "largest_components+fill_holes"},
    "flips+postprocess": {"tta": "flips", "postprocess": "largest_components+fill_holes"},
}


def measure(args) -> dict:
    from lungseg.artifacts.checkpoint import build_model, load_checkpoint
    from lungseg.artifacts.serving import ServingSettings, apply
    from lungseg.data.dataset import load_split
    from lungseg.evaluation.report import predict
    from lungseg.metrics import per_image_metrics

    ckpt_path = args.model / "best.pt" if (args.model / "best.pt").is_file() else args.model
    ckpt = load_checkpoint(ckpt_path)
    net = build_model(ckpt["model_identity"])
    net.load_state_dict(ckpt["model_state"])
    net.eval()
    split = load_split(args.data, args.split)
    images, masks = np.asarray(split.images), np.asarray(split.masks)
    rows, per_image, times = [], {}, {name: [] for name in args.variants}
    for _ in range(args.repeats):  # interleaved: a load spike hits every variant
        for name in args.variants:
            settings = ServingSettings.for_model(ckpt.get("preprocess"), args.threshold, **VARIANTS[name])
            t = time.perf_counter()
            probs = predict(net, images, tta=settings.tta)
            labels = apply(probs, settings)
            times[name].append(time.perf_counter() - t)
            df = per_image_metrics(probs, masks, threshold=settings.threshold, labels=labels)
            per_image[name] = df["dice"].to_numpy()
    base, base_t = per_image[args.variants[0]], statistics.median(times[args.variants[0]])
    for name in args.variants:
        d = per_image[name] - base
        seconds = statistics.median(times[name])
        rows.append(
            {
                "variant": name,
                "settings": VARIANTS[name],
                "dice_mean": float(np.nanmean(per_image[name])),
                "dice_change_mean": float(np.nanmean(d)),
                "better": int((d > 1e-9).sum()),
                "worse": int((d < -1e-9).sum()),
                "seconds_per_image": seconds / len(images),
                "time_ratio": seconds / base_t,
            }
        )
        r = rows[-1]
        print(
            f"{name:18s} Dice {r['dice_mean']:.4f}  change {r['dice_change_mean']:+.4f} "
            f"(better {r['better']}, worse {r['worse']} of {len(images)})  "
            f"{1000 * r['seconds_per_image']:.1f} ms/image  x{r['time_ratio']:.2f} time",
            flush=True,
        )
    return {
        "date": dt.date.today().isoformat(),
        "command": "python bench/bench_serving.py " + shlex.join(_portable_argv(args.argv)),
        "model": ckpt["model_identity"]["name"],
        "model_kwargs": ckpt["model_identity"]["kwargs"],
        "label_names": (ckpt.get("preprocess") or {}).get("label_names"),
        "dataset": split.meta.get("dataset"),
        "split": args.split,
        "n_images": len(images),
        "image_size": int(images.shape[-1]),
        "threshold": args.threshold,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "rows": rows,
        "tag": args.tag,
        "note": args.note,
    }


def _portable_argv(argv: list[str]) -> list[str]:
    """The command line as committed: no ``--note TEXT``, paths outside the repository as ``<elsewhere>/name``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--note":
            skip = True
            continue
        path = Path(a)
        if path.is_absolute() and path.exists():
            try:
                a = path.resolve().relative_to(ROOT).as_posix()
            except ValueError:
                a = f"<elsewhere>/{path.name}"
        out.append(a)
    return out


def render(results_dir: Path) -> Path:
    parts = [
        "# Serving options: what test-time flips and post-processing buy and cost",
        "",
        "Generated by `bench/bench_serving.py` from every `serving/*.json` here (do not edit by hand). Each",
        "variant is scored as `lungseg evaluate` scores the served model (labels by `serving.apply`); the",
        "change is the mean of per-image Dice differences against `none` on the same images. A handful of",
        "test images: read the better/worse counts before the means. CPU timings on a shared 2-core machine.",
    ]
    for path in sorted((results_dir / "serving").glob("*.json")):
        d = json.loads(path.read_text(encoding="utf-8"))
        parts += [
            "",
            f"## {d['model']} on {d['dataset']} ({d['split']}, {d['n_images']} images at {d['image_size']}²)"
            + (f" — {d['tag']}" if d.get("tag") else ""),
            "",
            *([f"> {d['note']}", ""] if d.get("note") else []),
            f"- date {d['date']}; labels {d['label_names']}; threshold {d['threshold']}; torch {d['torch']}, "
            f"{d['threads']} thread(s); median of {d['repeats']} interleaved rounds",
            f"- command: `{d['command']}`",
            "",
            "| variant | Dice | change vs none | better / worse | ms per image | time vs none |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for r in d["rows"]:
            parts.append(
                f"| {r['variant']} | {r['dice_mean']:.4f} | {r['dice_change_mean']:+.4f} | "
                f"{r['better']} / {r['worse']} | {1000 * r['seconds_per_image']:.1f} | {r['time_ratio']:.2f}x |"
            )
    target = results_dir / "SERVING.md"
    atomic_write_text(target, "\n".join(parts) + "\n")
    return target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="a lungseg train output folder (or its best.pt)")
    ap.add_argument("--data", type=Path, help="the processed set it was trained on")
    ap.add_argument("--split", default="test")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    add_record_arguments(ap, RESULTS, "SERVING.md", "name of the result file (default: run)")
    args = ap.parse_args(argv)
    check_tag(ap, args.tag)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.render_only:
        print(f"wrote {render(args.results)}")
        return 0
    if args.model is None or args.data is None:
        ap.error("--model and --data are required")
    if args.variants[0] != "none":
        args.variants = ["none", *[v for v in args.variants if v != "none"]]
    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure(args)
    if args.record:
        folder = args.results / "serving"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{args.tag or 'run'}.json"
        atomic_write_text(target, json.dumps(result, indent=2) + "\n")
        print(f"wrote {target} and {render(args.results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
