"""The fp32 fallback note of ``lungseg predict`` (review of #24, F5): a model evaluated with
``evaluate.precision: bf16`` was scored in bf16 (emulated on a CPU without it); served on such a CPU it
runs fp32, and the note says the masks may differ from those scored. Asked by ``--precision bf16`` on a
model evaluated in fp32 the fallback runs exactly what was scored: the note does not say so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lungseg.artifacts import core
from train_helpers import SAMPLE, write_params

SCORED = "its evaluation scored bf16"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, tiny_data, store) -> Path:
    """U-Net base 4 at 32², 1 epoch on the sample."""
    from lungseg.config import load_params
    from lungseg.training import train

    root = tmp_path_factory.mktemp("note")
    train(load_params(write_params(root / "p.yaml", store, epochs=1)), tiny_data, root / "model")
    return root / "model"


def _predict(model: Path, params: Path, out: Path, *extra: str) -> dict:
    from lungseg.cli import main

    assert main(["predict", "--model", str(model), "--input", str(SAMPLE / "tr_im"), "--output", str(out),
                 "--params", str(params), *extra]) == 0  # fmt: skip
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


@pytest.mark.slow
def test_the_fallback_note_says_the_evaluation_scored_bf16(tiny_model, store, tmp_path, monkeypatch):
    monkeypatch.setattr(core, "cpu_supports_bf16", lambda *a: False)
    params = write_params(tmp_path / "p.yaml", store)
    settings = yaml.safe_load(params.read_text(encoding="utf-8"))
    settings["evaluate"]["precision"] = "bf16"
    (tmp_path / "bf16.yaml").write_text(yaml.safe_dump(settings), encoding="utf-8")

    rep = _predict(tiny_model, tmp_path / "bf16.yaml", tmp_path / "a")  # evaluated (and served) bf16
    notes = [w for w in rep["warnings"] if "no native bf16" in w]
    assert len(notes) == 1 and SCORED in notes[0] and "\n" not in notes[0], rep["warnings"]
    assert rep["inference"]["infection"]["precision"] == "fp32"

    rep = _predict(tiny_model, tmp_path / "bf16.yaml", tmp_path / "b", "--precision", "bf16")  # same, asked
    assert sum(SCORED in w for w in rep["warnings"]) == 1

    rep = _predict(tiny_model, params, tmp_path / "c", "--precision", "bf16")  # evaluated auto (fp32)
    notes = [w for w in rep["warnings"] if "no native bf16" in w]
    assert len(notes) == 1 and SCORED not in notes[0], rep["warnings"]
    assert any("served in bf16 (--precision)" in w for w in rep["warnings"])
