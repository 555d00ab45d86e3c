"""``train.compile`` (#24): the model compiled in place (same state keys, the same files), a compile
failure as one-line error naming the setting, and exact resume of a compiled run."""

from __future__ import annotations

import pytest
import torch
import torch._inductor.compile_fx as compile_fx

from lungseg.artifacts.checkpoint import load_checkpoint
from lungseg.config import TrainConfig, load_params
from lungseg.errors import TrainingError
from lungseg.training import epoch as epoch_mod
from lungseg.training import setup, train
from train_helpers import write_params


class Net(torch.nn.Module):  # (torch.nn containers themselves are not traced by Module.compile)
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(2)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


def test_compile_model_compiles_in_place_and_keeps_the_state_keys(monkeypatch):
    torch._dynamo.reset()
    graphs = []

    def counting(gm, example_inputs, **kwargs):  # the inductor entry point, counted
        graphs.append(gm)
        return gm.forward

    monkeypatch.setattr(compile_fx, "compile_fx", counting)
    torch.manual_seed(0)
    eager = Net()
    model = Net()
    model.load_state_dict(eager.state_dict())
    assert setup.compile_model(model) is model
    assert list(model.state_dict()) == list(eager.state_dict())  # no "_orig_mod." prefix: the files are the same
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(model(x), eager(x), rtol=0, atol=0)  # (the counting backend runs the graph as is)
    assert len(graphs) == 1


def test_a_compile_failure_is_one_line_naming_the_setting(monkeypatch):
    torch._dynamo.reset()

    def failing(*args, **kwargs):
        raise RuntimeError("no C++ compiler found\nmore detail")

    monkeypatch.setattr(compile_fx, "compile_fx", failing)
    model, cpu = setup.compile_model(Net()), torch.device("cpu")
    with pytest.raises(
        TrainingError, match=r"^train.compile: torch.compile failed \(.*no C\+\+ compiler found"
    ) as info:
        epoch_mod.forward(model, torch.randn(2, 1, 8, 8), TrainConfig(compile=True), cpu)
    assert "\n" not in str(info.value) and str(info.value).endswith("set train.compile: false")
    with pytest.raises(RuntimeError, match="boom"):  # other errors are not re-labelled
        epoch_mod.forward(lambda x: (_ for _ in ()).throw(RuntimeError("boom")), None, TrainConfig(compile=True), cpu)


class Heads(Net):  # a deep-supervised model: its train step calls forward_heads
    deep_supervision_weights = (1.0, 0.5)

    def forward_heads(self, x):
        y = self(x)
        return [y, y[:, :1]]


def _counting(monkeypatch) -> list:
    graphs: list = []
    monkeypatch.setattr(compile_fx, "compile_fx", lambda gm, *a, **k: graphs.append(gm) or gm.forward)
    return graphs


def _failing(*args, **kwargs):
    raise RuntimeError("no C++ compiler found\nmore detail")


FAILED = r"^train.compile: torch.compile failed \(.*no C\+\+ compiler found.*\); set train.compile: false$"


def test_train_compile_is_refused_where_torch_compile_is_disabled(tmp_path, tiny_data):
    """TORCH_COMPILE_DISABLE=1 (``torch._dynamo.config.disable``) would train eager and record
    ``compile: True``: refused in one line, before anything is written (#24)."""
    want = r"^train.compile: torch.compile is disabled in this process \(TORCH_COMPILE_DISABLE=1"
    with torch._dynamo.config.patch(disable=True):
        with pytest.raises(TrainingError, match=want):
            setup.compile_model(Net())
        params = load_params(write_params(tmp_path / "p.yaml", f"sqlite:///{tmp_path / 'm.db'}", compile=True))
        with pytest.raises(TrainingError, match=want):
            train(params, tiny_data, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_suppressed_dynamo_errors_still_fail_every_compiled_call(monkeypatch):
    """TORCHDYNAMO_SUPPRESS_ERRORS=1 would turn a compile failure into eager training recorded as
    compiled: each compiled call (the step, validation's plain call, deep supervision's forward_heads)
    runs with errors raised, so it is the one-line failure (#24)."""
    torch._dynamo.reset()
    monkeypatch.setattr(compile_fx, "compile_fx", _failing)
    cpu, x = torch.device("cpu"), torch.randn(2, 1, 8, 8)
    with torch._dynamo.config.patch(suppress_errors=True):
        model = setup.compile_model(Heads())
        with pytest.raises(TrainingError, match=FAILED):
            epoch_mod.forward(model.forward_heads, x, TrainConfig(compile=True), cpu)
        with pytest.raises(TrainingError, match=FAILED):
            model(x)  # (validation calls the model itself)
        assert torch._dynamo.config.suppress_errors is True  # the user's setting, back after each call
    torch._dynamo.reset()


def test_a_call_that_compiled_no_graph_fails(monkeypatch):
    """Whatever else makes dynamo run the model eager (here ``torch.compiler.set_stance("force_eager")``)
    is caught after the call: no graph compiled is a one-line error, not an eager step (#24)."""
    torch._dynamo.reset()
    graphs = _counting(monkeypatch)
    model, x = setup.compile_model(Heads()), torch.randn(2, 1, 8, 8)
    with torch.compiler.set_stance("force_eager"):
        for call in (model, model.forward_heads):
            with pytest.raises(TrainingError, match=r"^train.compile: torch.compile compiled no graph: .* ran eager"):
                call(x)
    assert graphs == []
    model(x), model.forward_heads(x)
    assert len(graphs) == 2  # (each compiled callable its own graph)
    torch._dynamo.reset()


def test_past_the_recompile_limit_is_a_failure_not_eager(monkeypatch):
    """Dynamo's recompile limit: past it (here one graph, and a second input shape), a model would train
    eager recorded as compiled: a failure (#24)."""
    torch._dynamo.reset()
    graphs = _counting(monkeypatch)
    with torch._dynamo.config.patch(recompile_limit=1):
        model = setup.compile_model(Net())
        model(torch.randn(2, 1, 8, 8))
        with pytest.raises(TrainingError, match=r"^train.compile: torch.compile failed \(.*recompile limit"):
            model(torch.randn(2, 1, 16, 16))
    assert len(graphs) == 1
    torch._dynamo.reset()


def test_many_compiled_trainings_in_one_process_each_compile(monkeypatch):
    """The recompile limit (8) is shared by every model of a class in a process and each compile's own
    counting backend is a recompile: the 9th compiled model of a notebook or a sweep was refused
    (#24 re-review F1). Each training resets dynamo first, so each compiles its own graph."""
    torch._dynamo.reset()
    graphs = _counting(monkeypatch)
    x = torch.randn(2, 1, 8, 8)
    for _ in range(10):
        net = Net()
        torch.testing.assert_close(setup.compile_model(net)(x), net.forward(x), rtol=0, atol=0)
    assert len(graphs) == 10
    torch._dynamo.reset()


@pytest.mark.slow
def test_a_compiled_run_resumes_exactly(tmp_path, tiny_data):
    """Compiled: 2 epochs straight vs 1 epoch and a ``--resume`` in a fresh compile — bitwise the same
    weights and history; and close to the eager run's losses (inductor fuses and reorders float
    arithmetic, so not bitwise)."""
    torch._dynamo.reset()
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    common = {"scheduler": "none", "compile": True, "batch_size": 7}  # 14 images: one batch shape to compile

    def run(name: str, epochs: int, resume: bool = False, **extra):
        params = load_params(write_params(tmp_path / f"{name}.yaml", uri, epochs=epochs, **{**common, **extra}))
        train(params, tiny_data, tmp_path / name.rstrip("0123456789"), resume=resume)

    run("straight", 2)
    run("resumed1", 1)
    torch._dynamo.reset()  # the resumed process compiles again
    run("resumed2", 2, resume=True)
    run("eager", 2, compile=False)
    a, b, e = (load_checkpoint(tmp_path / n / "checkpoint.pt") for n in ("straight", "resumed", "eager"))
    untimed = [[{k: v for k, v in row.items() if k != "seconds"} for row in c["history"]] for c in (a, b)]
    assert untimed[0] == untimed[1] and len(untimed[0]) == 2
    for key, value in a["model_state"].items():
        assert torch.equal(value, b["model_state"][key]), key
    eager = [row["train_loss"] for row in e["history"]]  # (the weights themselves drift apart under Adam)
    assert [row["train_loss"] for row in a["history"]] == pytest.approx(eager, rel=1e-3)
    assert a["config"]["compile"] is True
