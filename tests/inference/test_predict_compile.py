"""``lungseg predict --compile`` (#24): the torch network compiled once (one static shape: a volume's
last, short batch is padded), masks equal to eager on real slices with max |Δp| bounded, the report
says ``compile: true``, a compile failure is one line with nothing written, and onnxruntime refuses it."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
import torch._inductor.compile_fx as compile_fx
from PIL import Image

from lungseg.errors import ConfigError
from lungseg.inference import predict as predict_mod
from lungseg.inference import volumes
from lungseg.inference.predict import SliceInference, load_model
from train_helpers import SAMPLE

#: compiled (inductor, fp32) vs eager fp32 on the 22 real sample slices, U-Net base 4 at 32² (the
#: infection model), 1 thread, torch 2.13 CPU: measured max |Δp| 2.4e-07, masks equal (inductor reorders float sums)
COMPILE_MAX_DP = 1e-5


def _sample_slices(model) -> list[np.ndarray]:
    return volumes.to_model_range(volumes.read_scan(SAMPLE / "tr_im"), model.preprocess)[0]


def test_the_network_sees_one_shape_and_is_compiled_once(infection_model, monkeypatch):
    """7 slices at batch 4: batches of 4 and 3, the 3 padded to 4 — one graph for both, and a second
    engine of the same network (a cohort's next case) reuses it; the padding does not change the masks."""
    torch._dynamo.reset()
    shapes = []

    def counting(gm, example_inputs, **kwargs):  # a backend that runs the graph as is, counted
        shapes.append(
            [tuple(x.shape) for x in example_inputs if isinstance(x, torch.Tensor) and x.shape[-2:] == (32, 32)]
        )
        return gm.forward

    monkeypatch.setattr(predict_mod, "COMPILE_BACKEND", counting)
    model = load_model(infection_model)
    slices = _sample_slices(model)[:7]
    eager = SliceInference(model, device="cpu", batch_size=4).run(slices, probabilities=True)
    for _ in range(2):
        engine = SliceInference(model, device="cpu", batch_size=4, compile=True)
        got = engine.run(slices, probabilities=True)
        assert engine.describe()["compile"] is True
        assert all(np.array_equal(a, b) for a, b in zip(got[0], eager[0], strict=True))
        assert all(np.array_equal(a, b) for a, b in zip(got[1], eager[1], strict=True))  # (the graph ran as is)
    assert len(shapes) == 1 and shapes[0] == [(4, 1, 32, 32)]
    torch._dynamo.reset()


def test_a_compile_failure_is_one_line(infection_model, monkeypatch, tmp_path, predict):
    torch._dynamo.reset()

    def failing(*args, **kwargs):  # what a missing C++ compiler looks like to the caller
        raise RuntimeError("no C++ compiler found\nmore detail")

    monkeypatch.setattr(compile_fx, "compile_fx", failing)
    model = load_model(infection_model)
    engine = SliceInference(model, device="cpu", compile=True)
    with pytest.raises(ConfigError, match=r"^--compile: torch.compile failed \(.*no C\+\+ compiler found") as info:
        engine.run(_sample_slices(model)[:2])
    assert "\n" not in str(info.value) and str(info.value).endswith("run without --compile")
    out = tmp_path / "out"
    code, _, err = predict(infection_model, SAMPLE / "tr_im", out, "--compile")
    assert code != 0 and err.strip().count("\n") == 0
    assert err.strip().startswith("error: --compile: torch.compile failed (") and "no C++ compiler found" in err
    assert not out.exists()  # nothing written
    torch._dynamo.reset()


def test_compile_is_refused_with_onnxruntime(infection_model, tmp_path, predict):
    out = tmp_path / "out"
    code, _, err = predict(infection_model, SAMPLE / "tr_im", out, "--backend", "onnxruntime", "--compile")
    assert code != 0 and err.strip().count("\n") == 0
    assert err.strip() == "error: --compile compiles the torch backend: leave it out with --backend onnxruntime"
    assert not out.exists()
    with pytest.raises(ConfigError, match="^--compile compiles the torch backend"):
        SliceInference(load_model(infection_model), device="cpu", backend="onnxruntime", compile=True)


@pytest.mark.slow
def test_compiled_masks_equal_eager_masks(infection_model, tmp_path, predict):
    """inductor for real: the 22 real sample slices (22 = 5 × 4 + 2: the last batch padded), probabilities
    within :data:`COMPILE_MAX_DP` and masks equal; then ``lungseg predict --compile`` writes the eager
    command's masks and says ``compile: true`` in the report."""
    torch._dynamo.reset()
    model = load_model(infection_model)
    slices = _sample_slices(model)
    lab32, p32 = (np.stack(x) for x in SliceInference(model, device="cpu").run(slices, probabilities=True))
    engine = SliceInference(model, device="cpu", compile=True)
    labc, pc = (np.stack(x) for x in engine.run(slices, probabilities=True))
    dp = float(np.abs(pc - p32).max())
    print(f"compiled vs eager: max |dp| {dp:.3g}, foreground {lab32.mean():.4f}", file=sys.__stderr__)
    assert 0 < lab32.mean() < 1  # neither empty nor full: equal masks mean something
    assert np.array_equal(labc, lab32) and dp <= COMPILE_MAX_DP
    outs = {}
    for name, extra in (("eager", ()), ("compiled", ("--compile",))):
        outs[name] = tmp_path / name
        code, _, _ = predict(infection_model, SAMPLE / "tr_im", outs[name], *extra)
        assert code == 0
    rep = json.loads((outs["compiled"] / "report.json").read_text(encoding="utf-8"))
    assert rep["inference"]["infection"]["compile"] is True
    rep = json.loads((outs["eager"] / "report.json").read_text(encoding="utf-8"))
    assert rep["inference"]["infection"]["compile"] is False
    masks = [
        np.stack([np.asarray(Image.open(f)) for f in sorted((o / "infection_mask").glob("*.png"))])
        for o in outs.values()
    ]
    assert len(masks[0]) == len(slices) and masks[0].any() and np.array_equal(masks[0], masks[1])
    torch._dynamo.reset()
