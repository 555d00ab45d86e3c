"""docs/pipeline.md's server workflow, run as written against the project's real servers.

After a local `dvc repro` (what `make repro` runs), the documented commands — `python scripts/servers.py
start`, `source .servers/env.sh`, `dvc remote modify …`, `dvc repro && dvc push` — answered "Data and
pipelines are up to date": the MLflow server got no run and no model, and the decision record still
said "champion". The tracking store is state DVC sees now (dvc.yaml's `store` stage): the same commands
put the runs and the champion on the server, a second `dvc repro` trains and evaluates nothing, another
`MLFLOW_TRACKING_URI` re-runs into that store, a decision record is valid only in the store it names,
and a store wiped at the same address is refused by register until `dvc repro --force`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from pipeline_helpers import REPO, copy_project, env, run

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DVC = [sys.executable, "-m", "dvc"]
STAGES = ("preprocess", "train", "evaluate", "register")


def documented_server_commands() -> list[str]:
    """The commands of docs/pipeline.md's server block ("A local S3 + MLflow server"), comments
    dropped, in order."""
    text = (REPO / "docs" / "pipeline.md").read_text(encoding="utf-8")
    section = text[text.index("### A local S3 + MLflow server") :]
    block = section[section.index("```bash") + len("```bash") : section.index("```", section.index("```bash") + 7)]
    return [line.split("#", 1)[0].strip() for line in block.strip().splitlines() if line.split("#", 1)[0].strip()]


def bash(script: str, cwd: Path, timeout: float = 1800, **variables: str) -> subprocess.CompletedProcess:
    """``script`` in bash (``set -e``) in the project copy, whose own lungseg is imported (as in
    :func:`pipeline_helpers.run`)."""
    e = {**env(), **variables}
    e["PYTHONPATH"] = str(cwd)
    return subprocess.run(
        ["bash", "-c", "set -e\n" + script],
        cwd=cwd,
        env=e,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
    )


def ran(output: str) -> set[str]:
    return {s for s in STAGES if f"Running stage '{s}'" in output}


def decision(project: Path) -> dict:
    return json.loads((project / "reports/medseg-registration.json").read_text(encoding="utf-8"))


def lineage(project: Path, target: str, **variables: str) -> subprocess.CompletedProcess:
    e = {**env(), **variables, "PYTHONPATH": str(project)}
    return subprocess.run(
        [sys.executable, "-m", "lungseg.cli", "lineage", target],
        cwd=project,
        env=e,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=300,
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project copy after its local `dvc repro` (the embedded sqlite store), with scripts/servers.py."""
    repo = copy_project(tmp_path_factory.mktemp("server-workflow") / "project")
    (repo / "scripts").mkdir()
    shutil.copy2(REPO / "scripts" / "servers.py", repo / "scripts" / "servers.py")
    first = run([*DVC, "repro"], repo)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert decision(repo)["decision"] == "champion" and decision(repo)["tracking_uri"] == "sqlite:///mlflow.db"
    yield repo
    run([sys.executable, "scripts/servers.py", "stop"], repo, timeout=120)


def test_the_documented_server_workflow_puts_the_champion_on_the_server(project, tmp_path):
    commands = documented_server_commands()
    stop = [c for c in commands if c.startswith("python scripts/servers.py stop")]
    assert commands[0] == "python scripts/servers.py start" and "source .servers/env.sh" in commands
    assert "dvc repro && dvc push" in commands and stop
    local = json.loads((project / "models/medseg/mlflow_run.json").read_text(encoding="utf-8"))["run_id"]

    # the documented block as written, up to its `stop` (the servers stay up for the checks below)
    done = bash("\n".join(commands[: commands.index(stop[0])]), project)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert ran(done.stdout) == {"train", "evaluate", "register"}, done.stdout  # not "up to date"
    server_env = dict(
        re.findall(r"^export (\w+)=(.*)$", (project / ".servers/env.sh").read_text(encoding="utf-8"), re.M)
    )
    uri = server_env["MLFLOW_TRACKING_URI"]
    assert uri.startswith("http://127.0.0.1:")
    assert json.loads((project / "reports/tracking-store.json").read_text(encoding="utf-8")) == {"tracking_uri": uri}

    # on the server: the training and evaluation runs, the registered model, its champion alias
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    info = json.loads((project / "models/medseg/mlflow_run.json").read_text(encoding="utf-8"))
    assert info["run_id"] != local and info["tracking_uri"] == uri
    exp = client.get_experiment_by_name(
        yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8"))["mlflow"]["experiment"]
    )
    runs = client.search_runs([exp.experiment_id])
    stages = {r.data.tags.get("lungseg.stage") for r in runs}
    assert info["run_id"] in {r.info.run_id for r in runs} and {"train", "evaluate"} <= stages, stages
    made = decision(project)
    assert made["decision"] == "champion" and made["tracking_uri"] == uri
    champion = client.get_model_version_by_alias(made["model_name"], "champion")
    assert champion.version == made["version"] and champion.run_id == info["run_id"]
    # the model's files are on the server's S3, and `dvc push` put the outputs there too
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=server_env["AWS_ENDPOINT_URL_S3"],
        aws_access_key_id=server_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=server_env["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="lungseg").get("Contents", [])]
    assert any(k.startswith("mlflow/") and k.endswith("MLmodel") for k in keys), keys
    assert any(k.startswith("dvc/") for k in keys), keys
    # the decision record is valid in its store, and only there (the embedded store is another one)
    assert lineage(project, "reports/medseg-registration.json", MLFLOW_TRACKING_URI=uri).returncode == 0
    elsewhere = lineage(project, "reports/medseg-registration.json")
    lines = elsewhere.stderr.strip().splitlines()
    assert elsewhere.returncode == 2 and len(lines) == 1 and "not valid there" in lines[0], elsewhere.stderr

    # the same store again: nothing is trained or evaluated again; register re-decides against the store
    # (never restored from DVC's run cache) and finds its decision made; `dvc status` sees nothing stale
    again = bash("source .servers/env.sh\ndvc repro\ndvc status --json > status.json", project)
    assert again.returncode == 0, again.stderr[-3000:]
    again_made = decision(project)
    assert ran(again.stdout) == {"register"}, again.stdout
    assert [again_made[k] for k in ("model_name", "version", "decision", "tracking_uri")] == [
        made[k] for k in ("model_name", "version", "decision", "tracking_uri")
    ]
    assert "already champion (repeated run)" in again.stdout
    from test_dvc_lock import _changes

    status = json.loads((project / "status.json").read_text(encoding="utf-8") or "{}")
    (project / "status.json").unlink()
    assert _changes(status, set()) == [], status


def test_another_store_is_registered_into_and_a_wiped_one_refused(project, tmp_path):
    """`MLFLOW_TRACKING_URI=sqlite:///…/other.db dvc repro` skipped register as cached and never created
    other.db. It trains, evaluates and registers there now; a store wiped at the same address is not
    visible to DVC (same address): register refuses the missing run, `dvc repro --force` fixes it."""
    other = tmp_path / "other.db"
    switched = bash("dvc repro", project, MLFLOW_TRACKING_URI=f"sqlite:///{other}")
    assert switched.returncode == 0, switched.stdout[-3000:] + switched.stderr[-3000:]
    assert ran(switched.stdout) == {"train", "evaluate", "register"}, switched.stdout
    assert other.is_file()
    made = decision(project)
    assert made["tracking_uri"] == f"sqlite:///{other}" and made["decision"] == "champion"
    uri = f"sqlite:///{other}"
    assert MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version_by_alias(made["model_name"], "champion")

    other.unlink()  # wiped at the same address
    shutil.rmtree(tmp_path / "mlruns", ignore_errors=True)
    refused = bash("dvc repro --force --single-item register", project, MLFLOW_TRACKING_URI=uri)
    assert refused.returncode != 0
    assert re.search(
        r"error: .*mlflow_run.json: .*not in the tracking store being used", refused.stdout + refused.stderr
    )
    fixed = bash("dvc repro --force", project, MLFLOW_TRACKING_URI=uri)
    assert fixed.returncode == 0, fixed.stdout[-3000:] + fixed.stderr[-3000:]
    assert {"train", "evaluate", "register"} <= ran(fixed.stdout) and decision(project)["decision"] == "champion"
    assert lineage(project, "reports/medseg-registration.json", MLFLOW_TRACKING_URI=uri).returncode == 0
