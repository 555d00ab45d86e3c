"""bench/results/README.md is rendered from the committed JSON files, notes included (no hand edits)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_models", ROOT / "bench" / "bench_models.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_committed_readme_is_the_rendering_of_the_committed_json(bench, tmp_path):
    for path in RESULTS.glob("*.json"):
        shutil.copyfile(path, tmp_path / path.name)
    bench.render_readme(tmp_path)
    assert (tmp_path / "README.md").read_text() == (RESULTS / "README.md").read_text(), (
        "run `python bench/bench_models.py --render-only` and commit the README")


def test_note_and_tag_are_rendered_under_their_heading(bench, tmp_path):
    result = json.loads((RESULTS / "cpu-x86-64-2-threads.json").read_text())
    result.update(tag="rerun", note="why this run exists")
    (tmp_path / "x.json").write_text(json.dumps(result))
    bench.render_readme(tmp_path)
    text = (tmp_path / "README.md").read_text()
    heading = f"## {result['device']} (rerun)\n\n> why this run exists\n\n- date: {result['date']}"
    assert heading in text
    assert f"| unet | {result['rows'][0]['size']} | BasicUNet |" in text


def test_bad_tag_is_refused_before_measuring(bench, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--device", "cpu", "--tag", "Bad Tag", "--results", str(tmp_path)])
    assert exc.value.code == 2
    assert "--tag 'Bad Tag'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
