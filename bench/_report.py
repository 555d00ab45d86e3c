"""What the benchmark scripts share: the device's name and file slug, writing a run's record, and
the FLOPs of a model (:func:`textbook_flops`).

Imported by ``bench_attention.py``, ``bench_ddp.py``, ``bench_epoch.py`` and ``bench_models.py`` (each
puts ``bench/`` on ``sys.path``, so it works when they run as scripts and when tests load them from
their file).
"""

from __future__ import annotations

import json
import platform
import re
from pathlib import Path

from lungseg.io import atomic_write_text

#: The attention-kernel options of the zoo's modules and the kernel the FLOPs are counted on: the
#: reference (textbook matmuls), whatever kernel a model was built with or resolves to at run time.
REFERENCE_KERNELS = {"dsa_impl": "reference", "pcm_impl": "reference"}


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


def textbook_flops(build, size: int, in_channels: int = 1) -> int:
    """Forward FLOPs of one ``size``² image of the model ``build()`` makes: a property of its math,
    the same for every attention kernel and torch thread count (#24).

    The model is built on the ``meta`` device (nothing is computed), every module's ``dsa_impl`` /
    ``pcm_impl`` is set to ``"reference"`` and SDPA runs its math kernel, and
    :class:`torch.utils.flop_counter.FlopCounterMode` counts the forward in eval mode (2 FLOPs per
    multiply-add of convolutions and matmuls). Counting the kernel that runs instead got the work
    wrong: the blocked kernels' GEMMs carry an extra ones row and padding, and the ``parallel`` DSA
    kernel's GEMMs run in worker threads, which the counter (a thread-local dispatch mode) never
    sees — PR-Net at 128², base 16 counted 5.77 GFLOPs at 2 threads against 13.26 at one.
    """
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build().eval()
    for module in model.modules():
        for option, kernel in REFERENCE_KERNELS.items():
            if hasattr(module, option):
                setattr(module, option, kernel)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad(), sdpa_kernel([SDPBackend.MATH]):
        model(torch.zeros(1, in_channels, size, size, device="meta"))
    return counter.get_total_flops()


#: Cores' worth of CPU time other processes may use, on average over a CPU measurement, before the
#: record is flagged busy: a quarter of a core (a niced test run on the other core uses ~1).
OTHER_BUSY_CORES = 0.25


class OtherWork:
    """The CPU time other processes used while a measurement ran: the machine's busy time
    (``/proc/stat``: everything but idle and iowait) minus this process's own (all its threads, and
    the children it waited for), over the wall time, in cores. Unlike the load average after a run,
    it does not count the benchmark's own threads (at ``--threads`` = cores the 1-min load after a
    quiet run is already ~2). ``cores()`` is ``None`` where ``/proc/stat`` is missing."""

    def __init__(self):
        self._start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        import os
        import time

        try:
            ticks = [int(x) for x in Path("/proc/stat").read_text(encoding="ascii").split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        # user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
        busy = sum(ticks[:8]) - ticks[3] - ticks[4]
        t = os.times()
        own = t.user + t.system + t.children_user + t.children_system
        return busy / os.sysconf("SC_CLK_TCK"), own, time.monotonic()

    def cores(self) -> float | None:
        end = self._sample()
        if self._start is None or end is None or end[2] <= self._start[2]:
            return None
        busy, own, wall = (e - s for e, s in zip(end, self._start))
        return round(max(0.0, (busy - own) / wall), 3)


def is_busy(load1: float, threads: int) -> bool:
    """Before a run: more runnable work than the cores left free for this benchmark's threads (a
    warning only; the record's flag is :func:`busy_flag`)."""
    import os

    return load1 > max((os.cpu_count() or 1) - threads, 0) + 0.5


def busy_flag(other_cores: float | None, load_before1: float, threads: int) -> bool:
    """A CPU record's busy flag: other processes used more than :data:`OTHER_BUSY_CORES` during the
    run (:class:`OtherWork`), or, without ``/proc/stat``, the load before the run was too high."""
    if other_cores is not None:
        return other_cores > OTHER_BUSY_CORES
    return is_busy(load_before1, threads)


def load_record(before: list, after: list, other_cores: float | None, busy: bool) -> dict:
    """A CPU record's ``load`` field: the load averages before/after, the cores, the other processes'
    CPU (:class:`OtherWork`) and the busy flag judged from it (:func:`busy_flag`)."""
    import os

    return {"before": before, "after": after, "cpu_count": os.cpu_count(), "other_cores": other_cores, "busy": busy}


def load_text(load: dict, busy_words: str = "numbers not comparable") -> str:
    """A record's ``load`` as one line: the load averages, the other processes' CPU (when measured)
    and the busy flag. Records made before ``other_cores`` existed were flagged by the load after
    the run, which counts the benchmark's own threads: said so."""
    before, after = load["before"], load["after"]
    text = f"{before[0]:.2f} before, {after[0]:.2f} after (1-min load average, {load.get('cpu_count')} cores)"
    other = load.get("other_cores")
    if other is not None:
        text += f"; other processes used {other:.2f} cores on average during the run"
        if load.get("other_cores_max_per_model") is not None:
            text += f" ({load['other_cores_max_per_model']:.2f} during the worst model's measurement)"
    if load.get("busy"):
        text += f" — **the machine was busy: {busy_words}**"
        if "other_cores" not in load:
            text += " (flagged by the load after the run, which counts this benchmark's own threads)"
    return text
