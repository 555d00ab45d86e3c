"""The project image every component runs in (built from the repository's Dockerfile).

The committed ``pipelines/lungseg_pipeline.yaml`` names :data:`DEFAULT_IMAGE` (the CUDA flavour's
tag, the package version). Another image is chosen at compile/run time, never by editing code:

* ``lungseg pipeline compile --image REF`` or ``--image-record .image/cuda.json`` (the registry
  digest ``scripts/image.py push`` recorded): the pipeline is then pinned to ``name@sha256:…``,
  which a cluster cannot resolve to anything but the image that was built and tested;
* ``LUNGSEG_IMAGE`` in the environment: the default for every compile (e.g. a registry mirror).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from lungseg.errors import ConfigError

DEFAULT_IMAGE = "ghcr.io/lungseg/lungseg:0.1.0"
"""The CUDA flavour (``make image-cuda``): what a cluster's GPU node runs."""
CPU_IMAGE = DEFAULT_IMAGE + "-cpu"
"""The CPU flavour (``make image``): what ``run-local --runner docker`` runs by default."""
IMAGE = os.environ.get("LUNGSEG_IMAGE", DEFAULT_IMAGE)

#: a docker image reference: [registry[:port]/]name[:tag][@sha256:<64 hex>]
_REFERENCE = re.compile(
    r"^(?P<name>(?:[a-z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)


def check_reference(ref: str) -> str:
    """``ref`` if it is a well-formed image reference, else a :class:`ConfigError` saying why."""
    m = _REFERENCE.match(ref or "")
    if not m:
        raise ConfigError(f"--image {ref!r}: not an image reference ([registry/]name[:tag][@sha256:<64 hex>])")
    return ref


def is_pinned(ref: str) -> bool:
    """True when ``ref`` names its image by content digest (``…@sha256:…``)."""
    m = _REFERENCE.match(ref or "")
    return bool(m and m.group("digest"))


def reference_from_record(path: str | Path) -> str:
    """The digest-pinned reference in a build record of ``scripts/image.py`` (``repo_digest``,
    written by ``push``); a :class:`ConfigError` when the image was built but never pushed (a local
    build has no registry digest to pin to)."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the image build record ({exc})") from exc
    ref = record.get("repo_digest") if isinstance(record, dict) else None
    if not ref:
        raise ConfigError(
            f"{path}: the image {record.get('tag') if isinstance(record, dict) else '?'} has no "
            "registry digest: push it first (python scripts/image.py push --flavour …)"
        )
    check_reference(ref)
    if not is_pinned(ref):
        raise ConfigError(f"{path}: repo_digest {ref!r} is not a digest reference")
    return ref
