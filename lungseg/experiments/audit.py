"""What ``lungseg results check`` verifies of a run record besides its identity against today's code
(:func:`lungseg.experiments.identity.staleness`): that the record is the one its file, its table and
its own numbers say it is. Each problem is one line; the command prints ``error: <file>: <problem>``.

:func:`record_problems`
    the file's place (``<table>/<profile>/<row>-seed<k>.json``) is the record's table, profile and
    cell; its ``settings`` are its table's profile with its recorded overrides; its ``params`` (what
    the run was given) agree with its ``settings`` and seed and — for a recorded identity that is not
    marked stale — resolve, as the training resolves them, to that identity; its summary metrics
    recompute from its per-image rows (:func:`summary_problems`, with the library's own
    :func:`lungseg.metrics.binary.confusion_metrics`).
:func:`code_state`
    whether the run's ``lungseg/`` had uncommitted changes (``git.dirty``): ``dirty``, ``unknown``
    (not recorded, e.g. a commit named by ``LUNGSEG_GIT_COMMIT``) or ``None`` (clean). Such a record
    is a measurement and is kept as it is: the command warns per record (``--strict`` refuses) and
    the page marks its seed ``§`` (:mod:`lungseg.experiments.report`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lungseg.experiments.records import RunRecord

#: ``train`` keys the runner writes into a run's params (:func:`lungseg.experiments.runner.build_params`)
#: besides the profile's ``extra_train`` and ``preset``: what a preset treats as given
RUNNER_TRAIN_KEYS = ("model", "model_kwargs", "seed", "device", "base_channels", "epochs", "batch_size", "lr")
#: confusion counts of a per-image row
COUNTS = ("tp", "fp", "tn", "fn")
DIRTY, UNKNOWN = "dirty", "unknown"


def record_problems(record: RunRecord) -> list[str]:
    """Every way ``record`` is not what its file, its table and its own numbers say (empty: none)."""
    place = _place_problems(record)
    if place:
        return place
    return [*_settings_problems(record), *params_problems(record), *summary_problems(record)]


def _place_problems(record: RunRecord) -> list[str]:
    """The file is ``<table>/<profile>/<cell>.json`` of the record's table, profile and cell, and those exist."""
    from lungseg.experiments.specs import TABLES

    problems = []
    if record.path is not None:
        where = tuple(Path(record.path).parts[-3:])
        want = (str(record.table), str(record.profile), f"{record.cell}.json")
        if where != want:
            problems.append(f"the file lies at {'/'.join(where)} but the record is {'/'.join(want)}")
    spec = TABLES.get(record.table or "")
    if spec is None:
        return [*problems, f"table {record.table!r} is not one of {', '.join(TABLES)}"]
    if record.profile not in spec.profiles:
        problems.append(f"table {spec.name} has no profile {record.profile!r}")
    if record.row not in {r.key for r in spec.rows}:
        problems.append(f"table {spec.name} has no row {record.row!r}")
    elif record.model != spec.row(record.row).model:
        problems.append(f"model {record.model!r}, the row {record.row!r} is {spec.row(record.row).model!r}")
    return problems


def _settings_problems(record: RunRecord) -> list[str]:
    """``settings`` are the table's profile with the record's overrides (what the runner writes)."""
    from lungseg.errors import ConfigError
    from lungseg.experiments.identity import differences
    from lungseg.experiments.runner import effective_profile, settings_of
    from lungseg.experiments.specs import TABLES

    spec = TABLES[record.table]
    try:
        want = settings_of(effective_profile(spec, record.profile, record.overrides), spec.row(record.row))
    except ConfigError as exc:
        return [f"overrides {record.overrides}: {exc}"]
    diff = differences(record.settings.to_dict(), want)
    return [f"settings are not its profile's ({'; '.join(diff)})"] if diff else []


def params_problems(record: RunRecord) -> list[str]:
    """``params`` agree with ``settings``, seed, model and data size (every record), and for a recorded
    identity not marked stale resolve to that identity (:func:`params_identity`)."""
    params = record.params
    if not isinstance(params, Mapping) or not isinstance(params.get("train"), Mapping):
        return ["no params.train (what the run was given)"]
    train, s = params["train"], record.settings
    claims = {
        "train.model": (train.get("model"), s.model),
        "train.model_kwargs": (train.get("model_kwargs"), s.model_kwargs),
        "train.seed": (train.get("seed"), record.seed),
        "train.base_channels": (train.get("base_channels"), s.base_channels),
        "train.epochs": (train.get("epochs"), s.epochs),
        "train.batch_size": (train.get("batch_size"), s.batch_size),
        "train.lr": (train.get("lr"), s.lr),
        "train.preset": (train.get("preset", "default"), s.preset or "default"),
        "preprocess.image_size": ((params.get("preprocess") or {}).get("image_size"), s.image_size),
        **{f"train.{k}": (train.get(k), v) for k, v in sorted(s.extra_train.items())},
    }
    out = [f"params.{k} is {a!r}, its settings say {b!r}" for k, (a, b) in claims.items() if a != b]
    if record.data.image_size is not None and record.data.image_size != s.image_size:
        out.append(f"data.image_size is {record.data.image_size!r}, its settings say {s.image_size!r}")
    ident = record.identity or {}
    if out or ident.get("status") != "recorded" or ident.get("stale"):
        return out
    try:
        derived = params_identity(record)
    except Exception as exc:  # noqa: BLE001 - reported as the record's problem, one line
        return [f"params do not resolve with today's code: {str(exc).splitlines()[0]}"]
    from lungseg.experiments.identity import differences

    diff = differences(
        {k: v for k, v in ident.items() if k != "status"}, {k: v for k, v in derived.items() if k != "status"}
    )
    return [f"identity is not what its params resolve to (recorded → from params: {'; '.join(diff)})"] if diff else []


def params_identity(record: RunRecord) -> dict[str, Any]:
    """The identity ``record.params`` resolve to as the training resolves them: the preset applied to
    the ``train`` keys the runner wrote (:data:`RUNNER_TRAIN_KEYS`, ``preset``, the profile's
    ``extra_train``; the record's params hold every key, so which were given is taken from its
    settings), on the record's image size, channels and classes and device type."""
    from lungseg.config import TrainConfig, params_from_dict
    from lungseg.experiments.identity import identity_of_train, recorded_bf16
    from lungseg.experiments.runner import record_params

    # read as the runner writes them: train.amp at its deprecated default (true, a no-op) left out (#24)
    train = params_from_dict(record_params(record.params or {}), source=str(record.path or "record")).train
    given = {*RUNNER_TRAIN_KEYS, *record.settings.extra_train, *(("preset",) if record.settings.preset else ())}
    train = TrainConfig.model_construct(_fields_set=given & set(train.model_fields_set), **dict(train))
    kwargs = (record.identity or {}).get("model", {}).get("kwargs", {})
    return identity_of_train(
        train,
        int(record.settings.image_size or 0),
        str(record.path or record.cell),
        in_channels=int(kwargs.get("in_channels", 1)),
        num_classes=int(kwargs.get("num_classes", 1)),
        device_type=record.device.type or "cpu",
        cpu_bf16=recorded_bf16(record),  # what the record says ran, never the checking CPU (#24)
    )


def _close(a: Any, b: Any) -> bool:
    """Equal as metric values: both undefined (None/NaN), or numbers equal to 1e-9."""
    a_none = a is None or (isinstance(a, float) and math.isnan(a))
    b_none = b is None or (isinstance(b, float) and math.isnan(b))
    if a_none or b_none:
        return a_none and b_none
    numbers = isinstance(a, (int, float)) and isinstance(b, (int, float))
    return numbers and math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)


def _show(v: Any) -> str:
    return "undefined" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.6g}"


def summary_problems(record: RunRecord) -> list[str]:
    """The record's ``metrics`` recompute from its ``per_image`` rows: ``n_images`` (= the test split),
    each ``<m>_mean`` / ``<m>_n_undefined`` over the rows' defined values, ``<count>_sum`` and each
    ``<m>_pooled`` from the summed confusion counts, each row's overlap metrics from its own counts
    (:func:`lungseg.metrics.binary.confusion_metrics`, what the evaluation computes them with)."""
    from lungseg.metrics.binary import confusion_metrics

    rows, m = record.per_image, record.metrics
    out = []
    n_test = (record.data.counts or {}).get("test") if isinstance(record.data.counts, dict) else None
    if not (m.get("n_images") == len(rows) == (n_test if n_test is not None else len(rows))):
        out.append(f"metrics.n_images {m.get('n_images')}, {len(rows)} per-image rows, test split {n_test}")
    if not rows:
        return out
    out += _mean_problems(rows, m)
    if not all(c in r for r in rows for c in COUNTS):
        return out
    return [
        *out,
        *_row_problems(rows, record.data.image_size, confusion_metrics),
        *_pooled_problems(rows, m, confusion_metrics),
    ]


def _mean_problems(rows: Sequence[Mapping[str, Any]], m: Mapping[str, Any]) -> list[str]:
    """Each ``<k>_mean`` / ``<k>_n_undefined`` of ``m`` against the per-image column ``k``."""
    out = []
    for k in (k for k in rows[0] if k != "id" and k not in COUNTS):
        values = [r.get(k) for r in rows]
        defined = [float(v) for v in values if isinstance(v, (int, float)) and not _close(v, None)]
        mean = math.fsum(defined) / len(defined) if defined else None
        if f"{k}_mean" in m and not _close(m[f"{k}_mean"], mean):
            out.append(f"metrics.{k}_mean {_show(m[f'{k}_mean'])} is not the mean of its per-image {k} ({_show(mean)})")
        undefined = len(values) - len(defined)
        if f"{k}_n_undefined" in m and m[f"{k}_n_undefined"] != undefined:
            out.append(f"metrics.{k}_n_undefined {m[f'{k}_n_undefined']}, its per-image rows have {undefined}")
    return out


def _pooled_problems(rows: Sequence[Mapping[str, Any]], m: Mapping[str, Any], confusion_metrics) -> list[str]:
    """``<count>_sum`` and each ``<k>_pooled`` of ``m`` against the summed confusion counts of the rows."""
    sums = {c: sum(int(r[c]) for r in rows) for c in COUNTS}
    out = [
        f"metrics.{c}_sum {m[f'{c}_sum']}, its per-image rows sum to {v}"
        for c, v in sums.items()
        if f"{c}_sum" in m and m[f"{c}_sum"] != v
    ]
    for k, v in confusion_metrics(*(sums[c] for c in COUNTS)).items():
        if f"{k}_pooled" in m and not _close(m[f"{k}_pooled"], v):
            out.append(f"metrics.{k}_pooled {_show(m[f'{k}_pooled'])} is not its summed confusion counts' ({_show(v)})")
    return out


def _row_problems(rows: Sequence[Mapping[str, Any]], image_size: int | None, confusion_metrics) -> list[str]:
    """Each per-image row's counts cover the image and give its overlap metrics (first bad row per metric)."""
    out, seen = [], set()
    for r in rows:
        counts = [int(r[c]) for c in COUNTS]
        if image_size and sum(counts) != image_size**2 and "size" not in seen:
            seen.add("size")
            out.append(f"per_image {r.get('id')}: tp+fp+tn+fn = {sum(counts)}, not {image_size}²")
        for k, v in confusion_metrics(*counts).items():
            if k in r and not _close(r[k], v) and k not in seen:
                seen.add(k)
                out.append(f"per_image {r.get('id')}: {k} {_show(r[k])} is not its confusion counts' ({_show(v)})")
    return out


def code_state(record: RunRecord) -> str | None:
    """``dirty`` (``lungseg/`` had uncommitted changes when it ran), ``unknown`` (not recorded) or
    ``None`` (the commit it names is the code that ran)."""
    if record.git.dirty is True:
        return DIRTY
    return None if record.git.dirty is False else UNKNOWN


def code_state_note(record: RunRecord) -> str:
    """One line for a record whose :func:`code_state` is not clean (``""`` when it is)."""
    state, commit = code_state(record), (record.git.commit or "unknown commit")[:10]
    if state == DIRTY:
        return (
            f"made from a dirty tree (lungseg/ had uncommitted changes at {commit}): "
            "the commit does not name all the code that ran"
        )
    if state == UNKNOWN:
        source = record.git.source or "unknown"
        return f"whether lungseg/ had uncommitted changes at {commit} is not recorded (git source {source})"
    return ""
