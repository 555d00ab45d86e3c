"""``lungseg predict --compile`` (#24): the torch network compiled once (one static shape: a volume's
last, short batch is padded), masks equal to eager on real slices with max |Δp| bounded, the report
says ``compile: true``, a compile failure is one line with nothing written, and onnxruntime refuses it."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch._inductor.compile_fx as compile_fx
from PIL import Image

from lungseg.artifacts import core
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


def _failing(*args, **kwargs):  # what a missing C++ compiler looks like to the caller
    raise RuntimeError("no C++ compiler found\nmore detail")


def test_a_compile_failure_is_one_line(infection_model, monkeypatch, tmp_path, predict):
    torch._dynamo.reset()
    monkeypatch.setattr(compile_fx, "compile_fx", _failing)
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


def _counting_backend(monkeypatch) -> list:
    """:data:`COMPILE_BACKEND` replaced by a backend that runs the graph as is; the graphs it got."""
    graphs: list = []

    def counting(gm, example_inputs, **kwargs):
        graphs.append(gm)
        return gm.forward

    monkeypatch.setattr(predict_mod, "COMPILE_BACKEND", counting)
    return graphs


def test_compile_is_refused_where_torch_compile_is_disabled(infection_model, monkeypatch, tmp_path, predict):
    """TORCH_COMPILE_DISABLE=1 (``torch._dynamo.config.disable``) would run the network eager: refused in
    one line before anything is written, as a one-scan and a cohort command (#24)."""
    torch._dynamo.reset()
    want = "--compile: torch.compile is disabled in this process (TORCH_COMPILE_DISABLE=1"
    cohort = _cohort(tmp_path)
    with torch._dynamo.config.patch(disable=True):  # what TORCH_COMPILE_DISABLE=1 sets
        with pytest.raises(ConfigError, match="^" + want.replace("(", r"\(")):
            SliceInference(load_model(infection_model), device="cpu", compile=True)
        for scan in (SAMPLE / "tr_im", cohort):
            out = tmp_path / f"out_{scan.name}"
            code, _, err = predict(infection_model, scan, out, "--compile")
            assert code != 0 and err.strip().count("\n") == 0 and err.strip().startswith("error: " + want), err
            assert not out.exists()
    torch._dynamo.reset()


def test_suppressed_dynamo_errors_still_fail_the_command(infection_model, monkeypatch, tmp_path, predict):
    """TORCHDYNAMO_SUPPRESS_ERRORS=1 (``suppress_errors``) would turn a compile failure into an eager run
    recorded as compiled: the compiled calls run with errors raised, so it is the one-line failure (#24)."""
    torch._dynamo.reset()
    monkeypatch.setattr(compile_fx, "compile_fx", _failing)
    model = load_model(infection_model)
    with torch._dynamo.config.patch(suppress_errors=True):  # what TORCHDYNAMO_SUPPRESS_ERRORS=1 sets
        with pytest.raises(ConfigError, match=r"^--compile: torch.compile failed \(.*no C\+\+ compiler found"):
            SliceInference(model, device="cpu", compile=True).run(_sample_slices(model)[:2])
        out = tmp_path / "out"
        code, _, err = predict(infection_model, SAMPLE / "tr_im", out, "--compile")
        assert code != 0 and err.strip().startswith("error: --compile: torch.compile failed (") and not out.exists()
        assert torch._dynamo.config.suppress_errors is True  # (the user's setting is back after each call)
    torch._dynamo.reset()


def test_a_call_that_compiled_no_graph_fails_and_compile_is_recorded_from_the_graphs(
    infection_model, monkeypatch, tmp_path, predict
):
    """Whatever else makes dynamo run the network eager (here ``torch.compiler.set_stance("force_eager")``)
    is caught after the call: no graph compiled → one-line error, nothing written; ``describe()`` says
    ``compile: true`` only once a graph was compiled (#24)."""
    torch._dynamo.reset()
    graphs = _counting_backend(monkeypatch)
    model = load_model(infection_model)
    engine = SliceInference(model, device="cpu", batch_size=4, compile=True)
    assert engine.describe()["compile"] is False  # nothing compiled yet
    with torch.compiler.set_stance("force_eager"):
        with pytest.raises(ConfigError, match=r"^--compile: torch.compile compiled no graph: the network ran eager"):
            engine.run(_sample_slices(model)[:2])
        out = tmp_path / "out"
        code, _, err = predict(infection_model, SAMPLE / "tr_im", out, "--compile")
        assert (
            code != 0
            and err.strip().startswith("error: --compile: torch.compile compiled no graph")
            and not out.exists()
        )
    assert graphs == [] and engine.describe()["compile"] is False
    engine.run(_sample_slices(model)[:2])
    assert len(graphs) == 1 and engine.describe()["compile"] is True
    torch._dynamo.reset()


def test_past_the_recompile_limit_is_a_failure_not_eager(infection_model, monkeypatch):
    """Dynamo's recompile limit is shared by every network of one class in a process; past it a new
    network would run eager: with ``--compile`` that is the one-line failure (#24)."""
    torch._dynamo.reset()
    graphs = _counting_backend(monkeypatch)
    first, second = load_model(infection_model), load_model(infection_model)  # two network objects, one class
    slices = _sample_slices(first)[:2]
    with torch._dynamo.config.patch(recompile_limit=1):
        SliceInference(first, device="cpu", compile=True).run(slices)
        with pytest.raises(ConfigError, match=r"^--compile: torch.compile failed \(.*recompile") as info:
            SliceInference(second, device="cpu", compile=True).run(slices)
    assert "\n" not in str(info.value)
    assert len(graphs) == 1
    torch._dynamo.reset()


def test_compile_with_bf16_says_its_masks_are_not_eager_bf16s(infection_model, monkeypatch, tmp_path, predict):
    """Compiled bf16 rounds otherwise than eager bf16 (measured: 182 of 22 × 512² pixels differ on the
    sample): with an effective bf16 precision ``--compile`` says so in one note, in the report's
    warnings; not in fp32 nor where bf16 falls back to fp32 (#24)."""
    torch._dynamo.reset()
    _counting_backend(monkeypatch)
    model = load_model(infection_model)
    monkeypatch.setattr(core, "cpu_supports_bf16", lambda *a: True)  # as on a CPU with native bf16
    bf16 = SliceInference(model.served_as(precision="bf16"), device="cpu", compile=True)
    assert bf16.precision == "bf16" and bf16.notes.count(predict_mod.COMPILE_BF16_NOTE) == 1
    for other in (
        SliceInference(model, device="cpu", compile=True),
        SliceInference(model.served_as(precision="bf16"), device="cpu"),
    ):
        assert predict_mod.COMPILE_BF16_NOTE not in other.notes
    out = tmp_path / "out"
    code, _, err = predict(infection_model, SAMPLE / "tr_im", out, "--compile", "--precision", "bf16")
    assert code == 0, err
    rep = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert rep["inference"]["infection"]["precision"] == "bf16" and rep["inference"]["infection"]["compile"] is True
    assert sum(predict_mod.COMPILE_BF16_NOTE in w for w in rep["warnings"]) == 1
    monkeypatch.setattr(core, "cpu_supports_bf16", lambda *a: False)  # bf16 falls back to fp32: no such note
    fallback = SliceInference(model.served_as(precision="bf16"), device="cpu", compile=True)
    assert fallback.precision == "fp32" and predict_mod.COMPILE_BF16_NOTE not in fallback.notes
    torch._dynamo.reset()


def _cohort(tmp_path) -> Path:
    """Two cases (sub-folders of 3 real sample slices each)."""
    root = tmp_path / "cohort"
    for i, name in enumerate(("case_a", "case_b")):
        (root / name).mkdir(parents=True)
        for f in sorted((SAMPLE / "tr_im").glob("*.png"))[3 * i : 3 * i + 3]:
            shutil.copyfile(f, root / name / f.name)
    return root


def test_a_compile_failure_ends_a_cohort_before_anything_is_written(infection_model, monkeypatch, tmp_path, predict):
    """In a cohort the compile runs once, before the output is made: a failure is the command's one-line
    error (no burden.csv with every case failed); compiled, the cases reuse that graph (#24)."""
    torch._dynamo.reset()
    calls = []
    monkeypatch.setattr(compile_fx, "compile_fx", lambda *a, **k: calls.append(1) or _failing())
    cohort, out = _cohort(tmp_path), tmp_path / "out"
    code, _, err = predict(infection_model, cohort, out, "--compile")
    assert code != 0 and err.strip().count("\n") == 0, err
    assert err.strip().startswith("error: --compile: torch.compile failed (") and "no C++ compiler found" in err
    assert not out.exists() and len(calls) == 1  # compiled once, not once per case
    torch._dynamo.reset()
    graphs = _counting_backend(monkeypatch)
    code, _, err = predict(infection_model, cohort, out, "--compile")
    assert code == 0, err
    for case in ("case_a", "case_b"):
        rep = json.loads((out / case / "report.json").read_text(encoding="utf-8"))
        assert rep["inference"]["infection"]["compile"] is True
    assert len(graphs) == 1
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
