"""The KFP pipeline run end to end here with kfp.local.SubprocessRunner (tiny params): a run that
registers into the store the user names, then a failure in a later task and a re-run that takes the
earlier tasks from KFP's local cache — as trial runs, which must leave the user's registry alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from pipeline_helpers import REPO, env, tiny_params


def trial_params(model_name: str) -> dict:
    """Tiny params (no promotion floor: one epoch learns little) registering under ``model_name``."""
    params = tiny_params()
    params["register"]["model_name"] = model_name
    return params


def _run_local(
    tmp: Path, params: dict, workdir: Path, *extra: str, user_env: dict | None = None, input_: str | None = None
) -> subprocess.CompletedProcess:
    params_file = tmp / f"params-{len(list(tmp.glob('params-*.yaml')))}.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    e = env()
    e.update(user_env or {})
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "lungseg.cli",
            "pipeline",
            "run-local",
            "--dataset",
            "medseg",
            "--input",
            input_ or str(REPO / "data/sample/medseg-covid100"),
            "--workdir",
            str(workdir),
            "--params",
            str(params_file),
            *extra,
        ],
        cwd=tmp,
        env=e,
        capture_output=True,
        text=True,
        timeout=900,
        encoding="utf-8",
    )


def _registry(uri: str, name: str) -> tuple[list[str], str | None]:
    """(versions, champion version) of ``name`` in the store ``uri``."""
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = sorted(str(v.version) for v in client.search_model_versions(f"name='{name}'"))
    aliases = client.get_registered_model(name).aliases
    return versions, None if "champion" not in aliases else str(aliases["champion"])


@pytest.mark.slow
def test_run_local_end_to_end_then_fail_and_resume_from_cache_in_a_trial_store(tmp_path):
    user_store = f"sqlite:///{tmp_path / 'user' / 'mlflow.db'}"
    (tmp_path / "user").mkdir()
    workdir = tmp_path / "kfp"
    params = trial_params("lsg-kfp-local")
    params["mlflow"]["tracking_uri"] = user_store  # the user's configured store, as in params.yaml
    user_env = {"MLFLOW_TRACKING_URI": user_store}

    # the user asks for their store: the run registers there and becomes its champion
    first = _run_local(tmp_path, params, workdir, "--tracking-uri", user_store, user_env=user_env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "'decision': 'champion'" in first.stdout
    client = MlflowClient(tracking_uri=user_store, registry_uri=user_store)
    champion = client.get_model_version_by_alias("lsg-kfp-local", "champion")
    assert champion.status == "READY"
    decisions = list((workdir / "outputs").rglob("decision"))
    assert decisions and json.loads(decisions[0].read_text(encoding="utf-8"))["version"] == str(champion.version)
    before = _registry(user_store, "lsg-kfp-local")
    assert before == ([str(champion.version)], str(champion.version))

    # the last task fails on a parameter only it can check (the promotion metric must be in the
    # evaluation's metrics.json): a clear message naming the task, a non-zero exit
    bad = json.loads(json.dumps(params))
    bad["register"]["metric"] = "no_such_metric"
    failed = _run_local(tmp_path, bad, workdir, user_env=user_env)
    assert failed.returncode == 2, failed.stderr[-3000:]
    assert "error:" in failed.stderr and "register-op" in failed.stderr
    assert "no_such_metric" in failed.stdout + failed.stderr
    assert "preprocess-op cache hit" in failed.stderr

    # the fixed re-run resumes: preprocess, train and evaluate come from the cache, register runs —
    # into the trial store: MLFLOW_TRACKING_URI and mlflow.tracking_uri name the user's store, but
    # a trial run without --tracking-uri must not register there (issue #12)
    resumed = _run_local(tmp_path, params, workdir, user_env=user_env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    logs = resumed.stderr
    for task in ("preprocess-op", "train-op", "evaluate-op"):
        assert f"{task} cache hit" in logs, logs[-3000:]
    assert "register-op cache hit" not in logs
    assert "registers into its own trial store, not MLFLOW_TRACKING_URI" in logs
    assert _registry(user_store, "lsg-kfp-local") == before, "a trial run changed the user's registry"
    trial_store = f"sqlite:///{workdir / 'mlflow.db'}"
    assert f"'tracking_uri': '{trial_store}'" in resumed.stdout
    versions, trial_champion = _registry(trial_store, "lsg-kfp-local")
    assert versions == ["1"] and trial_champion == "1"
    # the trial store keeps its artifacts beside it, not in the folder the command ran in
    assert (workdir / "mlartifacts").is_dir() and not (tmp_path / "mlruns").exists()
