"""A throw-away copy of the project to run whole pipelines in, with tiny parameters."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]

#: overrides of params.yaml that keep a whole pipeline to seconds per stage on 2 CPU cores
TINY = {
    "preprocess": {"image_size": 32},
    "train": {"epochs": 1, "min_epochs": 0, "base_channels": 4, "batch_size": 8, "augment": False},
    "evaluate": {"n_overlays": 1},
    # a 1-epoch model may score below the promotion floor and the trivial predictors; these tests are
    # about the pipeline's mechanics (floor and margin are tested in tests/test_registry*.py)
    "register": {"min_metric": None, "min_margin_over_trivial": None},
}


def tiny_params(base: Path = REPO / "params.yaml", **extra) -> dict:
    params = yaml.safe_load(base.read_text(encoding="utf-8"))
    for section, values in {**TINY, **extra}.items():
        params.setdefault(section, {}).update(values)
    return params


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    e.update(
        MLFLOW_DISABLE_TELEMETRY="true",
        DVC_NO_ANALYTICS="1",
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@t",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@t",
    )
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}"
    return e


def copy_project(dest: Path, params: dict | None = None) -> Path:
    """The working tree's pipeline files, code and sample in a fresh git repo (DVC needs git),
    with ``params`` (default: :func:`tiny_params`) as its params.yaml."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".*.tmp-*")
    dest.mkdir(parents=True)
    for item in ("dvc.yaml", "params.yaml", ".dvcignore", "pyproject.toml"):
        shutil.copy2(REPO / item, dest / item)
    shutil.copytree(REPO / "lungseg", dest / "lungseg", ignore=ignore)
    shutil.copytree(REPO / "data" / "sample", dest / "data" / "sample", ignore=ignore)
    (dest / ".gitignore").write_text((REPO / ".gitignore").read_text(encoding="utf-8"), encoding="utf-8")
    (dest / "params.yaml").write_text(yaml.safe_dump(params or tiny_params(), sort_keys=False), encoding="utf-8")
    e = env()
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True, env=e)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=dest, check=True, env=e)
    shutil.copy2(REPO / ".dvc" / "config", dest / ".dvc" / "config")
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True, env=e)
    subprocess.run(["git", "commit", "-qm", "project copy"], cwd=dest, check=True, env=e)
    return dest


def run(cmd: list[str], cwd: Path, timeout: float = 1800) -> subprocess.CompletedProcess:
    """``cmd`` in the project copy ``cwd``, whose own ``lungseg`` code is imported (``PYTHONPATH``; the
    venv's ``lungseg`` command would import the working tree's, which may be changing meanwhile);
    ``timeout`` only guards against a hang (a shared 2-core machine can be slow)."""
    e = env()
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(cwd), e.get("PYTHONPATH")]))
    return subprocess.run(cmd, cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout, encoding="utf-8")
