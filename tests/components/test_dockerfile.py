"""The component image's Dockerfile, parsed: what `docker build` would do (no daemon here)."""

from __future__ import annotations

import fnmatch
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for raw in path.read_text().splitlines():
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


@pytest.fixture(scope="module")
def ins():
    return _instructions(REPO / "Dockerfile")


def _args(ins) -> dict[str, str]:
    return dict(a.split("=", 1) for op, a in ins if op == "ARG" and "=" in a)


def test_base_image_and_single_stage(ins):
    froms = [a for op, a in ins if op == "FROM"]
    assert froms == ["python:3.11-slim"]


def test_runs_as_a_non_root_user_created_in_the_image(ins):
    users = [a for op, a in ins if op == "USER"]
    assert users, "no USER: the container would run as root"
    final = users[-1].split(":")[0]
    assert final not in ("root", "0")
    created = " ".join(a for op, a in ins if op == "RUN")
    assert re.search(rf"useradd\b.*\b{re.escape(final)}\b", created), f"user {final!r} is never created"
    # nothing runs after the switch that would need root
    after = ins[[i for i, (op, _) in enumerate(ins) if op == "USER"][-1] + 1:]
    assert not [a for op, a in after if op == "RUN"]


def test_dependencies_come_pinned_from_requirements_txt(ins):
    copies = [a for op, a in ins if op == "COPY"]
    assert any(shlex.split(c)[0] == "requirements.txt" for c in copies)
    runs = [a for op, a in ins if op == "RUN"]
    assert any(re.search(r"pip install (--\S+ )*-r requirements\.txt", r) for r in runs)
    # torch: the pinned version of the Makefile, installed before the requirements
    makefile_pin = re.search(r"torch==([\w.]+)", (REPO / "Makefile").read_text()).group(1)
    assert _args(ins)["TORCH_VERSION"] == makefile_pin
    torch_run = next(i for i, r in enumerate(runs) if "torch==" in r)
    req_run = next(i for i, r in enumerate(runs) if "-r requirements.txt" in r)
    assert torch_run < req_run
    assert "download.pytorch.org/whl/cu" in _args(ins)["TORCH_INDEX_URL"], "the GPU node needs a CUDA torch"


def test_package_is_installed_without_touching_pinned_deps(ins):
    runs = " ".join(a for op, a in ins if op == "RUN")
    assert re.search(r"pip install --no-deps \.", runs)
    copied = {shlex.split(a)[0] for op, a in ins if op == "COPY"}
    for pkg in ("lungseg", "components", "pipelines"):
        assert pkg in copied, f"{pkg} is not in the image (the components import it)"


def test_only_package_registries_are_contacted(ins):
    runs = " ".join(a for op, a in ins if op == "RUN") + " " + " ".join(_args(ins).values())
    assert not re.search(r"\b(curl|wget|git clone|apt-get)\b", runs)
    for url in re.findall(r"https?://[^\s\"']+", runs):
        assert url.startswith(("https://download.pytorch.org/", "https://pypi.org/")), url


def test_copied_files_exist_and_are_not_dockerignored(ins):
    ignored = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")]
    for op, a in ins:
        if op != "COPY":
            continue
        *sources, _dest = shlex.split(a)
        for src in sources:
            assert (REPO / src).exists(), f"COPY {src}: not in the repository"
            assert not any(fnmatch.fnmatch(src, pat) for pat in ignored), f"COPY {src}: excluded by .dockerignore"
    # local credentials, state and environments never enter the build context
    for private in (".dvc/config.local", ".servers", "mlflow.db", ".venv", ".git"):
        assert any(fnmatch.fnmatch(private, pat) for pat in ignored), f"{private} is not in .dockerignore"


def test_component_image_name_matches_the_package_version():
    from components.image import DEFAULT_IMAGE

    import lungseg

    assert DEFAULT_IMAGE.rsplit(":", 1)[1] == lungseg.__version__
