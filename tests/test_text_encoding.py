"""Every text-mode file access in the project names its encoding (UTF-8), so results, reports and
records read and write the same bytes under any locale (CI can run with a bare environment)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(
    p for d in ("lungseg", "components", "pipelines", "scripts", "bench", "tests") for p in (ROOT / d).rglob("*.py")
)
#: ``X.open(...)`` calls that are not text-file opens
NOT_FILE_OPEN = {"os", "Image", "h5py", "tarfile", "zipfile", "gzip", "webbrowser"}


def _mode(call: ast.Call, position: int) -> str | None:
    for kw in call.keywords:
        if kw.arg == "mode":
            return kw.value.value if isinstance(kw.value, ast.Constant) else "?"
    if len(call.args) > position and isinstance(call.args[position], ast.Constant):
        return call.args[position].value
    return "?" if len(call.args) > position else None


def _not_false(value: ast.expr) -> bool:
    return not (isinstance(value, ast.Constant) and not value.value)


def unspecified_encodings(source: str) -> list[int]:
    """Line numbers of text-mode file accesses, and of subprocesses run with ``text=True`` (or
    ``universal_newlines=True``), without ``encoding=``."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or any(kw.arg == "encoding" for kw in node.keywords):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in ("read_text", "write_text"):
            lines.append(node.lineno)
        elif isinstance(func, ast.Name) and func.id == "open":
            if "b" not in (_mode(node, 1) or "r"):
                lines.append(node.lineno)
        elif isinstance(func, ast.Attribute) and func.attr == "open":
            owner = func.value.id if isinstance(func.value, ast.Name) else None
            if owner not in NOT_FILE_OPEN and "b" not in (_mode(node, 0) or "r"):
                lines.append(node.lineno)
        elif isinstance(func, ast.Attribute) and func.attr == "fdopen":
            if "b" not in (_mode(node, 1) or "r"):
                lines.append(node.lineno)
        elif any(kw.arg in ("text", "universal_newlines") and _not_false(kw.value) for kw in node.keywords):
            lines.append(node.lineno)  # a subprocess whose output is decoded (with the locale's encoding)
    return lines


def test_the_checker_finds_what_it_should():
    bad = (
        'p.read_text()\nopen(f)\nopen(f, "w")\np.open(newline="")\nos.fdopen(fd, "w")\np.write_text(s)\n'
        "subprocess.run(cmd, text=True)\nsubprocess.Popen(cmd, universal_newlines=True)\nrun(cmd, text=flag)\n"
    )
    assert unspecified_encodings(bad) == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    good = (
        'p.read_text(encoding="utf-8")\nopen(f, "rb")\nos.open(f, 1)\nImage.open(f)\n'
        'p.open("ab")\nos.fdopen(fd, "w", encoding="utf-8")\n'
        'subprocess.run(cmd, text=True, encoding="utf-8")\nsubprocess.run(cmd, text=False)\nsubprocess.run(cmd)\n'
    )
    assert unspecified_encodings(good) == []


def test_text_io_names_its_encoding():
    """The tests included: SimpleITK's DICOM writer (a fixture of tests/data) sets the process locale to
    C, after which a bare ``read_text()`` decodes ASCII when pytest runs without PYTHONUTF8."""
    assert len(SOURCES) > 40 and any(p.parent.name == "tests" for p in SOURCES)
    offenders = {
        str(p.relative_to(ROOT)): lines
        for p in SOURCES
        if (lines := unspecified_encodings(p.read_text(encoding="utf-8")))
    }
    assert not offenders, f"text file access without encoding= (file: lines): {offenders}"
