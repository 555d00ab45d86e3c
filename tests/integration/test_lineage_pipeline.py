"""Issue #16 end to end: a real dataset `dvc add`-ed and pushed to the SeaweedFS S3 remote, the KFP
pipeline run locally from its DVC version (staged on S3 by its hash, read back by the preprocess
component), registered on a real MLflow server — then `lungseg lineage models:/…@champion --check`
leads back to the same hash, commit and params; one changed file gives a new hash and a new lineage."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import yaml
from pipeline_helpers import REPO, env, tiny_params

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "lsg-lineage-e2e"


def sh(*cmd, cwd, e):
    out = subprocess.run(list(cmd), cwd=cwd, env=e, capture_output=True, text=True, timeout=900, encoding="utf-8")
    assert out.returncode == 0, f"{cmd}: {out.stdout[-2000:]}{out.stderr[-3000:]}"
    return out


def lungseg(*args, cwd, e, check=True):
    out = subprocess.run(
        [sys.executable, "-m", "lungseg", *args],
        cwd=cwd,
        env=e,
        capture_output=True,
        text=True,
        timeout=1500,
        encoding="utf-8",
    )
    if check:
        assert out.returncode == 0, f"lungseg {args}: {out.stdout[-3000:]}{out.stderr[-3000:]}"
    return out


@pytest.fixture
def data_repo(tmp_path, s3_env):
    """A git + DVC repository whose raw MedSeg sample is `dvc add`-ed, pushed to the S3 remote, committed."""
    e = {**env(), **s3_env.client_env()}
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(REPO / "data" / "sample" / "medseg-covid100", repo / "data" / "raw" / "medseg")
    sh("git", "init", "-q", cwd=repo, e=e)
    sh(sys.executable, "-m", "dvc", "init", "-q", cwd=repo, e=e)
    sh(
        sys.executable,
        "-m",
        "dvc",
        "remote",
        "add",
        "-d",
        "storage",
        f"s3://{s3_env.bucket}/dvc-lineage",
        cwd=repo,
        e=e,
    )
    sh(
        sys.executable,
        "-m",
        "dvc",
        "remote",
        "modify",
        "--local",
        "storage",
        "endpointurl",
        s3_env.endpoint,
        cwd=repo,
        e=e,
    )
    sh(sys.executable, "-m", "dvc", "add", "-q", "data/raw/medseg", cwd=repo, e=e)
    sh(sys.executable, "-m", "dvc", "push", "-q", cwd=repo, e=e)
    sh("git", "add", "-A", cwd=repo, e=e)
    sh("git", "commit", "-qm", "raw data v1", cwd=repo, e=e)
    return repo, e


def test_a_run_from_a_dvc_version_leads_back_to_it(tmp_path, data_repo, mlflow_server_env):
    repo, e = data_repo
    e = {**e, "MLFLOW_TRACKING_URI": mlflow_server_env.uri}
    params = tiny_params()
    params["register"]["model_name"] = MODEL
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    stage_uri = "s3://lungseg/staged-lineage-test"

    def run_pipeline(workdir: str):
        return lungseg(
            "pipeline",
            "run-local",
            "--dataset",
            "medseg",
            "--data",
            "data/raw/medseg@HEAD",
            "--repo",
            str(repo),
            "--stage-uri",
            stage_uri,
            "--workdir",
            str(tmp_path / workdir),
            "--tracking-uri",
            mlflow_server_env.uri,
            "--params",
            str(params_file),
            cwd=tmp_path,
            e=e,
        )

    def lineage_of(target: str) -> dict:
        out = lungseg(
            "lineage", target, "--json", "--check", "--repo", str(repo), "--params", str(params_file), cwd=tmp_path, e=e
        )
        record = json.loads(out.stdout[: out.stdout.rindex("}") + 1])
        assert "check:" in out.stdout and "hashes to" in out.stdout
        return record

    def dvc_md5() -> str:
        return yaml.safe_load((repo / "data" / "raw" / "medseg.dvc").read_text(encoding="utf-8"))["outs"][0]["md5"]

    def head() -> str:
        return sh("git", "rev-parse", "HEAD", cwd=repo, e=e).stdout.strip()

    run_pipeline("kfp1")
    first = lineage_of(f"models:/{MODEL}/1")
    assert first["data"]["md5"] == dvc_md5() and first["data"]["path"] == "data/raw/medseg"
    assert first["data"]["commit"] == head() and first["data"]["versioned"] is True
    # where the copy was staged is the run's business, not the data's: preprocess drops it from meta.json,
    # so the processed set (and its hash) is the same wherever the version was staged
    assert not first["data"].get("staged_uri")
    assert first["params"]["train.base_channels"] == str(params["train"]["base_channels"])
    assert first["code_commit"] and first["processed_data_hash"]
    assert first["kfp_run_id"]  # the register task records the pipeline run
    assert first["evaluation"]["metric"] == params["register"]["metric"]
    champion = lineage_of(f"models:/{MODEL}@champion")
    assert champion["run_id"] == first["run_id"]  # the first version of a name becomes champion

    # one changed file: a new DVC version → a new hash and a new lineage; the old one still checks out
    victim = sorted((repo / "data" / "raw" / "medseg" / "tr_im").glob("*.png"))[0]
    donor = sorted((repo / "data" / "raw" / "medseg" / "tr_im").glob("*.png"))[1]
    shutil.copy(donor, victim)
    sh(sys.executable, "-m", "dvc", "add", "-q", "data/raw/medseg", cwd=repo, e=e)
    sh(sys.executable, "-m", "dvc", "push", "-q", cwd=repo, e=e)
    sh("git", "commit", "-qam", "raw data v2: one slice replaced", cwd=repo, e=e)
    run_pipeline("kfp2")
    second = lineage_of(f"models:/{MODEL}/2")
    assert second["data"]["md5"] == dvc_md5() != first["data"]["md5"]
    assert second["data"]["commit"] == head() != first["data"]["commit"]
    assert second["run_id"] != first["run_id"]
    assert lineage_of(f"models:/{MODEL}/1")["data"]["md5"] == first["data"]["md5"]

    # bad input: a revision that does not exist — one error line, exit 2, nothing staged or run
    bad = lungseg(
        "pipeline",
        "run-local",
        "--dataset",
        "medseg",
        "--data",
        "data/raw/medseg@no-such-rev",
        "--repo",
        str(repo),
        "--workdir",
        str(tmp_path / "kfp-bad"),
        "--tracking-uri",
        mlflow_server_env.uri,
        "--params",
        str(params_file),
        cwd=tmp_path,
        e=e,
        check=False,
    )
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "no-such-rev" in bad.stderr and not (tmp_path / "kfp-bad").exists()


def test_the_repro_champion_of_the_git_tracked_sample_passes_check_on_a_fresh_clone(tmp_path):
    """`lungseg lineage … --check` always exited 2 for the README's champion: data/sample is versioned by
    git, not DVC. The sample at its commit is a version: the check passes on a fresh clone; a model made
    from the sample with one file changed (uncommitted) has no version, and its check fails in one line."""
    from pipeline_helpers import copy_project, run

    project = copy_project(tmp_path / "project")
    e = env()
    done = run([sys.executable, "-m", "dvc", "repro"], project)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    clone = tmp_path / "clone"
    sh("git", "clone", "-q", str(project), str(clone), cwd=tmp_path, e=e)
    store = {**e, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}", "PYTHONPATH": str(project)}
    commit = sh("git", "log", "-1", "--format=%H", "--", "data/sample/medseg-covid100", cwd=project, e=e).stdout.strip()
    params_file = project / "params.yaml"

    def check(target: str, cwd) -> subprocess.CompletedProcess:
        return lungseg(
            "lineage",
            target,
            "--check",
            "--repo",
            str(clone),
            "--params",
            str(params_file),
            cwd=cwd,
            e=store,
            check=False,
        )

    ok = check("models:/lungseg-lgnet@champion", clone)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"data/sample/medseg-covid100 at commit {commit} (tracked by git)" in ok.stdout
    assert "taken from git at that commit and hashes to" in ok.stdout and "(as recorded)" in ok.stdout
    meta = json.loads((project / "data/processed/medseg/meta.json").read_text(encoding="utf-8"))["source"]
    assert meta["tracked_by"] == "git" and meta["commit"] == commit and meta["versioned"] is True

    # one sample file changed (not committed): the next model's data is no version, its check fails
    victim = sorted((project / "data/sample/medseg-covid100").rglob("*.png"))[0]
    victim.write_bytes(victim.read_bytes()[:-16] + bytes(16))
    again = run([sys.executable, "-m", "dvc", "repro"], project)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "Running stage 'preprocess'" in again.stdout and "Running stage 'train'" in again.stdout
    new_run = json.loads((project / "models/medseg/mlflow_run.json").read_text(encoding="utf-8"))["run_id"]
    failed = check(new_run, clone)
    lines = failed.stderr.strip().splitlines()
    assert failed.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), failed.stderr
    assert "was not a version" in lines[0] and "uncommitted changes" in lines[0]
    assert check("models:/lungseg-lgnet/1", clone).returncode == 0  # the first model's data still checks out
