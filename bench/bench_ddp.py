#!/usr/bin/env python
"""DDP scaling of lungseg's training loop: images/s at world size 1 vs N, and DDP's overhead on one GPU (not a test).

What runs is lungseg's own epoch (:func:`lungseg.training.epoch.train_epoch`: the ``(seed, epoch)``
permutation, augmentation of the global batch, forward, loss, backward, Adam step, the per-step
loss/Dice all-reduce) with the hooks of :mod:`lungseg.training.distributed`, on real CT slices (the
bundled MedSeg sample preprocessed at ``--size``², repeated to ``--images``). Three kinds of rows:

* ``plain`` — one process, no process group (``lungseg train`` without torchrun);
* ``ddp×1`` — one process under DDP (what ``torchrun --nproc_per_node=1`` gives): DDP's overhead
  on one GPU is ``plain / ddp×1``;
* ``ddp×N`` — N processes (one GPU each on CUDA, nccl; gloo on the CPU), **weak scaling**: the
  per-process batch stays ``--batch-per-gpu`` so the global batch is ``N × --batch-per-gpu``
  (in ``params.yaml`` terms ``train.batch_size`` = the global batch). Scaling efficiency =
  (images/s at N) / (N × images/s of ``ddp×1``).

Each configuration trains ``--epochs`` epochs of ``--images`` images; the first is a warm-up, the
median of the others is reported. Processes are started with ``torch.multiprocessing`` and the
variables torchrun would set. On a CPU the processes share the cores: the numbers show the code
path works, not how it scales (the repository's CI machine has 2 cores and no GPU).

Results are written only with ``--record``: ``bench/results/ddp/<device>[-<tag>].json`` and
``bench/results/DDP.md`` re-rendered from every JSON there (``--render-only`` re-renders). Usage::

    python bench/bench_ddp.py --device cpu --world 1 2 --size 32 --base 4 --images 16 --batch-per-gpu 2
    python bench/bench_ddp.py --device cuda --world 1 2 4 8 --size 512 --base 32 --images 512 \\
        --batch-per-gpu 8 --record
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import socket
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _report import add_record_arguments, check_tag, cpu_name, slug, write_record  # noqa: E402

from lungseg.io import atomic_write_text  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SAMPLE = ROOT / "data" / "sample" / "medseg-covid100"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_data(size: int, folder: Path) -> Path:
    """The bundled real sample preprocessed at ``size``² into ``folder``."""
    from lungseg.config import PreprocessConfig
    from lungseg.data.preprocess import preprocess

    out = folder / f"medseg{size}"
    if not (out / "meta.json").is_file():
        preprocess("medseg", SAMPLE, out, PreprocessConfig(image_size=size))
    return out


def _worker(rank: int, world: int, port: int, args: dict, data: str, out: str) -> None:
    """One process of one configuration; rank 0 writes ``{"seconds": [...]}`` to ``out``."""
    import numpy as np

    from lungseg.config import TrainConfig
    from lungseg.data.dataset import load_split
    from lungseg.losses import create_loss
    from lungseg.models import create_model
    from lungseg.training import distributed
    from lungseg.training.epoch import train_epoch
    from lungseg.training.setup import deterministic, epoch_seed

    if args["threads"]:
        torch.set_num_threads(args["threads"])
    if world:  # under "DDP": what torchrun sets
        os.environ.update(
            RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
        )
    cfg = TrainConfig(
        model=args["model"],
        base_channels=args["base"],
        batch_size=args["batch_per_gpu"] * max(world, 1),
        device=args["device"],
        augment=True,
        epochs=args["epochs"],
        seed=0,
    )
    ddp = distributed.setup(cfg)
    try:
        device = ddp.device(torch.device(args["device"]))
        ddp.check(cfg, device)
        split = load_split(Path(data), "train")
        reps = -(-args["images"] // len(split.images))
        x = torch.from_numpy(np.concatenate([split.images] * reps)[: args["images"]])
        y = torch.from_numpy(np.concatenate([split.masks] * reps)[: args["images"]]).long()
        torch.manual_seed(epoch_seed(0, 0))
        model = create_model(cfg.model, base_channels=cfg.base_channels).to(device)
        if device.type == "cuda" and cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        # deep-supervised models (infnet, awsnet): the heads through DDP's own forward, as train() wraps them
        net = ddp.wrap(model, cfg, device, heads=bool(getattr(model, "deep_supervision_weights", None)))
        loss_fn = create_loss("bce_dice")
        seconds = []
        with deterministic():
            for epoch in range(1, cfg.epochs + 1):
                ddp.barrier()
                row = train_epoch(net, loss_fn, optimizer, x, y, cfg, device, epoch, ddp=ddp)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seconds.append(row["seconds"])
        if ddp.is_main:
            starts = ddp.even_batches(list(range(0, len(x), cfg.batch_size)), len(x), cfg.batch_size)
            trained = sum(min(s + cfg.batch_size, len(x)) - s for s in starts)
            Path(out).write_text(json.dumps({"seconds": seconds, "images": trained}), encoding="utf-8")
    finally:
        ddp.close()


def run_config(world: int, args: argparse.Namespace, data: Path, tmp: Path) -> dict:
    """``world`` = 0: plain (no process group), else DDP with ``world`` processes."""
    import torch.multiprocessing as mp

    out = tmp / f"w{world}.json"
    settings = {
        k: getattr(args, k) for k in ("model", "base", "batch_per_gpu", "device", "epochs", "images", "threads")
    }
    mp.spawn(_worker, args=(world, _free_port(), settings, str(data), str(out)), nprocs=max(world, 1), join=True)
    res = json.loads(out.read_text(encoding="utf-8"))
    timed = res["seconds"][1:] or res["seconds"]
    sec = statistics.median(timed)
    return {
        "config": "plain" if world == 0 else f"ddp×{world}",
        "world_size": max(world, 1),
        "global_batch": args.batch_per_gpu * max(world, 1),
        "images_per_epoch": res["images"],
        "epoch_seconds": sec,
        "images_per_s": res["images"] / sec,
        "epochs_timed": len(timed),
    }


def device_name(device: str, threads: int | None) -> tuple[str, str]:
    if device == "cuda":
        name = f"{torch.cuda.device_count()}× {torch.cuda.get_device_name(0)}"
    else:
        name = cpu_name(f"{threads or torch.get_num_threads()} threads a process")
    return name, slug(name)


def measure(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        data = prepare_data(args.size, Path(tmp))
        rows = [run_config(0, args, data, Path(tmp))]
        rows += [run_config(w, args, data, Path(tmp)) for w in args.world]
    one = next((r for r in rows if r["config"] == "ddp×1"), None)
    plain = rows[0]["images_per_s"]
    for r in rows:
        r["vs_plain"] = r["images_per_s"] / plain
        r["scaling_efficiency"] = (
            r["images_per_s"] / (r["world_size"] * one["images_per_s"]) if one and r["config"] != "plain" else None
        )
    name, slug = device_name(args.device, args.threads)
    return {
        "device": name,
        "slug": slug,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": "python bench/bench_ddp.py " + shlex.join(sys.argv[1:]),
        "backend": "nccl" if args.device == "cuda" else "gloo",
        "settings": {
            "model": args.model,
            "base": args.base,
            "size": args.size,
            "images": args.images,
            "batch_per_gpu": args.batch_per_gpu,
            "epochs": args.epochs,
            "threads": args.threads,
        },
        "rows": rows,
        "tag": args.tag,
        "note": args.note,
    }


def render(results_dir: Path) -> Path:
    parts = [
        "# DDP benchmark results",
        "",
        "Generated by `bench/bench_ddp.py` from every `ddp/*.json` here (do not edit by hand). lungseg's own",
        "training epoch on real CT slices; `plain` = no process group, `ddp×N` = N processes (weak scaling: the",
        "per-process batch is fixed, the global batch grows with N). Efficiency = images/s ÷ (N × images/s of ddp×1).",
    ]
    for path in sorted((results_dir / "ddp").glob("*.json")):
        d = json.loads(path.read_text(encoding="utf-8"))
        s = d["settings"]
        parts += [
            "",
            f"## {d['device']}" + (f" ({d['tag']})" if d.get("tag") else ""),
            "",
            *([f"> {d['note']}", ""] if d.get("note") else []),
            f"- date: {d['date']}; torch {d['torch']}, python {d['python']}; backend {d['backend']}",
            f"- command: `{d['command']}`",
            (
                f"- settings: {s['model']} base {s['base']} at {s['size']}², {s['images']} images an epoch, batch "
                f"{s['batch_per_gpu']} a process, median of {max(s['epochs'] - 1, 1)} epoch(s) after a warm-up"
            ),
            "",
            "| config | global batch | epoch s | images/s | vs plain | scaling efficiency |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for r in d["rows"]:
            eff = "" if r["scaling_efficiency"] is None else f"{100 * r['scaling_efficiency']:.0f} %"
            parts.append(
                f"| {r['config']} | {r['global_batch']} | {r['epoch_seconds']:.3f} | {r['images_per_s']:.1f} | "
                f"{r['vs_plain']:.2f} | {eff} |"
            )
    target = results_dir / "DDP.md"
    atomic_write_text(target, "\n".join(parts) + "\n")
    return target


def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    ap.add_argument(
        "--world", type=int, nargs="+", default=None, help="DDP world sizes to run (default: 1 and every GPU)"
    )
    ap.add_argument("--model", default="unet")
    ap.add_argument("--base", type=int, default=16)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--images", type=int, default=128, help="images an epoch (the sample's slices repeated)")
    ap.add_argument("--batch-per-gpu", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=3, help="the first is a warm-up")
    ap.add_argument("--threads", type=int, default=None, help="torch threads a process (CPU)")
    add_record_arguments(ap, RESULTS, "DDP.md", "suffix of the result file (keeps a re-run beside the first)")
    args = ap.parse_args(argv)
    if args.render_only:
        print(f"wrote {render(args.results)}")
        return None
    check_tag(ap, args.tag)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device")
    if args.world is None:
        n = torch.cuda.device_count() if args.device == "cuda" else 2
        args.world = sorted({1, n})
    if args.device == "cuda" and max(args.world) > torch.cuda.device_count():
        ap.error(f"--world {max(args.world)}: only {torch.cuda.device_count()} GPU(s)")
    if min(args.world) < 1 or args.epochs < 1 or args.images < args.batch_per_gpu * max(args.world):
        ap.error("--world ≥ 1, --epochs ≥ 1 and --images ≥ batch-per-gpu × the largest world size")
    result = measure(args)
    for r in result["rows"]:
        eff = "" if r["scaling_efficiency"] is None else f"  efficiency {100 * r['scaling_efficiency']:.0f} %"
        print(
            f"{r['config']:>7}  global batch {r['global_batch']:>3}  {r['images_per_s']:8.1f} images/s  "
            f"{r['vs_plain']:.2f}× plain{eff}"
        )
    if args.record:
        target = record(result, args.results)
        print(f"wrote {target} and {render(args.results)}")
    return result


def record(result: dict, results_dir: Path) -> Path:
    """``result`` as ``<results_dir>/ddp/<device>[-<tag>].json`` (``DDP.md`` is re-rendered by the caller)."""
    record = {k: v for k, v in result.items() if k != "slug"}
    return write_record(record, results_dir, "ddp", result["slug"], result.get("tag"))


if __name__ == "__main__":
    main()
    sys.exit(0)
