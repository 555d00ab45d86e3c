"""bf16 against fp32 on one results-table row, with the results page's statistics (#24; docs/training.md,
"Precision and compilation"): test Dice mean ± sample std over the seeds per precision, the paired Dice and
sensitivity (per image the mean over the seeds, bf16 − fp32, bootstrap 95 % CI, Wilcoxon p:
``lungseg.experiments.stats.paired`` with the fp32 records as the reference), pooled ROC AUC and training
seconds per seed, and where each side's records were made (commit, time, threads).

    python bench/precision_results.py FP32_RESULTS BF16_RESULTS TABLE PROFILE ROW
    e.g. python bench/precision_results.py docs/results $T/r infnet-protocol cpu unet

Two sides that are not fp32 against bf16 of otherwise equal settings are refused in one line
(``error: <folder>: …``, exit 1; review of #24, F10): every record of the first side trained in fp32, every
one of the second in bf16 (``lungseg.experiments.report.ran_precision``: what the record says ran), and all
of them share their settings but ``extra_train.precision``, their scoring tta and data split
(:func:`problem`), with seeds in common — so the same folder twice, or one side mixing precisions, never
prints a "bf16 − fp32" difference.
"""

from __future__ import annotations

import sys
from statistics import mean, stdev

from lungseg.experiments.records import load_records
from lungseg.experiments.report import ran_precision, scoring_tta
from lungseg.experiments.stats import paired


def side(results: str, table: str, profile: str, row: str):
    return sorted((r for r in load_records(results, table, profile) if r.row == row), key=lambda r: r.seed)


def _alike(r) -> str:
    """What must be equal across both sides: the settings without ``extra_train.precision``, the scoring tta
    and the data split."""
    settings = r.settings.to_dict()
    settings["extra_train"] = {k: v for k, v in (settings.get("extra_train") or {}).items() if k != "precision"}
    return repr((sorted(settings.items()), scoring_tta(r), sorted(r.data.split_used().items())))


def problem(fp32_dir: str, bf16_dir: str, a: list, b: list, seeds: list[int]) -> str:
    """``<folder>: <why>`` when the sides ``a`` (of ``fp32_dir``) and ``b`` (of ``bf16_dir``) are not fp32
    against bf16 of otherwise equal settings with seeds in common; ``""`` when they are."""
    for folder, rs, want in ((fp32_dir, a, "fp32"), (bf16_dir, b, "bf16")):
        if not rs:
            return f"{folder}: no records of this row"
        odd = [f"{r.path.name if r.path else r.cell} {ran_precision(r)}" for r in rs if ran_precision(r) != want]
        if odd:
            return f"{folder}: the {want} side holds records that did not train in {want} ({', '.join(odd)})"
    if len({_alike(r) for r in [*a, *b]}) > 1:
        return (
            f"{bf16_dir}: its records and those of {fp32_dir} differ in more than the precision (settings, tta, split)"
        )
    return "" if seeds else f"{bf16_dir}: no seed in common with {fp32_dir}"


def main(fp32_dir: str, bf16_dir: str, table: str, profile: str, row: str) -> None:
    a, b = side(fp32_dir, table, profile, row), side(bf16_dir, table, profile, row)
    seeds = sorted({r.seed for r in a} & {r.seed for r in b})
    why = problem(fp32_dir, bf16_dir, a, b, seeds)
    if why:
        print(f"error: {why}", file=sys.stderr)
        raise SystemExit(1)
    a, b = [r for r in a if r.seed in seeds], [r for r in b if r.seed in seeds]
    print(f"{table}/{profile}/{row}, seeds {seeds}")
    for name, rs in (("fp32", a), ("bf16", b)):
        d = [r.metrics["dice_mean"] for r in rs]
        sd = f" ± {stdev(d):.3f}" if len(d) > 1 else ""
        auc = " ".join(f"{r.metrics.get('roc_auc_pooled', float('nan')):.3f}" for r in rs)
        train_s = " ".join(f"{r.wall_time_s.train:.0f}" for r in rs)
        precision = sorted({str((r.identity or {}).get("train", {}).get("precision")) for r in rs})
        here = sorted({str(r.device.extra.get("bf16")) for r in rs})
        print(
            f"  {name}: Dice {mean(d):.3f}{sd} (seeds {' '.join(f'{x:.3f}' for x in d)}), pooled AUC {auc}, "
            f"train s {train_s}, trained precision {precision}, bf16 on the machine {here}"
        )
        for r in rs:
            print(f"    seed {r.seed}: {r.git.short()} started {r.started_at}, {r.device.describe()}")
    for metric in ("dice", "sen"):
        p = paired(a, b, metric)
        print(f"  paired {metric}, bf16 − fp32: {p.format(1, 3) if p else 'n/a'}")
    auc = paired(a, b, "auc")
    print(f"  paired per-image AUC, bf16 − fp32: {auc.format(1, 3) if auc else 'n/a'}")


if __name__ == "__main__":
    main(*sys.argv[1:6])
