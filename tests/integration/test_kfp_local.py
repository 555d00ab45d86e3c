"""The KFP pipeline run end to end here with kfp.local.SubprocessRunner (tiny params), then a
failure in a later task and a re-run that takes the earlier tasks from KFP's local cache."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml
from mlflow import MlflowClient
from pipeline_helpers import REPO, env, require_stages, tiny_params

import subprocess


def _run_local(tmp: Path, params: dict, workdir: Path, tracking: str) -> subprocess.CompletedProcess:
    params_file = tmp / f"params-{len(list(tmp.glob('params-*.yaml')))}.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    e = env()
    e["MLFLOW_TRACKING_URI"] = tracking
    return subprocess.run(
        [sys.executable, "-m", "lungseg.cli", "pipeline", "run-local", "--dataset", "medseg",
         "--input", str(REPO / "data/sample/medseg-covid100"), "--workdir", str(workdir),
         "--params", str(params_file)],
        cwd=tmp, env=e, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_run_local_end_to_end_then_fail_and_resume_from_cache(tmp_path):
    require_stages()
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    workdir = tmp_path / "kfp"
    params = tiny_params()
    params["register"]["model_name"] = "lsg-kfp-local"

    first = _run_local(tmp_path, params, workdir, tracking)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "'decision': 'champion'" in first.stdout
    client = MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    champion = client.get_model_version_by_alias("lsg-kfp-local", "champion")
    assert champion.status == "READY"
    decisions = list((workdir / "outputs").rglob("decision"))
    assert decisions and json.loads(decisions[0].read_text())["version"] == str(champion.version)

    # a later task fails on a bad parameter: a clear message naming the task, a non-zero exit
    bad = json.loads(json.dumps(params))
    bad["evaluate"]["split"] = "no-such-split"
    failed = _run_local(tmp_path, bad, workdir, tracking)
    assert failed.returncode == 2
    assert "error:" in failed.stderr and "evaluate" in failed.stderr
    assert "no-such-split" in failed.stdout + failed.stderr
    assert "Task 'preprocess-op' cache hit" in failed.stderr or "preprocess-op cache hit" in failed.stderr

    # the fixed re-run resumes: preprocess and train come from the cache, evaluate/register run
    resumed = _run_local(tmp_path, params, workdir, tracking)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    logs = resumed.stderr
    assert "preprocess-op cache hit" in logs and "train-op cache hit" in logs, logs[-3000:]
    assert "register-op cache hit" not in logs
    assert "'decision': 'challenger'" in resumed.stdout or "'decision': 'champion'" in resumed.stdout
