"""The resolved identity of a results cell: what today's code builds, how a record is judged
current, marked (made by older code) or different, and the command that marks."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest

from lungseg.cli import results as cli
from lungseg.errors import ConfigError
from lungseg.experiments import identity
from lungseg.experiments.records import RunRecord
from lungseg.experiments.specs import TABLES

REPO = Path(__file__).resolve().parents[2]
T1 = TABLES["lgnet-table1"]


def test_expected_identity_is_fully_resolved():
    ident = identity.expected_identity(T1, "cpu", T1.row("lgnet"))
    assert ident["status"] == "recorded" and ident["model"]["name"] == "lgnet"
    ctor = ident["constructor"]
    # every constructor argument, the defaults included
    assert ctor["mrc_levels"] == 4 and ctor["max_tokens"] == 256 and ctor["use_mrc"] is True
    assert {"use_lg_attention", "use_ff", "rse_dropout", "in_channels", "num_classes"} <= set(ctor)
    assert ident["train"]["lr"] == 0.001 and ident["train"]["loss"] == "dice_focal"
    assert "seed" not in ident["train"] and "device" not in ident["train"]
    assert ident["loss"] == {"name": "dice_focal", "options": {}, "form": "foreground-only Dice"}
    assert ident["preset"] == "default" and ident["preset_deviations"] == {}


def test_paper_preset_identity_has_the_eq14_loss_and_the_deviations():
    ident = identity.expected_identity(T1, "cpu-paper", T1.row("lgnet"))
    assert ident["loss"]["options"] == {"binary_background": True, "class_reduction": "sum"}
    assert ident["loss"]["form"].startswith("Eq. 14–15")
    assert ident["train"]["lr"] == 0.01 and ident["train"]["scheduler"] == "none"
    assert set(ident["preset_deviations"]) == {"epochs", "image_size"}
    assert ident["constructor"]["max_tokens"] == 4096


def _record(ident=None, **kw):
    return RunRecord.from_dict(
        {
            "table": "lgnet-table1",
            "profile": "cpu",
            "row": "lgnet",
            "model": "lgnet",
            "seed": 0,
            "identity": ident,
            "git": {"commit": "50bcfe78ff1a233f0b08a9dc42e3c42378bf0342"},
            **kw,
        }
    )


def test_staleness_tells_current_from_older_code():
    expected = identity.expected_identity(T1, "cpu", T1.row("lgnet"))
    assert identity.staleness(_record(expected)) == ("current", "")
    # the identity the code before 4ccf5a1 built: MRC on 5 levels — named, not accepted
    old = json.loads(json.dumps(expected))
    old["constructor"]["mrc_levels"] = 5
    status, note = identity.staleness(_record(old))
    assert status == "differs" and "constructor.mrc_levels: 5 → 4" in note
    assert identity.staleness(_record(None))[0] == "missing"
    # (record_version 1: the runner that writes version 2 records the identity; a v2 record marked
    # unrecorded is refused, see test_a_hand_made_unrecorded_mark_is_refused)
    marked = _record(identity.unrecorded_identity("made before mrc_levels 5 → 4, commit 4ccf5a1"), record_version=1)
    assert identity.staleness(marked) == ("unrecorded", "made before mrc_levels 5 → 4, commit 4ccf5a1")
    assert marked.made_by_older_code == "identity unrecorded (made before mrc_levels 5 → 4, commit 4ccf5a1)"
    assert _record(expected).made_by_older_code is None


def test_unrecorded_note_says_what_git_history_knows():
    note = identity.unrecorded_note(_record(None), REPO)
    assert note.startswith("made at 50bcfe78ff, before records carried the resolved identity")
    assert "made before mrc_levels 5 → 4, commit 4ccf5a1" in note
    assert "made before the Eq. 14–15 Dice form (foreground-only Dice before), commit 4ccf5a1" in note
    unet = dataclasses.replace(_record(None), model="unet", row="unet")
    assert "mrc_levels" not in identity.unrecorded_note(unet, REPO)


def _write(folder: Path, rec: RunRecord) -> Path:
    path = folder / rec.table / rec.profile / f"{rec.cell}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec.to_dict()), encoding="utf-8")
    return path


def _check(results, **kw):
    args = {"results_dir": results, "mark": False, "stale_reason": None, "renote": False, "no_page": True, **kw}
    return cli._check(argparse.Namespace(**args))


#: a committed record today's code calls current (lgnet-table1/cpu/lgnet-seed0: recorded, clean tree)
CURRENT = REPO / "docs" / "results" / "lgnet-table1" / "cpu" / "lgnet-seed0.json"


def _full(seed=0, ident="same", version=2, commit=None) -> RunRecord:
    """A complete record (the committed :data:`CURRENT` as seed ``seed``), with another identity,
    record_version or commit when given."""
    raw = json.loads(CURRENT.read_text(encoding="utf-8"))
    raw["seed"] = raw["params"]["train"]["seed"] = seed
    raw["record_version"] = version
    if ident != "same":
        raw["identity"] = ident
    if commit is not None:
        raw["git"]["commit"] = commit
    return RunRecord.from_dict(raw)


def test_check_command_fails_until_older_records_are_marked(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    results = tmp_path / "results"
    expected = identity.expected_identity(T1, "cpu", T1.row("lgnet"))
    current = _write(results, _full(0, expected))
    older = _write(results, _full(1, None, version=1, commit="50bcfe78ff1a233f0b08a9dc42e3c42378bf0342"))
    assert _check(results) == 1
    assert "missing: lgnet-table1/cpu/lgnet-seed1" in capsys.readouterr().out
    assert _check(results, mark=True) == 0
    marked = RunRecord.read(older)
    assert marked.identity["status"] == "unrecorded" and "4ccf5a1" in marked.identity["note"]
    assert RunRecord.read(current).identity == expected  # a current record is left as it is
    # a recorded identity that today's code no longer builds: the mark needs a reason
    drift = json.loads(json.dumps(expected))
    drift["train"]["weight_decay"] = 0.5
    _write(results, _full(2, drift))
    assert _check(results) == 1
    with pytest.raises(ConfigError, match="--stale-reason"):
        identity.mark_records(results, REPO)
    assert _check(results, mark=True, stale_reason="before X") == 0
    stale = RunRecord.read(results / "lgnet-table1" / "cpu" / "lgnet-seed2.json")
    assert stale.made_by_older_code.startswith("stale: before X (differs: train.weight_decay: 0.5 → 1e-05")
    # --renote writes the notes of the unrecorded ones again (from today's landmarks), nothing else
    path = results / "lgnet-table1" / "cpu" / "lgnet-seed1.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    raw["identity"]["note"] = "an older note"
    path.write_text(json.dumps(raw), encoding="utf-8")
    assert _check(results, mark=True, renote=True) == 0
    assert RunRecord.read(path).identity == marked.identity
    assert RunRecord.read(results / "lgnet-table1" / "cpu" / "lgnet-seed2.json") == stale


def test_committed_results_folder_is_fully_judged():
    found = identity.check_records(REPO / "docs" / "results")
    assert not found.get("differs") and not found.get("missing")


def _request(tmp_path, profile="cpu", row="lgnet"):
    from lungseg.experiments import runner

    prof = runner.effective_profile(T1, profile)
    options = runner.RunOptions(workdir=tmp_path, results_dir=tmp_path / "results")
    data = runner.PreparedData(tmp_path / "data", {})
    return runner.CellRequest(spec=T1, profile=profile, prof=prof, row=T1.row(row), seed=0, data=data, options=options)


def _checkpoint(train_dir, model_kwargs):
    import torch

    from lungseg.experiments import runner
    from lungseg.training.presets import resolve_preset

    cfg = resolve_preset(runner.build_params(T1, T1.row("lgnet"), runner.effective_profile(T1, "cpu"), 0).train).config
    cfg = cfg.model_copy(update={"precision": "fp32"})  # training records the resolved precision (on a CPU: #24)
    ident = {"name": "lgnet", "kwargs": {"in_channels": 1, "num_classes": 1, "base_channels": 8, **model_kwargs}}
    train_dir.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"model_identity": ident, "model_state": {}, "config": cfg.model_dump(), "num_classes": 1},
        train_dir / "best.pt",
    )


def test_the_runner_records_what_best_pt_trained_and_refuses_another_model(tmp_path):
    from lungseg.errors import DataError
    from lungseg.experiments import runner

    train = tmp_path / "train"
    _checkpoint(train, {"max_tokens": 256, "mrc_levels": 4})
    ident = runner.trained_identity(_request(tmp_path), train)
    assert ident == identity.expected_identity(T1, "cpu", T1.row("lgnet"))
    # a checkpoint identity without mrc_levels was written before the option: it loads as 5 levels,
    # which is not what the cell's spec builds today — no record is written for it
    _checkpoint(train, {"max_tokens": 256})
    with pytest.raises(DataError, match=r"constructor\.mrc_levels: 5 → 4"):
        runner.trained_identity(_request(tmp_path), train)
