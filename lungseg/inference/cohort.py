"""A cohort in one call: ``lungseg predict --input FOLDER`` where FOLDER holds one case per entry.

Cases (:func:`find_cases`)
    A folder is a *cohort* when it holds NIfTI files and/or sub-folders (each sub-folder one DICOM
    series or one folder of PNG/TIFF slices) and no slice or DICOM file of its own; a folder that holds
    slices or DICOM files directly is *one scan*, as before. A case is named by its NIfTI file's stem or
    its sub-folder's name; two cases of one name, or a folder holding both cases and slice/DICOM files,
    are errors. Other files (a README) are named in the cohort record and left out.

Output (:func:`predict_cohort`)
    ``<output>/<case>/`` — each case exactly what a one-scan prediction writes (written atomically, so a
    case folder is complete or absent) — plus ``burden.csv`` (one row per case: status, lung and
    infection mL, % of lung affected, left/right, warnings, error) and ``cohort.json`` (the models with
    their weights' sha256, the cases and their status), both rewritten after every case so that a
    killed run leaves a table of what is done. The models are loaded once (by the caller).

    One bad case (a :class:`~lungseg.errors.LungsegError`: unreadable file, no spacing, …) is reported
    on its row and in the progress line, and the other cases still run; :attr:`CohortResult.failed`
    tells the caller (the CLI exits 1). A bug (any other exception) stops the run, as everywhere, and so
    does a :class:`~lungseg.errors.ConfigError` (the command's settings, not a case's); ``--compile``
    compiles before anything is written, so that its failure ends the command in one line (#24).

    ``resume=True`` (``--continue``, as ``nnUNetv2_predict --continue_prediction``) keeps the cases
    already done in ``<output>`` whose input is unchanged (name, size, modification time of its files)
    and predicts the others — only when ``cohort.json`` records the same input folder, the same models
    (weights sha256, identity, preprocessing, serving settings) and the same scan options (``--spacing``,
    ``--intensity``, ``--save-probabilities``, ``--dicom-seg``, ``--backend``); anything else is refused in one line.
    Without it a previous output is replaced (the rules of :func:`lungseg.io.check_output_dir`).

Progress: one log line per case (``[3/20] case_03: … 4.1 s, ETA 1:10``), on a terminal or not.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lungseg.data import formats
from lungseg.errors import ConfigError, DataError, LungsegError

log = logging.getLogger(__name__)

TABLE = "burden.csv"
RECORD = "cohort.json"
CASE_REPORT = "report.json"
COLUMNS = (
    "case",
    "status",
    "lung_ml",
    "lung_left_ml",
    "lung_right_ml",
    "infection_ml",
    "infection_in_lung_ml",
    "infection_outside_lung_ml",
    "percent_of_lung_affected",
    "infection_left_percent_of_lung",
    "infection_right_percent_of_lung",
    "warnings",
    "error",
)


@dataclass(frozen=True)
class Case:
    name: str
    path: Path


def _is_scan_file(path: Path) -> bool:
    name = path.name.lower()
    if name.endswith(formats.NIFTI_SUFFIXES):
        return False
    return name.endswith(formats.IMAGE_SUFFIXES) or formats.looks_like_dicom(path)


def find_cases(folder: str | Path) -> tuple[list[Case], list[str]] | None:
    """``(cases, other files)`` of a cohort folder, or ``None`` when ``folder`` is one scan (module docstring)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    files = [p for p in entries if p.is_file()]
    niftis = [p for p in files if p.name.lower().endswith(formats.NIFTI_SUFFIXES)]
    dirs = [p for p in entries if p.is_dir()]
    scan_files = [p.name for p in files if _is_scan_file(p)]
    if not niftis and not dirs:
        return None
    if scan_files:
        raise DataError(
            folder,
            f"holds both slices/DICOM files ({', '.join(scan_files[:3])}{' …' if len(scan_files) > 3 else ''}) and "
            f"cases ({', '.join(p.name for p in (niftis + dirs)[:3])}): give one scan, or one case per entry",
        )
    cases = [Case(formats.strip_suffix(p), p) for p in niftis] + [Case(p.name, p) for p in dirs]
    seen: dict[str, Path] = {}
    for case in cases:
        if case.name in seen:
            raise DataError(folder, f"two cases named {case.name!r}: {seen[case.name].name} and {case.path.name}")
        if case.name in (TABLE, RECORD):
            raise DataError(case.path, f"a case may not be named {case.name!r}: the cohort's own file has that name")
        seen[case.name] = case.path
    others = [p.name for p in files if p not in niftis]
    return sorted(cases, key=lambda c: c.name), others


@dataclass
class CohortResult:
    output_dir: Path
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def describe(self) -> str:
        n = len(self.done) + len(self.skipped) + len(self.failed)
        s = f"cohort of {n} case(s): {len(self.done)} predicted"
        if self.skipped:
            s += f", {len(self.skipped)} already done (--continue)"
        if self.failed:
            s += f", {len(self.failed)} FAILED ({', '.join(self.failed)})"
        return f"{s} in {self.seconds:.1f} s\n  → {self.output_dir / TABLE}"


#: the options of a prediction that change its output, recorded so that ``--continue`` adds cases alike
RECORDED_OPTIONS = ("spacing", "intensity", "save_probabilities", "dicom_seg", "backend")
#: recorded only when they differ from these (so the record of a cohort predicted before the option existed
#: still matches a run with its default)
UNRECORDED_DEFAULTS = {"backend": "torch"}


def _models_record(models: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """What must be equal for ``--continue`` to add cases to a cohort: each role's weights, identity,
    preprocessing and serving settings (threshold, post-processing, TTA), and the scan options."""
    record: dict[str, Any] = {
        role: {
            "weights_sha256": m.provenance.get("weights_sha256"),
            "identity": m.identity,
            "preprocess": m.preprocess,
            "serving_fingerprint": m.serving.fingerprint(),
        }
        for role, m in models.items()
    }
    record["options"] = {
        k: options.get(k)
        for k in RECORDED_OPTIONS
        if k not in UNRECORDED_DEFAULTS or options.get(k, UNRECORDED_DEFAULTS[k]) != UNRECORDED_DEFAULTS[k]
    }
    return record


def case_fingerprint(path: Path) -> str:
    """What identifies a case's input between runs: name, size and modification time of its file(s)."""
    import hashlib

    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(path.parent)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _prepare_output(output_dir: Path, input_dir: Path, models_record: dict[str, Any], resume: bool) -> dict:
    """Check and create ``output_dir``; with ``resume`` the previous cohort record (same models only)."""
    from lungseg.io import MARKER, check_output_dir, marker_text

    check_output_dir(output_dir, keep=(input_dir,))
    record_path = output_dir / RECORD
    if resume and record_path.is_file():
        previous = json.loads(record_path.read_text(encoding="utf-8"))
        if previous.get("input") != str(input_dir.resolve()):
            raise DataError(
                record_path,
                f"--continue: the cohort was predicted from {previous.get('input')}, not {input_dir.resolve()}; "
                "name a new --output, or run without --continue to replace it",
            )
        if json.loads(json.dumps(models_record, default=str)) != previous.get("models"):
            raise DataError(
                record_path,
                "--continue: the cohort was predicted with other models or settings (weights, serving "
                "settings, --spacing, --intensity …); name a new --output, or run without --continue to replace it",
            )
        return previous
    if output_dir.exists():
        shutil.rmtree(output_dir)  # empty, a previous lungseg output, or --overwrite: checked above
    output_dir.mkdir(parents=True)
    (output_dir / MARKER).write_text(marker_text(), encoding="utf-8")
    return {}


def _amount_ml(amount: Any) -> float | None:
    return None if not isinstance(amount, dict) else amount.get("ml")


def burden_row(name: str, report: dict[str, Any] | None, error: str = "") -> dict[str, Any]:
    """One ``burden.csv`` row from a case's report (``None`` and ``error`` for a failed case)."""
    row: dict[str, Any] = dict.fromkeys(COLUMNS, "")
    row["case"] = name
    if report is None:
        row.update(status="failed", error=error)
        return row
    lung = report["volumes"].get("lung") or {}
    inf = report["volumes"].get("infection") or {}
    row.update(
        status="done",
        lung_ml=_amount_ml(lung),
        lung_left_ml=_amount_ml(lung.get("left")),
        lung_right_ml=_amount_ml(lung.get("right")),
        infection_ml=_amount_ml(inf),
        infection_in_lung_ml=_amount_ml(inf.get("in_lung")),
        infection_outside_lung_ml=_amount_ml(inf.get("outside_lung")),
        percent_of_lung_affected=report.get("percent_of_lung_affected"),
        infection_left_percent_of_lung=(inf.get("left") or {}).get("percent_of_lung"),
        infection_right_percent_of_lung=(inf.get("right") or {}).get("percent_of_lung"),
        warnings=" | ".join(report.get("warnings", [])),
    )
    return {k: ("" if v is None else v) for k, v in row.items()}


def _write_tables(output_dir: Path, record: dict[str, Any], rows: dict[str, dict[str, Any]]) -> None:
    from lungseg.io import atomic_write_json, atomic_write_text

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for name in sorted(rows):
        writer.writerow(rows[name])
    atomic_write_text(output_dir / TABLE, buf.getvalue())
    atomic_write_json(output_dir / RECORD, record)


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _compile_first(models: dict[str, Any], options: dict[str, Any]) -> None:
    """``--compile``: each model's network compiled now, by one blank slice through the engine the cases
    use (the same static shape: the graph the cases then reuse), so that a compile failure ends the
    command in one line before anything is written instead of failing every case in turn (#24)."""
    if not options.get("compile"):
        return
    import numpy as np

    from lungseg.inference.predict import SliceInference

    for model in models.values():
        engine = SliceInference(
            model,
            device=options.get("device", "auto"),
            batch_size=options.get("batch_size"),
            backend=options.get("backend", "torch"),
            compile=True,
        )
        engine.run([np.zeros((model.image_size, model.image_size), np.float32)], desc="compile")


def predict_cohort(
    input_dir: str | Path, output_dir: str | Path, models: dict[str, Any], *, resume: bool = False, **scan_options
) -> CohortResult:
    """Predict every case of the cohort folder ``input_dir`` into ``output_dir`` (module docstring);
    ``scan_options`` go to :func:`lungseg.inference.predict.predict_scan` for each case."""
    from lungseg.inference.predict import predict_scan

    t0 = time.perf_counter()
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    found = find_cases(input_dir)
    if found is None:
        raise DataError(input_dir, "not a cohort folder (NIfTI files and/or one sub-folder per case)")
    cases, others = found
    models_record = _models_record(models, scan_options)
    _compile_first(models, scan_options)  # a compile failure ends the command before anything is written
    previous = _prepare_output(output_dir, input_dir, models_record, resume)
    record = {"input": str(input_dir.resolve()), "models": models_record, "left_out": others, "cases": {}}
    rows: dict[str, dict[str, Any]] = {}
    result = CohortResult(output_dir)
    spent: list[float] = []
    for i, case in enumerate(cases, start=1):
        out = output_dir / case.name
        seen = case_fingerprint(case.path)
        before = previous.get("cases", {}).get(case.name, {})
        if resume and before.get("status") == "done" and before.get("input") == seen and (out / CASE_REPORT).is_file():
            report = json.loads((out / CASE_REPORT).read_text(encoding="utf-8"))
            rows[case.name], record["cases"][case.name] = burden_row(case.name, report), before
            result.skipped.append(case.name)
            log.info("[%d/%d] %s: already done (--continue)", i, len(cases), case.name)
            continue
        t = time.perf_counter()
        try:
            done = predict_scan(case.path, out, models, **scan_options)
        except ConfigError:
            raise  # the command's settings (--compile, --device …), not this case's: ends the cohort at once
        except LungsegError as exc:
            rows[case.name] = burden_row(case.name, None, str(exc))
            record["cases"][case.name] = {"status": "failed", "error": str(exc), "input": seen}
            result.failed[case.name] = str(exc)
            line = f"FAILED: {exc}"
        else:
            rows[case.name] = burden_row(case.name, done.report)
            record["cases"][case.name] = {"status": "done", "seconds": round(done.seconds, 3), "input": seen}
            result.done.append(case.name)
            line = done.summary
        spent.append(time.perf_counter() - t)
        _write_tables(output_dir, record, rows)
        eta = sum(spent) / len(spent) * (len(cases) - i)
        log.info("[%d/%d] %s: %s (%.1f s, ETA %s)", i, len(cases), case.name, line, spent[-1], _clock(eta))
    if not cases:
        raise DataError(input_dir, "no cases")
    _write_tables(output_dir, record, rows)
    result.seconds = time.perf_counter() - t0
    return result


__all__ = ["COLUMNS", "Case", "CohortResult", "burden_row", "find_cases", "predict_cohort"]
