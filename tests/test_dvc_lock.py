"""The committed dvc.lock matches the committed code and params: on a fresh clone `dvc status` must
not say that any stage changed (it said every stage had, so `make repro` re-ran everything and the
README's numbers were not those of the code)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _changes(status: dict, produced: set[str]) -> list[str]:
    """What ``dvc status --json`` says changed in each stage, leaving out outputs and the deps that
    are outputs of earlier stages (a clone has no outputs: that is not staleness)."""
    found = []
    for stage, entries in status.items():
        for entry in entries:
            if isinstance(entry, str):  # "changed command", "always changed", ...
                found.append(f"{stage}: {entry}")
                continue
            for dep, state in (entry.get("changed deps") or {}).items():
                if dep in produced:
                    continue
                if isinstance(state, dict):  # params: {"params.yaml": {"train": "modified"}}
                    found += [f"{stage}: {dep} {key} {how}" for key, how in state.items()]
                else:
                    found.append(f"{stage}: {dep} {state}")
    return found


@pytest.mark.slow
def test_dvc_lock_matches_the_code_and_params(tmp_path):
    """Copies what git would commit (tracked + untracked-not-ignored files of the working tree) into a
    fresh folder, as a clone would have it, and asks `dvc status` there."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
        )
        .stdout.decode()
        .split("\0")
    )
    clone = tmp_path / "clone"
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            (clone / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, clone / rel)
    subprocess.run(["git", "init", "-q"], cwd=clone, check=True)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "--json"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        encoding="utf-8",
    )
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout or "{}")
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    produced = {
        str(next(iter(o)) if isinstance(o, dict) else o)
        for s in stages.values()
        for key in ("outs", "metrics", "plots")
        for o in s.get(key) or []
    }
    changed = _changes(status, produced)
    assert not changed, (
        "dvc.lock does not match the code and params.yaml — run `make repro` (dvc repro) and "
        "commit dvc.lock:\n  " + "\n  ".join(changed)
    )
