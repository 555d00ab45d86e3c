"""components.inputs: an input artifact as a local folder — the runner's path when it has the data,
otherwise the s3:// prefix read with boto3 from a real S3 server (SeaweedFS, tests/servers.py)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from components.inputs import download_prefix, local_folder, split_s3
from lungseg.errors import DataError
from servers import s3_env, s3_server  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample" / "medseg-covid100"


def test_split_s3():
    assert split_s3("s3://lungseg/raw/medseg/") == ("lungseg", "raw/medseg")
    assert split_s3("s3://lungseg") == ("lungseg", "")
    for bad in ("/data/raw", "s3:///raw"):
        with pytest.raises(DataError):
            split_s3(bad)


def test_a_local_path_is_used_as_it_is(tmp_path):
    with local_folder(str(tmp_path), str(tmp_path)) as folder:
        assert folder == str(tmp_path)
    assert tmp_path.is_dir()  # never removed: it is the caller's
    with pytest.raises(DataError, match="input artifact not found"):
        with local_folder(str(tmp_path / "missing"), str(tmp_path / "missing")):
            pass


def _upload(s3, folder: Path, prefix: str) -> list[str]:
    rels = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    for rel in rels:
        s3.client().upload_file(str(folder / rel), s3.bucket, f"{prefix}/{rel}")
    return rels


@pytest.mark.integration
def test_an_unstaged_s3_input_is_downloaded_then_removed(s3_env):
    """What kfp.local does with an importer's s3:// URI: ``path`` is /s3/<bucket>/<key>, which
    nobody filled; the component reads the prefix itself with the environment's credentials."""
    prefix = f"raw/{uuid.uuid4().hex}/medseg-covid100"
    rels = _upload(s3_env, SAMPLE, prefix)
    uri = f"s3://{s3_env.bucket}/{prefix}"
    with local_folder(uri, f"/s3/{s3_env.bucket}/{prefix}") as folder:
        got = sorted(p.relative_to(folder).as_posix() for p in Path(folder).rglob("*") if p.is_file())
        assert got == rels
        assert all((Path(folder) / r).read_bytes() == (SAMPLE / r).read_bytes() for r in rels)
        # a fixed place named after the input: the processed output records the same source each run
        assert Path(folder).parts[-3:] == (s3_env.bucket, *prefix.split("/"))[-3:]
    assert not Path(folder).exists()


@pytest.mark.integration
def test_s3_problems_are_data_errors_naming_the_uri(s3_env, monkeypatch, tmp_path):
    with pytest.raises(
        DataError, match=r"s3://lungseg/no/such/prefix: no objects under this prefix at http://127\.0\.0\.1"
    ):
        download_prefix("s3://lungseg/no/such/prefix", tmp_path / "a")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-" + uuid.uuid4().hex)
    with pytest.raises(DataError, match=r"s3://lungseg/raw: cannot read from S3 at http://127\.0\.0\.1.*"):
        download_prefix("s3://lungseg/raw", tmp_path / "b")
