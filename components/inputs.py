"""An input artifact as a local folder, whoever runs the component.

KFP hands a component ``artifact.uri`` and ``artifact.path``. For ``s3://bucket/key`` the path is
``/s3/bucket/key``: in a cluster the KFP launcher downloads the artifact there before the
component starts (with the object-store settings of the ``kfp-launcher`` ConfigMap), but the
local runners (``kfp.local`` Subprocess/Docker) download nothing — they only warn that a remote
importer URI cannot be read. :func:`local_folder` therefore uses the path when it holds the data
and otherwise reads the prefix itself with boto3, which takes its settings from the environment:

* ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (and ``AWS_SESSION_TOKEN`` if any),
* ``AWS_ENDPOINT_URL_S3`` for an S3-compatible store (SeaweedFS, MinIO, Ceph); unset for AWS S3,
* ``AWS_DEFAULT_REGION`` when the store wants one.

In the cluster these come from the Kubernetes secret ``lungseg-s3`` (see
``pipelines/lungseg_pipeline.py``); ``lungseg pipeline run-local`` passes the caller's.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lungseg.errors import DataError
from lungseg.lineage import split_s3


def download_prefix(uri: str, dest: str | Path) -> int:
    """Every object under the ``s3://`` prefix ``uri`` into ``dest`` (keys relative to the prefix
    become relative paths); returns the number of files. ``DataError`` when the store cannot be
    reached, the credentials are refused, or nothing is there."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = split_s3(uri)
    dest = Path(dest)
    base = f"{prefix}/" if prefix else ""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"
    n = 0
    try:
        s3 = boto3.session.Session().client("s3")  # a new session: the credentials of the environment now
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(base) :]
                if not rel or rel.endswith("/"):
                    continue  # the prefix itself or a folder marker
                target = (dest / rel).resolve()
                if dest.resolve() not in target.parents:
                    raise DataError(None, f"s3://{bucket}/{obj['Key']}: key escapes the input folder")
                target.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(bucket, obj["Key"], str(target))
                n += 1
    except (BotoCoreError, ClientError) as exc:
        raise DataError(None, f"{uri}: cannot read from S3 at {endpoint}: {exc}") from exc
    if n == 0:
        raise DataError(None, f"{uri}: no objects under this prefix at {endpoint}")
    return n


@contextlib.contextmanager
def local_folder(uri: str, path: str) -> Iterator[str]:
    """The artifact's data as a local folder for the duration of the block.

    ``path`` when it exists (a local input, or an ``s3://`` input the cluster's launcher staged);
    for an ``s3://`` URI that nobody staged, a download into a fixed temporary folder named after
    the bucket and prefix (fixed, so the processed output records the same source for the same
    input), removed afterwards."""
    if path and Path(path).exists():
        yield path
        return
    if not uri.startswith("s3://"):
        raise DataError(path or uri, "input artifact not found (the runner did not provide its data)")
    bucket, prefix = split_s3(uri)
    dest = Path(tempfile.gettempdir()) / "lungseg-s3" / bucket / prefix
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    try:
        n = download_prefix(uri, dest)
        print(f"read {n} files from {uri}")
        yield str(dest)
    finally:
        shutil.rmtree(dest, ignore_errors=True)
