"""Run the cells of a table: preprocess once per dataset, then train + evaluate per row and seed.

For every (row, seed) the runner builds :class:`lungseg.config.Params` with
:func:`lungseg.config.params_from_dict` (library defaults + the table's profile + the row's model),
calls :func:`lungseg.training.train` and :func:`lungseg.evaluation.evaluate` — the same code as
``lungseg train`` / ``lungseg evaluate``, so every run is tracked in MLflow like any training run
(``MLFLOW_TRACKING_URI`` or the default local store, experiment ``lungseg-results``) — and writes
one :class:`~lungseg.experiments.records.RunRecord` atomically to
``<results>/<table>/<profile>/<row>-seed<k>.json`` (the fields are described there).

A cell whose record exists with the same settings is skipped, so an interrupted sweep resumes
where it stopped; a record with *different* settings is an error unless ``force`` (never mix two
settings in one mean ± std). Preprocessed datasets are cached under ``<workdir>/data`` and
re-used while the reader, preprocess settings and raw-data digest agree; when the raw folder is
absent (e.g. on a remote GPU machine that only got the cache) a cache with matching reader and
settings is used and its recorded digest is reported.

Every path (data root, work folder, results folder) is an argument: the library knows nothing of a
repository layout (the command line picks the defaults, :mod:`lungseg.cli.results`).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import math
import os
import platform
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lungseg.artifacts.run_file import RUN_FILE, RunFile
from lungseg.errors import ConfigError, DataError
from lungseg.experiments.records import (
    RECORD_VERSION,
    DataProvenance,
    Device,
    GitInfo,
    RunRecord,
    Settings,
    WallTime,
    portable_record,
    record_path,
)
from lungseg.experiments.tables import PROFILES, Profile, Row, TableSpec, split_record
from lungseg.io import atomic_write_json
from lungseg.provenance import code_version as git_commit  # the code's commit and dirtiness (one definition)
from lungseg.provenance import file_sha256 as sha256_file
from lungseg.provenance import folder_digest

MLFLOW_EXPERIMENT = "lungseg-results"
#: fields of :class:`Profile` that may be overridden from the command line
OVERRIDABLE = ("image_size", "base_channels", "epochs", "batch_size", "lr", "precision")
#: the ``precision`` override's values (``train.precision``; set in the profile's ``extra_train``, #24)
PRECISIONS = ("fp32", "bf16")

__all__ = [
    "MLFLOW_EXPERIMENT",
    "OVERRIDABLE",
    "RECORD_VERSION",
    "CellOutcome",
    "CellRequest",
    "EVALUATE",
    "PreparedData",
    "RunOptions",
    "bf16_mode",
    "build_params",
    "check_precision",
    "clean_json",
    "code_at_start",
    "device_info",
    "effective_profile",
    "existing_record",
    "folder_digest",
    "git_commit",
    "prepare_dataset",
    "record_params",
    "record_path",
    "recorded_tta",
    "run_cell",
    "run_table",
    "scored_tta",
    "settings_of",
    "sha256_file",
]


@dataclass
class CellOutcome:
    table: str
    profile: str
    row: str
    seed: int
    status: str
    """``done``, ``skipped`` or ``failed``."""
    record_path: Path
    seconds: float = 0.0
    error: str | None = None

    def describe(self) -> str:
        extra = f" ({self.seconds:.1f} s)" if self.status == "done" else ""
        err = f": {self.error}" if self.error else ""
        return f"{self.table}/{self.profile}/{self.row}-seed{self.seed}: {self.status}{extra}{err}"


@dataclass(frozen=True)
class RunOptions:
    """How the cells of one ``lungseg results run`` call are run and recorded (the same for every cell)."""

    workdir: Path
    """Preprocessed-data cache (``data/``) and training outputs (``runs/``)."""
    results_dir: Path
    """Where the records go: ``<results_dir>/<table>/<profile>/<row>-seed<k>.json``."""
    device: str = "auto"
    overrides: Mapping[str, Any] = field(default_factory=dict)
    """Command-line overrides of the profile (only the non-None ones are kept and recorded)."""
    command: str | None = None
    """The command line that reproduces the run (stored in each record)."""
    keep_checkpoints: bool = False
    score_at_source: bool = False
    """Also score the test masks at their source resolution (:mod:`lungseg.experiments.source_scoring`),
    stored as ``source_resolution`` in each record."""
    data_root: Path | None = None
    """The raw data root (read again by ``score_at_source``)."""


@dataclass(frozen=True)
class PreparedData:
    """A preprocessed dataset of a table at one image size, and its provenance (stored in each record)."""

    data_dir: Path
    provenance: dict[str, Any]


@dataclass(frozen=True)
class CellRequest:
    """One cell to run: which table/profile/row/seed, on which data, with which options."""

    spec: TableSpec
    profile: str
    prof: Profile
    """The effective profile (the spec's, with the command-line overrides applied)."""
    row: Row
    seed: int
    data: PreparedData
    options: RunOptions

    @property
    def record_path(self) -> Path:
        return record_path(self.options.results_dir, self.spec.name, self.profile, self.row.key, self.seed)

    @property
    def run_dir(self) -> Path:
        return Path(self.options.workdir) / "runs" / self.spec.name / self.profile / f"{self.row.key}-seed{self.seed}"


# ------------------------------------------------------------------------------------ helpers


@functools.cache
def code_at_start() -> dict[str, Any]:
    """:func:`git_commit` taken once per process, when its first sweep starts, with the training code
    imported at that moment: the code a long sweep runs. (Read per record, a commit made while the
    sweep runs would be credited with runs of the older code.)"""
    import lungseg.evaluation  # noqa: F401  - imported now, so later edits cannot reach this process
    import lungseg.training  # noqa: F401

    return {**git_commit(), "taken": "at process start"}


def device_info(device: str, *, ran_bf16: bool = False) -> dict[str, Any]:
    """The device a run with ``train.device = device`` uses, by name; on a CPU, for a run that ran bf16
    (``ran_bf16``: its resolved ``train.precision``), ``bf16``: how it computed it, ``native`` or ``emulated``
    (#24; absent for a run that did not: ``results check`` reads its absence as "did not run bf16")."""
    import torch

    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    info: dict[str, Any] = {
        "type": "cuda" if use_cuda else "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if use_cuda:
        info["name"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    else:
        name = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        info["name"] = name
        info["cpu_threads"] = torch.get_num_threads()
        info["cpu_count"] = os.cpu_count()
        if ran_bf16:
            info["bf16"] = bf16_mode()  # how it computed bf16 here: native or emulated (forced) (#24)
    return info


def clean_json(value: Any) -> Any:
    """NaN/inf → None (strict JSON), numpy scalars → Python, recursively."""
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (TypeError, ValueError):
            return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def effective_profile(spec: TableSpec, profile: str, overrides: Mapping[str, Any] | None = None) -> Profile:
    if profile not in PROFILES or profile not in spec.profiles:
        raise ConfigError(f"unknown profile {profile!r} for table {spec.name} (valid: {', '.join(spec.profiles)})")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    bad = set(overrides) - set(OVERRIDABLE)
    if bad:
        raise ConfigError(f"cannot override {sorted(bad)} (allowed: {', '.join(OVERRIDABLE)})")
    precision = overrides.pop("precision", None)
    if precision is not None and precision not in PRECISIONS:
        raise ConfigError(f"precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    prof = dataclasses.replace(spec.profiles[profile], **overrides)
    if precision is None:  # the profile's own precision (train.precision auto): settings as before the option
        return prof
    return dataclasses.replace(prof, extra_train={**prof.extra_train, "precision": precision})


def bf16_mode() -> str:
    """How this CPU runs bf16: ``native`` (:func:`lungseg.training.setup.cpu_bf16_supported`), ``emulated``
    (not native, forced by ``LUNGSEG_FORCE_BF16_EMULATION=1``) or ``none`` (``train.precision: bf16`` falls
    back to fp32 here): :func:`lungseg.training.setup.cpu_bf16_mode`, what the training resolves with."""
    from lungseg.training.setup import cpu_bf16_mode

    return cpu_bf16_mode()


def record_params(params: Any) -> dict[str, Any]:
    """A run's params as its record stores them (a :class:`lungseg.config.Params` dumped, or a record's
    ``params`` as read) and ``lungseg results check`` reads them: without ``train.amp`` at its default
    ``true`` — the deprecated spelling of ``precision`` that leaves the choice to it, a no-op, but read
    back beside ``precision: fp32`` a contradiction (``ConfigError``, #24). ``amp: false`` is kept."""
    data = params.to_dict() if hasattr(params, "to_dict") else dict(params)
    train = data.get("train")
    if isinstance(train, Mapping) and train.get("amp") is True:
        data = {**data, "train": {k: v for k, v in train.items() if k != "amp"}}
    return data


def check_precision(overrides: Mapping[str, Any] | None, device: str) -> None:
    """A ``precision: bf16`` override on a CPU that would run it in fp32 (no native bf16, emulation not forced)
    is a ``ConfigError``: a record claiming bf16 that ran fp32 is a wrong answer (#24)."""
    if (overrides or {}).get("precision") != "bf16" or device_info(device)["type"] != "cpu":
        return
    if bf16_mode() == "none":
        raise ConfigError(
            "--precision bf16: this CPU has no native bf16 (avx512_bf16/AMX), so the runs would train in fp32; "
            "set LUNGSEG_FORCE_BF16_EMULATION=1 to run it emulated (several times slower)"
        )


def settings_of(prof: Profile, row: Row) -> dict[str, Any]:
    """What must agree between two records of one cell for them to be averaged together (the
    ``settings`` of a :class:`RunRecord`; ``preset`` only when not the default)."""
    return clean_json(
        Settings(
            image_size=prof.image_size,
            base_channels=prof.base_channels,
            epochs=prof.epochs,
            batch_size=prof.batch_size,
            lr=prof.lr,
            extra_train=dict(prof.extra_train),
            model=row.model,
            model_kwargs=prof.model_kwargs(row),
            preset=None if prof.preset == "default" else prof.preset,
        ).to_dict()
    )


#: the ``evaluate`` section of every cell (``tta`` left at ``auto``: ``mirror`` under ``preset: nnunet``, #25)
EVALUATE: dict[str, Any] = {"split": "test", "n_overlays": 2}


def scored_tta(prof: Profile) -> str:
    """The test-time augmentation a cell of ``prof`` is evaluated with: ``evaluate.tta`` of :data:`EVALUATE`
    (``auto``) resolved by the profile's preset (:func:`lungseg.artifacts.serving.resolve_tta`), as
    ``lungseg evaluate`` resolves it from the checkpoint — ``mirror`` for ``cpu-nnunet``, ``none`` otherwise."""
    from lungseg.artifacts.serving import resolve_tta
    from lungseg.config import EvaluateConfig

    return resolve_tta(EvaluateConfig.model_validate(EVALUATE).tta, prof.preset)


def recorded_tta(rec: dict[str, Any]) -> str:
    """The test-time augmentation a record's metrics were scored with (``metrics.serving.tta``; ``none`` in
    records written before serving settings were recorded, when there was none)."""
    serving = (rec.get("metrics") or {}).get("serving") or {}
    return str(serving.get("tta") or "none")


def build_params(spec: TableSpec, row: Row, prof: Profile, seed: int, *, device: str = "auto"):
    """:class:`lungseg.config.Params` of one cell: library defaults + profile + row + seed."""
    from lungseg.config import params_from_dict

    train = {
        "model": row.model,
        "model_kwargs": prof.model_kwargs(row),
        "seed": seed,
        "device": device,
        **prof.train_overrides(),
    }
    return params_from_dict(
        {
            "preprocess": {"image_size": prof.image_size, "seed": 0, **_split_preprocess(spec)},
            "train": train,
            "evaluate": dict(EVALUATE),
            "mlflow": {"experiment": MLFLOW_EXPERIMENT},
        },
        source=f"results:{spec.name}/{row.key}",
    )


# ------------------------------------------------------------------------------------ data


def _split_preprocess(spec: TableSpec) -> dict[str, Any]:
    """The ``preprocess`` settings of ``spec``'s own split (none for the published one)."""
    return spec.split.preprocess() if spec.split is not None else {}


def prepare_dataset(
    spec: TableSpec, prof: Profile, *, data_root: str | Path, workdir: str | Path, log: Callable[[str], None] = print
) -> PreparedData:
    """The processed folder for ``spec.dataset`` at ``prof.image_size`` (cached) and its provenance."""
    from lungseg.config import PreprocessConfig

    cfg = PreprocessConfig(**{"image_size": prof.image_size, "seed": 0, **_split_preprocess(spec)})
    cfg_dict = cfg.model_dump()
    cfg_dict["hu_window"] = list(cfg_dict["hu_window"])
    if spec.split is None:
        cfg_dict.pop("split")  # the published split: the cache key (and records) of before the option
    if cfg_dict.get("normalization") == "window":
        cfg_dict.pop("normalization")  # (#25) the default: the cache key (and records) of before the option
    own = f"-{spec.split.name}" if spec.split is not None else ""
    out = Path(workdir) / "data" / f"{spec.dataset}-{prof.image_size}{own}"
    source_file = out.parent / f"{out.name}.source.json"
    input_dir = spec.input_dir(data_root)
    cached = (
        json.loads(source_file.read_text(encoding="utf-8"))
        if source_file.is_file() and (out / "meta.json").is_file()
        else None
    )
    if cached is not None and (cached.get("dataset") != spec.dataset or cached.get("preprocess") != cfg_dict):
        cached = None
    raw = None
    if input_dir.is_dir():
        raw = folder_digest(input_dir)
        if cached is not None and cached.get("raw") != raw:
            log(f"raw data in {input_dir} changed since {out} was made: preprocessing again")
            cached = None
    elif cached is None:
        raise DataError(input_dir, f"raw input folder of table {spec.name} not found (check --data-root)")
    else:
        log(f"{input_dir} not found: using the cached {out} (raw digest {cached['raw']['sha256'][:12]} as recorded)")

    if cached is None:
        from lungseg.data.preprocess import preprocess

        t0 = time.perf_counter()
        summary = preprocess(spec.dataset, input_dir, out, cfg)
        log(summary.describe())
        cached = {
            "dataset": spec.dataset,
            "input_subdir": spec.input_subdir,
            "preprocess": cfg_dict,
            "raw": raw,
            "preprocess_seconds": round(time.perf_counter() - t0, 2),
        }
        atomic_write_json(source_file, cached)

    from lungseg.data.dataset import read_meta

    meta = read_meta(out)
    provenance = DataProvenance(
        dataset=spec.dataset,
        input_subdir=spec.input_subdir,
        raw_sha256=cached["raw"]["sha256"],
        raw_n_files=cached["raw"]["n_files"],
        processed_sha256={name: sha256_file(out / name) for name in ("images.npy", "masks.npy", "manifest.csv")},
        counts=meta.get("counts"),
        image_size=meta.get("image_size"),
        split_protocol=meta.get("split_protocol"),
        split_level=meta.get("split_level"),
        warnings=meta.get("warnings", []),
        preprocess=cfg_dict,
        preprocess_seconds=cached.get("preprocess_seconds"),
        split=split_record(spec),
    )
    return PreparedData(out, provenance.to_dict())


# ------------------------------------------------------------------------------------ cells


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _read_per_image(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            item: dict[str, Any] = {}
            for k, v in row.items():
                try:
                    item[k] = float(v) if v not in ("", None) else None
                except ValueError:
                    item[k] = v
            out.append(item)
    return out


def existing_record(
    path: Path, settings: dict[str, Any], split: dict[str, Any] | None = None, tta: str | None = None
) -> dict[str, Any] | None:
    """The finished record at ``path`` if it has ``settings`` (and, given, ran the data ``split``,
    :func:`lungseg.experiments.tables.split_record`, and was scored with the test-time augmentation ``tta``,
    :func:`recorded_tta`); ``ConfigError`` if it has others."""
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None  # a broken record is re-run (records are written atomically, so this is rare)
    if rec.get("settings") != settings:
        raise ConfigError(
            f"{path}: recorded with settings {rec.get('settings')}, now asked for {settings}; "
            "use --force to replace it (or another --results-dir): one mean ± std never mixes settings"
        )
    ran = DataProvenance.from_dict(rec.get("data")).split_used()
    if split is not None and ran != split:
        raise ConfigError(
            f"{path}: made on the data split {ran}, the table's is now {split}; use --force to replace "
            "it (or another --results-dir): one mean ± std never mixes splits"
        )
    if tta is not None and recorded_tta(rec) != tta:
        raise ConfigError(
            f"{path}: scored with test-time augmentation {recorded_tta(rec)!r}, this evaluation uses {tta!r} "
            "(evaluate.tta auto: mirror under preset nnunet); use --force to replace it (or another --results-dir): "
            "one mean ± std never mixes evaluations"
        )
    return rec


def trained_identity(request: CellRequest, train_dir: Path) -> dict[str, Any]:
    """The identity the run trained (its ``best.pt``: model identity, effective settings, preset
    deviations; the loss as the training resolves it), which must be what today's code builds for the
    cell (:func:`lungseg.experiments.identity.expected_identity`): a ``DataError`` naming what differs
    otherwise, so no record is written that the committed-records test would call stale."""
    from lungseg.artifacts.checkpoint import BEST, load_checkpoint
    from lungseg.config import TrainConfig
    from lungseg.experiments.identity import differences, expected_identity, loss_of, make_identity

    ckpt = load_checkpoint(train_dir / BEST)
    # the recorded precision is the resolved one (#24): amp (its deprecated spelling, dumped at its default) left out
    cfg = TrainConfig.model_validate({k: v for k, v in ckpt["config"].items() if k != "amp"})
    ident = ckpt["model_identity"]
    num_classes = int(ckpt.get("num_classes", ident["kwargs"].get("num_classes", 1)))
    identity = make_identity(ident, ckpt["config"], ckpt.get("preset_deviations") or {}, loss_of(cfg, num_classes))
    expected = expected_identity(
        request.spec,
        request.profile,
        request.row,
        overrides=request.options.overrides,
        in_channels=int(ident["kwargs"].get("in_channels", 1)),
        num_classes=num_classes,
        device_type=device_info(request.options.device)["type"],
        cpu_bf16=bf16_mode(),  # this CPU's, where the run ran
    )
    diff = differences(identity, expected)
    if diff:
        raise DataError(train_dir / BEST, f"trained identity differs from the cell's spec: {'; '.join(diff)}")
    return identity


def run_cell(request: CellRequest) -> RunRecord:
    """Train + evaluate one cell from scratch and write its record (citing :func:`code_at_start`)."""
    from lungseg.evaluation import evaluate
    from lungseg.training import train

    spec, row, prof, opts = request.spec, request.row, request.prof, request.options
    params = build_params(spec, row, prof, request.seed, device=opts.device)
    run_dir = request.run_dir
    train_dir, eval_dir = run_dir / "train", run_dir / "eval"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a cell never resumes half-way: it is re-run from scratch
    run_dir.mkdir(parents=True)
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    train(params, data_dir=request.data.data_dir, output_dir=train_dir)
    t_train = time.perf_counter() - t0
    t1 = time.perf_counter()
    evaluate(params, model_dir=train_dir, data_dir=request.data.data_dir, output_dir=eval_dir)
    t_eval = time.perf_counter() - t1

    metrics = _read_json(eval_dir / "metrics.json")
    if not isinstance(metrics, dict):
        raise DataError(eval_dir / "metrics.json", "evaluation wrote no metrics")
    if recorded_tta({"metrics": metrics}) != scored_tta(prof):  # the record states what it was scored with (#25)
        raise DataError(
            eval_dir / "metrics.json",
            f"scored with tta {recorded_tta({'metrics': metrics})!r}, the cell's is {scored_tta(prof)!r}",
        )
    identity = trained_identity(request, train_dir)
    source = None
    if opts.score_at_source:
        from lungseg.experiments.source_scoring import score_cell_at_source

        if opts.data_root is None:
            raise ConfigError("score_at_source needs the raw data root")
        source = score_cell_at_source(
            train_dir,
            request.data.data_dir,
            spec.dataset,
            spec.input_dir(opts.data_root),
            threshold=params.evaluate.threshold,
            serving=metrics.get("serving"),  # as the record's evaluation served it: tta, postprocess (#25)
        )
    record = RunRecord.from_dict(
        clean_json(
            {
                "record_version": RECORD_VERSION,
                "table": spec.name,
                "profile": request.profile,
                "row": row.key,
                "label": row.label,
                "model": row.model,
                "model_kwargs": prof.model_kwargs(row),
                "seed": request.seed,
                "settings": settings_of(prof, row),
                "identity": identity,
                "overrides": {k: v for k, v in opts.overrides.items() if v is not None},
                "params": record_params(params),
                "metrics": metrics,
                "per_image": _read_per_image(eval_dir / "per_image.csv"),
                "train_metrics": _read_json(train_dir / "train_metrics.json"),
                "mlflow": RunFile.from_file(train_dir / RUN_FILE).to_dict(),
                "wall_time_s": WallTime(
                    train=round(t_train, 2), evaluate=round(t_eval, 2), total=round(t_train + t_eval, 2)
                ).to_dict(),
                "started_at": started.isoformat(timespec="seconds"),
                "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "device": Device.from_dict(
                    device_info(opts.device, ran_bf16=identity["train"].get("precision") == "bf16")
                ).to_dict(),
                "git": GitInfo.from_dict(code_at_start()).to_dict(),
                "data": request.data.provenance,
                "command": opts.command,
                "host": platform.node(),
                **({"source_resolution": source} if source is not None else {}),
            }
        )
    )
    record = portable_record(record, request.record_path)  # committed: no path of this machine in it
    atomic_write_json(request.record_path, record.to_dict())
    if not opts.keep_checkpoints:
        for pt in train_dir.glob("*.pt"):
            pt.unlink()
    return dataclasses.replace(record, path=request.record_path)


def run_table(
    spec: TableSpec,
    *,
    profile: str = "cpu",
    seeds: Sequence[int] | None = None,
    rows: Sequence[str] | None = None,
    data_root: str | Path,
    workdir: str | Path,
    results_dir: str | Path,
    force: bool = False,
    overrides: Mapping[str, Any] | None = None,
    device: str = "auto",
    command: str | None = None,
    keep_going: bool = True,
    keep_checkpoints: bool = False,
    score_at_source: bool = False,
    log: Callable[[str], None] = print,
) -> list[CellOutcome]:
    """Run every missing cell of ``spec`` (rows × seeds); returns one outcome a cell."""
    code_at_start()  # before anything else: fixes the code this process runs (cached for its records)
    prof = effective_profile(spec, profile, overrides)
    check_precision(overrides, device)
    seeds = list(spec.seeds if seeds is None else seeds)
    if not seeds:
        raise ConfigError("no seeds given")
    chosen = [spec.row(k) for k in rows] if rows else list(spec.rows)
    options = RunOptions(
        workdir=Path(workdir),
        results_dir=Path(results_dir),
        device=device,
        overrides={k: v for k, v in (overrides or {}).items() if v is not None},
        command=command,
        keep_checkpoints=keep_checkpoints,
        score_at_source=score_at_source,
        data_root=Path(data_root),
    )

    todo: list[tuple[Row, int, Path]] = []
    outcomes: list[CellOutcome] = []
    for row in chosen:
        settings = settings_of(prof, row)
        for seed in seeds:
            path = record_path(options.results_dir, spec.name, profile, row.key, seed)
            if not force and existing_record(path, settings, split_record(spec), scored_tta(prof)) is not None:
                outcomes.append(CellOutcome(spec.name, profile, row.key, seed, "skipped", path))
                log(outcomes[-1].describe())
            else:
                todo.append((row, seed, path))
    if not todo:
        return outcomes

    data = prepare_dataset(spec, prof, data_root=data_root, workdir=options.workdir, log=log)
    for row, seed, path in todo:
        t0 = time.perf_counter()
        try:
            run_cell(CellRequest(spec=spec, profile=profile, prof=prof, row=row, seed=seed, data=data, options=options))
            outcomes.append(CellOutcome(spec.name, profile, row.key, seed, "done", path, time.perf_counter() - t0))
        except Exception as exc:  # noqa: BLE001 - one failed cell must not lose the others; logged in full
            if not keep_going:
                raise
            tb = traceback.format_exc()
            log_path = options.workdir / "failures.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "a", encoding="utf-8") as fh:
                fh.write(f"--- {datetime.now(UTC).isoformat()} {spec.name}/{profile}/{row.key}-seed{seed}\n{tb}\n")
            outcomes.append(
                CellOutcome(
                    spec.name,
                    profile,
                    row.key,
                    seed,
                    "failed",
                    path,
                    time.perf_counter() - t0,
                    f"{type(exc).__name__}: {exc}",
                )
            )
        log(outcomes[-1].describe())
        sys.stdout.flush()
    return outcomes
