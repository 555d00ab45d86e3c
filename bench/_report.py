"""What the benchmark scripts share: the device's name and file slug, and writing a run's record.

Imported by ``bench_attention.py``, ``bench_ddp.py`` and ``bench_epoch.py`` (each puts ``bench/`` on
``sys.path``, so it works when they run as scripts and when tests load them from their file).
"""

from __future__ import annotations

import json
import platform
import re
from pathlib import Path

from lungseg.io import atomic_write_text


def slug(name: str) -> str:
    """``CPU x86_64 (1 thread)`` → ``cpu-x86-64-1-thread``: a device name as a file name."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def cpu_name(threads_text: str) -> str:
    """``CPU <processor> (<threads_text>)``."""
    return f"CPU {platform.processor() or platform.machine()} ({threads_text})"


def device_label(device, threads: int) -> tuple[str, str]:
    """(name, slug) of one device: the CUDA device's name, or the CPU with ``threads`` torch threads."""
    import torch

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = cpu_name(f"{threads} thread{'s' if threads > 1 else ''}")
    return name, slug(name)


def write_record(record: dict, results_dir: Path, kind: str, label: str, tag: str | None = None) -> Path:
    """``record`` as ``<results_dir>/<kind>/<label>[-<tag>].json`` (atomically); the caller re-renders."""
    folder = results_dir / kind
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / (f"{label}-{tag}.json" if tag else f"{label}.json")
    atomic_write_text(target, json.dumps(record, indent=1) + "\n")
    return target


def add_record_arguments(ap, results: Path, page: str, tag_help: str) -> None:
    """``--results``, ``--record``, ``--tag``, ``--note``, ``--render-only``: where and when a benchmark
    writes (a plain run writes nothing)."""
    ap.add_argument("--results", type=Path, default=results)
    ap.add_argument("--record", action="store_true", help=f"write the JSON and re-render {page}")
    ap.add_argument("--tag", default=None, help=tag_help)
    ap.add_argument("--note", default=None, help=f"why this run was made / how to read it (shown in {page})")
    ap.add_argument("--render-only", action="store_true")


def check_tag(ap, tag: str | None) -> None:
    """``ap.error`` unless ``tag`` (the result file's suffix) is lower-case letters, digits and '-'."""
    if tag is not None and not re.fullmatch(r"[a-z0-9][a-z0-9-]*", tag):
        ap.error(f"--tag {tag!r}: use lower-case letters, digits and '-'")
