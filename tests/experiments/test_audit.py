"""`lungseg results check` refuses a results page or record that is not what the code produced: a
hand-made identity mark, params that contradict the record's settings or identity, metrics that do
not recompute from the per-image rows, a record in another cell's file, a page that is not what its
records generate (a record edited after the page included) — and warns of records made from
uncommitted code (refused with --strict), which the page marks. Each case starts from committed
records (docs/results/**.json), edited as a hand would."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from lungseg.cli import results as cli
from lungseg.experiments import audit, identity
from lungseg.experiments import report as rep
from lungseg.experiments.records import RunRecord, load_records
from lungseg.experiments.specs import TABLES

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "docs" / "results"
T1 = TABLES["lgnet-table1"]
#: recorded identities, lungseg/ dirty for lgnet, segnet, unet; clean for u2net_p (commit after c90d91f)
PAPER = RESULTS / "lgnet-table1" / "cpu-paper"
#: recorded, clean, current
LGNET_CPU = RESULTS / "lgnet-table1" / "cpu" / "lgnet-seed0.json"
#: marked unrecorded (commit 50bcfe78ff, before 4ccf5a1), lungseg/ dirty
SEGNET_CPU = RESULTS / "lgnet-table1" / "cpu" / "segnet-seed0.json"


def _raw(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _rec(raw: dict, path: Path | None = None) -> RunRecord:
    return dataclasses.replace(RunRecord.from_dict(raw), path=path)


def _copy_paper(tmp_path: Path) -> Path:
    results = tmp_path / "results"
    shutil.copytree(PAPER, results / "lgnet-table1" / "cpu-paper")
    return results


def _check(results, capsys, **kw) -> tuple[int, str, str]:
    args = {"results_dir": results, "mark": False, "stale_reason": None, "renote": False, "no_page": True}
    code = cli._check(argparse.Namespace(**{**args, **kw}))
    out = capsys.readouterr()
    return code, out.out, out.err


# ------------------------------------------------------------------------------------ (a) the identity's mark


def test_a_hand_made_unrecorded_mark_is_refused():
    raw = _raw(PAPER / "u2net_p-seed0.json")  # recorded, made at 9d00be4ab5 (after c90d91f)
    rec = RunRecord.from_dict(raw)
    assert identity.staleness(rec, REPO) == ("current", "")
    note = identity.unrecorded_note(rec, REPO)
    # the recorded identity flipped to unrecorded, kept or replaced by a note
    flipped = _rec({**raw, "identity": {**raw["identity"], "status": "unrecorded", "note": note}})
    status, why = identity.staleness(flipped, REPO)
    assert status == "invalid" and "carries constructor, loss, model, preset, preset_deviations, train" in why
    replaced = _rec({**raw, "identity": identity.unrecorded_identity(note)})
    assert identity.staleness(replaced, REPO) == (
        "invalid",
        "identity.status 'unrecorded' in a record_version 2 record: that runner records the identity",
    )
    # ... and with record_version 1 too: git history says the run recorded its identity
    if not identity._git_knows(REPO, identity.IDENTITY_SINCE):
        pytest.skip("this checkout's history does not hold c90d91f")
    older = _rec({**raw, "record_version": 1, "identity": identity.unrecorded_identity(note)})
    status, why = identity.staleness(older, REPO)
    assert status == "invalid" and why.endswith(
        "made at 9d00be4ab5, not before c90d91f (every run since records its identity)"
    )


def test_other_status_values_and_notes_are_refused():
    raw = _raw(LGNET_CPU)
    for status in ("bogus", None, "current"):  # today's code called these current: the status was not read
        bad = _rec({**raw, "identity": {**raw["identity"], "status": status}})
        assert identity.staleness(bad, REPO) == (
            "invalid",
            f"identity.status {status!r} is neither 'recorded' nor 'unrecorded'",
        )
    # a stale mark on a record today's code builds
    stale = _rec({**raw, "identity": {**raw["identity"], "stale": "before X (differs: …)"}})
    assert identity.staleness(stale, REPO)[0] == "invalid"
    # an unrecorded mark without a note; the note of a committed unrecorded record is what git history
    # says of it, a hand-written one is not
    old = _raw(SEGNET_CPU)
    assert identity.staleness(_rec({**old, "identity": {"status": "unrecorded"}}), REPO)[0] == "invalid"
    assert identity.staleness(RunRecord.from_dict(old), REPO)[0] == "unrecorded"
    if not identity._git_knows(REPO, identity.IDENTITY_SINCE):
        pytest.skip("this checkout's history does not hold c90d91f")
    edited = _rec({**old, "identity": {"status": "unrecorded", "note": "made at 50bcfe78ff, all fine"}})
    status, why = identity.staleness(edited, REPO)
    assert status == "invalid" and why.startswith(
        "identity.note 'made at 50bcfe78ff, all fine' is not what git history says"
    )


def test_check_command_names_the_file_of_a_hand_made_mark(tmp_path, capsys):
    results = _copy_paper(tmp_path)
    assert _check(results, capsys)[0] == 0
    path = results / "lgnet-table1" / "cpu-paper" / "lgnet-seed0.json"
    raw = _raw(path)
    raw["identity"]["status"] = "bogus"
    path.write_text(json.dumps(raw), encoding="utf-8")
    code, out, err = _check(results, capsys)
    assert code == 1
    assert (
        f"error: {path}: identity invalid: identity.status 'bogus' is neither 'recorded' nor 'unrecorded'"
        in err.splitlines()
    )
    assert "invalid: lgnet-table1/cpu-paper/lgnet-seed0: " in out


# ------------------------------------------------------------------------------------ (b) params


def test_params_that_contradict_the_settings_are_refused(tmp_path, capsys):
    raw = _raw(LGNET_CPU)
    assert audit.record_problems(_rec(raw, LGNET_CPU)) == []
    raw["params"]["train"]["epochs"] = 30  # the identity and settings say 20
    raw["params"]["preprocess"]["image_size"] = 128
    problems = audit.record_problems(_rec(raw, LGNET_CPU))
    assert problems == [
        "params.train.epochs is 30, its settings say 20",
        "params.preprocess.image_size is 128, its settings say 64",
    ]
    results = tmp_path / "results"
    path = results / "lgnet-table1" / "cpu" / "lgnet-seed0.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(raw), encoding="utf-8")
    code, _, err = _check(results, capsys)
    assert code == 1 and f"error: {path}: params.train.epochs is 30, its settings say 20" in err.splitlines()


def test_params_resolve_to_the_recorded_identity():
    # the paper preset applied to what the runner gave (lr 0.01, no scheduler, no weight decay, Eq. 14-15)
    # reproduces the identity the run read from its best.pt
    rec = RunRecord.read(PAPER / "lgnet-seed0.json")
    derived = audit.params_identity(rec)
    assert derived == rec.identity
    assert derived["train"]["lr"] == 0.01 and derived["train"]["scheduler"] == "none"
    assert derived["loss"]["options"] == {"binary_background": True, "class_reduction": "sum"}
    # a params key no setting names, edited: the identity no longer follows from the params
    raw = _raw(LGNET_CPU)
    raw["params"]["train"]["weight_decay"] = 0.5
    (problem,) = audit.record_problems(_rec(raw, LGNET_CPU))
    assert (
        problem
        == "identity is not what its params resolve to (recorded → from params: train.weight_decay: 1e-05 → 0.5)"
    )


# ------------------------------------------------------------------------------------ (c) uncommitted code


def test_records_of_uncommitted_code_warn_strict_refuses(tmp_path, capsys):
    results = _copy_paper(tmp_path)
    code, _, err = _check(results, capsys)
    folder = results / "lgnet-table1" / "cpu-paper"
    warned = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert code == 0 and warned == [
        f"warning: {folder / name}: made from a dirty tree (lungseg/ had uncommitted changes at {commit}): "
        "the commit does not name all the code that ran"
        for name, commit in (
            ("lgnet-seed0.json", "a40a3d34e8"),
            ("segnet-seed0.json", "a88fceffb5"),
            ("unet-seed0.json", "a40a3d34e8"),
        )
    ]
    code, _, err = _check(results, capsys, strict=True)
    assert code == 1 and sum(line.startswith("error: ") and "dirty tree" in line for line in err.splitlines()) == 3
    # a record whose code state is not recorded is named too (and refused under --strict)
    raw = _raw(folder / "u2net_p-seed0.json")
    raw["git"]["dirty"] = None
    (folder / "u2net_p-seed0.json").write_text(json.dumps(raw), encoding="utf-8")
    code, _, err = _check(results, capsys)
    assert (
        code == 0
        and "u2net_p-seed0.json: whether lungseg/ had uncommitted changes at 9d00be4ab5 is not recorded" in err
    )
    assert _check(results, capsys, strict=True)[0] == 1


def test_the_page_marks_the_seeds_made_from_uncommitted_code():
    block = rep.render_block(T1, "cpu-paper", load_records(RESULTS, "lgnet-table1", "cpu-paper"))
    lines = block.splitlines()
    assert any(line.startswith("| LG-Net | 0§ | ") for line in lines)
    assert any(line.startswith("| U²-Net (U²-Net-P) | 0 | ") for line in lines)  # clean tree: no mark
    assert (
        "- **§ Uncommitted code**: made while `lungseg/` had uncommitted changes (`git.dirty`), so the commit "
        "named does not name all the code that ran — 3 of 4 records: lgnet-seed0, segnet-seed0, unet-seed0"
    ) in lines


# ------------------------------------------------------------------------------------ (d) numbers, files, page


def test_metrics_that_do_not_recompute_from_the_per_image_rows_are_refused():
    raw = _raw(LGNET_CPU)
    mean = raw["metrics"]["dice_mean"]
    edited = json.loads(json.dumps(raw))
    edited["metrics"]["dice_mean"] = mean + 0.01
    assert audit.summary_problems(_rec(edited)) == [
        f"metrics.dice_mean {mean + 0.01:.6g} is not the mean of its per-image dice ({mean:.6g})"
    ]
    edited = json.loads(json.dumps(raw))
    row = edited["per_image"][0]
    row["tp"] += 1
    row["fn"] -= 1  # still the image's pixels: dice, iou, miou, sen change with it; sums and pooled too
    problems = audit.summary_problems(_rec(edited))
    assert f"per_image {row['id']}: dice {row['dice']:.6g} is not its confusion counts' (" in "\n".join(problems)
    assert any(p.startswith("metrics.tp_sum ") for p in problems)
    assert any(p.startswith("metrics.dice_pooled ") for p in problems)
    edited = json.loads(json.dumps(raw))
    edited["per_image"].pop()
    assert audit.summary_problems(_rec(edited))[0] == "metrics.n_images 20, 19 per-image rows, test split 20"


def test_a_record_in_another_cells_file_is_refused(tmp_path):
    path = tmp_path / "lgnet-table1" / "cpu" / "lgnet-seed1.json"
    assert audit.record_problems(_rec(_raw(LGNET_CPU), path)) == [
        "the file lies at lgnet-table1/cpu/lgnet-seed1.json but the record is lgnet-table1/cpu/lgnet-seed0.json"
    ]


def test_every_committed_record_is_what_its_file_table_and_numbers_say():
    assert {str(r.path): audit.record_problems(r) for r in load_records(RESULTS) if audit.record_problems(r)} == {}


def test_a_record_edited_after_the_page_fails_the_page(tmp_path, capsys, monkeypatch):
    results = _copy_paper(tmp_path)
    page = tmp_path / "results.md"
    rep.update_report(page, results)
    assert rep.page_problems(page, results) == []
    # a field the page does not show (the training history): its records digest no longer matches
    path = results / "lgnet-table1" / "cpu-paper" / "unet-seed0.json"
    raw = _raw(path)
    raw["train_metrics"]["best_epoch"] = 99
    path.write_text(json.dumps(raw), encoding="utf-8")
    assert rep.page_problems(page, results) == ["block lgnet-table1/cpu-paper is not what its records generate"]
    code, _, err = _check(results, capsys, no_page=False, report=page)
    assert code == 1
    assert (
        f"error: {page}: block lgnet-table1/cpu-paper is not what its records generate (run lungseg results report)"
        in err.splitlines()
    )
    rep.update_report(page, results)
    assert _check(results, capsys, no_page=False, report=page)[0] == 0
    # a number typed into the page, and a quote that is not the records'
    text = page.read_text(encoding="utf-8")
    page.write_text(text.replace("| LG-Net | 0§ | 92.7 (n=1) |", "| LG-Net | 0§ | 93.7 (n=1) |", 1), encoding="utf-8")
    assert rep.page_problems(page, results) == ["block lgnet-table1/cpu-paper is not what its records generate"]
    page.write_text(
        text + "\nLG-Net reaches <!--=lgnet-table1/cpu-paper/lgnet/dice/mean-->60.0<!--/--> %.\n", encoding="utf-8"
    )
    assert rep.page_problems(page, results) == [
        "quote lgnet-table1/cpu-paper/lgnet/dice/mean shows '60.0', its records give '58.2'"
    ]
    assert _check(results, capsys, no_page=False, report=tmp_path / "absent.md")[0] == 1
    # a block of a table/profile that does not exist: update_report leaves it, the check names it
    orphan = (
        "<!-- BEGIN GENERATED: lgnet-table3/cpu -->\n| LG-Net | 0 | 99.0 |\n<!-- END GENERATED: lgnet-table3/cpu -->\n"
    )
    page.write_text(text + orphan, encoding="utf-8")
    assert rep.page_problems(page, results) == [
        "block lgnet-table3/cpu is generated by no table and profile (remove it)"
    ]
    # the default page (docs/results.md) is compared with the default records only, not with another folder's
    monkeypatch.chdir(REPO)
    assert _check(results, capsys, no_page=False)[0] == 0


def test_results_check_passes_on_the_committed_page_and_records(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    code, out, err = _check(Path("docs/results"), capsys, no_page=False, report=Path("docs/results.md"))
    assert code == 0, err
    assert not [line for line in err.splitlines() if line.startswith("error: ")]
