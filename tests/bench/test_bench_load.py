"""bench/_report.py's busy flag (#24 review F5): a CPU record is judged by the CPU other processes
took while it ran (``/proc/stat`` minus the benchmark's own time), not by the load average after the
run, which counts the benchmark's own threads and flagged every 2-thread run on 2 cores as busy."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench_helpers import load_bench


@pytest.fixture(scope="module")
def report():
    return load_bench("_report")


def test_other_cores_is_the_machine_s_busy_time_minus_this_process_s_over_the_wall_time(report, monkeypatch):
    samples = iter([(100.0, 5.0, 10.0), (103.0, 7.0, 12.0)])  # (machine busy s, own CPU s, wall s)
    monkeypatch.setattr(report.OtherWork, "_sample", staticmethod(lambda: next(samples)))
    assert report.OtherWork().cores() == 0.5  # (3 − 2) / 2
    samples = iter([(100.0, 5.0, 10.0), (101.0, 6.5, 11.0)])  # own time above the machine's (tick rounding)
    assert report.OtherWork().cores() == 0.0
    samples = iter([None, None])  # no /proc/stat
    assert report.OtherWork().cores() is None


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs /proc/stat (Linux)")
def test_a_process_burning_a_core_meanwhile_is_counted_as_other_work(report):
    """A child this process has not waited for is another process: its CPU counts as other work
    (at least what it burned; other jobs on the machine can only add to it)."""
    burn_code = "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.0:\n    pass"
    t0, other = time.monotonic(), report.OtherWork()
    burn = subprocess.Popen([sys.executable, "-c", burn_code])
    while burn.poll() is None:  # exited (a zombie), not yet reaped: not in this process's children times
        time.sleep(0.05)
    cores, wall = other.cores(), time.monotonic() - t0
    burn.wait()
    assert cores >= 0.95 / wall  # its 1 s of CPU (less a clock tick or two) over the wall time


def test_busy_flag_uses_the_other_processes_cpu_and_falls_back_to_the_load_before(report, monkeypatch):
    assert report.busy_flag(0.1, 5.0, 2) is False  # the load says busy, the other processes took 0.1 core
    assert report.busy_flag(0.6, 0.0, 2) is True
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert report.busy_flag(None, 0.3, 1) is False and report.busy_flag(None, 1.6, 1) is True


def test_load_text_names_the_measure_and_explains_an_old_busy_flag(report):
    new = {"before": [0.1, 0, 0], "after": [1.9, 0, 0], "cpu_count": 2, "other_cores": 0.05, "busy": False}
    assert report.load_text(new) == (
        "0.10 before, 1.90 after (1-min load average, 2 cores); "
        "other processes used 0.05 cores on average during the run"
    )
    per_model = {**new, "other_cores_max_per_model": 0.6, "busy": True}
    assert report.load_text(per_model) == (
        "0.10 before, 1.90 after (1-min load average, 2 cores); other processes used 0.05 cores on average "
        "during the run (0.60 during the worst model's measurement) — **the machine was busy: numbers not comparable**"
    )
    busy = {**new, "other_cores": 1.1, "busy": True}
    assert report.load_text(busy).endswith(
        "cores on average during the run — **the machine was busy: numbers not comparable**"
    )
    old = {"before": [0.56, 0, 0], "after": [1.21, 0, 0], "cpu_count": 2, "busy": True}
    assert report.load_text(old) == (
        "0.56 before, 1.21 after (1-min load average, 2 cores) — **the machine was busy: numbers not comparable** "
        "(flagged by the load after the run, which counts this benchmark's own threads)"
    )
