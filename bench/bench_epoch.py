#!/usr/bin/env python
"""Epoch overhead of lungseg's training loop: an epoch's time ÷ the sum of its pure train steps (not a test).

For one model, image size, width and batch, on real CT slices (the bundled MedSeg sample, or
``--source`` another MedSeg-layout folder such as ``../shared/data/medseg-covid100``,
preprocessed at ``--size``² and its training split repeated to ``--images``):

* **steps** — the epoch's batches (the same ``(seed, epoch)`` permutation and augmentation the
  loop draws, made with :func:`lungseg.training.epoch.epoch_batches`) are built first and kept on the
  device; then only forward + loss + ``zero_grad`` + backward + Adam step for each, timed as one
  block (CUDA: ``torch.cuda.synchronize()`` before and after, none in between);
* **epoch** — lungseg's own training epoch, :func:`lungseg.training.epoch.train_epoch`, on the
  data as :func:`lungseg.training.train` stages it (:func:`lungseg.training.epoch.stage_data`: on the
  GPU when it fits, ``--data-on-device``): indexing, augmentation, the step, the loss/Dice kept on
  the device and read back at progress points, progress — same batches, same timing;
* **ratio = epoch ÷ steps**: what the loop costs beyond the steps it has to run (issue #11's goal on
  a GPU: ≤ 1.15);
* and per epoch of :func:`~lungseg.training.train` besides the training pass: the validation pass
  (``validate`` over the validation split) and one write of the full ``checkpoint.pt``
  (:meth:`TrainState.save`, synchronous), giving the **whole-epoch ratio** ``(epoch + validation +
  checkpoint ÷ --checkpoint-every) ÷ steps``.

Both run under the loop's determinism settings (``deterministic()``), with bf16 autocast and
channels_last on CUDA as the loop uses them. A warm-up repetition (not reported) comes first; then
``--repeats`` repetitions, each of its own epoch number (so its own batches), alternating which of
the two goes first; the medians are reported, the ratio as the median of the repetitions' ratios.
torch's CPU threads are pinned (``--threads``, default 1) and the load average is printed and
recorded before and after: numbers taken on a busy machine are not comparable.

Results are written only with ``--record``: ``bench/results/epoch/<device>[-<tag>].json`` and
``bench/results/EPOCH.md`` re-rendered from every JSON there (``--render-only`` re-renders). Usage::

    python bench/bench_epoch.py --device cpu --size 64 --base 4 --images 32 --threads 1
    python bench/bench_epoch.py --device cuda --size 256 --base 32 --record
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _report import (  # noqa: E402
    OtherWork,
    add_record_arguments,
    busy_flag,
    check_tag,
    device_label,
    is_busy,
    load_record,
    load_text,
    write_record,
)

from lungseg.io import atomic_write_text  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SAMPLE = ROOT / "data" / "sample" / "medseg-covid100"


def prepare_data(source: Path, size: int, folder: Path) -> Path:
    """``source`` (a MedSeg-layout folder) preprocessed at ``size``² into ``folder``."""
    from lungseg.config import PreprocessConfig
    from lungseg.data.preprocess import preprocess

    out = folder / f"medseg{size}"
    if not (out / "meta.json").is_file():
        preprocess("medseg", source, out, PreprocessConfig(image_size=size))
    return out


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Bench:
    """The model, optimizer, loss and staged data of one benchmark run."""

    def __init__(self, args: argparse.Namespace, data_dir: Path, device: torch.device):
        import numpy as np

        from lungseg.artifacts.checkpoint import RunInfo, model_identity
        from lungseg.config import TrainConfig
        from lungseg.data.dataset import load_split
        from lungseg.losses import DeepSupervisionLoss, create_loss, default_loss_for
        from lungseg.models import create_model
        from lungseg.training.epoch import stage_data
        from lungseg.training.setup import epoch_seed

        self.device = device
        self.cfg = TrainConfig(
            model=args.model,
            base_channels=args.base,
            batch_size=args.batch,
            device=device.type,
            augment=True,
            epochs=args.repeats + 1,
            data_on_device={"auto": "auto", "true": True, "false": False}[args.data_on_device],
            seed=0,
        )
        train, val = load_split(data_dir, "train"), load_split(data_dir, "val")
        reps = -(-args.images // len(train.images))
        train = SimpleNamespace(
            images=np.ascontiguousarray(np.concatenate([train.images] * reps)[: args.images]),
            masks=np.ascontiguousarray(np.concatenate([train.masks] * reps)[: args.images]),
        )
        self.x, self.y, self.x_val, self.y_val = stage_data(train, val, self.cfg, device, announce=False)
        self.data_on_device = (self.x.device.type == "cuda") if device.type == "cuda" else None  # None: CPU
        torch.manual_seed(epoch_seed(0, 0))
        model = create_model(args.model, base_channels=args.base).to(device)
        if device.type == "cuda" and self.cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.optimizer = torch.optim.Adam(model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        self.loss_fn = create_loss(default_loss_for(args.model))
        self.heads = getattr(model, "deep_supervision_weights", None)
        self.step_loss = (
            DeepSupervisionLoss(self.loss_fn, self.heads, getattr(model, "deep_supervision_targets", None))
            if self.heads
            else self.loss_fn
        )
        self.info = RunInfo(
            model_identity=model_identity(self.cfg, 1, 1),
            config=self.cfg.model_dump(),
            params={},
            num_classes=1,
            data_hash="bench",
            image_size=args.size,
            preprocess={"image_size": args.size},
        )

    def steps(self, epoch: int) -> float:
        """Seconds of the pure train steps over ``epoch``'s batches (built and staged first, untimed)."""
        from lungseg.training.epoch import epoch_batches
        from lungseg.training.setup import epoch_seed

        cfg, device, model = self.cfg, self.device, self.model
        gen = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch))
        torch.manual_seed(epoch_seed(cfg.seed, epoch))
        batches = [(xb, yb) for xb, yb, _ in epoch_batches(self.x, self.y, cfg, device, gen)]
        model.train()
        amp = device.type == "cuda" and cfg.amp
        _sync(device)
        t0 = time.perf_counter()
        for xb, yb in batches:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                outputs = model.forward_heads(xb) if self.heads else model(xb)
            loss = self.step_loss([o.float() for o in outputs] if self.heads else outputs.float(), yb)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        _sync(device)
        return time.perf_counter() - t0

    def epoch(self, epoch: int) -> float:
        """Seconds of lungseg's training epoch ``epoch``."""
        from lungseg.training.epoch import train_epoch

        _sync(self.device)
        t0 = time.perf_counter()
        train_epoch(self.model, self.loss_fn, self.optimizer, self.x, self.y, self.cfg, self.device, epoch)
        _sync(self.device)
        return time.perf_counter() - t0

    def validate(self) -> float:
        from lungseg.training.epoch import validate

        _sync(self.device)
        t0 = time.perf_counter()
        validate(self.model, self.loss_fn, self.x_val, self.y_val, self.cfg, self.device)
        _sync(self.device)
        return time.perf_counter() - t0

    def checkpoint(self, folder: Path, epoch: int) -> float:
        """Seconds of one synchronous write of the full ``checkpoint.pt`` (as ``train()`` writes it)."""
        from lungseg.artifacts.checkpoint import TrainState

        state = TrainState(self.info, epoch=epoch)
        _sync(self.device)
        t0 = time.perf_counter()
        state.save(folder, self.model, self.optimizer, None, improved=False)
        return time.perf_counter() - t0


def measure(args: argparse.Namespace, device: torch.device) -> dict:
    from lungseg.training.setup import deterministic

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-epoch-") as tmp:
        data = prepare_data(args.source, args.size, Path(tmp))
        bench = Bench(args, data, device)
        with deterministic():
            bench.steps(0)  # warm-up: lazy initialisation, allocator, kernels
            bench.epoch(0)
            for r in range(1, args.repeats + 1):
                if r % 2:
                    steps_s, epoch_s = bench.steps(r), bench.epoch(r)
                else:
                    epoch_s = bench.epoch(r)
                    steps_s = bench.steps(r)
                rows.append(
                    {
                        "epoch": r,
                        "steps_s": steps_s,
                        "epoch_s": epoch_s,
                        "ratio": epoch_s / steps_s,
                        "validate_s": bench.validate(),
                        "checkpoint_s": bench.checkpoint(Path(tmp), r),
                    }
                )
                print(
                    f"repeat {r}: steps {steps_s:.3f} s  epoch {epoch_s:.3f} s  ratio {epoch_s / steps_s:.3f}  "
                    f"validation {rows[-1]['validate_s']:.3f} s  checkpoint {rows[-1]['checkpoint_s']:.3f} s",
                    flush=True,
                )
        n_images, data_on_device = len(bench.x), bench.data_on_device
    med = {k: statistics.median(r[k] for r in rows) for k in ("steps_s", "epoch_s", "ratio", "validate_s")}
    med["checkpoint_s"] = statistics.median(r["checkpoint_s"] for r in rows)
    whole = statistics.median(
        (r["epoch_s"] + r["validate_s"] + r["checkpoint_s"] / args.checkpoint_every) / r["steps_s"] for r in rows
    )
    from lungseg.training.distributed import SINGLE
    from lungseg.training.epoch import batch_starts

    trained = sum(min(args.batch, n_images - s) for s in batch_starts(n_images, args.batch, SINGLE))
    return {
        "rows": rows,
        "summary": {
            **med,
            "whole_epoch_ratio": whole,
            "images_per_epoch": trained,
            "steps_images_per_s": trained / med["steps_s"],
            "epoch_images_per_s": trained / med["epoch_s"],
        },
        "data_on_device": data_on_device,
    }


VARIANTS = ("fp32", "bf16", "compiled")
"""``--variants``: the train step in fp32, under bf16 autocast (emulated where the CPU has no native
bf16: recorded), and compiled (``train.compile``: :func:`lungseg.training.setup.compile_model`, fp32)."""


def variant_rows(args: argparse.Namespace, data_dir: Path) -> list[dict]:
    """Per torch thread count, model and :data:`VARIANTS`: the first train step (with a compile, the
    compile time) and the median of ``--repeats`` steps after it on real batches; FLOP/s from 3 × the
    textbook forward FLOPs (``bench_attention.textbook_flops``, the same count for every kernel)."""
    from bench_attention import textbook_flops

    from lungseg.data.dataset import load_split
    from lungseg.losses import create_loss, default_loss_for
    from lungseg.models import create_model
    from lungseg.training.setup import compile_model

    train = load_split(data_dir, "train")
    x = torch.from_numpy(train.images[: args.batch]).contiguous()
    y = torch.from_numpy(train.masks[: args.batch]).long()
    rows = []
    for threads in args.thread_counts:
        torch.set_num_threads(threads)
        for name in args.models:
            kw = {"max_tokens": args.max_tokens} if name in ("lgnet", "prnet") and args.max_tokens else {}
            flops = textbook_flops(name, kw, args.size, args.base)
            for variant in args.variant_list:
                torch.manual_seed(0)
                torch._dynamo.reset()
                model = create_model(name, base_channels=args.base, **kw).train()
                model = compile_model(model) if variant == "compiled" else model
                times = _variant_steps(model, create_loss(default_loss_for(name)), x, y, variant, args.repeats)
                step = statistics.median(times[1:])
                rows.append(
                    {
                        "threads": threads,
                        "model": name,
                        "variant": variant,
                        "first_s": times[0],
                        "compile_s": times[0] - step if variant == "compiled" else None,
                        "step_s": step,
                        "img_s": args.batch / step,
                        "gflops_per_img": flops / 1e9,
                        "train_gflop_s": 3 * flops * args.batch / step / 1e9,
                    }
                )
                print(f"variant {rows[-1]} load {loadavg()}", flush=True)
    return rows


def _variant_steps(model, loss_fn, x, y, variant: str, repeats: int) -> list[float]:
    """Seconds of ``1 + repeats`` train steps (forward at ``variant``, loss, backward, Adam step)."""
    from lungseg.training.setup import deterministic

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    heads = getattr(model, "deep_supervision_weights", None)
    times = []
    with deterministic():  # as the loop trains
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant == "bf16"):
                out = model.forward_heads(x) if heads else model(x)
            out = out[0] if heads else out
            loss = loss_fn(out.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - t0)
    return times


def render_variants(d: dict) -> list[str]:
    """A ``--variants`` record: per threads and model, each variant's step, its speed-up over fp32 and
    its training FLOP/s against U-Net's in the same variant and thread count."""
    s, load = d["settings"], d["load"]
    by = {(r["threads"], r["model"], r["variant"]): r for r in d["rows"]}
    lines = [
        "",
        f"## {d['device']}" + (f" ({d['tag']})" if d.get("tag") else ""),
        "",
        *([f"> {d['note']}", ""] if d.get("note") else []),
        f"- date: {d['date']}; torch {d['torch']}, python {d['python']}; bf16: "
        + ("native (AVX-512 BF16/AMX)" if d["bf16_native"] else "**emulated** (this CPU has no native bf16)"),
        f"- load: {load_text(load, 'numbers rough')}",
        f"- command: `{d['command']}`",
        f"- settings: train step (forward, loss, backward, Adam) at {s['size']}², base {s['base']}, batch "
        f"{s['batch']}, LG-Net/PR-Net max_tokens {s['max_tokens']}, on real slices; median of {s['repeats']} "
        "steps after the first (compiled: the first step's excess over the median = compile time)",
        "",
        "| threads | model | variant | first step s | compile s | step s | × fp32 speed | train GFLOP/s "
        "| FLOP/s ÷ U-Net's |",
        "|" + " --- |" * 9,
    ]
    for r in d["rows"]:
        fp32 = by.get((r["threads"], r["model"], "fp32"))
        unet = by.get((r["threads"], "unet", r["variant"]))
        lines.append(
            f"| {r['threads']} | {r['model']} | {r['variant']} | {r['first_s']:.3f} | "
            + ("" if r["compile_s"] is None else f"{r['compile_s']:.1f}")
            + f" | {r['step_s']:.3f} | {fp32['step_s'] / r['step_s']:.2f} | {r['train_gflop_s']:.2f} | "
            + (f"**{r['train_gflop_s'] / unet['train_gflop_s']:.2f}**" if unet else "n/a")
            + " |"
        )
    return lines


def measure_variants(args: argparse.Namespace, argv: list[str] | None) -> dict:
    """The ``--variants`` run and its record."""
    from lungseg.training.setup import cpu_bf16_supported

    load_before, other = loadavg(), OtherWork()
    print(f"load average {load_before} on {os.cpu_count()} cores; threads {args.thread_counts}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-epoch-") as tmp:
        rows = variant_rows(args, prepare_data(args.source, args.size, Path(tmp)))
    load_after, other_cores = loadavg(), other.cores()
    threads = max(args.thread_counts)
    busy = busy_flag(other_cores, load_before[0], threads)
    name, slug = device_label(torch.device("cpu"), threads)
    name = name.replace(f"({threads} threads)", f"({' and '.join(map(str, args.thread_counts))} threads)")
    return {
        "kind": "variants",
        "device": name,
        "slug": slug.rsplit("-", 2)[0] + "-variants",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": "python bench/bench_epoch.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "bf16_native": cpu_bf16_supported(),
        "load": load_record(load_before, load_after, other_cores, busy),
        "settings": {
            "size": args.size,
            "base": args.base,
            "batch": args.batch,
            "max_tokens": args.max_tokens,
            "repeats": args.repeats,
            "variants": args.variant_list,
            "source": _portable(args.source),
        },
        "rows": rows,
        "tag": args.tag,
        "note": args.note,
    }


def render_section(d: dict) -> list[str]:
    if d.get("kind") == "variants":
        return render_variants(d)
    s, m = d["settings"], d["summary"]
    load = d.get("load") or {}
    return [
        "",
        f"## {d['device']}" + (f" ({d['tag']})" if d.get("tag") else ""),
        "",
        *([f"> {d['note']}", ""] if d.get("note") else []),
        f"- date: {d['date']}; torch {d['torch']}, python {d['python']}, torch threads {d['threads']} (pinned)",
        f"- load: {load_text(load)}" if load else "- load: not recorded",
        f"- command: `{d['command']}`",
        f"- settings: {s['model']} base {s['base']} at {s['size']}², batch {s['batch']}, {m['images_per_epoch']} "
        f"images an epoch ({s['source']}), {s['precision']}, {_placement(d['data_on_device'], s['data_on_device'])}, "
        f"median of {s['repeats']} repetition(s) after a warm-up",
        "",
        "| steps s | epoch s | epoch ÷ steps | steps img/s | epoch img/s | validation s | checkpoint s "
        f"| whole epoch ÷ steps (checkpoint every {s['checkpoint_every']}) |",
        "|" + " --- |" * 8,
        f"| {m['steps_s']:.3f} | {m['epoch_s']:.3f} | **{m['ratio']:.3f}** | {m['steps_images_per_s']:.1f} "
        f"| {m['epoch_images_per_s']:.1f} | {m['validate_s']:.3f} | {m['checkpoint_s']:.3f} "
        f"| {m['whole_epoch_ratio']:.3f} |",
        "",
        "Repetitions (epoch ÷ steps): " + ", ".join(f"{r['ratio']:.3f}" for r in d["rows"]),
    ]


def _placement(on_device: bool | None, setting: str) -> str:
    if on_device is None:
        return "data in host memory (the CPU trains there)"
    return f"data {'on the GPU' if on_device else 'in host memory'} (data_on_device {setting})"


def render(results_dir: Path) -> Path:
    parts = [
        "# Epoch overhead results",
        "",
        "Generated by `bench/bench_epoch.py` from every `epoch/*.json` here (do not edit by hand). lungseg's own",
        "training epoch (`train_epoch`) against the sum of its pure train steps (the same batches built first and",
        "kept on the device; forward + loss + backward + Adam step) on real CT slices. Goal on a GPU (issue #11):",
        "epoch ÷ steps ≤ 1.15. The whole-epoch ratio adds the validation pass and the checkpoint write of one",
        "epoch of `train()`. CPU runs share 2 cores with other jobs: rough.",
    ]
    for path in sorted((results_dir / "epoch").glob("*.json")):
        parts += render_section(json.loads(path.read_text(encoding="utf-8")))
    target = results_dir / "EPOCH.md"
    atomic_write_text(target, "\n".join(parts) + "\n")
    return target


def record(result: dict, results_dir: Path) -> Path:
    """``result`` as ``<results_dir>/epoch/<device>[-<tag>].json`` (``EPOCH.md`` is re-rendered by the caller)."""
    record = {k: v for k, v in result.items() if k != "slug"}
    return write_record(record, results_dir, "epoch", result["slug"], result.get("tag"))


def main(argv: list[str] | None = None) -> dict | None:
    from lungseg.models import list_models

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    ap.add_argument("--model", default="unet", help="unet (default), lgnet, prnet or another registered model")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--base", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--images", type=int, default=128, help="images an epoch (the training split repeated)")
    ap.add_argument("--repeats", type=int, default=5, help="timed repetitions, after one warm-up")
    ap.add_argument("--source", type=Path, default=SAMPLE, help="MedSeg-layout raw data (default: the bundled sample)")
    ap.add_argument("--data-on-device", default="auto", choices=("auto", "true", "false"))
    ap.add_argument("--checkpoint-every", type=int, default=1, help="whole-epoch ratio: train.checkpoint_every")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads, pinned and recorded (default 1)")
    ap.add_argument("--variants", action="store_true", help="fp32 vs bf16 vs compiled train steps (#24), CPU")
    ap.add_argument("--models", default="unet,lgnet,prnet", help="--variants: comma-separated models")
    ap.add_argument("--thread-counts", default="1,2", help="--variants: comma-separated torch thread counts")
    ap.add_argument("--max-tokens", type=int, default=256, help="--variants: LG-Net/PR-Net max_tokens")
    ap.add_argument("--variant-list", default=",".join(VARIANTS), help=f"--variants: a subset of {','.join(VARIANTS)}")
    add_record_arguments(ap, RESULTS, "EPOCH.md", "suffix of the result file (keeps a re-run beside the first)")
    args = ap.parse_args(argv)
    if args.render_only:
        print(f"wrote {render(args.results)}")
        return None
    check_tag(ap, args.tag)
    if args.variants:
        args.models = args.models.split(",")
        args.thread_counts = [int(t) for t in args.thread_counts.split(",")]
        args.variant_list = [v for v in args.variant_list.split(",") if v]
        if "fp32" not in args.variant_list or set(args.variant_list) - set(VARIANTS):
            ap.error(f"--variant-list: fp32 (the reference) and others of {', '.join(VARIANTS)}")
        result = measure_variants(args, argv)
        print("\n".join(render_variants(result)))
        if args.record:
            print(f"wrote {record(result, args.results)} and {render(args.results)}")
        return result
    if args.model not in list_models():
        ap.error(f"--model {args.model!r}: unknown (valid: {', '.join(list_models())})")
    if min(args.threads, args.repeats, args.checkpoint_every, args.base) < 1 or args.batch < 2:
        ap.error("--threads, --repeats, --checkpoint-every and --base must be ≥ 1, --batch ≥ 2")
    if args.images < args.batch:
        ap.error(f"--images {args.images}: at least one batch (--batch {args.batch})")
    if not (args.source / "tr_im").is_dir():
        ap.error(f"--source {args.source}: not a MedSeg-layout folder (no tr_im/)")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    load_before, other = loadavg(), OtherWork()
    print(f"torch threads {torch.get_num_threads()} (pinned); load average {load_before} on {os.cpu_count()} cores")
    if device.type == "cpu" and is_busy(load_before[0], args.threads):
        print(
            f"warning: the machine is busy (1-min load {load_before[0]} with {os.cpu_count()} cores): CPU numbers "
            "taken now are not comparable with a quiet run",
            flush=True,
        )
    measured = measure(args, device)
    load_after, other_cores = loadavg(), other.cores()
    busy = device.type == "cpu" and busy_flag(other_cores, load_before[0], args.threads)
    name, slug = device_label(device, torch.get_num_threads())
    result = {
        "device": name,
        "slug": slug,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": "python bench/bench_epoch.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "threads": torch.get_num_threads(),
        "load": load_record(load_before, load_after, other_cores, busy),
        "settings": {
            "model": args.model,
            "base": args.base,
            "size": args.size,
            "batch": args.batch,
            "images": args.images,
            "repeats": args.repeats,
            "checkpoint_every": args.checkpoint_every,
            "data_on_device": args.data_on_device,
            "source": _portable(args.source),
            "precision": "bf16 autocast + channels_last" if device.type == "cuda" else "fp32",
        },
        **measured,
        "tag": args.tag,
        "note": args.note,
    }
    print(
        f"load average after: {load_after}; other processes used {other_cores} cores"
        + ("  (busy: numbers not comparable)" if busy else "")
    )
    print("\n".join(render_section(result)))
    if args.record:
        target = record(result, args.results)
        print(f"wrote {target} and {render(args.results)}")
    else:
        print("\nnot recorded (pass --record to write it into the committed results)")
    return result


def _portable(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it (what a recorded command may name)."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    main()
    sys.exit(0)
