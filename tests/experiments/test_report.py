"""Aggregation over seeds and the generated report, on hand-made run records (no training)."""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path

import pytest

from lungseg.experiments import report as rep
from lungseg.experiments.records import RunRecord
from lungseg.experiments.report import Summary, aggregate_rows, load_records, render_block, update_report
from lungseg.experiments.specs import TABLES
from lungseg.io import atomic_write_json

SPEC = TABLES["lgnet-table1"]
REPO = Path(__file__).resolve().parents[2]
RESULTS, REPORT = REPO / "docs" / "results", REPO / "docs" / "results.md"
SETTINGS = {"image_size": 64, "base_channels": 8, "epochs": 2, "batch_size": 4, "lr": 0.001, "extra_train": {}}


def make_record(
    row: str, seed: int, dice: float | None, acc: float = 0.9, hd95: float | None = 3.0, **settings
) -> dict:
    model = SPEC.row(row).model
    return {
        "table": SPEC.name,
        "profile": "cpu",
        "row": row,
        "seed": seed,
        "settings": {**SETTINGS, **settings, "model": model, "model_kwargs": {}},
        "overrides": {},
        "metrics": {
            "dice_mean": dice,
            "iou_mean": None if dice is None else dice / (2 - dice),
            "miou_mean": 0.7,
            "acc_mean": acc,
            "hd95_mean": hd95,
            "dice_pooled": 0.5,
            "acc_pooled": acc,
            "miou_pooled": 0.75,
            "hd_undefined": 1,
        },
        "wall_time_s": {"train": 10.0, "evaluate": 1.0, "total": 11.0},
        "device": {"name": "Test CPU", "type": "cpu", "torch": "x"},
        "git": {"commit": "0123456789abcdef", "dirty": False},
        "data": {
            "dataset": "medseg",
            "input_subdir": "medseg-covid100",
            "raw_sha256": "ab" * 32,
            "raw_n_files": 202,
            "processed_sha256": {"images.npy": "cd" * 32},
            "counts": {"train": 68, "val": 12, "test": 20},
            "image_size": 64,
            "split_level": "slice",
            "warnings": ["slice-level split: hand-made"],
        },
        "command": f"lungseg results run --table {SPEC.name} --profile cpu",
    }


def write(results, rec):
    path = results / rec["table"] / rec["profile"] / f"{rec['row']}-seed{rec['seed']}.json"
    atomic_write_json(path, rec)
    return path


def test_summary_mean_and_sample_std():
    s = Summary.of([0.5, 0.7, 0.9])
    assert s.mean == pytest.approx(0.7)
    assert s.std == pytest.approx(statistics.stdev([0.5, 0.7, 0.9]))  # ddof = 1 → 0.2
    assert s.std == pytest.approx(0.2)
    assert (s.n, s.n_nan) == (3, 0)
    assert s.format(100, 1) == "70.0 ± 20.0"
    assert s.format(1, 3) == "0.700 ± 0.200"


def test_summary_nan_handling():
    s = Summary.of([0.5, None, float("nan"), 0.7])
    assert (s.n, s.n_nan) == (2, 2)
    assert s.mean == pytest.approx(0.6)
    assert s.format(1, 2) == "0.60 ± 0.14 [2 NaN]"
    one = Summary.of([0.25, None])
    assert math.isnan(one.std)
    assert one.format(1, 2) == "0.25 (n=1) [1 NaN]"
    none = Summary.of([None, float("nan")])
    assert math.isnan(none.mean)
    assert none.format() == "n/a [2 NaN]"


def test_aggregate_rows_from_records(tmp_path):
    for seed, d in enumerate([0.6, 0.7, 0.8]):
        write(tmp_path, make_record("lgnet", seed, d))
    for seed, d in enumerate([0.4, None, 0.5]):
        write(tmp_path, make_record("unet", seed, d, hd95=None if seed == 0 else 4.0))
    recs = load_records(tmp_path, SPEC.name, "cpu")
    assert len(recs) == 6
    agg = aggregate_rows(SPEC, recs)
    assert set(agg) == {"lgnet", "unet"}  # rows without records are absent
    assert agg["lgnet"]["dice"].mean == pytest.approx(0.7)
    assert agg["lgnet"]["dice"].std == pytest.approx(0.1)
    assert (agg["unet"]["dice"].n, agg["unet"]["dice"].n_nan) == (2, 1)
    assert agg["unet"]["dice"].mean == pytest.approx(0.45)
    assert (agg["unet"]["hd95"].n, agg["unet"]["hd95"].n_nan) == (2, 1)
    pooled = aggregate_rows(SPEC, recs, "pooled")
    assert pooled["lgnet"]["dice"].mean == pytest.approx(0.5)
    assert pooled["lgnet"]["hd95"].n == 0  # there is no pooled HD


def test_rendered_table_keeps_paper_numbers_in_their_own_columns(tmp_path):
    for seed, d in enumerate([0.6, 0.7, 0.8]):
        write(tmp_path, make_record("lgnet", seed, d, acc=0.95 + seed / 100))
    recs = load_records(tmp_path, SPEC.name, "cpu")
    table = rep.render_metric_table(SPEC, recs)
    lines = table.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    # LG-Net's tables show the pooled ACC and mIoU beside the per-image means (the paper's are pooled)
    assert header[:7] == [
        "model",
        "seeds",
        "ours: ACC (%) ↑",
        "ours: pooled ACC (%) ↑",
        "ours: mIoU (%) ↑",
        "ours: pooled mIoU (%) ↑",
        "ours: Dice (%) ↑",
    ]
    assert "paper†: ACC (%)" in header and "paper†: mIoU (%)" in header
    lg = next(row for row in lines if row.startswith("| LG-Net |"))
    cells = [c.strip() for c in lg.strip("|").split("|")]
    assert cells[1] == "0,1,2"
    assert cells[2] == "96.0 ± 1.0"  # ours: ACC in %, mean ± std of 0.95, 0.96, 0.97
    assert cells[3] == "96.0 ± 1.0"  # pooled ACC (the records' acc_pooled)
    assert (cells[4], cells[5]) == ("70.0 ± 0.0", "75.0 ± 0.0")  # mIoU per image vs pooled
    assert cells[6] == "70.0 ± 10.0"  # ours: Dice
    assert cells[-2:] == ["91.5", "80.3"]  # the paper's, as printed
    assert "ours: Dice per seed" in header
    assert cells[header.index("ours: Dice per seed")] == "0: 60.0, 1: 70.0, 2: 80.0"
    unet = next(row for row in lines if row.startswith("| U-Net |"))
    assert "not run" in unet and "—" in unet  # no record, and the paper's Table 1 has no U-Net row
    assert len(unet.strip("|").split("|")) == len(header)  # a row without records keeps every column
    seg = next(row for row in lines if row.startswith("| SegNet |"))
    assert seg.rstrip(" |").endswith("78.8 | 68.8")
    # a table without pooled_beside (and the pooled table itself) has no extra columns
    plain = rep.render_metric_table(SPEC, recs, pooled_beside=())
    assert "pooled" not in plain.splitlines()[0]
    pooled = rep.render_metric_table(SPEC, recs, suffix="pooled", with_published=False)
    assert [c.strip() for c in pooled.splitlines()[0].strip("|").split("|")][2] == "ours: ACC (%) ↑"


def test_block_says_which_aggregation_the_paper_is_compared_with(tmp_path):
    for seed, d in enumerate([0.6, 0.7, 0.8]):
        write(tmp_path, make_record("lgnet", seed, d))
    block = render_block(SPEC, "cpu", load_records(tmp_path, SPEC.name, "cpu"))
    assert "the paper's ACC, mIoU are compared with our pooled columns" in block
    assert "dataset-level (pooled)" in block  # the caveat under the paper's columns says why
    other = render_block(TABLES["prnet-kaggle"], "cpu", [])
    assert "pooled" not in other


def test_records_are_typed(tmp_path):
    path = write(tmp_path, make_record("lgnet", 0, 0.6))
    (rec,) = load_records(tmp_path)
    assert isinstance(rec, RunRecord) and rec.path == path
    assert (rec.table, rec.profile, rec.row, rec.seed, rec.cell) == ("lgnet-table1", "cpu", "lgnet", 0, "lgnet-seed0")
    assert rec.settings.image_size == 64 and rec.settings.model == "lgnet" and rec.settings.preset is None
    assert rec.metric("dice_mean") == 0.6 and rec.metric("hd95_pooled") is None  # missing → None
    assert RunRecord.from_dict({"metrics": {"x": float("nan"), "y": "n/a", "z": True}}).metric("x") is None
    assert rec.device.describe() == "Test CPU (cpu, None torch thread(s) of None cores, torch x)"
    assert rec.git.short() == "0123456789"
    assert rec.data.describe().startswith("reader `medseg` on `<data-root>/medseg-covid100` (raw sha256 `abab")
    # unknown keys survive a read/write (a record of another runner version round-trips)
    committed = json.loads(next(RESULTS.glob("lgnet-table1/cpu/*.json")).read_text(encoding="utf-8"))
    future = {**committed, "new_field": [1, 2], "settings": {**committed["settings"], "new": 1}}
    again = RunRecord.from_dict(future)
    assert again.extra == {"new_field": [1, 2]} and again.settings.extra == {"new": 1}
    assert again.to_dict() == future


def test_unreadable_record_names_the_file(tmp_path):
    from lungseg.errors import DataError

    bad = tmp_path / SPEC.name / "cpu" / "lgnet-seed0.json"
    bad.parent.mkdir(parents=True)
    bad.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(DataError, match="lgnet-seed0.json.*JSON object"):
        load_records(tmp_path)


def test_paper_only_rows_are_listed_as_not_run():
    spec = TABLES["infnet-protocol"]
    table = rep.render_metric_table(spec, [])
    assert "| Semi-Inf-Net (paper only) | — | not run" in table
    assert "0.739" in table  # Semi-Inf-Net's Dice as printed (a fraction), in a paper column


def test_block_has_provenance(tmp_path):
    for seed, d in enumerate([0.6, 0.7, 0.8]):
        write(tmp_path, make_record("lgnet", seed, d))
    block = render_block(SPEC, "cpu", load_records(tmp_path, SPEC.name, "cpu"))
    assert "lungseg results run --table lgnet-table1 --profile cpu" in block
    assert "image 64², base width 8, 2 epochs" in block
    assert "Test CPU" in block and "0123456789" in block
    assert "abababababababab" in block  # raw-data checksum
    assert "Seeds**: 0, 1, 2" in block
    assert "Pooled over all test pixels" in block
    assert "HD/HD95 undefined" in block and "3 test images" in block
    assert "slice-level split: hand-made" in block


def test_block_flags_mixed_settings(tmp_path):
    write(tmp_path, make_record("lgnet", 0, 0.6))
    write(tmp_path, make_record("lgnet", 1, 0.6, epochs=5))
    block = render_block(SPEC, "cpu", load_records(tmp_path, SPEC.name, "cpu"))
    assert "WARNING" in block and "lgnet" in block


def test_update_report_replaces_only_generated_blocks(tmp_path):
    results = tmp_path / "results"
    for seed, d in enumerate([0.6, 0.7, 0.8]):
        write(results, make_record("lgnet", seed, d))
    doc = tmp_path / "results.md"
    doc.write_text(
        "# Title\n\nHand-written prose.\n\n"
        "<!-- BEGIN GENERATED: lgnet-table1/cpu -->\nstale\n<!-- END GENERATED: lgnet-table1/cpu -->\n\n"
        "More prose.\n",
        encoding="utf-8",
    )
    update_report(doc, results, {"lgnet-table1": SPEC})
    text = doc.read_text(encoding="utf-8")
    assert "stale" not in text
    assert "Hand-written prose." in text and "More prose." in text
    assert "70.0 ± 10.0" in text
    # the block for the gpu profile has no records: not appended
    assert "lgnet-table1/gpu" not in text
    first = text
    update_report(doc, results, {"lgnet-table1": SPEC})
    assert doc.read_text(encoding="utf-8") == first  # regenerating from the same records is idempotent


def test_update_report_appends_missing_blocks(tmp_path):
    results = tmp_path / "results"
    write(results, make_record("unet", 0, 0.5))
    doc = tmp_path / "results.md"
    update_report(doc, results, {"lgnet-table1": SPEC})
    text = doc.read_text(encoding="utf-8")
    assert "<!-- BEGIN GENERATED: lgnet-table1/cpu -->" in text
    assert "50.0 (n=1)" in text


def test_records_are_strict_json(tmp_path):
    from lungseg.experiments.runner import clean_json

    rec = clean_json({"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": 2}})
    assert rec == {"a": None, "b": [1.0, None], "c": {"d": 2}}
    json.loads(json.dumps(rec), parse_constant=lambda c: pytest.fail(f"non-strict constant {c}"))


def test_committed_report_is_what_the_committed_records_generate(tmp_path):
    """docs/results.md holds no hand-edited number: regenerating it from docs/results/**.json changes nothing."""
    import shutil

    copy = tmp_path / "results.md"
    shutil.copyfile(REPORT, copy)
    update_report(copy, RESULTS)
    assert copy.read_text(encoding="utf-8") == REPORT.read_text(encoding="utf-8"), (
        "run `lungseg results report` and commit the result"
    )
    # and every table × profile with records has its block in the committed page
    text = REPORT.read_text(encoding="utf-8")
    for key, body in rep.render_blocks(RESULTS).items():
        if not body.startswith("_No runs"):
            assert f"<!-- BEGIN GENERATED: {key} -->" in text


def test_budget_block_puts_profiles_side_by_side_with_ranks():
    cpu = [make_record("lgnet", s, d) for s, d in enumerate([0.60, 0.62, 0.64])]
    cpu += [make_record("unet", s, d) for s, d in enumerate([0.70, 0.72, 0.74])]
    long = [
        dict(make_record("lgnet", s, d, image_size=128, epochs=30), profile="cpu-long")
        for s, d in enumerate([0.80, 0.82, 0.84])
    ]
    long += [
        dict(make_record("unet", s, d, image_size=128, epochs=30), profile="cpu-long")
        for s, d in enumerate([0.75, 0.75, 0.75])
    ]
    block = rep.render_budget_block(SPEC, {"cpu": cpu, "cpu-long": long, "gpu": []})
    lines = block.splitlines()
    header = next(line for line in lines if line.startswith("| model |"))
    assert header == "| model | cpu: Dice (%) ↑ [rank] | cpu-long: Dice (%) ↑ [rank] |"  # gpu has no records
    assert "| LG-Net | 62.0 ± 2.0 [2] | 82.0 ± 2.0 [1] |" in lines  # the ranking flips with the budget
    assert "| U-Net | 72.0 ± 2.0 [1] | 75.0 ± 0.0 [2] |" in lines
    assert "| SegNet | not run | not run |" in lines
    assert "- `cpu-long`: image 128², base 8, 30 epochs, batch 4, lr 0.001; 6 runs, seeds 0, 1, 2, device cpu" in lines
    assert rep.render_budget_block(SPEC, {"cpu": cpu, "gpu": []}).startswith("_Fewer than two profiles")


def test_paper_preset_is_shown_in_the_block_and_the_budget_note():
    empty = render_block(SPEC, "gpu", [])
    assert "lungseg results run --table lgnet-table1 --profile gpu" in empty
    assert "image 512², base 64, 120 epochs, batch 4, lr 0.01, preset paper" in empty
    paper = [dict(make_record("lgnet", s, 0.5, preset="paper"), profile="cpu-paper") for s in (0, 1)]
    block = render_block(SPEC, "cpu-paper", paper)
    assert "- **Settings used**: image 64², base width 8, 2 epochs, batch 4, lr 0.001, preset paper" in block
    assert (
        "- **Paper-size (`gpu`) profile for comparison**: image 512², base 64, 120 epochs, batch 4, lr 0.01, "
        "preset paper" in block
    )
    budget = rep.render_budget_block(SPEC, {"cpu": [make_record("lgnet", 0, 0.6)], "cpu-paper": paper})
    assert "- `cpu-paper`: image 64², base 8, 2 epochs, batch 4, lr 0.001, preset paper; 2 runs" in budget


# ------------------------------------------------------------------------------------ issue 22


def _per_image(values):
    return [{"id": f"im{i}", "dice": v} for i, v in enumerate(values)]


def test_main_table_shows_the_paired_comparison_with_the_reference_row_beside_the_means():
    from lungseg.experiments import stats

    lg = [dict(make_record("lgnet", s, 0.6), per_image=_per_image([0.5, 0.6, 0.7, 0.6])) for s in (0, 1, 2)]
    un = [dict(make_record("unet", s, 0.7), per_image=_per_image([0.6, 0.8, 0.7, 0.7])) for s in (0, 1)]
    block = render_block(SPEC, "cpu", lg + un)
    header = next(line for line in block.splitlines() if line.startswith("| model |"))
    assert "ours: Δ Dice vs LG-Net [95 % CI], Wilcoxon p, n images" in header
    lines = block.splitlines()
    assert next(x for x in lines if x.startswith("| LG-Net |")).split(" | ")[10] == "reference"
    # U-Net ran seeds 0, 1: per image (averaged over those) +0.1, +0.2, 0, +0.1 → mean +0.1 (×100, 1 digit)
    expected = stats.Paired(
        4, (0, 1), 0.1, *stats.bootstrap_ci([0.1, 0.2, 0.0, 0.1]), stats.wilcoxon_p([0.1, 0.2, 0.1])
    )
    cell = next(x for x in lines if x.startswith("| U-Net |")).split(" | ")[10]
    assert cell == expected.format(100, 1) + ", seeds 0,1" and cell.startswith("+10.0 [")
    assert "bootstrap 95 % CI of that mean (10 000 resamples" in block


def test_rows_made_by_older_code_are_marked_and_named():
    note = "made before mrc_levels 5 → 4, commit 4ccf5a1"
    old = [dict(make_record("lgnet", s, 0.6), identity={"status": "unrecorded", "note": note}) for s in (0, 1)]
    new = [make_record("unet", 0, 0.7)]
    block = render_block(SPEC, "cpu", old + new)
    assert "| LG-Net ‡ | 0,1 |" in block and "| U-Net | 0 |" in block
    assert f"  - identity unrecorded ({note}): lgnet-seed0, lgnet-seed1" in block
    assert "- **‡ Made by older code** (2 of 3 records;" in block
    assert "LG-Net: mrc_levels unrecorded (5: made before 4ccf5a1), loss ?, Dice form unrecorded ‡" in block


def test_settings_line_names_mrc_levels_and_the_loss_form():
    from lungseg.experiments import identity

    paper = identity.expected_identity(SPEC, "cpu-paper", SPEC.row("lgnet"))
    rec = dict(make_record("lgnet", 0, 0.5), profile="cpu-paper", identity=paper)
    block = render_block(SPEC, "cpu-paper", [rec])
    line = next(x for x in block.splitlines() if x.startswith("- **Model identity and loss**"))
    assert "LG-Net: mrc_levels 4, loss dice_focal" in line
    assert "(Eq. 14–15 (all classes, background included))" in line
    unet = identity.expected_identity(SPEC, "cpu", SPEC.row("unet"))
    block = render_block(SPEC, "cpu", [dict(make_record("unet", 0, 0.5), identity=unet)])
    assert "- **Model identity and loss**: U-Net: loss dice_focal (foreground-only Dice)" in block


def test_quotes_are_filled_from_the_records(tmp_path):
    from lungseg.errors import ConfigError

    results = tmp_path / "results"
    for s, d in enumerate([0.60, 0.62, 0.64]):
        write(results, dict(make_record("lgnet", s, d), per_image=_per_image([d, d, d])))
        write(results, dict(make_record("unet", s, d + 0.1), per_image=_per_image([d + 0.1, d + 0.2, d])))
    text = (
        "LG-Net <!--=lgnet-table1/cpu/lgnet/dice/pm-->99 ± 9<!--/--> vs "
        "<!--=lgnet-table1/cpu/unet/dice/mean-->?<!--/-->, seed 1 <!--=lgnet-table1/cpu/unet/dice/seed1-->?<!--/-->, "
        "Δ <!--=lgnet-table1/cpu/unet/dice/delta-->?<!--/--> (n <!--=lgnet-table1/cpu/unet/dice/n-->?<!--/-->), "
        "back <!--=lgnet-table1/cpu/lgnet/dice/delta/vs=unet-->?<!--/-->"
    )
    filled = rep.fill_quotes(text, results)
    plain = rep.QUOTE.sub(lambda m: m["value"], filled)
    assert plain == "LG-Net 62.0 ± 2.0 vs 72.0, seed 1 72.0, Δ +10.0 (n 3), back -10.0"
    with pytest.raises(ConfigError, match="no such row"):
        rep.fill_quotes("<!--=lgnet-table1/cpu/nope/dice/mean-->1<!--/-->", results)


SECTIONS = {
    "## LG-Net Table 1": "lgnet-table1",
    "## LG-Net Table 2": "lgnet-ablation",
    "## Inf-Net protocol": "infnet-protocol",
    "## PR-Net Table 1": "prnet-kaggle",
}


def _discussions(page: str) -> list[tuple[str, str]]:
    """``(table, prose)``: the hand-written prose of each table section (its ``## `` title to its first block)."""
    out = []
    for title, table in SECTIONS.items():
        start = page.index(title)
        out.append((table, page[start : page.index("\n### ", start)]))
    return out


def test_the_discussions_quote_generated_numbers():
    page = REPORT.read_text(encoding="utf-8")
    quotes = list(rep.QUOTE.finditer(page))
    assert len(quotes) >= 60
    cache: dict = {}
    for m in quotes:  # each quoted number is the generated one
        assert m["value"] == rep.quote(m["key"], RESULTS, None, cache), m["key"]
    for table, text in _discussions(page):
        bare = rep.QUOTE.sub("", text)
        # no mean ± std is quoted without a marker
        assert not re.findall(r"\d+\.\d+ ± \d+\.\d+", bare)
        # nor a number in our tables' format (the table's Dice digits) right after one of its row names
        # (the papers' numbers are printed with other digits: 98.84, 0.581 is never after a row name)
        spec = TABLES[table]
        names = [r.label for r in spec.rows] + ["U²-Net-P"] * (table == "lgnet-table1")
        digits = next(m.digits for m in spec.metrics if m.name == "dice")
        alt = "|".join(map(re.escape, sorted(names, key=len, reverse=True)))
        assert not re.findall(rf"(?:{alt}) \(?\d+\.\d{{{digits}}}(?!\d)", bare), table
    for claim in (
        "every model reaches 93–97 %",
        "UNet++ (96.7 ± 0.3) and PR-Net (96.1 ± 1.5) lead",
        "holds at\nboth budgets",
        "PR-Net is\nthe best row",
    ):  # the overclaims of issue 22 the numbers do not carry
        assert claim not in page


def test_older_records_state_the_dice_form_git_history_fixes():
    note = "made at 50bcfe78ff; made before the Eq. 14–15 Dice form (foreground-only Dice before), commit 4ccf5a1"
    rec = dict(make_record("unet", 0, 0.6), identity={"status": "unrecorded", "note": note})
    rec["settings"]["extra_train"] = {"loss": "dice_focal"}
    block = render_block(SPEC, "cpu", [rec])
    assert "U-Net: loss dice_focal, foreground-only Dice (made before 4ccf5a1 added Eq. 14–15) ‡" in block


def test_budget_block_marks_rows_made_by_older_code():
    old = {"status": "unrecorded", "note": "made before mrc_levels 5 → 4, commit 4ccf5a1"}
    cpu = [dict(make_record("lgnet", 0, 0.6), identity=old), make_record("unet", 0, 0.7)]
    long = [dict(make_record("lgnet", 0, 0.8, image_size=128), profile="cpu-long")]
    block = rep.render_budget_block(SPEC, {"cpu": cpu, "cpu-long": long})
    assert "| LG-Net ‡ | 60.0 (n=1) [2] | 80.0 (n=1) [1] |" in block and "| U-Net | 70.0 (n=1) [1] | not run |" in block
    assert "- ‡ records made by older code (listed in each profile's block)" in block
