"""``lungseg results run --precision {fp32,bf16}`` (#24): the override is recorded in the settings, the params
and the identity; bf16 on a CPU without native bf16 is refused unless ``LUNGSEG_FORCE_BF16_EMULATION=1``, and
a forced run records that it was emulated (``device.bf16``) and the bf16 it trained in."""

from __future__ import annotations

import json

import pytest

from lungseg.cli import build_parser
from lungseg.cli.results import _command
from lungseg.errors import ConfigError
from lungseg.experiments import audit, identity, runner
from lungseg.experiments.records import RunRecord
from lungseg.experiments.specs import TABLES
from lungseg.training import setup

SPEC = TABLES["infnet-protocol"]
ENV = "LUNGSEG_FORCE_BF16_EMULATION"


@pytest.fixture()
def no_native_bf16(monkeypatch):
    """A CPU without native bf16, emulation not forced."""
    monkeypatch.setattr(setup, "cpu_bf16_supported", lambda: False)
    monkeypatch.delenv(ENV, raising=False)


def test_precision_override_goes_to_train_and_settings():
    base = runner.effective_profile(SPEC, "cpu")
    assert runner.effective_profile(SPEC, "cpu", {"precision": None}) == base  # no override: the profile as is
    bf16 = runner.effective_profile(SPEC, "cpu", {"precision": "bf16", "epochs": 2})
    assert bf16.extra_train == {**base.extra_train, "precision": "bf16"} and bf16.epochs == 2
    params = runner.build_params(SPEC, SPEC.row("unet"), bf16, 0, device="cpu")
    assert params.train.precision == "bf16"
    assert runner.build_params(SPEC, SPEC.row("unet"), base, 0, device="cpu").train.precision == "auto"
    # a bf16 record is never averaged with the profile's (fp32) ones: its settings differ
    row = SPEC.row("unet")
    assert runner.settings_of(bf16, row)["extra_train"]["precision"] == "bf16"
    assert "precision" not in runner.settings_of(base, row)["extra_train"]
    with pytest.raises(ConfigError, match="precision: 'fp16' is not one of fp32, bf16"):
        runner.effective_profile(SPEC, "cpu", {"precision": "fp16"})


def test_bf16_refused_without_native_bf16(no_native_bf16):
    assert runner.bf16_mode() == "none"
    with pytest.raises(ConfigError, match="no native bf16.*LUNGSEG_FORCE_BF16_EMULATION=1"):
        runner.check_precision({"precision": "bf16"}, "cpu")
    runner.check_precision({"precision": "fp32"}, "cpu")  # fp32 and no override are always fine
    runner.check_precision({"precision": None}, "cpu")
    with pytest.raises(ConfigError, match="no native bf16"):  # refused before any data is read or cell run
        runner.run_table(
            SPEC, seeds=[0], rows=["unet"], data_root="/nonexistent", workdir="/nonexistent/w",
            results_dir="/nonexistent/r", overrides={"precision": "bf16"}, device="cpu", log=lambda s: None,
        )  # fmt: skip
    # without the override the expected identity records what the run computes: fp32
    ident = identity.expected_identity(SPEC, "cpu", SPEC.row("unet"), overrides={"precision": "bf16"})
    assert ident["train"]["precision"] == "fp32"


def test_bf16_allowed_when_emulation_forced(no_native_bf16, monkeypatch):
    monkeypatch.setenv(ENV, "1")
    assert setup.bf16_emulation_forced() and runner.bf16_mode() == "emulated"
    runner.check_precision({"precision": "bf16"}, "cpu")  # no error
    assert runner.device_info("cpu", ran_bf16=True)["bf16"] == "emulated"
    assert "bf16" not in runner.device_info("cpu")  # a run that did not run bf16 says nothing of it (review F9)
    cfg = runner.build_params(SPEC, SPEC.row("unet"), runner.effective_profile(SPEC, "cpu", {"precision": "bf16"}), 0)
    assert setup.resolve_precision(cfg.train, setup.torch.device("cpu")) == "bf16"
    monkeypatch.setenv(ENV, "0")  # only "1" forces it
    assert runner.bf16_mode() == "none"
    monkeypatch.setattr(setup, "cpu_bf16_supported", lambda: True)
    assert runner.bf16_mode() == "native" and runner.device_info("cpu", ran_bf16=True)["bf16"] == "native"
    runner.check_precision({"precision": "bf16"}, "cpu")


def test_identity_of_an_emulated_record_expects_bf16(no_native_bf16):
    """Checked later without the variable, a record that says it emulated bf16 is still expected to be bf16."""
    row = SPEC.row("unet")
    emulated = identity.expected_identity(SPEC, "cpu", row, overrides={"precision": "bf16"}, cpu_bf16="emulated")
    assert emulated["train"]["precision"] == "bf16"
    plain = identity.expected_identity(SPEC, "cpu", row, overrides={"precision": "bf16"})
    assert {k: v for k, v in emulated["train"].items() if k != "precision"} == {
        k: v for k, v in plain["train"].items() if k != "precision"
    }
    # an fp32 override is not turned into bf16 by the flag
    fp32 = identity.expected_identity(SPEC, "cpu", row, overrides={"precision": "fp32"}, cpu_bf16="emulated")
    assert fp32["train"]["precision"] == "fp32"
    rec = RunRecord.from_dict(
        {
            "table": SPEC.name,
            "profile": "cpu",
            "row": "unet",
            "overrides": {"precision": "bf16"},
            "device": {"type": "cpu", "bf16": "emulated"},
        }
    )
    assert identity.expected_for(rec)["train"]["precision"] == "bf16"
    native_less = RunRecord.from_dict({**rec.to_dict(), "device": {"type": "cpu", "bf16": "none"}})
    assert identity.expected_for(native_less)["train"]["precision"] == "fp32"


def test_cli_precision_option_and_command(monkeypatch):
    parser = build_parser()
    argv = ["results", "run", "--table", SPEC.name, "--profile", "cpu", "--seeds", "0", "--precision", "bf16"]
    args = parser.parse_args(argv)
    assert args.precision == "bf16"
    monkeypatch.delenv(ENV, raising=False)
    assert _command(args, SPEC.name).endswith("--seeds 0 --precision bf16")
    monkeypatch.setenv(ENV, "1")
    assert _command(args, SPEC.name).startswith("LUNGSEG_FORCE_BF16_EMULATION=1 lungseg results run ")
    assert parser.parse_args(argv[:-2]).precision is None
    with pytest.raises(SystemExit):
        parser.parse_args([*argv[:-1], "fp16"])


@pytest.mark.slow
def test_tiny_forced_bf16_cell_records_bf16_and_emulation(tmp_path, shared_data, monkeypatch, no_native_bf16):
    """A real tiny cell (Kaggle 64 px, U-Net base 4, 1 epoch) with the emulation forced: its record carries
    the override, the bf16 it trained (identity = what today's code expects for it) and ``device.bf16``."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv(ENV, "1")
    spec = TABLES["prnet-kaggle"]
    overrides = {"base_channels": 4, "epochs": 1, "precision": "bf16"}
    outcomes = runner.run_table(
        spec, profile="cpu", seeds=[0], rows=["unet"], data_root=shared_data, workdir=tmp_path / "w",
        results_dir=tmp_path / "r", overrides=overrides, device="cpu", keep_going=False, log=lambda s: None,
    )  # fmt: skip
    assert [o.status for o in outcomes] == ["done"]
    rec = json.loads((tmp_path / "r" / spec.name / "cpu" / "unet-seed0.json").read_text(encoding="utf-8"))
    assert rec["overrides"] == overrides
    assert rec["settings"]["extra_train"]["precision"] == "bf16"
    assert rec["identity"]["train"]["precision"] == "bf16" and rec["device"]["bf16"] == "emulated"
    monkeypatch.delenv(ENV)  # checked later, without the variable: still current
    typed = RunRecord.from_dict(rec)
    assert rec["identity"] == identity.expected_for(typed)
    assert identity.staleness(typed)[0] == "current"
    assert audit.record_problems(typed) == []  # `lungseg results check`: its params resolve to its identity
