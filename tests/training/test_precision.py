"""``train.precision`` (#24): the setting and its deprecated spelling ``amp``, the per-device resolution
(bf16 on a CPU only with native bf16 — simulated here by patching the detection), the autocast of the
train step and of validation, and what the run records."""

from __future__ import annotations

import logging

import mlflow
import pytest
import torch

from lungseg.artifacts.checkpoint import load_checkpoint
from lungseg.config import TrainConfig, load_params
from lungseg.errors import ConfigError
from lungseg.losses import create_loss
from lungseg.training import epoch as epoch_mod
from lungseg.training import setup, train
from train_helpers import write_params

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # (a device object needs no GPU)


@pytest.fixture
def native_bf16(monkeypatch):
    """Pretend this CPU has (``True``) or lacks (``False``) native bf16."""

    def set_to(value: bool) -> None:
        monkeypatch.setattr(setup, "cpu_bf16_supported", lambda: value)

    return set_to


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ({"amp": False, "precision": "bf16"}, "train.amp: false contradicts train.precision: bf16"),
        ({"amp": False, "precision": "auto"}, "train.amp: false contradicts train.precision: auto"),
        ({"amp": True, "precision": "fp32"}, "train.amp: true contradicts train.precision: fp32"),
        ({"precision": "fp16"}, "train.precision: "),
    ],
)
def test_a_conflicting_or_unknown_precision_is_one_config_error(written, message):
    with pytest.raises(ConfigError, match=message) as info:
        TrainConfig(**written)
    assert "\n" not in str(info.value)


def test_a_params_file_with_amp_and_precision_in_conflict_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"params.yaml.train.amp: false contradicts train.precision: bf16"):
        load_params(write_params(tmp_path / "params.yaml", None, amp=False, precision="bf16"))


@pytest.mark.parametrize(
    ("written", "native", "cpu", "cuda"),
    [
        ({}, True, "fp32", "bf16"),  # auto: bf16 on CUDA (the former amp: true), fp32 on any CPU
        ({}, False, "fp32", "bf16"),
        ({"precision": "bf16"}, True, "bf16", "bf16"),
        ({"precision": "bf16"}, False, "fp32", "bf16"),  # asked but unsupported: fp32
        ({"precision": "fp32"}, True, "fp32", "fp32"),
        ({"amp": False}, True, "fp32", "fp32"),  # the deprecated spelling of fp32
        ({"amp": True, "precision": "bf16"}, True, "bf16", "bf16"),
    ],
)
def test_precision_resolves_per_device(native_bf16, written, native, cpu, cuda):
    native_bf16(native)
    cfg = TrainConfig(**written)
    assert setup.resolve_precision(cfg, CPU) == cpu
    assert setup.resolve_precision(cfg, CUDA) == cuda
    resolved = cfg.model_copy(update={"precision": cpu})  # what prepare() hands the loop resolves to itself
    assert setup.resolve_precision(resolved, CPU) == cpu


def test_bf16_asked_on_a_cpu_without_it_says_so_in_one_line(native_bf16, caplog):
    native_bf16(False)
    with caplog.at_level(logging.INFO, logger="lungseg.training.setup"):
        assert setup.resolve_precision(TrainConfig(precision="bf16"), CPU, announce=True) == "fp32"
    notes = [r.getMessage() for r in caplog.records]
    assert notes == ["lungseg: note: train.precision: bf16, but this CPU has no native bf16 (AVX-512 BF16/AMX): fp32"]


def test_the_detection_is_the_one_predict_uses():
    """One check for train and predict (#24): :func:`lungseg.artifacts.core.cpu_supports_bf16`, which
    needs oneDNN's bf16 kernels and the CPU's native bf16 flag."""
    from lungseg.artifacts import core

    assert setup.cpu_bf16_supported() is core.cpu_supports_bf16()
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():  # no oneDNN bf16: never bf16
        assert setup.cpu_bf16_supported() is False


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("patched", ["onednn", "flags", "check"])
def test_train_and_predict_agree_when_the_check_is_patched(monkeypatch, native, patched):
    """The bf16 detection patched either way, at either of its inputs (oneDNN's check, the CPU flags) or
    as a whole: ``train.precision: bf16`` and ``predict --precision bf16`` resolve alike on a CPU."""
    from lungseg.artifacts import core

    if patched == "check":
        monkeypatch.setattr(core, "cpu_supports_bf16", lambda *a: native)
    else:
        monkeypatch.setattr(core, "onednn_bf16", lambda: native if patched == "onednn" else True)
        monkeypatch.setattr(core, "cpu_bf16_flags", lambda *a: native if patched == "flags" else True)
        core._cpu_supports_bf16.cache_clear()
    try:
        want = "bf16" if native else "fp32"
        assert setup.cpu_bf16_supported() is native
        assert setup.resolve_precision(TrainConfig(precision="bf16"), CPU) == want
        assert core.resolve_precision("bf16", "cpu")[0] == want
    finally:
        core._cpu_supports_bf16.cache_clear()  # the real answer again, once the patches are undone


@pytest.mark.parametrize(("native", "dtype"), [(True, torch.bfloat16), (False, torch.float32)])
def test_the_forward_runs_in_bf16_only_when_resolved_so(native_bf16, native, dtype):
    native_bf16(native)
    conv = torch.nn.Conv2d(1, 2, 3)
    out = epoch_mod.forward(conv, torch.randn(1, 1, 8, 8), TrainConfig(precision="bf16"), CPU)
    assert out.dtype == dtype
    assert epoch_mod.forward(conv, torch.randn(1, 1, 8, 8), TrainConfig(precision="fp32"), CPU).dtype == torch.float32


def test_validation_runs_at_the_training_precision(native_bf16):
    """bf16 validation: close to fp32 (a bf16 matmul keeps ~3 significant digits) but not equal."""
    native_bf16(True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 1, 1))
    x = torch.rand(4, 1, 16, 16)
    y = (x[:, 0] > 0.5).long()
    loss_fn = create_loss("bce_dice", num_classes=1)
    fp32 = epoch_mod.validate(model, loss_fn, x, y, TrainConfig(precision="fp32"), CPU)
    bf16 = epoch_mod.validate(model, loss_fn, x, y, TrainConfig(precision="bf16"), CPU)
    assert fp32[0] != bf16[0]
    assert bf16[0] == pytest.approx(fp32[0], rel=2e-2)
    with torch.no_grad():  # the fp32 value is the plain forward's
        assert fp32[0] == pytest.approx(float(loss_fn(model(x), y)), rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(("native", "resolved"), [(True, "bf16"), (False, "fp32")])
def test_the_run_records_the_resolved_precision(tmp_path, tiny_data, native_bf16, native, resolved):
    """``train.precision`` as written in the MLflow params, ``effective.precision`` (when it differs) and
    the checkpoint's settings as trained; a bf16 run's weights differ from the fp32 run's."""
    native_bf16(native)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    result = train(
        load_params(write_params(tmp_path / "p.yaml", uri, epochs=1, precision="bf16")), tiny_data, tmp_path / "a"
    )
    ckpt = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    assert ckpt["config"]["precision"] == resolved
    params = mlflow.MlflowClient(uri).get_run(result.run_id).data.params
    assert params["train.precision"] == "bf16"  # as written; effective.* only where the run differs from it
    assert params.get("effective.precision") == (None if resolved == "bf16" else resolved)
    fp32 = train(
        load_params(write_params(tmp_path / "q.yaml", uri, epochs=1, precision="fp32")), tiny_data, tmp_path / "b"
    )
    other = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert "effective.precision" not in mlflow.MlflowClient(uri).get_run(fp32.run_id).data.params
    same = all(torch.equal(v, other["model_state"][k]) for k, v in ckpt["model_state"].items())
    assert same is (resolved == "fp32")
