"""The ``prnet-kaggle`` table's own split (the PR-Net paper's 211 / 26 / 27 proportions, seeded) is
part of the data identity of its records: a record that ran another split is flagged until marked,
a re-run never averages two splits, and the page says which split and which DSA softmax ran."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from lungseg.errors import ConfigError
from lungseg.experiments import identity, runner
from lungseg.experiments.records import DataProvenance, RunRecord
from lungseg.experiments.report import render_block
from lungseg.experiments.specs import PRNET_SPLIT, TABLES
from lungseg.experiments.tables import split_record

REPO = Path(__file__).resolve().parents[2]
KAGGLE = TABLES["prnet-kaggle"]
KAGGLE_RAW = Path(os.environ.get("LUNGSEG_SHARED_DATA", REPO.parent / "shared" / "data")) / KAGGLE.input_subdir


def _record(split=None, ident=None, table="prnet-kaggle", row="prnet", model="prnet", **kw):
    data = {"counts": {"train": 181, "val": 32, "test": 54}, "preprocess": {"seed": 0}}
    return RunRecord.from_dict(
        {
            "table": table,
            "profile": "cpu",
            "row": row,
            "model": model,
            "seed": 0,
            "identity": ident,
            "git": {"commit": "50bcfe78ff1a233f0b08a9dc42e3c42378bf0342"},
            "data": {**data, **({"split": split} if split is not None else {})},
            **kw,
        }
    )


def test_the_table_split_is_the_papers_proportions():
    assert KAGGLE.split is PRNET_SPLIT and PRNET_SPLIT.name == "prnet-211-26-27"
    assert round(PRNET_SPLIT.test_fraction * 264) == 27 and round(PRNET_SPLIT.val_fraction * (264 - 27)) == 26
    params = runner.build_params(KAGGLE, KAGGLE.row("prnet"), runner.effective_profile(KAGGLE, "cpu"), 0)
    assert params.preprocess.split == "seeded" and params.preprocess.seed == 0
    assert params.preprocess.test_fraction == 27 / 264 and params.preprocess.val_fraction == 26 / 237
    # every other table keeps the source's published split, with the preprocess settings of before
    for name in ("lgnet-table1", "lgnet-ablation", "infnet-protocol"):
        spec = TABLES[name]
        assert spec.split is None and split_record(spec) == {"name": "published", "seed": 0}
        prof = runner.effective_profile(spec, "cpu")
        assert runner.build_params(spec, spec.rows[0], prof, 0).preprocess.split == "published"


def test_a_record_of_another_split_differs_until_marked(tmp_path):
    # record_version 1: records marked unrecorded were written before the runner recorded identities (v2)
    note = "made at 50bcfe78ff, before records carried the identity"
    old = _record(ident=identity.unrecorded_identity(note), record_version=1)
    status, note = identity.staleness(old)
    assert status == "differs"
    assert note == "data split published (seed 0, {'test': 54, 'train': 181, 'val': 32}) → prnet-211-26-27 (seed 0)"
    # marking writes the split into the note (no --stale-reason needed: a fact of the record and its table)
    path = tmp_path / "prnet-kaggle" / "cpu" / "prnet-seed0.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(old.to_dict()), encoding="utf-8")
    [marked] = identity.mark_records(tmp_path, REPO)
    assert identity.staleness(marked)[0] == "unrecorded"
    assert marked.made_by_older_code.endswith("→ prnet-211-26-27 (seed 0))")
    # a record that ran the table's split has no split difference; one of another table is unaffected
    assert identity.split_difference(_record(split=PRNET_SPLIT.record())) == ""
    assert identity.split_difference(_record(table="lgnet-table1", row="lgnet", model="lgnet")) == ""
    # a recorded identity that is today's but ran the old split differs too
    expected = identity.expected_identity(KAGGLE, "cpu", KAGGLE.row("prnet"))
    assert identity.staleness(_record(split=PRNET_SPLIT.record(), ident=expected)) == ("current", "")
    status, note = identity.staleness(_record(ident=expected))
    assert status == "differs" and note.startswith("data split published")


def test_the_split_is_part_of_the_data_identity():
    ran_old, ran_new = _record().data, _record(split=PRNET_SPLIT.record()).data
    assert ran_old.split_used() == {"name": "published", "seed": 0}  # records of before: the published split
    assert ran_old.identity() != ran_new.identity()
    assert DataProvenance.from_dict(ran_new.to_dict()).identity() == ran_new.identity()
    assert "split `prnet-211-26-27` (seed 0)" in ran_new.describe()
    assert "split" not in ran_old.to_dict()  # a record of before round-trips unchanged


def test_a_rerun_never_averages_two_splits(tmp_path):
    prof = runner.effective_profile(KAGGLE, "cpu")
    settings = runner.settings_of(prof, KAGGLE.row("prnet"))
    path = tmp_path / "prnet-seed0.json"
    path.write_text(json.dumps({"settings": settings, "data": {"preprocess": {"seed": 0}}}), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"made on the data split .*published.* use --force"):
        runner.existing_record(path, settings, split_record(KAGGLE))
    path.write_text(json.dumps({"settings": settings, "data": {"split": PRNET_SPLIT.record()}}), encoding="utf-8")
    assert runner.existing_record(path, settings, split_record(KAGGLE)) is not None


@pytest.mark.skipif(not KAGGLE_RAW.is_dir(), reason="the Kaggle lung-field npy set is not beside the repository")
def test_the_prepared_data_has_the_split_and_records_it(tmp_path):
    prof = runner.effective_profile(KAGGLE, "cpu")
    data = runner.prepare_dataset(
        KAGGLE, prof, data_root=REPO.parent / "shared" / "data", workdir=tmp_path, log=lambda _: None
    )
    assert data.data_dir.name == "kaggle-64-64-prnet-211-26-27"
    assert data.provenance["counts"] == {"train": 214, "val": 26, "test": 27}  # 267 slices, the paper's proportions
    assert data.provenance["split"] == PRNET_SPLIT.record()
    assert data.provenance["preprocess"]["split"] == "seeded"


def test_the_page_says_which_dsa_softmax_ran():
    """The identity line of a table names PR-Net's DSA normalisation: Eq. 1's (query) or the key
    softmax; records made before the option ran the key softmax, the only one there was."""
    from lungseg.experiments.records import load_records

    older = [r for r in load_records(REPO / "docs" / "results", "prnet-kaggle", "cpu")]
    assert any(r.model == "prnet" for r in older)
    block = render_block(KAGGLE, "cpu", older)
    assert "PR-Net: DSA softmax over keys (not Eq. 1's; the only form then)" in block
    assert "split `published` (seed 0)" in block  # the split these older records ran
    for axis, text in (("query", "DSA softmax over queries (Eq. 1)"), ("key", "DSA softmax over keys (not Eq. 1's)")):
        table = dataclasses.replace(KAGGLE, rows=(KAGGLE.row("prnet"),))
        ident = identity.expected_identity(table, "cpu", table.row("prnet"))
        ident["constructor"]["dsa_softmax"] = axis
        rec = dataclasses.replace(older[[r.model for r in older].index("prnet")], identity=ident)
        assert f"PR-Net: {text}" in render_block(table, "cpu", [rec])
