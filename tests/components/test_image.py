"""components.image: which image the components run in, and the digest pin read from a build record."""

from __future__ import annotations

import json

import pytest

from components.image import CPU_IMAGE, DEFAULT_IMAGE, check_reference, is_pinned, reference_from_record
from lungseg.errors import ConfigError

DIGEST = "sha256:" + "0123456789abcdef" * 4


@pytest.mark.parametrize(
    "ref",
    [
        DEFAULT_IMAGE,
        CPU_IMAGE,
        "lungseg",
        "lungseg:cpu",
        "127.0.0.1:5000/lungseg:0.1.0",
        f"registry.example/team/lungseg@{DIGEST}",
        f"ghcr.io/lungseg/lungseg:0.1.0@{DIGEST}",
    ],
)
def test_well_formed_references_pass(ref):
    assert check_reference(ref) == ref


@pytest.mark.parametrize("ref", ["", "Lungseg:CPU", "lungseg image", "lungseg@sha256:abc", "lungseg:", "/lungseg"])
def test_malformed_references_are_config_errors(ref):
    with pytest.raises(ConfigError, match="not an image reference"):
        check_reference(ref)


def test_only_a_digest_pins_an_image():
    assert is_pinned(f"registry.example/lungseg@{DIGEST}")
    assert is_pinned(f"registry.example/lungseg:0.1.0@{DIGEST}")
    assert not is_pinned(DEFAULT_IMAGE)
    assert not is_pinned("not a reference")


def test_reference_from_a_pushed_build_record(tmp_path):
    record = tmp_path / "cuda.json"
    record.write_text(
        json.dumps({"tag": DEFAULT_IMAGE, "repo_digest": f"registry.example/lungseg@{DIGEST}"}), encoding="utf-8"
    )
    assert reference_from_record(record) == f"registry.example/lungseg@{DIGEST}"


def test_a_build_that_was_never_pushed_has_no_digest_to_pin(tmp_path):
    record = tmp_path / "cpu.json"
    record.write_text(json.dumps({"tag": CPU_IMAGE, "image_id": DIGEST, "repo_digest": None}), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"cpu\.json: the image .*-cpu has no registry digest: push it first"):
        reference_from_record(record)
    record.write_text(json.dumps({"repo_digest": "registry.example/lungseg:latest"}), encoding="utf-8")
    with pytest.raises(ConfigError, match="is not a digest reference"):
        reference_from_record(record)
    with pytest.raises(ConfigError, match="cannot read the image build record"):
        reference_from_record(tmp_path / "missing.json")
