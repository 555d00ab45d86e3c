"""``lungseg export``: ONNX (run with onnxruntime) and TorchScript of the champion, parity with
PyTorch on real slices, and every model of the zoo either exporting or saying why not."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lungseg.artifacts import core
from lungseg.inference import volumes
from lungseg.inference.predict import LoadedModel, load_model
from train_helpers import SAMPLE


@pytest.fixture(scope="module")
def real_check(infection_model):
    """The bundled sample's first 16 slices at the model's size, in its intensity range (like predict)."""
    from lungseg.inference.export import check_batch

    model = load_model(infection_model)
    slices, _ = volumes.to_model_range(volumes.read_scan(SAMPLE / "tr_im"), model.preprocess)
    return model, check_batch(slices[:16], model.image_size)


@pytest.mark.slow
def test_onnx_export_of_the_champion_matches_pytorch(champion, store_in_env, real_check, tmp_path, export):
    import onnxruntime as ort

    out = tmp_path / "onnx"
    code, stdout, _ = export(champion, "onnx", out)
    assert code == 0
    assert "max |Δp|" in stdout and "Dice of masks" in stdout
    info = json.loads((out / "export.json").read_text(encoding="utf-8"))
    assert info["parity"]["passed"] and info["parity"]["max_abs_diff"] <= 1e-3 and info["parity"]["n_slices"] == 16
    assert info["input"]["shape"] == ["N", 1, 32, 32] and info["preprocess"]["image_size"] == 32
    # independently of the command: onnxruntime on the real slices vs PyTorch, at another batch size
    model, x = real_check
    with torch.inference_mode():
        ref = core.ProbabilityNet(model.net).eval()(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"slices": x[:5]})[0]
    np.testing.assert_allclose(got, ref[:5], atol=1e-4)
    masks = ref > 0.5
    assert 0 < masks.mean() < 1  # a model whose masks are neither empty nor everything: the Dice means something
    assert np.array_equal(got > 0.5, masks[:5])


@pytest.mark.slow
def test_torchscript_export_matches_pytorch(infection_model, real_check, tmp_path, export):
    out = tmp_path / "ts"
    code, stdout, _ = export(infection_model, "torchscript", out, "--max-check-slices", "6")
    assert code == 0 and "Dice of masks 1.000000" in stdout
    model, x = real_check
    loaded = torch.jit.load(str(out / "model.pt"))
    with torch.inference_mode():
        np.testing.assert_allclose(
            loaded(torch.from_numpy(x[:3])).numpy(),
            core.ProbabilityNet(model.net).eval()(torch.from_numpy(x[:3])).numpy(),
            atol=1e-5,
        )
    assert json.loads((out / "export.json").read_text(encoding="utf-8"))["parity"]["n_slices"] == 6


@pytest.mark.slow
def test_a_failed_export_is_one_line_and_writes_nothing(store_in_env, tmp_path, export):
    out = tmp_path / "never"
    code, _, err = export("models:/no-such-model@champion", "onnx", out)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("error: models:/no-such-model@champion: ")
    assert not out.exists()


def _zoo_model(name: str) -> LoadedModel:
    import inspect

    from lungseg.models import create_model, model_class

    kwargs = {"in_channels": 1, "num_classes": 1, "base_channels": 4}
    if "max_tokens" in inspect.signature(model_class(name)).parameters:
        kwargs["max_tokens"] = 64
    torch.manual_seed(0)
    net = create_model(name, **kwargs).eval()
    pre = {
        "image_size": 64,
        "hu_window": [-1000.0, 400.0],
        "dataset": "medseg",
        "label_names": ["background", "infection"],
    }
    return LoadedModel(net, {"name": name, "kwargs": kwargs}, pre, 0.5, f"zoo:{name}")


def _zoo_names():
    from lungseg.models import list_models

    return list_models()


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("name", _zoo_names())
def test_every_model_exports_or_says_why(name, fmt, tmp_path):
    """Each model of the zoo (untrained weights, 64², real slices) either exports and passes the parity
    check, or fails with one line naming every attempt — never a traceback, never a file. What each
    does is printed (``-s``) and recorded in docs/inference.md."""
    from lungseg.inference.export import ExportError, export_model

    model = _zoo_model(name)
    slices, _ = volumes.to_model_range(volumes.read_scan(sorted((SAMPLE / "tr_im").glob("*.png"))[0]), model.preprocess)
    out = tmp_path / "out"
    try:
        result = export_model(model, fmt, out, slices * 5)
    except ExportError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(f"zoo:{name}: {name} does not export to {fmt}: ")
        assert not out.exists()
        print(f"\nEXPORT {name} {fmt}: FAILED {exc}")
        return
    assert result.parity["passed"] and result.parity["n_slices"] == 5
    assert (out / result.file).is_file()
    print(
        f"\nEXPORT {name} {fmt}: {result.exporter}, batch {result.batch}, max|dp| "
        f"{result.parity['max_abs_diff']:.1e}, failed before: {result.failed_attempts}"
    )
