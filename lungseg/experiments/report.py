"""Aggregate run records into mean ± std tables and regenerate the blocks of a results page.

Everything here reads only the run records (:class:`~lungseg.experiments.records.RunRecord`, one
JSON file a run under ``<results>/<table>/<profile>/``, written by :mod:`lungseg.experiments.runner`)
and the table specs; nothing is typed in by hand, so the tables in the page can always be rebuilt
with ``lungseg results report``. The results folder and the page are arguments.

Aggregation over seeds: for each metric the mean and the sample standard deviation (``ddof=1``)
of the per-run values. A run whose value is missing/NaN (e.g. HD when every test image had an empty
prediction or mask) is left out of that metric's mean and counted: the cell then shows
``[k NaN]``. One finite value gives ``mean (n=1)``; none gives ``n/a``.

The per-run value is the mean over the test images (``<metric>_mean``) or, for the pooled tables and
the ``pooled`` columns of :attr:`TableSpec.pooled_beside`, the dataset-level value from the summed
confusion counts (``<metric>_pooled``): both are in every record.

The page holds hand-written prose around generated blocks delimited by
``<!-- BEGIN GENERATED: <table>/<profile> -->`` … ``<!-- END GENERATED: <table>/<profile> -->``;
:func:`update_report` replaces the inside of every block (and appends blocks for table/profile
pairs with records but no block yet).
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lungseg.errors import DataError
from lungseg.experiments.records import RunRecord, as_records, load_records, records_digest
from lungseg.experiments.specs import TABLES
from lungseg.experiments.tables import POOLABLE, Metric, TableSpec, table_profiles
from lungseg.io import atomic_write_text

__all__ = [
    "POOLABLE",
    "Column",
    "Summary",
    "aggregate_rows",
    "load_records",
    "ROW_INVARIANTS",
    "mix_problems",
    "mixed_rows",
    "mixed_settings",
    "ran_precision",
    "scoring_tta",
    "per_seed",
    "render_block",
    "render_blocks",
    "render_budget_block",
    "render_metric_table",
    "update_report",
]

Records = Sequence[RunRecord | Mapping[str, Any]]


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


@dataclass(frozen=True)
class Column:
    """One ``ours`` column of a metric table: a metric, aggregated per image (``mean``) or ``pooled``."""

    metric: Metric
    suffix: str = "mean"

    @property
    def key(self) -> str:
        return f"{self.metric.name}_{self.suffix}"

    def header(self, *, label_pooled: bool) -> str:
        pooled = "pooled " if label_pooled and self.suffix == "pooled" else ""
        return f"ours: {pooled}{self.metric.header()}"

    def summary(self, records: Sequence[RunRecord]) -> Summary:
        return Summary.of(r.metric(self.key) for r in records)

    def format(self, records: Sequence[RunRecord]) -> str:
        return self.summary(records).format(self.metric.scale, self.metric.digits)


# ------------------------------------------------------------------------------------ aggregation


def _unique(values: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def _of_row(records: Sequence[RunRecord], key: str) -> list[RunRecord]:
    return [r for r in records if r.row == key]


def aggregate_rows(spec: TableSpec, records: Records, suffix: str = "mean") -> dict[str, dict[str, Summary]]:
    """``{row_key: {metric_name: Summary}}`` over the records of each row (keys ``<metric>_<suffix>``)."""
    records = as_records(records)
    out: dict[str, dict[str, Summary]] = {}
    for row in spec.rows:
        recs = _of_row(records, row.key)
        if recs:
            out[row.key] = {m.name: Column(m, suffix).summary(recs) for m in spec.metrics}
    return out


def scoring_tta(r: RunRecord) -> str:
    """The test-time augmentation a record's metrics were scored with: its evaluation's
    ``metrics.serving.tta`` (``none`` in records written before serving settings were recorded, when there
    was none) — :func:`lungseg.experiments.runner.recorded_tta`'s rule."""
    serving = (r.metrics or {}).get("serving") or {}
    return str(serving.get("tta") or "none")


def ran_precision(r: RunRecord) -> str:
    """The arithmetic a record's run trained in (review of #24, F4): its recorded identity's
    ``train.precision`` (resolved where it ran); for a record without it (made before ``train.precision``
    existed), what its settings asked (``extra_train.precision``) or, not asked, what the training did then:
    bf16 autocast on CUDA (``amp: true``), fp32 on a CPU."""
    ident = r.identity or {}
    recorded = (ident.get("train") or {}).get("precision") if ident.get("status") == "recorded" else None
    if recorded:
        return str(recorded)
    asked = str((r.settings.extra_train or {}).get("precision") or "auto")
    if asked != "auto":
        return asked
    return "bf16" if r.device.type == "cuda" else "fp32"


#: what every record of a row must share, besides what it asked (its settings: a mix of those is a warning),
#: for its mean and ± to mean anything — ``(how they differ, name, of a record)``: the test-time augmentation
#: it was scored with (review of #25) and the precision it trained in (review of #24)
ROW_INVARIANTS = (
    ("scored with different test-time augmentation", "tta", scoring_tta),
    ("trained in different precision", "precision", ran_precision),
)


def mixed_rows(records: Records) -> list[tuple[Path | None, str]]:
    """``(folder, problem)`` for each row whose records differ in one of :data:`ROW_INVARIANTS` (a block
    averaged them silently); the problem names every file and its value."""
    by_row: dict[tuple[str | None, ...], list[RunRecord]] = {}
    for r in as_records(records):
        by_row.setdefault((r.table, r.profile, r.row), []).append(r)
    out = []
    for (_, _, row), recs in by_row.items():
        for how, name, of in ROW_INVARIANTS:
            if len(_unique(of(r) for r in recs)) < 2:
                continue
            files = ", ".join(f"{r.path.name if r.path else r.cell} {name} {of(r)}" for r in recs)
            folder = recs[0].path.parent if recs[0].path else None
            out.append(
                (
                    folder,
                    f"row {row} holds records {how} ({files}): "
                    "their mean and ± would mix them; re-run the odd ones (lungseg results run --force)",
                )
            )
    return out


def mix_problems(records: Records) -> list[str]:
    """:func:`mixed_rows` as ``<folder>: <problem>`` lines (``lungseg results check``)."""
    return [f"{folder}: {problem}" if folder else problem for folder, problem in mixed_rows(records)]


def mixed_settings(records: Records) -> dict[str, list[Any]]:
    """Rows whose records disagree on settings (the runner prevents this; a hand-copied file could not)."""
    by_row: dict[str | None, list[Any]] = {}
    for r in as_records(records):
        seen = by_row.setdefault(r.row, [])
        if r.settings not in seen:
            seen.append(r.settings)
    return {k: v for k, v in by_row.items() if len(v) > 1}


# ------------------------------------------------------------------------------------ metric tables


def per_seed(records: Records, metric: Metric, suffix: str = "mean") -> str:
    """``seed:value`` of each run, in seed order (shows what a large ± is made of)."""
    parts = []
    for r in sorted(as_records(records), key=lambda r: r.seed or 0):
        v = r.metric(f"{metric.name}_{suffix}")
        parts.append(f"{r.seed}: " + ("NaN" if v is None else f"{v * metric.scale:.{metric.digits}f}"))
    return ", ".join(parts)


def _columns(metrics: Sequence[Metric], suffix: str, pooled_beside: Sequence[str]) -> list[Column]:
    cols = []
    for m in metrics:
        cols.append(Column(m, suffix))
        if suffix == "mean" and m.name in pooled_beside:
            cols.append(Column(m, "pooled"))
    return cols


def render_metric_table(
    spec: TableSpec,
    records: Records,
    *,
    suffix: str = "mean",
    metrics: Sequence[Metric] | None = None,
    with_published: bool = True,
    seed_metric: str | None = "dice",
    pooled_beside: Sequence[str] | None = None,
    paired_metric: str | None = None,
) -> str:
    """One row per table row (and per paper-only row): ``ours`` columns, the per-seed values of
    ``seed_metric``, the paired per-image comparison of ``paired_metric`` with the reference row
    (:mod:`lungseg.experiments.stats`), then the paper's columns. ``pooled_beside`` (default: the
    spec's) adds a pooled column after the per-image column of those metrics. A row whose records
    were made by older code (:attr:`RunRecord.made_by_older_code`) is marked ``‡``."""
    records = as_records(records)
    metrics = list(metrics or spec.metrics)
    layout = _TableLayout(
        cols=_columns(metrics, suffix, spec.pooled_beside if pooled_beside is None else pooled_beside),
        pub=spec.published if with_published else None,
        detail=next((m for m in metrics if m.name == seed_metric), None),
        pair=next((m for m in metrics if m.name == paired_metric), None),
        suffix=suffix,
    )
    layout.pub_metrics = [m for m in metrics if layout.pub is not None and m.name in layout.pub.units]
    head = layout.header(spec.rows[0].label)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ref_recs = _of_row(records, spec.rows[0].key)
    used_pub: set[str] = set()
    for row in spec.rows:
        recs = _of_row(records, row.key)
        cells = layout.our_cells(recs, ref_recs, row.key == spec.rows[0].key)
        label = row.label + (" ‡" if any(r.made_by_older_code for r in recs) else "")
        lines.append("| " + " | ".join([label, *cells, *layout.paper_cells(row.published_as, used_pub)]) + " |")
    if layout.pub is not None:
        for label, vals in layout.pub.values.items():
            if label not in used_pub:
                pcells = [_fmt_published(vals.get(m.name)) for m in layout.pub_metrics]
                not_run = ["not run"] * layout.n_ours
                lines.append("| " + " | ".join([f"{label} (paper only)", "—", *not_run, *pcells]) + " |")
    return "\n".join(lines)


@dataclass
class _TableLayout:
    """The columns of one metric table: ours (per column, per seed, paired) and the paper's."""

    cols: list[Column]
    pub: Any
    detail: Metric | None
    pair: Metric | None
    suffix: str
    pub_metrics: list[Metric] = field(default_factory=list)

    @property
    def n_ours(self) -> int:
        return len(self.cols) + (self.detail is not None) + (self.pair is not None)

    def header(self, ref_label: str) -> list[str]:
        label_pooled = len({c.suffix for c in self.cols}) > 1
        head = ["model", "seeds"] + [c.header(label_pooled=label_pooled) for c in self.cols]
        head += [f"ours: {self.detail.label} per seed"] if self.detail is not None else []
        if self.pair is not None:
            head += [f"ours: Δ {self.pair.label} vs {ref_label} [95 % CI], Wilcoxon p, n images"]
        head += [f"paper†: {m.label} ({self.pub.units[m.name]})" for m in self.pub_metrics] if self.pub else []
        return head

    def our_cells(self, recs: Sequence[RunRecord], ref_recs: Sequence[RunRecord], is_ref: bool) -> list[str]:
        """``seeds`` and our cells of one row (``not run`` when it has no record)."""
        if not recs:
            return ["—"] + ["not run"] * self.n_ours
        cells = [_seeds_cell(recs)] + [c.format(recs) for c in self.cols]
        cells += [per_seed(recs, self.detail, self.suffix)] if self.detail is not None else []
        cells += [_paired_cell(ref_recs, recs, self.pair, is_ref)] if self.pair is not None else []
        return cells

    def paper_cells(self, published_as: str | None, used: set[str]) -> list[str]:
        if self.pub is None:
            return []
        vals = self.pub.values.get(published_as or "", None)
        if vals is not None:
            used.add(published_as)
        return [_fmt_published((vals or {}).get(m.name)) for m in self.pub_metrics]


def _seeds_cell(recs: Sequence[RunRecord]) -> str:
    """``0,1§,2``: the seeds of a row, ``§`` on those made from uncommitted code (:func:`_code_state_lines`)."""
    from lungseg.experiments.audit import DIRTY, code_state

    return ",".join(
        f"{r.seed}" + ("§" if code_state(r) == DIRTY else "") for r in sorted(recs, key=lambda r: r.seed or 0)
    )


def _paired_cell(ref_recs: Sequence[RunRecord], recs: Sequence[RunRecord], metric: Metric, is_ref: bool) -> str:
    """The paired comparison of ``recs`` with the reference row's records (``reference`` for itself)."""
    if is_ref:
        return "reference"
    from lungseg.experiments.stats import paired

    result = paired(ref_recs, recs, metric.name) if ref_recs else None
    if result is None:
        return "n/a (no common seed)"
    seeds = "" if len(result.seeds) == 3 else f", seeds {','.join(map(str, result.seeds))}"
    return result.format(metric.scale, metric.digits) + seeds


def _fmt_published(value: float | None) -> str:
    return "—" if value is None else f"{value:g}"


# ------------------------------------------------------------------------------------ one block


def _render_empty(spec: TableSpec, profile: str) -> str:
    prof = spec.profiles[profile]
    return (
        f"_No runs recorded yet for `{spec.name}` / `{profile}`._ Run:\n\n"
        f"```\nlungseg results run --table {spec.name} --profile {profile}\n```\n\n"
        f"Profile settings: {prof.describe()} ({prof.note})."
    )


def _render_provenance(spec: TableSpec, profile: str, records: Sequence[RunRecord]) -> list[str]:
    """Command(s), settings, model arguments, profile, seeds, data, device, code and time of the runs."""
    commands = _unique(r.command for r in records if r.command)
    out = [
        "**Command(s)** (records in `docs/results/" + f"{spec.name}/{profile}/`):\n",
        "```\n" + "\n".join(commands or ["(not recorded)"]) + "\n```",
        "",
    ]
    out += _settings_lines(spec, profile, records)
    out += _origin_lines(spec, records)
    out += _warning_lines(spec, records)
    return out


def _settings_lines(spec: TableSpec, profile: str, records: Sequence[RunRecord]) -> list[str]:
    """Settings used, model arguments, identity and loss, the profile, seeds."""
    prof = spec.profiles[profile]
    settings = _unique(r.settings.without_model() for r in records)
    overrides = _unique(json.dumps(r.overrides or {}, sort_keys=True) for r in records)
    ttas = _unique(scoring_tta(r) for r in records)  # one per row (render_block refuses a row mixing them)
    out = [
        f"- **Settings used**: {'; '.join(s.describe() for s in settings)}"
        + ("" if overrides == ["{}"] else f" (command-line overrides of the profile: {', '.join(overrides)})")
        + f"; scored with test-time augmentation {' / '.join(ttas)} (`metrics.serving.tta`)"
    ]
    kw_lines = []
    for row in spec.rows:
        kws = _unique(json.dumps(r.settings.model_kwargs or {}, sort_keys=True) for r in _of_row(records, row.key))
        if kws and kws != ["{}"]:
            kw_lines.append(f"{row.label} `{row.model}` {' / '.join(kws)}")
    if kw_lines:
        out.append(f"- **Model arguments**: {'; '.join(kw_lines)}")
    out.append(f"- **Model identity and loss**: {_identity_line(spec, records)}")
    out.append(f"- **Profile `{profile}` as specified**: {prof.note}")
    if profile != "gpu" and "gpu" in spec.profiles:
        out.append(f"- **Paper-size (`gpu`) profile for comparison**: {spec.profiles['gpu'].describe()}")
    seeds = sorted(_unique(r.seed for r in records))
    out.append(
        f"- **Seeds**: {', '.join(str(s) for s in seeds)} (the seed changes initialisation, augmentation and "
        "batch order; the data split is fixed)"
    )
    return out


def _origin_lines(spec: TableSpec, records: Sequence[RunRecord]) -> list[str]:
    """Data, device, code and time."""
    data = {}
    for r in records:
        data.setdefault(r.data.identity(), r.data)
    out = [f"- **Data**: {d.describe()}" for d in data.values()]
    out.append(f"- **Device**: {'; '.join(_unique(r.device.describe() for r in records))}")
    out.append(f"- **Code**: git {', '.join(_unique(r.git.short() for r in records))}")
    out += _code_state_lines(records)
    out.append(_render_time(spec, records))
    out.append(
        f"- **Records**: {len(records)} files, sha256 `{records_digest(records)[:16]}…` of their content "
        "(`lungseg results check` recomputes it: a record edited after this page fails the check)"
    )
    return out


def _code_state_lines(records: Sequence[RunRecord]) -> list[str]:
    """The records made from uncommitted code (``§`` on their seed in the tables) and those whose code
    state is not recorded: their commit does not name all the code that ran (they are kept: a record
    is a measurement; :mod:`lungseg.experiments.audit`)."""
    from lungseg.experiments.audit import DIRTY, UNKNOWN, code_state

    out = []
    for state, text in (
        (
            DIRTY,
            "**§ Uncommitted code**: made while `lungseg/` had uncommitted changes (`git.dirty`), so the "
            "commit named does not name all the code that ran",
        ),
        (
            UNKNOWN,
            "**Code state not recorded**: whether `lungseg/` had uncommitted changes is unknown (`git.dirty` "
            "null; the commit was named by the environment)",
        ),
    ):
        cells = [r.cell for r in records if code_state(r) == state]
        if cells:
            out.append(f"- {text} — {len(cells)} of {len(records)} records: {', '.join(cells)}")
    return out


def _warning_lines(spec: TableSpec, records: Sequence[RunRecord]) -> list[str]:
    """Records made by older code (‡), rows mixing code versions or settings."""
    out = []
    older = _unique(r.made_by_older_code for r in records if r.made_by_older_code)
    if older:
        out.append(
            f"- **‡ Made by older code** ({sum(1 for r in records if r.made_by_older_code)} of {len(records)} "
            "records; not re-run at today's code, so these rows may not describe today's models):"
        )
        for note in older:
            cells = ", ".join(r.cell for r in records if r.made_by_older_code == note)
            out.append(f"  - {note}: {cells}")
    both = [
        row.label for row in spec.rows if len({r.made_by_older_code is None for r in _of_row(records, row.key)}) > 1
    ]
    if both:
        out.append(f"- **WARNING**: rows mixing records of today's and of older code: {both} — their ± mixes code")
    mixed = mixed_settings(records)
    if mixed:
        out.append(f"- **WARNING**: rows with records of different settings: {sorted(mixed)} — their ± mixes settings")
    return out


def _identity_line(spec: TableSpec, records: Sequence[RunRecord]) -> str:
    """LG-Net's ``mrc_levels`` and the loss with its Dice form, from the records' identities; for
    records made by older code what they do not record is said to be unrecorded."""
    parts = []
    for row in spec.rows:
        recs = _of_row(records, row.key)
        if not recs:
            continue
        texts = _unique(_identity_text(r) for r in recs)
        parts.append(f"{row.label}: {' / '.join(texts)}")
    return "; ".join(parts)


def _identity_text(r: RunRecord) -> str:
    ident = r.identity or {}
    if ident.get("status") != "recorded":
        loss = (r.params or {}).get("train", {}).get("loss") or r.settings.extra_train.get("loss") or "?"
        levels = ""
        if (r.model or r.settings.model) == "lgnet":
            before = "mrc_levels 5 → 4" in (ident.get("note") or "")
            levels = "mrc_levels unrecorded (5: made before 4ccf5a1), " if before else "mrc_levels unrecorded, "
        note = ident.get("note") or ""
        form = "Dice form unrecorded"
        if "Eq. 14–15 Dice form" in note and "dice" in str(loss):
            form = "foreground-only Dice (made before 4ccf5a1 added Eq. 14–15)"
        # before dsa_softmax existed DSA had the key softmax only
        dsa = "DSA softmax over keys (not Eq. 1's; the only form then), " if _is_prnet(r) else ""
        return f"{levels}{dsa}loss {loss}, {form} ‡"
    ctor = ident.get("constructor") or {}
    levels = f"mrc_levels {ctor['mrc_levels']}, " if "mrc_levels" in ctor and ctor.get("use_mrc", True) else ""
    dsa = ""
    if _is_prnet(r) and ctor.get("use_pam", True):
        axis = ctor.get("dsa_softmax", "key")
        dsa = "DSA softmax over queries (Eq. 1), " if axis == "query" else "DSA softmax over keys (not Eq. 1's), "
    loss = ident.get("loss") or {}
    opts = f" {json.dumps(loss['options'], sort_keys=True)}" if loss.get("options") else ""
    return f"{levels}{dsa}loss {loss.get('name')}{opts} ({loss.get('form')})"


def _is_prnet(r: RunRecord) -> bool:
    return (r.model or r.settings.model) == "prnet"


def _render_time(spec: TableSpec, records: Sequence[RunRecord]) -> str:
    total = sum(r.wall_time_s.total or 0.0 for r in records)
    per_row = {}
    for row in spec.rows:
        times = [r.wall_time_s.total for r in _of_row(records, row.key) if r.wall_time_s.total is not None]
        if times:
            per_row[row.label] = statistics.fmean(times)
    starts = sorted(r.started_at for r in records if r.started_at)
    ends = sorted(r.finished_at for r in records if r.finished_at)
    span = f" (runs started {starts[0]}, last finished {ends[-1]})" if starts and ends else ""
    return (
        f"- **Time**: {len(records)} runs, {total / 60:.1f} min train+evaluate in total{span}; mean per run: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in per_row.items())
    )


def _render_tables(spec: TableSpec, records: Sequence[RunRecord]) -> list[str]:
    """The main table (per-image means, plus the pooled columns of ``spec.pooled_beside``) and the
    pooled table of every poolable metric."""
    if spec.pooled_beside:
        pooled = ", ".join(m.label for m in spec.metrics if m.name in spec.pooled_beside)
        intro = (
            f"Mean over the test images (`pooled` {pooled}: over all test pixels, from summed confusion "
            f"counts), then mean ± sample std over seeds; the paper's {pooled} are compared with our "
            "pooled columns (see † below):\n"
        )
    else:
        intro = "Mean over the test images, then mean ± sample std over seeds:\n"
    paired_metric = "dice" if any(m.name == "dice" for m in spec.metrics) else None
    out = ["", intro, render_metric_table(spec, records, suffix="mean", paired_metric=paired_metric)]
    if paired_metric:
        out += [
            "",
            f"Δ column: the row minus the reference row ({spec.rows[0].label}), per test image (each image's "
            "value averaged over the seeds both rows ran), then the mean over images; bracket = bootstrap 95 % "
            "CI of that mean (10 000 resamples of the images, seed 0); p = two-sided Wilcoxon signed-rank "
            "test of the per-image differences; n = test images defined in both rows (see *How the paired "
            "statistics are computed* at the top of the page).",
        ]
    pool = [
        m for m in spec.metrics if m.name in POOLABLE and any(r.metric(f"{m.name}_pooled") is not None for r in records)
    ]
    if pool:
        out += [
            "",
            "Pooled over all test pixels (from summed confusion counts), mean ± std over seeds:\n",
            render_metric_table(spec, records, suffix="pooled", metrics=pool, with_published=False),
        ]
    return out


def _render_notes(spec: TableSpec, records: Sequence[RunRecord]) -> list[str]:
    """Undefined-HD count, the paper's source and caveats, the table's notes, the data warnings."""
    out = []
    hd_undef = [h for h in (r.metrics.get("hd_undefined") for r in records) if h is not None]
    if hd_undef and any(hd_undef):
        out += [
            "",
            f"HD/HD95 undefined (exactly one of prediction/mask empty) on {int(sum(hd_undef))} test images "
            f"summed over the {len(records)} runs; those images are left out of the HD means.",
        ]
    if spec.published is not None:
        p = spec.published
        out += [
            "",
            f"† Paper columns: quoted as printed in {p.source}, {p.where}. Paper data: {p.data}. "
            "They are not produced by this code and not from our data.",
        ]
        out += [f"- {c}" for c in p.caveats]
    out += [f"- {n}" for n in spec.notes]
    warnings = _unique(w for r in records for w in (r.data.warnings or []))
    out += [f"- data warning (from `meta.json`): {w}" for w in warnings]
    return out


def render_block(spec: TableSpec, profile: str, records: Records) -> str:
    """The generated Markdown of one table/profile: provenance, settings, the tables, the paper's caveats."""
    records = as_records(records)
    if not records:
        return _render_empty(spec, profile)
    for folder, problem in mixed_rows(records):  # never averaged silently (reviews of #25 and #24)
        raise DataError(folder, problem)
    return "\n".join(
        _render_provenance(spec, profile, records) + _render_tables(spec, records) + _render_notes(spec, records)
    )


# ------------------------------------------------------------------------------------ budget block


def render_budget_block(spec: TableSpec, records_by_profile: Mapping[str, Records], metric: str = "dice") -> str:
    """One row per model, one column per profile that has records: the metric (mean over test images,
    mean ± std over seeds) and the row's rank within that profile. Shows whether a ranking found at one
    budget holds at another; settings of each profile are those its records state."""
    m = next(x for x in spec.metrics if x.name == metric)
    by_profile = {p: as_records(recs) for p, recs in records_by_profile.items() if recs}
    if len(by_profile) < 2:
        return f"_Fewer than two profiles of `{spec.name}` have records: nothing to compare yet._"
    cols, ranks = [], {}
    for p, recs in by_profile.items():
        agg = aggregate_rows(spec, recs)
        means = {k: v[m.name].mean for k, v in agg.items() if v[m.name].n}
        order = sorted(means, key=lambda k: -means[k] if m.higher_is_better else means[k])
        ranks[p] = {k: i + 1 for i, k in enumerate(order)}
        cols.append((p, agg))
    head = ["model"] + [f"{p}: {m.header()} [rank]" for p in by_profile]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in spec.rows:
        cells = [
            f"{agg[row.key][m.name].format(m.scale, m.digits)} [{ranks[p].get(row.key, '—')}]"
            if row.key in agg
            else "not run"
            for p, agg in cols
        ]
        older = any(r.made_by_older_code for recs in by_profile.values() for r in _of_row(recs, row.key))
        lines.append("| " + " | ".join([row.label + (" ‡" if older else "")] + cells) + " |")
    notes = []
    for p, recs in by_profile.items():
        settings = _unique(_budget_settings(r) for r in recs)
        devices = _unique(r.device.type for r in recs)
        seeds = sorted(_unique(r.seed for r in recs))
        notes.append(
            f"- `{p}`: {'; '.join(settings)}; {len(recs)} runs, seeds {', '.join(map(str, seeds))}, "
            f"device {', '.join(str(d) for d in devices)}"
        )
    if any(r.made_by_older_code for recs in by_profile.values() for r in recs):
        notes.append("- ‡ records made by older code (listed in each profile's block)")
    return (
        "Mean over the test images, then mean ± std over seeds; [rank] = place among the rows run "
        "under that profile (1 = best), ordered by the unrounded means: rows whose means lie within one "
        "standard deviation of each other are not ranked by the data.\n\n"
        + "\n".join(lines)
        + "\n\n"
        + "\n".join(notes)
    )


def _budget_settings(r: RunRecord) -> str:
    s = r.settings
    preset = f", preset {s.preset}" if s.preset else ""
    return (
        f"image {s.image_size}², base {s.base_channels}, {s.epochs} epochs, batch {s.batch_size}, lr {s.lr:g}{preset}"
    )


# ------------------------------------------------------------------------------------ the page


def _wrap(key: str, body: str) -> str:
    return f"<!-- BEGIN GENERATED: {key} -->\n{body}\n<!-- END GENERATED: {key} -->"


_BLOCK = re.compile(
    r"<!-- BEGIN GENERATED: (?P<key>[\w.-]+/[\w.-]+) -->\n.*?<!-- END GENERATED: (?P=key) -->", re.DOTALL
)


def render_blocks(results_dir: str | Path, tables: Mapping[str, TableSpec] | None = None) -> dict[str, str]:
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


#: a number quoted in hand-written prose: ``<!--=KEY-->62.0 ± 1.0<!--/-->`` (the comments do not show)
QUOTE = re.compile(r"<!--=(?P<key>[^>]*?)-->(?P<value>.*?)<!--/-->")
#: what a quote may show of a cell: the mean, mean ± std, the pooled mean (± std), one seed's value,
#: and the paired comparison with the reference row (or the row named after ``vs=``)
QUOTE_KINDS = ("mean", "pm", "pooled", "pooled-pm", "seed0", "seed1", "seed2", "delta", "ci", "p", "n")


def quote(key: str, results_dir: str | Path, tables: Mapping[str, TableSpec] | None = None, _cache=None) -> str:
    """The generated value a quote ``<table>/<profile>/<row>/<metric>/<kind>[/vs=<row>]`` stands for,
    formatted as the tables print it (``ConfigError`` naming the key when it names nothing)."""
    from lungseg.errors import ConfigError

    tables = TABLES if tables is None else tables
    parts = key.split("/")
    vs = parts.pop()[3:] if parts and parts[-1].startswith("vs=") else None
    if len(parts) != 5 or parts[0] not in tables or parts[4] not in QUOTE_KINDS:
        raise ConfigError(
            f"quote {key!r}: expected <table>/<profile>/<row>/<metric>/<{'|'.join(QUOTE_KINDS)}>[/vs=<row>]"
        )
    table, profile, row, metric_name, kind = parts
    spec = tables[table]
    metric = next((m for m in spec.metrics if m.name == metric_name), None)
    keys = {r.key for r in spec.rows}
    if metric is None or row not in keys or (vs is not None and vs not in keys):
        raise ConfigError(f"quote {key!r}: no such row or metric in table {table}")
    cache = {} if _cache is None else _cache
    if (table, profile) not in cache:
        cache[(table, profile)] = load_records(results_dir, table, profile)
    records = cache[(table, profile)]
    recs = _of_row(records, row)
    if not recs:
        raise ConfigError(f"quote {key!r}: no records")
    scale, d = metric.scale, metric.digits
    if kind in ("mean", "pm", "pooled", "pooled-pm"):
        summary = Column(metric, "pooled" if kind.startswith("pooled") else "mean").summary(recs)
        return summary.format(scale, d) if kind.endswith("pm") else f"{summary.mean * scale:.{d}f}"
    if kind.startswith("seed"):
        value = next((r.metric(f"{metric.name}_mean") for r in recs if r.seed == int(kind[4:])), None)
        if value is None:
            raise ConfigError(f"quote {key!r}: no value")
        return f"{value * scale:.{d}f}"
    from lungseg.experiments.stats import paired

    result = paired(_of_row(records, vs or spec.rows[0].key), recs, metric.name)
    if result is None or result.n == 0:
        raise ConfigError(f"quote {key!r}: no paired images")
    if kind == "delta":
        return f"{result.mean_diff * scale:+.{d}f}"
    if kind == "ci":
        return f"[{result.ci_low * scale:+.{d}f}, {result.ci_high * scale:+.{d}f}]"
    if kind == "n":
        return str(result.n)
    return result.format().split(", p ")[1].split(",")[0]


def fill_quotes(text: str, results_dir: str | Path, tables: Mapping[str, TableSpec] | None = None) -> str:
    """``text`` with every quote (:data:`QUOTE`) showing its generated value (:func:`quote`)."""
    cache: dict = {}
    return QUOTE.sub(lambda m: f"<!--={m['key']}-->{quote(m['key'], results_dir, tables, cache)}<!--/-->", text)


def update_report(report: str | Path, results_dir: str | Path, tables: Mapping[str, TableSpec] | None = None) -> Path:
    """Rewrite the generated blocks of ``report`` from the records, and the numbers the hand-written
    prose quotes through :data:`QUOTE` markers; append missing blocks at the end."""
    report = Path(report)
    text = report.read_text(encoding="utf-8") if report.is_file() else "# Reproduced comparison tables\n"
    atomic_write_text(report, regenerate(text, results_dir, tables))
    return report


def regenerate(
    text: str,
    results_dir: str | Path,
    tables: Mapping[str, TableSpec] | None = None,
    blocks: Mapping[str, str] | None = None,
) -> str:
    """The page ``text`` with its generated blocks and quoted numbers as the records generate them
    (what :func:`update_report` writes)."""
    blocks = render_blocks(results_dir, tables) if blocks is None else blocks
    text = fill_quotes(text, results_dir, tables)
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
    return text


def page_problems(
    report: str | Path, results_dir: str | Path, tables: Mapping[str, TableSpec] | None = None
) -> list[str]:
    """How the page ``report`` differs from what the records under ``results_dir`` generate (empty:
    :func:`update_report` would change nothing): each generated block that differs or is missing, each
    quoted number that differs, or a difference elsewhere. One line each."""
    text = Path(report).read_text(encoding="utf-8")
    mixed = mix_problems(load_records(results_dir))
    if mixed:  # no block can be generated from them (render_block refuses): each named, once
        return [f"cannot be generated: {problem}" for problem in mixed]
    blocks = render_blocks(results_dir, tables)
    have_blocks = {m.group("key"): m.group(0) for m in _BLOCK.finditer(text)}
    # a block no table/profile generates is left as it is by update_report: its numbers come from nowhere
    orphans = [f"block {k} is generated by no table and profile (remove it)" for k in have_blocks if k not in blocks]
    want = regenerate(text, results_dir, tables, blocks)
    if want == text:
        return orphans
    want_blocks = {m.group("key"): m.group(0) for m in _BLOCK.finditer(want)}
    out = [
        f"block {k} is not what its records generate"
        for k in want_blocks
        if k in have_blocks and have_blocks[k] != want_blocks[k]
    ]
    out += [f"no block {k} (its table has records)" for k in want_blocks if k not in have_blocks]
    have_q = [(m["key"], m["value"]) for m in QUOTE.finditer(text)]
    want_q = [(m["key"], m["value"]) for m in QUOTE.finditer(want)]
    out += [
        f"quote {k} shows {a!r}, its records give {b!r}"
        for (k, a), (_, b) in zip(have_q, want_q, strict=False)
        if a != b
    ]
    return orphans + (out or ["differs from what its records generate outside the generated blocks and quotes"])
