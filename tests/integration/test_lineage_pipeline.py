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
