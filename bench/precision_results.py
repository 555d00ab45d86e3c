"""bf16 against fp32 on one results-table row, with the results page's statistics (#24; docs/training.md,
"Precision and compilation"): test Dice mean ± sample std over the seeds per precision, the paired Dice and
sensitivity (per image the mean over the seeds, bf16 − fp32, bootstrap 95 % CI, Wilcoxon p:
``lungseg.experiments.stats.paired`` with the fp32 records as the reference), pooled ROC AUC and training
seconds per seed, and where each side's records were made (commit, time, threads).

    python bench/precision_results.py FP32_RESULTS BF16_RESULTS TABLE PROFILE ROW
    e.g. python bench/precision_results.py docs/results $T/r infnet-protocol cpu unet
"""

from __future__ import annotations

import sys
from statistics import mean, stdev

from lungseg.experiments.records import load_records
from lungseg.experiments.stats import paired


def side(results: str, table: str, profile: str, row: str):
    return sorted((r for r in load_records(results, table, profile) if r.row == row), key=lambda r: r.seed)


def main(fp32_dir: str, bf16_dir: str, table: str, profile: str, row: str) -> None:
    a, b = side(fp32_dir, table, profile, row), side(bf16_dir, table, profile, row)
    seeds = sorted({r.seed for r in a} & {r.seed for r in b})
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
