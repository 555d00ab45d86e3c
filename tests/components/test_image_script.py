"""scripts/image.py without a daemon: the reuse hash and the private daemon's bookkeeping.
(Building, bootstrapping and running the image: tests/integration/test_image_pipeline.py.)"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def image(monkeypatch, tmp_path):
    """scripts/image.py pointed at a copy of the files the build reads."""
    spec = importlib.util.spec_from_file_location("lungseg_scripts_image_t", REPO / "scripts" / "image.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("Dockerfile", ".dockerignore", "requirements.txt", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, root / name)
    for pkg in ("lungseg", "components", "pipelines"):
        shutil.copytree(REPO / pkg, root / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (root / ".image" / "context" / "wheels").mkdir(parents=True)
    (root / "tests").mkdir()
    monkeypatch.setattr(module, "REPO", root)
    return module


ARGS = {"BASE_IMAGE": "lungseg-base:bookworm", "TORCH_VERSION": "2.13.0", "TORCH_INDEX_URL": "https://pypi.org/simple"}


def test_the_reuse_hash_follows_every_build_input(image):
    root = image.REPO
    h0 = image.context_hash("cpu", "sha256:base", ARGS)
    assert image.context_hash("cpu", "sha256:base", ARGS) == h0  # deterministic
    # outside the build context: no rebuild
    (root / "tests" / "test_new.py").write_text("x = 1\n", encoding="utf-8")
    (root / "lungseg" / "__pycache__").mkdir(exist_ok=True)
    (root / "lungseg" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    assert image.context_hash("cpu", "sha256:base", ARGS) == h0
    # each of these is a different image
    changed = {
        "flavour": image.context_hash("cuda", "sha256:base", ARGS),
        "base": image.context_hash("cpu", "sha256:other", ARGS),
        "arg": image.context_hash("cpu", "sha256:base", {**ARGS, "TORCH_VERSION": "2.14.0"}),
    }
    (root / "components" / "stages.py").write_text(
        (root / "components" / "stages.py").read_text(encoding="utf-8") + "\n# changed\n", encoding="utf-8"
    )
    changed["source"] = image.context_hash("cpu", "sha256:base", ARGS)
    (root / ".image" / "context" / "wheels" / "torch-2.13.0+cpu-x.whl").write_bytes(b"wheel")
    changed["staged wheel"] = image.context_hash("cpu", "sha256:base", ARGS)
    (root / "Dockerfile").write_text((root / "Dockerfile").read_text(encoding="utf-8") + "\n", encoding="utf-8")
    changed["Dockerfile"] = image.context_hash("cpu", "sha256:base", ARGS)
    assert len({h0, *changed.values()}) == 1 + len(changed), changed


def test_daemon_bookkeeping_without_a_daemon(image, tmp_path, capsys):
    daemon = image.Daemon(tmp_path / "d")
    assert daemon.host == f"unix://{tmp_path / 'd' / 'docker.sock'}"
    assert daemon.pid() is None and not daemon.running()
    assert daemon.stop() is False  # nothing of ours to stop
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "dockerd.pid").write_text("999999999", encoding="utf-8")  # a pid that cannot exist
    assert daemon.pid() is None
    assert image.main(["daemon", "status", "--dir", str(tmp_path / "d")]) == 1
    assert "not running" in capsys.readouterr().out
    deep = tmp_path / ("x" * 90)
    with pytest.raises(image.ImageError, match="path too long|needs root|not installed"):
        image.Daemon(deep).start()


def test_unknown_flavour_is_refused(image):
    with pytest.raises(image.ImageError, match="unknown flavour 'rocm'"):
        image.build("rocm")
