"""lungseg installs itself (#23): pyproject.toml declares the runtime dependencies as ranges that hold
the exact lock of requirements.txt, and ``pip install .`` into a fresh, clean virtualenv gives a working
``lungseg`` (``--help``, ``models list``, a ``predict`` on the bundled sample with a model trained here).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from train_helpers import SAMPLE, write_params

REPO = Path(__file__).resolve().parents[1]
#: torch is installed first and alone, at this version (Makefile, Dockerfile); requirements.txt leaves it out
TORCH = "2.13.0"
#: declared in pyproject because lungseg imports them, locked in requirements.txt only through the package
#: that brings them (MLflow: pydantic, cloudpickle; kfp-kubernetes: kubernetes)
UNPINNED_RUNTIME = {"pydantic", "cloudpickle", "kubernetes"}
#: pinned in requirements-dev.txt for a reproducible host, not tools of their own (the dependency of ...)
DEV_TRANSITIVE = {"execnet": "pytest-xdist", "rich": "dvc", "mando": "radon"}


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def _pins(name: str) -> dict[str, str]:
    pins = {}
    for line in (REPO / name).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"{name}: {line} is not an exact pin"
            pins[canonicalize_name(req.name)] = spec.version
    return pins


def _ranges(requirements: list[str]) -> dict[str, Requirement]:
    return {canonicalize_name(r.name): r for r in map(Requirement, requirements)}


def test_pyproject_declares_every_locked_runtime_dependency_with_a_range_holding_the_lock():
    declared = _ranges(_pyproject()["project"]["dependencies"])
    locked = _pins("requirements.txt")
    assert set(locked) <= set(declared), f"locked but not declared: {sorted(set(locked) - set(declared))}"
    for name, version in locked.items():
        assert declared[name].specifier.contains(version), f"{name}=={version} outside {declared[name]}"
    assert declared["torch"].specifier.contains(TORCH)
    assert set(declared) - set(locked) == {"torch", *UNPINNED_RUNTIME}
    for req in declared.values():
        assert req.specifier and any(s.operator in (">=", "==") for s in req.specifier), f"{req}: no lower bound"


def test_the_dev_extra_holds_the_locked_tools():
    extras = _pyproject()["project"]["optional-dependencies"]
    dev = _ranges([r for r in extras["dev"] if not r.startswith("lungseg")] + extras["dvc"])
    assert "lungseg[dvc]" in extras["dev"]
    for name, version in _pins("requirements-dev.txt").items():
        if name in DEV_TRANSITIVE:
            continue
        assert name in dev, f"requirements-dev.txt pins {name}: not in the dev/dvc extras"
        assert dev[name].specifier.contains(version), f"{name}=={version} outside {dev[name]}"


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", **kw)
    said = f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    assert res.returncode == 0, f"{' '.join(map(str, cmd))} failed ({res.returncode}):\n{said}"
    return res


def _source_copy(target: Path) -> Path:
    """The package's files of this working tree (what ``git ls-files`` knows, as they are now) in a
    folder of its own: pip builds there, not in the checkout (no build/ or egg-info left behind)."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z", "--", "lungseg", "components", "pipelines"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in [*listed.split("\0"), "pyproject.toml", "README.md"]:
        if name and (REPO / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)
    return target


@pytest.mark.slow
def test_pip_install_into_a_fresh_virtualenv_gives_a_working_lungseg(tmp_path, tiny_data, one_torch_thread, request):
    """A clean venv (no system site-packages), torch installed first as the Makefile does (pip's
    configuration on this machine finds the CPU wheel), then ``pip install <source>`` (not editable):
    the ``lungseg`` it installs answers ``--help`` and ``models list`` and predicts a mask for real
    slices with a model trained here — run from a folder outside the checkout, importing the venv's copy."""
    from lungseg.config import load_params
    from lungseg.training import train

    model = tmp_path / "model"
    params = write_params(tmp_path / "params.yaml", f"sqlite:///{tmp_path / 'mlflow.db'}", epochs=1)
    train(load_params(params), tiny_data, model)

    venv = tmp_path / "venv"
    request.addfinalizer(lambda: shutil.rmtree(venv, ignore_errors=True))  # 2.3 GB: not kept by pytest
    _run([sys.executable, "-m", "venv", str(venv)])
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text(encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "MLFLOW_TRACKING_URI")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1")
    python, lungseg = str(venv / "bin" / "python"), str(venv / "bin" / "lungseg")
    t0 = time.perf_counter()
    _run([python, "-m", "pip", "install", "-q", "--no-compile", f"torch=={TORCH}"], env=env)
    t1 = time.perf_counter()
    _run([python, "-m", "pip", "install", "-q", "--no-compile", str(_source_copy(tmp_path / "src"))], env=env)
    t2 = time.perf_counter()
    print(f"fresh venv: torch {t1 - t0:.0f} s, pip install . {t2 - t1:.0f} s")

    away = tmp_path / "elsewhere"
    away.mkdir()
    where = _run([python, "-c", "import lungseg; print(lungseg.__file__)"], env=env, cwd=away).stdout.strip()
    assert Path(where).is_relative_to(venv), where
    assert "usage: lungseg" in _run([lungseg, "--help"], env=env, cwd=away).stdout
    listed = _run([lungseg, "models", "list"], env=env, cwd=away).stdout
    assert re.search(r"\blgnet\b", listed) and re.search(r"\bprnet\b", listed), listed
    scan = away / "slices"
    scan.mkdir()
    for png in sorted((SAMPLE / "tr_im").glob("*.png"))[:3]:
        shutil.copy2(png, scan / png.name)
    _run([lungseg, "predict", "--model", str(model), "--input", str(scan), "--output", "pred"], env=env, cwd=away)
    out = away / "pred"  # PNG slices in: one PNG mask a slice, in the input's size
    assert sorted(p.name for p in (out / "infection_mask").iterdir()) == sorted(p.name for p in scan.iterdir())
    assert (out / "report.json").is_file() and "infection" in (out / "summary.txt").read_text(encoding="utf-8")
