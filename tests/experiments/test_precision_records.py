"""Review of #24, F2/F3/F9: a record made by today's runner at any ``--precision`` passes today's ``lungseg
results check`` (its params carried the deprecated ``amp: true`` beside ``precision: fp32``, a contradiction
when read back); a bf16 record is judged by what it says ran (``device.bf16`` native or emulated), never by
the checking machine's CPU; ``device.bf16`` is recorded only for a run that ran bf16, and a resumed training's
tags say whether its bf16 was native or emulated."""

from __future__ import annotations

import json

import pytest
import torch

from lungseg.cli import main
from lungseg.config import params_from_dict
from lungseg.experiments import audit, identity, runner
from lungseg.experiments.records import RunRecord
from lungseg.experiments.specs import TABLES
from lungseg.training import setup
from lungseg.training.mlflow_run import resume_tags

SPEC = TABLES["lgnet-table1"]
ENV = "LUNGSEG_FORCE_BF16_EMULATION"
#: (this CPU's native bf16, emulation forced) — every machine a record may be checked on
MACHINES = [(True, False), (False, False), (False, True)]


def _machine(monkeypatch, native: bool, forced: bool) -> None:
    monkeypatch.setattr(setup, "cpu_bf16_supported", lambda: native)
    if forced:
        monkeypatch.setenv(ENV, "1")
    else:
        monkeypatch.delenv(ENV, raising=False)


def _record(precision: str | None) -> RunRecord:
    """A record of cell lgnet-table1/cpu/unet seed 0 built with the helpers ``run_cell`` builds it with, the
    run made on this (patched) machine: params as recorded, identity as trained, device as recorded."""
    row, overrides = SPEC.row("unet"), {"precision": precision} if precision else {}
    prof = runner.effective_profile(SPEC, "cpu", overrides)
    params = runner.build_params(SPEC, row, prof, 0, device="cpu")
    ident = identity.expected_identity(SPEC, "cpu", row, overrides=overrides, cpu_bf16=runner.bf16_mode())
    device = runner.device_info("cpu", ran_bf16=ident["train"]["precision"] == "bf16")
    return RunRecord.from_dict(
        {
            "record_version": 2,
            "table": SPEC.name,
            "profile": "cpu",
            "row": "unet",
            "model": row.model,
            "seed": 0,
            "settings": runner.settings_of(prof, row),
            "identity": ident,
            "overrides": overrides,
            "params": runner.record_params(params),
            "device": device,
        }
    )


# every (precision, machine) a run can be made on: bf16 on a CPU without it is refused before any cell
# runs (check_precision), so there is no such record to check
RECORDABLE = [
    (precision, native, forced)
    for precision in (None, "fp32", "bf16")
    for native, forced in MACHINES
    if precision != "bf16" or native or forced
]


@pytest.mark.parametrize(("precision", "native", "forced"), RECORDABLE)
def test_a_record_of_today_s_runner_passes_today_s_check_on_any_machine(monkeypatch, precision, native, forced):
    _machine(monkeypatch, native, forced)
    rec = _record(precision)
    ran_bf16 = rec.identity["train"]["precision"] == "bf16"
    assert ran_bf16 == (precision == "bf16")  # auto is fp32 on a CPU
    assert ("bf16" in rec.device.extra) == ran_bf16  # F9: only a run that ran bf16 says how
    assert "amp" not in rec.params["train"]  # F2: the deprecated default is not written beside precision
    params_from_dict(dict(rec.params))  # the params read back as given
    for check_native, check_forced in MACHINES:  # F3: checked on any machine, the same verdict
        _machine(monkeypatch, check_native, check_forced)
        assert audit.params_problems(rec) == []
        assert identity.expected_for(rec) == rec.identity


def test_params_with_the_deprecated_amp_default_still_resolve():
    """A record written before F2 carries ``amp: true`` beside ``precision: fp32``: still read (amp: true is a
    no-op), while ``amp: false`` (= fp32) is kept."""
    rec = _record("fp32")
    old = RunRecord.from_dict(
        {**rec.to_dict(), "params": {**rec.params, "train": {**rec.params["train"], "amp": True}}}
    )
    assert audit.params_problems(old) == []
    off = {**rec.params, "train": {**rec.params["train"], "amp": False, "precision": "bf16"}}
    with pytest.raises(Exception, match="amp"):  # a real contradiction is still one
        params_from_dict(runner.record_params(off))


@pytest.mark.parametrize(("native", "forced"), MACHINES)
def test_a_bf16_record_is_judged_by_what_it_says_ran(monkeypatch, native, forced):
    _machine(monkeypatch, True, False)
    rec = _record("bf16")  # made on a CPU with native bf16
    _machine(monkeypatch, native, forced)  # checked on another
    for ran in ("native", "emulated"):
        said = RunRecord.from_dict({**rec.to_dict(), "device": {**rec.device.to_dict(), "bf16": ran}})
        assert identity.expected_for(said)["train"]["precision"] == "bf16"
        assert audit.params_problems(said) == [] and identity.staleness(said)[0] == "current"
    # a record that does not say it ran bf16 is expected to have fallen back to fp32: its bf16 identity differs
    silent = RunRecord.from_dict({**rec.to_dict(), "device": {"type": "cpu", "name": "x"}})
    assert identity.expected_for(silent)["train"]["precision"] == "fp32"
    assert identity.staleness(silent)[0] == "differs"
    assert audit.params_problems(silent) == [
        "identity is not what its params resolve to (recorded → from params: train.precision: 'bf16' → 'fp32')"
    ]


def test_resume_tags_say_how_bf16_ran(tmp_path, monkeypatch):
    ckpt = tmp_path / "checkpoint.pt"
    torch.save({"config": {}}, ckpt)
    cfg = params_from_dict({"train": {"precision": "bf16"}}).train
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    _machine(monkeypatch, False, True)
    assert resume_tags(ckpt, cfg, 1, cpu)["lungseg.resume.1.bf16"] == "emulated"
    _machine(monkeypatch, True, False)
    assert resume_tags(ckpt, cfg, 1, cpu)["lungseg.resume.1.bf16"] == "native"
    assert "lungseg.resume.1.bf16" not in resume_tags(ckpt, cfg, 1, cuda)
    fp32 = params_from_dict({"train": {"precision": "fp32"}}).train
    assert "lungseg.resume.2.bf16" not in resume_tags(ckpt, fp32, 2, cpu)


@pytest.mark.slow
def test_tiny_fp32_and_bf16_cells_pass_results_check(tmp_path, shared_data, monkeypatch, capsys):
    """Real cells through the runner (lgnet-table1 32², U-Net base 4, 1 epoch): ``--precision fp32`` and a forced,
    emulated ``--precision bf16``, each in its own results folder, pass ``lungseg results check``, on this
    machine and as if checked on one with native bf16."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    _machine(monkeypatch, False, True)
    overrides = {"image_size": 32, "base_channels": 4, "epochs": 1}
    paths = {}
    for precision in ("fp32", "bf16"):
        outcomes = runner.run_table(
            SPEC, profile="cpu", seeds=[0], rows=["unet"], data_root=shared_data, workdir=tmp_path / "w",
            results_dir=tmp_path / precision, overrides={**overrides, "precision": precision}, device="cpu",
            keep_going=False, log=lambda s: None,
        )  # fmt: skip
        assert [o.status for o in outcomes] == ["done"]
        paths[precision] = tmp_path / precision / SPEC.name / "cpu" / "unet-seed0.json"
    fp32, bf16 = (json.loads(p.read_text(encoding="utf-8")) for p in paths.values())
    assert fp32["identity"]["train"]["precision"] == "fp32" and "bf16" not in fp32["device"]
    assert bf16["identity"]["train"]["precision"] == "bf16" and bf16["device"]["bf16"] == "emulated"
    capsys.readouterr()
    for native, forced in MACHINES:
        _machine(monkeypatch, native, forced)
        for precision in ("fp32", "bf16"):
            code = main(["results", "check", "--results-dir", str(tmp_path / precision), "--no-page"])
            errors = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error: ")]
            assert (code, errors) == (0, []), (native, forced, precision)
