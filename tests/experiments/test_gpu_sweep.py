"""The GPU cells' prepared script (docs/results/gpu_sweep.sh) keeps working without a GPU: its dry run
prints every command it would run; each parses with the CLI's own parser, names a table, profile and
rows that exist, and builds a run the training would start (the paper preset's size check included);
the 512² MedSeg cells of the paper recipe are planned first."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from lungseg.cli import build_parser
from lungseg.experiments import runner
from lungseg.experiments.specs import TABLES
from lungseg.training.presets import check_paper_size, resolve_preset

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "docs" / "results" / "gpu_sweep.sh"
OVERRIDES = ("image_size", "base_channels", "epochs", "batch_size", "lr")


def _dry_run(*args: str, **env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("OUT", "PAPER_TABLES", "PAPER_EPOCHS", "DRY_RUN")}
    proc = subprocess.run(
        ["bash", str(SCRIPT), *args],
        cwd=REPO,
        env={**clean, **env},
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def _cells(lines: list[str]) -> list[tuple]:
    """``(table, profile, effective profile, rows, seeds)`` of every ``lungseg results run`` line, each
    parsed by the CLI's parser (an unknown option or choice fails the test), after checking that every
    other line is a ``prepare <table> <profile>`` of a table and profile that exist."""
    parser = build_parser()
    cells = []
    for line in lines:
        words = shlex.split(line)
        if words[0] == "prepare":
            table, profile = words[1:3]
            assert profile in TABLES[table].profiles, line
            continue
        assert words[:3] == ["lungseg", "results", "run"], line
        try:
            args = parser.parse_args(words[1:])
        except SystemExit as exc:  # argparse's way of refusing
            pytest.fail(f"the CLI refuses: {line} ({exc})")
        assert len(args.table) == 1 and args.no_report, line
        spec = TABLES[args.table[0]]
        rows = [spec.row(key) for key in args.rows]  # KeyError: a row the table does not have
        assert args.seeds and set(args.seeds) <= set(spec.seeds), line
        prof = runner.effective_profile(spec, args.profile, {k: getattr(args, k) for k in OVERRIDES})
        cells.append((spec, args.profile, prof, rows, args.seeds))
    return cells


@pytest.mark.parametrize("env", [{}, {"PAPER_TABLES": "lgnet-table1 lgnet-ablation", "PAPER_EPOCHS": "30"}])
def test_every_planned_command_parses_and_would_start(env):
    lines = _dry_run("--dry-run", **env)
    assert lines == _dry_run(DRY_RUN="1", **env)  # the two spellings of a dry run
    cells = _cells(lines)
    assert len(cells) == len(lines) - 1  # one prepare line, the rest are runs
    for spec, _profile, prof, rows, _seeds in cells:
        for row in rows:
            params = runner.build_params(spec, row, prof, 0, device="cpu")
            # what the training checks before it starts: the preset and, for a paper preset, the data size
            preset = check_paper_size(resolve_preset(params.train), prof.image_size, f"<{spec.name}>")
            assert preset.config.model == row.model
            assert prof.image_size % 16 == 0


def test_the_512_paper_recipe_cells_come_first():
    lines = _dry_run("--dry-run")
    assert lines[0] == "prepare lgnet-table1 gpu"
    cells = _cells(lines)
    paper = [c for c in cells if c[0].name == "lgnet-table1"]
    assert cells[: len(paper)] == paper  # planned before anything else
    assert {r.key for c in paper for r in c[3]} == {"lgnet", "unet", "segnet", "u2net_p"}
    assert {s for c in paper for s in c[4]} == {0, 1, 2}
    for _spec, profile, prof, _rows, _seeds in paper:
        assert profile == "gpu" and prof.image_size == 512 and prof.preset == "paper" and prof.epochs == 120
    assert all(c[2].image_size < 512 for c in cells[len(paper) :])
    epochs = {c[2].epochs for c in _cells(_dry_run("--dry-run", PAPER_EPOCHS="30")) if c[2].image_size == 512}
    assert epochs == {30}


def test_a_real_run_needs_the_device_tools_output_folder():
    clean = {k: v for k, v in os.environ.items() if k not in ("OUT", "DRY_RUN")}
    proc = subprocess.run(
        ["bash", str(SCRIPT)], cwd=REPO, env=clean, capture_output=True, text=True, encoding="utf-8", timeout=60
    )
    assert proc.returncode != 0 and "set OUT" in proc.stderr
