"""Review of #24, F4: a results row averaged fp32 and bf16 runs (only a "mixes settings" line said so) and
``lungseg results check`` passed it. A row whose records trained in different precision — what each record
says ran: its identity's resolved ``train.precision``, else what its settings asked, else what ``auto`` did
then — is refused in one line naming the files (``lungseg results report``), as a tta mix is, and reported
by ``lungseg results check``."""

from __future__ import annotations

import pytest
from test_report import SPEC, make_record, write

from lungseg.errors import DataError
from lungseg.experiments import report as rep
from lungseg.experiments.records import RunRecord
from lungseg.experiments.report import load_records, ran_precision, render_block


def _trained(rec: dict, precision: str | None, asked: str | None = None) -> dict:
    """``rec`` with a recorded identity that trained in ``precision`` (None: no identity, a record made before
    it was recorded) and, given, ``asked`` as its ``--precision`` override."""
    if asked is not None:
        rec["settings"]["extra_train"] = {"precision": asked}
        rec["overrides"] = {"precision": asked}
    if precision is not None:
        rec["identity"] = {"status": "recorded", "train": {"precision": precision}}
    return rec


def test_ran_precision_is_what_the_record_says_ran():
    def of(rec):
        return ran_precision(RunRecord.from_dict(rec))

    assert of(_trained(make_record("unet", 0, 0.5), "bf16")) == "bf16"
    assert of(_trained(make_record("unet", 0, 0.5), "fp32", asked="bf16")) == "fp32"  # fell back: what ran counts
    assert of(_trained(make_record("unet", 0, 0.5), None)) == "fp32"  # auto on a CPU, before #24
    assert of(_trained(make_record("unet", 0, 0.5), None, asked="bf16")) == "bf16"
    cuda = make_record("unet", 0, 0.5)
    cuda["device"] = {"type": "cuda", "name": "GPU"}
    assert of(_trained(cuda, None)) == "bf16"  # amp: true on CUDA


def test_a_row_mixing_precision_is_refused_naming_the_files(tmp_path):
    write(tmp_path, _trained(make_record("unet", 0, 0.6), "fp32", asked="fp32"))
    write(tmp_path, _trained(make_record("unet", 1, 0.3), "bf16", asked="bf16"))
    write(tmp_path, _trained(make_record("lgnet", 0, 0.5), "bf16", asked="bf16"))  # another row, alone: fine
    records = load_records(tmp_path, SPEC.name, "cpu")
    with pytest.raises(DataError) as err:
        render_block(SPEC, "cpu", records)
    text = str(err.value)
    assert "\n" not in text and text.startswith(str(tmp_path / SPEC.name / "cpu") + ": row unet")
    assert "trained in different precision (unet-seed0.json precision fp32, unet-seed1.json precision bf16)" in text
    assert rep.mix_problems(records) == [text]
    page = tmp_path / "results.md"
    page.write_text("# Results\n", encoding="utf-8")
    assert rep.page_problems(page, tmp_path) == [f"cannot be generated: {text}"]


def test_records_made_before_the_identity_are_judged_by_what_they_asked(tmp_path):
    write(tmp_path, _trained(make_record("unet", 0, 0.6), None))  # auto on a CPU: fp32
    write(tmp_path, _trained(make_record("unet", 1, 0.3), None, asked="bf16"))
    (line,) = rep.mix_problems(load_records(tmp_path))
    assert "unet-seed0.json precision fp32, unet-seed1.json precision bf16" in line


def test_the_same_precision_asked_differently_is_not_a_precision_mix(tmp_path):
    write(tmp_path, _trained(make_record("unet", 0, 0.6), "fp32"))  # auto, resolved fp32 on the CPU
    write(tmp_path, _trained(make_record("unet", 1, 0.3), "fp32", asked="fp32"))
    records = load_records(tmp_path, SPEC.name, "cpu")
    assert rep.mix_problems(records) == []
    assert "rows with records of different settings" in render_block(SPEC, "cpu", records)  # still warned


def test_results_check_reports_a_row_mixing_precision(tmp_path, capsys):
    from lungseg.cli import main

    write(tmp_path, _trained(make_record("unet", 0, 0.6), "fp32", asked="fp32"))
    write(tmp_path, _trained(make_record("unet", 1, 0.3), "bf16", asked="bf16"))
    code = main(["results", "check", "--results-dir", str(tmp_path), "--no-page"])
    err = capsys.readouterr().err
    assert code == 1
    assert any(
        x.startswith("error: ") and "unet-seed0.json precision fp32, unet-seed1.json precision bf16" in x
        for x in err.splitlines()
    )
