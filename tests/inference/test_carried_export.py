"""The ONNX export a model folder carries (review of #24): ``lungseg export --model RUN --output RUN/onnx``
writes it (the documented command; an export into any other part of an input is still refused), and
``--backend onnxruntime`` uses it only while ``model.onnx`` is the file exported (``export.json``'s
``file_sha256``) — a replaced file is not used, with a one-line note, and an export is made at load."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from lungseg.inference.predict import load_model
from lungseg.io import sha256_file
from train_helpers import SAMPLE, write_params


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, tiny_data, store) -> Path:
    """U-Net base 4 at 32², 1 epoch on the sample."""
    from lungseg.config import load_params
    from lungseg.training import train

    root = tmp_path_factory.mktemp("carried")
    train(load_params(write_params(root / "p.yaml", store, epochs=1)), tiny_data, root / "model")
    return root / "model"


@pytest.fixture
def run_folder(tiny_model, tmp_path) -> Path:
    folder = tmp_path / "run"
    shutil.copytree(tiny_model, folder)
    return folder


def test_export_into_the_model_folders_own_subfolder_is_written_and_carried(run_folder, tmp_path, export):
    from lungseg.inference.export import carried_onnx

    before = sorted(p.name for p in run_folder.iterdir())
    code, stdout, err = export(run_folder, "onnx", run_folder / "onnx", "--max-check-slices", "4")
    assert code == 0, err
    info = json.loads((run_folder / "onnx" / "export.json").read_text(encoding="utf-8"))
    assert info["file_sha256"] == sha256_file(run_folder / "onnx" / "model.onnx")
    assert sorted(p.name for p in run_folder.iterdir()) == sorted([*before, "onnx"])  # no temporary left beside
    found = carried_onnx(load_model(run_folder))
    assert found is not None and found[0] == run_folder / "onnx" / "model.onnx"
    code, _, err = export(run_folder, "onnx", run_folder / "onnx", "--max-check-slices", "4")  # again: replaced
    assert code == 0, err
    # still refused: the model folder itself, a folder deeper in it, an output holding another input
    for out, says in [
        (run_folder, "holds the input"),
        (run_folder / "onnx" / "deeper", "is inside the input"),
    ]:
        code, _, err = export(run_folder, "onnx", out)
        assert code != 0 and says in err and err.strip().count("\n") == 0, err
    assert not (run_folder / "onnx" / "deeper").exists() and (run_folder / "best.pt").is_file()


def test_a_replaced_carried_onnx_file_is_not_used(run_folder, tmp_path, predict, caplog):
    """model.onnx swapped for another model's export (same export.json, same weights_sha256, passed parity):
    the file's sha256 is not the recorded one, so predict exports these weights at load (a note says why)."""
    from lungseg.inference import volumes
    from lungseg.inference.export import carried_onnx, export_model

    model = load_model(run_folder)
    slices = volumes.to_model_range(volumes.read_scan(SAMPLE / "tr_im"), model.preprocess)[0][:4]
    export_model(model, "onnx", run_folder / "onnx", slices)
    other = load_model(run_folder)
    with torch.no_grad():
        for p in other.net.parameters():
            p.add_(0.5)
    export_model(other, "onnx", tmp_path / "other", slices)
    shutil.copy(tmp_path / "other" / "model.onnx", run_folder / "onnx" / "model.onnx")

    with caplog.at_level(logging.WARNING, logger="lungseg.inference.export"):
        assert carried_onnx(load_model(run_folder)) is None
    notes = [r.getMessage() for r in caplog.records if "model.onnx" in r.getMessage()]
    assert len(notes) == 1 and "its sha256 differs" in notes[0] and "exporting at load" in notes[0], notes
    code, _, err = predict(run_folder, SAMPLE / "tr_im", tmp_path / "out", "--backend", "onnxruntime")
    assert code == 0, err
    ran = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))["inference"]["infection"]
    assert ran["backend"] == "onnxruntime" and ran["onnx"]["file"] == "exported at load"

    # an export.json written before the file's sha256 was recorded: not trusted either
    info = json.loads((run_folder / "onnx" / "export.json").read_text(encoding="utf-8"))
    shutil.copy(tmp_path / "other" / "model.onnx", run_folder / "onnx" / "model.onnx")
    info.pop("file_sha256")
    (run_folder / "onnx" / "export.json").write_text(json.dumps(info), encoding="utf-8")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lungseg.inference.export"):
        assert carried_onnx(load_model(run_folder)) is None
    assert any("records no file_sha256" in r.getMessage() for r in caplog.records)
