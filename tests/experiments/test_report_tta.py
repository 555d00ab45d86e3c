"""Review of #25: the results page never said which test-time augmentation its records were scored with,
and a block whose row mixed records scored with different tta averaged them silently. The settings line
names it; such a row is refused in one line naming the files (``lungseg results report``) and reported by
``lungseg results check``."""

from __future__ import annotations

import pytest
from test_report import SPEC, make_record, write

from lungseg.errors import DataError
from lungseg.experiments import report as rep
from lungseg.experiments.report import load_records, render_block


def _scored(rec: dict, tta: str | None) -> dict:
    if tta is not None:  # None: a record from before serving settings were recorded (scored without tta)
        rec["metrics"]["serving"] = {"threshold": 0.5, "tta": tta, "postprocess": "none"}
    return rec


def test_the_settings_line_names_the_scoring_tta(tmp_path):
    for seed in range(2):
        write(tmp_path, _scored(make_record("lgnet", seed, 0.6), "mirror"))
    block = render_block(SPEC, "cpu", load_records(tmp_path, SPEC.name, "cpu"))
    line = next(x for x in block.splitlines() if x.startswith("- **Settings used**"))
    assert line.endswith("; scored with test-time augmentation mirror (`metrics.serving.tta`)")
    old = tmp_path / "old"
    write(old, _scored(make_record("lgnet", 0, 0.6), None))
    assert "scored with test-time augmentation none" in render_block(SPEC, "cpu", load_records(old, SPEC.name, "cpu"))


def test_a_row_mixing_tta_is_refused_naming_the_files(tmp_path):
    write(tmp_path, _scored(make_record("lgnet", 0, 0.6), "mirror"))
    write(tmp_path, _scored(make_record("lgnet", 1, 0.7), None))
    write(tmp_path, _scored(make_record("unet", 0, 0.5), "none"))  # another row, alone: fine
    records = load_records(tmp_path, SPEC.name, "cpu")
    with pytest.raises(DataError) as err:
        render_block(SPEC, "cpu", records)
    text = str(err.value)
    assert "\n" not in text and text.startswith(str(tmp_path / SPEC.name / "cpu") + ": row lgnet")
    assert "lgnet-seed0.json tta mirror, lgnet-seed1.json tta none" in text
    (line,) = rep.mix_problems(records)
    assert line == text
    # the same row of another profile is not mixed with it
    other = make_record("lgnet", 0, 0.6)
    other["profile"] = "cpu-nnunet"
    write(tmp_path, _scored(other, "none"))
    assert len(rep.mix_problems(load_records(tmp_path))) == 1
    # the page reports it instead of failing
    page = tmp_path / "results.md"
    page.write_text("# Results\n", encoding="utf-8")
    assert rep.page_problems(page, tmp_path) == [f"cannot be generated: {text}"]


def test_results_check_reports_a_row_mixing_tta(tmp_path, capsys):
    from lungseg.cli import main

    write(tmp_path, _scored(make_record("lgnet", 0, 0.6), "mirror"))
    write(tmp_path, _scored(make_record("lgnet", 1, 0.7), "none"))
    code = main(["results", "check", "--results-dir", str(tmp_path), "--no-page"])
    err = capsys.readouterr().err
    assert code == 1
    assert any(
        x.startswith("error: ") and "lgnet-seed0.json tta mirror, lgnet-seed1.json tta none" in x
        for x in err.splitlines()
    )
