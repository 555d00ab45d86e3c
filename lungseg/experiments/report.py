"""Aggregate run records into mean ± std tables and regenerate the blocks of ``docs/results.md``.

Everything here reads only the JSON records under ``docs/results/<table>/<profile>/`` (written by
:mod:`lungseg.experiments.runner`) and the table specs; nothing is typed in by hand, so the tables
in the doc can always be rebuilt with ``lungseg results report``.

Aggregation over seeds: for each metric the mean and the sample standard deviation (``ddof=1``)
of the per-run values. A run whose value is missing/NaN (e.g. HD when every test image had an empty
prediction or mask) is left out of that metric's mean and counted: the cell then shows
``[k NaN]``. One finite value gives ``mean (n=1)``; none gives ``n/a``.

``docs/results.md`` holds hand-written prose around generated blocks delimited by
``<!-- BEGIN GENERATED: <table>/<profile> -->`` … ``<!-- END GENERATED: <table>/<profile> -->``;
:func:`update_report` replaces the inside of every block (and appends blocks for table/profile
pairs with records but no block yet).
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lungseg.experiments.tables import (
    DEFAULT_REPORT, DEFAULT_RESULTS_DIR, TABLES, Metric, TableSpec, table_profiles,
)
from lungseg.io import atomic_write_text

POOLABLE = ("dice", "iou", "miou", "acc", "sen", "spe")


@dataclass(frozen=True)
class Summary:
    mean: float
    std: float
    n: int
    """Finite values used."""
    n_nan: int
    """Runs whose value was missing or NaN."""

    @classmethod
    def of(cls, values: Iterable[Any]) -> Summary:
        finite, n_nan = [], 0
        for v in values:
            if v is None or (isinstance(v, float) and not math.isfinite(v)):
                n_nan += 1
            else:
                finite.append(float(v))
        mean = statistics.fmean(finite) if finite else math.nan
        std = statistics.stdev(finite) if len(finite) >= 2 else math.nan
        return cls(mean, std, len(finite), n_nan)

    def format(self, scale: float = 1.0, digits: int = 3) -> str:
        if self.n == 0:
            text = "n/a"
        elif self.n == 1:
            text = f"{self.mean * scale:.{digits}f} (n=1)"
        else:
            text = f"{self.mean * scale:.{digits}f} ± {self.std * scale:.{digits}f}"
        if self.n_nan:
            text += f" [{self.n_nan} NaN]"
        return text


# ------------------------------------------------------------------------------------ records


def load_records(results_dir: str | Path = DEFAULT_RESULTS_DIR, table: str | None = None,
                 profile: str | None = None) -> list[dict[str, Any]]:
    """Every ``*.json`` record under ``results_dir`` (optionally one table/profile), sorted by path."""
    results_dir = Path(results_dir)
    pattern = f"{table or '*'}/{profile or '*'}/*.json"
    records = []
    for path in sorted(results_dir.glob(pattern)):
        rec = json.loads(path.read_text(encoding="utf-8"))
        rec["_path"] = str(path)
        records.append(rec)
    return records


def metric_value(record: dict[str, Any], key: str) -> float | None:
    v = (record.get("metrics") or {}).get(key)
    if v is None:
        return None
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def aggregate_rows(spec: TableSpec, records: Sequence[dict[str, Any]], suffix: str = "mean"
                   ) -> dict[str, dict[str, Summary]]:
    """``{row_key: {metric_name: Summary}}`` over the records of each row (keys ``<metric>_<suffix>``)."""
    out: dict[str, dict[str, Summary]] = {}
    for row in spec.rows:
        recs = [r for r in records if r.get("row") == row.key]
        if not recs:
            continue
        out[row.key] = {m.name: Summary.of(metric_value(r, f"{m.name}_{suffix}") for r in recs) for m in spec.metrics}
    return out


def mixed_settings(records: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """Rows whose records disagree on settings (the runner prevents this; a hand-copied file could not)."""
    by_row: dict[str, list[Any]] = {}
    for r in records:
        by_row.setdefault(r.get("row"), [])
        if r.get("settings") not in by_row[r.get("row")]:
            by_row[r.get("row")].append(r.get("settings"))
    return {k: v for k, v in by_row.items() if len(v) > 1}


# ------------------------------------------------------------------------------------ rendering


def _fmt_published(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    return f"{value:g}"


def per_seed(records: Sequence[dict[str, Any]], metric: Metric, suffix: str = "mean") -> str:
    """``seed:value`` of each run, in seed order (shows what a large ± is made of)."""
    parts = []
    for r in sorted(records, key=lambda r: r.get("seed", 0)):
        v = metric_value(r, f"{metric.name}_{suffix}")
        parts.append(f"{r.get('seed')}: " + ("NaN" if v is None else f"{v * metric.scale:.{metric.digits}f}"))
    return ", ".join(parts)


def render_metric_table(spec: TableSpec, records: Sequence[dict[str, Any]], *, suffix: str = "mean",
                        metrics: Sequence[Metric] | None = None, with_published: bool = True,
                        seed_metric: str | None = "dice") -> str:
    metrics = list(metrics or spec.metrics)
    agg = aggregate_rows(spec, records, suffix)
    pub = spec.published if with_published else None
    pub_metrics = [m for m in metrics if pub is not None and m.name in pub.units]
    detail = next((m for m in metrics if m.name == seed_metric), None)
    head = ["model", "seeds"] + [f"ours: {m.header()}" for m in metrics]
    head += [f"ours: {detail.label} per seed"] if detail is not None else []
    head += [f"paper†: {m.label} ({pub.units[m.name]})" for m in pub_metrics] if pub else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    used_pub = set()
    for row in spec.rows:
        recs = [r for r in records if r.get("row") == row.key]
        if row.key in agg:
            seeds = ",".join(str(s) for s in sorted(r.get("seed") for r in recs))
            cells = [agg[row.key][m.name].format(m.scale, m.digits) for m in metrics]
            cells += [per_seed(recs, detail, suffix)] if detail is not None else []
        else:
            seeds, cells = "—", ["not run"] * (len(metrics) + (detail is not None))
        pcells = []
        if pub is not None:
            vals = pub.values.get(row.published_as or "", None)
            if vals is not None:
                used_pub.add(row.published_as)
            pcells = [_fmt_published((vals or {}).get(m.name), pub.units[m.name]) for m in pub_metrics]
        lines.append("| " + " | ".join([row.label, seeds] + cells + pcells) + " |")
    if pub is not None:
        for label, vals in pub.values.items():
            if label in used_pub:
                continue
            pcells = [_fmt_published(vals.get(m.name), pub.units[m.name]) for m in pub_metrics]
            ours = ["not run"] * (len(metrics) + (detail is not None))
            lines.append("| " + " | ".join([f"{label} (paper only)", "—"] + ours + pcells) + " |")
    return "\n".join(lines)


def _unique(values: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def render_block(spec: TableSpec, profile: str, records: Sequence[dict[str, Any]]) -> str:
    """The generated Markdown of one table/profile: provenance, settings, the tables, the paper's caveats."""
    if not records:
        prof = spec.profiles[profile]
        return (f"_No runs recorded yet for `{spec.name}` / `{profile}`._ Run:\n\n"
                f"```\nlungseg results run --table {spec.name} --profile {profile}\n```\n\n"
                f"Profile settings: image {prof.image_size}², base {prof.base_channels}, {prof.epochs} epochs, "
                f"batch {prof.batch_size}, lr {prof.lr:g} ({prof.note}).")
    prof = spec.profiles[profile]
    out = []
    commands = _unique(r.get("command") for r in records if r.get("command"))
    out.append("**Command(s)** (records in `docs/results/" + f"{spec.name}/{profile}/`):\n")
    out.append("```\n" + "\n".join(commands or ["(not recorded)"]) + "\n```")
    s_all = _unique({k: v for k, v in (r.get("settings") or {}).items() if k not in ("model", "model_kwargs")}
                    for r in records)
    overrides = _unique(json.dumps(r.get("overrides") or {}, sort_keys=True) for r in records)
    seeds = sorted(_unique(r.get("seed") for r in records))
    def _dev(d: dict[str, Any]) -> str:
        threads = f", {d.get('cpu_threads')} torch thread(s) of {d.get('cpu_count')} cores" if d.get("type") == "cpu" else ""
        return f"{d.get('name')} ({d.get('type')}{threads}, torch {d.get('torch')})"

    devices = _unique(_dev(r.get("device") or {}) for r in records)
    commits = _unique(f"{(r.get('git') or {}).get('commit', '')[:10] if (r.get('git') or {}).get('commit') else 'unknown'}"
                      f"{' (lungseg/ dirty)' if (r.get('git') or {}).get('dirty') else ''}" for r in records)
    total = sum((r.get("wall_time_s") or {}).get("total") or 0.0 for r in records)
    per_row_time = {}
    for row in spec.rows:
        ts = [(r.get("wall_time_s") or {}).get("total") for r in records if r.get("row") == row.key]
        ts = [t for t in ts if t is not None]
        if ts:
            per_row_time[row.label] = statistics.fmean(ts)
    data = _unique(json.dumps({k: (r.get("data") or {}).get(k) for k in
                               ("dataset", "input_subdir", "raw_sha256", "raw_n_files", "processed_sha256", "counts",
                                "image_size", "split_level")}, sort_keys=True) for r in records)
    out.append("")
    settings_lines = []
    for s in s_all:
        settings_lines.append(
            f"image {s.get('image_size')}², base width {s.get('base_channels')}, {s.get('epochs')} epochs, "
            f"batch {s.get('batch_size')}, lr {s.get('lr'):g}" + (f", {s.get('extra_train')}" if s.get('extra_train') else ""))
    out.append(f"- **Settings used**: {'; '.join(settings_lines)}" + (
        "" if overrides == ["{}"] else f" (command-line overrides of the profile: {', '.join(overrides)})"))
    kw_lines = []
    for row in spec.rows:
        kws = _unique(json.dumps((r.get("settings") or {}).get("model_kwargs") or {}, sort_keys=True)
                      for r in records if r.get("row") == row.key)
        if kws and kws != ["{}"]:
            kw_lines.append(f"{row.label} `{row.model}` {' / '.join(kws)}")
    if kw_lines:
        out.append(f"- **Model arguments**: {'; '.join(kw_lines)}")
    out.append(f"- **Profile `{profile}` as specified**: {prof.note}")
    if profile != "gpu" and "gpu" in spec.profiles:
        g = spec.profiles["gpu"]
        out.append(f"- **Paper-size (`gpu`) profile for comparison**: image {g.image_size}², base {g.base_channels}, "
                   f"{g.epochs} epochs, batch {g.batch_size}, lr {g.lr:g}")
    out.append(f"- **Seeds**: {', '.join(str(s) for s in seeds)} (the seed changes initialisation, augmentation and "
               "batch order; the data split is fixed)")
    for d in data:
        dd = json.loads(d)
        ps = dd.get("processed_sha256") or {}
        out.append(
            f"- **Data**: reader `{dd.get('dataset')}` on `<data-root>/{dd.get('input_subdir')}` "
            f"(raw sha256 `{str(dd.get('raw_sha256'))[:16]}…` over {dd.get('raw_n_files')} files); split "
            f"{dd.get('counts')} ({dd.get('split_level')}-level) at {dd.get('image_size')}²; processed "
            + ", ".join(f"`{k}` `{str(v)[:12]}…`" for k, v in ps.items()))
    out.append(f"- **Device**: {'; '.join(devices)}")
    out.append(f"- **Code**: git {', '.join(commits)}")
    starts = sorted(r["started_at"] for r in records if r.get("started_at"))
    ends = sorted(r["finished_at"] for r in records if r.get("finished_at"))
    span = f" (runs started {starts[0]}, last finished {ends[-1]})" if starts and ends else ""
    out.append(f"- **Time**: {len(records)} runs, {total / 60:.1f} min train+evaluate in total{span}; mean per run: "
               + ", ".join(f"{k} {v:.0f} s" for k, v in per_row_time.items()))
    mixed = mixed_settings(records)
    if mixed:
        out.append(f"- **WARNING**: rows with records of different settings: {sorted(mixed)} — their ± mixes settings")
    out.append("")
    out.append("Mean over the test images, then mean ± sample std over seeds:\n")
    out.append(render_metric_table(spec, records, suffix="mean"))
    pool = [m for m in spec.metrics if m.name in POOLABLE
            and any(metric_value(r, f"{m.name}_pooled") is not None for r in records)]
    if pool:
        out.append("")
        out.append("Pooled over all test pixels (from summed confusion counts), mean ± std over seeds:\n")
        out.append(render_metric_table(spec, records, suffix="pooled", metrics=pool, with_published=False))
    hd_undef = [(r.get("metrics") or {}).get("hd_undefined") for r in records]
    hd_undef = [h for h in hd_undef if h is not None]
    if hd_undef and any(hd_undef):
        out.append("")
        out.append(f"HD/HD95 undefined (exactly one of prediction/mask empty) on {int(sum(hd_undef))} test images "
                   f"summed over the {len(records)} runs; those images are left out of the HD means.")
    if spec.published is not None:
        p = spec.published
        out.append("")
        out.append(f"† Paper columns: quoted as printed in {p.source}, {p.where}. Paper data: {p.data}. "
                   "They are not produced by this code and not from our data.")
        for c in p.caveats:
            out.append(f"- {c}")
    for n in spec.notes:
        out.append(f"- {n}")
    warnings = _unique(w for r in records for w in ((r.get("data") or {}).get("warnings") or []))
    for w in warnings:
        out.append(f"- data warning (from `meta.json`): {w}")
    return "\n".join(out)


_BLOCK = re.compile(r"<!-- BEGIN GENERATED: (?P<key>[\w.-]+/[\w.-]+) -->\n.*?<!-- END GENERATED: (?P=key) -->",
                    re.DOTALL)


def render_budget_block(spec: TableSpec, records_by_profile: dict[str, Sequence[dict[str, Any]]],
                        metric: str = "dice") -> str:
    """One row per model, one column per profile that has records: the metric (mean over test images,
    mean ± std over seeds) and the row's rank within that profile. Shows whether a ranking found at one
    budget holds at another; settings of each profile are those its records state."""
    m = next(x for x in spec.metrics if x.name == metric)
    profiles = [p for p, recs in records_by_profile.items() if recs]
    if len(profiles) < 2:
        return f"_Fewer than two profiles of `{spec.name}` have records: nothing to compare yet._"
    cols, ranks = [], {}
    for p in profiles:
        agg = aggregate_rows(spec, records_by_profile[p])
        means = {k: v[m.name].mean for k, v in agg.items() if v[m.name].n}
        order = sorted(means, key=lambda k: -means[k] if m.higher_is_better else means[k])
        ranks[p] = {k: i + 1 for i, k in enumerate(order)}
        cols.append((p, agg))
    head = ["model"] + [f"{p}: {m.header()} [rank]" for p in profiles]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in spec.rows:
        cells = []
        for p, agg in cols:
            if row.key in agg:
                cells.append(f"{agg[row.key][m.name].format(m.scale, m.digits)} [{ranks[p].get(row.key, '—')}]")
            else:
                cells.append("not run")
        lines.append("| " + " | ".join([row.label] + cells) + " |")
    notes = []
    for p in profiles:
        recs = records_by_profile[p]
        settings = _unique(json.dumps({k: (r.get("settings") or {}).get(k) for k in
                                       ("image_size", "base_channels", "epochs", "batch_size", "lr")}, sort_keys=True)
                           for r in recs)
        devices = _unique((r.get("device") or {}).get("type") for r in recs)
        seeds = sorted(_unique(r.get("seed") for r in recs))
        text = "; ".join(
            f"image {d['image_size']}², base {d['base_channels']}, {d['epochs']} epochs, batch {d['batch_size']}, "
            f"lr {d['lr']:g}" for d in map(json.loads, settings))
        notes.append(f"- `{p}`: {text}; {len(recs)} runs, seeds {', '.join(map(str, seeds))}, "
                     f"device {', '.join(str(d) for d in devices)}")
    return ("Mean over the test images, then mean ± std over seeds; [rank] = place among the rows run "
            "under that profile (1 = best), ordered by the unrounded means: rows whose means lie within one "
            "standard deviation of each other are not ranked by the data.\n\n" + "\n".join(lines) + "\n\n" + "\n".join(notes))


def _wrap(key: str, body: str) -> str:
    return f"<!-- BEGIN GENERATED: {key} -->\n{body}\n<!-- END GENERATED: {key} -->"


def render_blocks(results_dir: str | Path = DEFAULT_RESULTS_DIR,
                  tables: dict[str, TableSpec] | None = None) -> dict[str, str]:
    """``{"<table>/<profile>": markdown}`` for every table × profile (empty ones say how to run them),
    and ``{"<table>/budget": markdown}``: the profiles side by side (:func:`render_budget_block`)."""
    tables = TABLES if tables is None else tables
    out = {}
    for name, spec in tables.items():
        by_profile = {}
        for profile in table_profiles(spec):
            by_profile[profile] = recs = load_records(results_dir, name, profile)
            out[f"{name}/{profile}"] = render_block(spec, profile, recs)
        out[f"{name}/budget"] = render_budget_block(spec, by_profile)
    return out


def update_report(report: str | Path = DEFAULT_REPORT, results_dir: str | Path = DEFAULT_RESULTS_DIR,
                  tables: dict[str, TableSpec] | None = None) -> Path:
    """Rewrite the generated blocks of ``report`` from the records; append missing blocks at the end."""
    report = Path(report)
    blocks = render_blocks(results_dir, tables)
    text = report.read_text(encoding="utf-8") if report.is_file() else "# Reproduced comparison tables\n"
    seen = set()

    def sub(m: re.Match) -> str:
        key = m.group("key")
        seen.add(key)
        return _wrap(key, blocks[key]) if key in blocks else m.group(0)

    text = _BLOCK.sub(sub, text)
    missing = [k for k in blocks if k not in seen and not blocks[k].startswith(("_No runs", "_Fewer than two"))]
    for key in missing:
        text = text.rstrip("\n") + f"\n\n### {key}\n\n" + _wrap(key, blocks[key]) + "\n"
    if not text.endswith("\n"):
        text += "\n"
    atomic_write_text(report, text)
    return report
