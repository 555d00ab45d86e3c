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
    are outputs of earlier stages (a clone has no outputs: that is not staleness), and "always changed"
    (declared by the stage — dvc.yaml's ``store``, which asks for the tracking store every time — not
    staleness either)."""
    found = []
    for stage, entries in status.items():
        for entry in entries:
            if entry == "always changed":
                continue
            if isinstance(entry, str):  # "changed command", ...
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


def test_every_stage_logging_to_mlflow_depends_on_the_tracking_store():
    """The MLflow store is state outside DVC's cache: with MLFLOW_TRACKING_URI at another store (the
    docs' server workflow), `dvc repro` answered "Data and pipelines are up to date" and registered
    nothing there. The store stage asks for the store every time; what logs to MLflow depends on its record."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    store = stages["store"]
    assert store.get("always_changed") is True and store["cmd"].startswith("lungseg store --output ")
    record = store["cmd"].split("--output ", 1)[1].split()[0]
    assert store["outs"] == [record] and "mlflow" in store["params"]
    # register re-decides against the store as it is (never restored from DVC's run cache); nothing else re-runs
    assert [name for name, s in stages.items() if s.get("always_changed")] == ["store", "register"]
    logging = [name for name, s in stages.items() if "mlflow" in (s.get("params") or []) and name != "store"]
    assert sorted(logging) == ["evaluate", "register", "train"]
    for name in logging:
        assert record in stages[name]["deps"], name
