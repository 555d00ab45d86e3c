"""The TrainJob launcher's pure parts (no cluster here): filling a run's values into the manifest,
reading the job's end state from its conditions."""

from __future__ import annotations

import pytest

from components.trainjob import DATA_URI_ENV, OUTPUT_URI_ENV, fill, job_state
from pipelines.distributed import train_job_manifest


def test_the_launcher_fills_the_run_values_and_reads_the_job_state():
    job = train_job_manifest(
        image="img",
        nodes=2,
        gpus_per_node=2,
        mlflow_secret="m",
        mlflow_secret_env={},
        s3_secret="s",
        s3_secret_env={},
        s3_read_env={},
    )
    filled = fill(job, {DATA_URI_ENV: "s3://b/processed", OUTPUT_URI_ENV: "s3://b/model.trainjob"})
    env = {e["name"]: e["value"] for e in filled["spec"]["trainer"]["env"]}
    assert env[DATA_URI_ENV] == "s3://b/processed" and env[OUTPUT_URI_ENV] == "s3://b/model.trainjob"
    assert {e["name"]: e["value"] for e in job["spec"]["trainer"]["env"]}[DATA_URI_ENV] == ""  # a copy
    with pytest.raises(KeyError):
        fill(job, {"NOT_IN_THE_MANIFEST": "x"})
    assert job_state({}) == (None, "")
    running = {"status": {"conditions": [{"type": "Created", "status": "True"}]}}
    assert job_state(running) == (None, "")
    failed = {"status": {"conditions": [{"type": "Failed", "status": "True", "message": "pod OOMKilled"}]}}
    assert job_state(failed) == ("Failed", "pod OOMKilled")
    assert job_state({"status": {"conditions": [{"type": "Complete", "status": "True"}]}})[0] == "Complete"
