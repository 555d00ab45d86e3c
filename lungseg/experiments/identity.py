"""The fully resolved identity of a results cell: what today's code builds for it, what a run recorded,
and whether a committed record still describes today's code.

A record (record_version ≥ 2) carries ``identity``:

``status``
    ``recorded`` — the fields below are what the run trained (read from its ``best.pt``);
    ``unrecorded`` — a record made by older code that did not store them: ``note`` says what is
    known (e.g. ``made before mrc_levels 5 → 4, commit 4ccf5a1``). Nothing is filled in for it.
``model``
    the checkpoint's ``model_identity`` (name + constructor options as
    :func:`lungseg.artifacts.checkpoint.model_identity` records them);
``constructor``
    **every** constructor argument of the model, defaults included (so a changed default of any
    option shows);
``train``
    the effective ``train`` settings (the preset applied), without the keys that do not change what
    is trained (:data:`RUN_ONLY_KEYS`) and without the model and its options (in ``model``);
``loss``
    ``{name, options, form}``: the loss the run trained with, its options, and for Dice-based
    losses which Dice (:func:`loss_form`);
``preset``, ``preset_deviations``
    ``train.preset`` and what the run changed of the paper's recipe.

:func:`expected_identity` is what today's code builds for a cell's spec (the same library functions
the training uses: :func:`lungseg.training.presets.resolve_preset`,
:func:`lungseg.artifacts.checkpoint.model_identity`, ...). :func:`staleness` compares a record with it:
``tests/experiments/test_committed_records.py`` requires every committed record to be current or
marked ``unrecorded``, and the page renders the marked ones as made by older code.
"""

from __future__ import annotations

import functools
import inspect
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: ``train`` keys that do not change what is trained (where and how often it writes, how it reports)
RUN_ONLY_KEYS = frozenset(
    {
        "seed",
        "device",
        "progress_every_s",
        "num_workers",
        "checkpoint_every",
        "checkpoint_async",
        "data_on_device",
        "model",
        "model_kwargs",
    }
)
#: commits that changed what a results cell trains, oldest first: (commit, models it concerns or
#: None for every model, what changed). A record made before one of them is marked with it.
LANDMARKS: tuple[tuple[str, frozenset[str] | None, str], ...] = (
    ("4ccf5a1", frozenset({"lgnet"}), "mrc_levels 5 → 4"),
    ("4ccf5a1", frozenset({"prnet"}), "PR-Net dsa_scaled option"),
    ("4ccf5a1", None, "the Eq. 14–15 Dice form (foreground-only Dice before)"),
)
RECORDED = "recorded"
UNRECORDED = "unrecorded"
#: the commit since which the runner records the identity of every run: a record made at it or after
#: it cannot be marked ``unrecorded`` (made "before records carried the resolved identity")
IDENTITY_SINCE = "c90d91f"
#: the first ``record_version`` whose runner records the identity
RECORD_VERSION_WITH_IDENTITY = 2


def constructor_arguments(name: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Every argument of model ``name``'s constructor, ``kwargs`` bound over its defaults."""
    from lungseg.models import model_class

    sig = inspect.signature(model_class(name))
    bound = sig.bind_partial(**kwargs)
    bound.apply_defaults()
    return {k: v for k, v in bound.arguments.items() if sig.parameters[k].kind is not inspect.Parameter.VAR_KEYWORD}


def loss_form(name: str, options: Mapping[str, Any]) -> str:
    """Which Dice a loss optimises: ``Eq. 14–15`` (LG-Net's sum over all classes, background included)
    or ``foreground-only Dice``; ``-`` for a loss without Dice."""
    if "dice" not in name:
        return "-"
    if options.get("binary_background") and options.get("class_reduction") == "sum":
        return "Eq. 14–15 (all classes, background included)"
    return "foreground-only Dice"


def loss_of(cfg, num_classes: int) -> dict[str, Any]:
    """``{name, options, form}`` of the loss a run of ``cfg`` (preset applied) trains with."""
    from lungseg.losses import default_loss_for
    from lungseg.training.nnunet_preset import nnunet_loss_options
    from lungseg.training.presets import paper_loss_options

    name = default_loss_for(cfg.model) if cfg.loss == "auto" else cfg.loss
    options = paper_loss_options(num_classes) if cfg.preset == "paper" and name == "dice_focal" else {}
    options = options or nnunet_loss_options(cfg, name)  # issue #25
    return {"name": name, "options": dict(options), "form": loss_form(name, options)}


def train_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The effective ``train`` settings without :data:`RUN_ONLY_KEYS`."""
    return {k: v for k, v in sorted(config.items()) if k not in RUN_ONLY_KEYS}


def _clean(value: Any) -> Any:
    """JSON-equal form (tuples → lists, numpy scalars → Python)."""
    from lungseg.experiments.runner import clean_json

    return clean_json(value)


def make_identity(
    model_identity: Mapping[str, Any], config: Mapping[str, Any], deviations: Mapping[str, Any], loss: Mapping[str, Any]
) -> dict[str, Any]:
    """The ``identity`` of a record: the model identity (and every constructor argument), the
    effective train settings, the loss and the preset with its deviations."""
    kwargs = dict(model_identity["kwargs"])
    return _clean(
        {
            "status": RECORDED,
            "model": {"name": model_identity["name"], "kwargs": dict(sorted(kwargs.items()))},
            "constructor": constructor_arguments(model_identity["name"], kwargs),
            "train": train_settings(config),
            "loss": dict(loss),
            "preset": config.get("preset", "default"),
            "preset_deviations": dict(deviations),
        }
    )


def expected_identity(
    spec,
    profile: str,
    row,
    *,
    overrides=None,
    in_channels: int = 1,
    num_classes: int = 1,
    device_type: str = "cpu",
    cpu_bf16: str = "none",
):
    """What today's code builds for cell ``spec``/``profile``/``row`` (the profile with the record's
    command-line ``overrides``); ``in_channels``/``num_classes`` are the data's, ``device_type`` the
    run's (``train.precision`` is recorded as resolved there, #24); ``cpu_bf16``: how the run's CPU ran
    bf16 (``native``, ``emulated`` — forced, ``LUNGSEG_FORCE_BF16_EMULATION`` — or ``none``: a record's
    ``device.bf16``, :func:`recorded_bf16`), so the expectation never depends on the checking machine."""
    from lungseg.experiments.runner import build_params, effective_profile

    prof = effective_profile(spec, profile, overrides)
    params = build_params(spec, row, prof, 0, device="cpu")
    return identity_of_train(
        params.train,
        prof.image_size,
        f"<{spec.dataset}>",
        in_channels=in_channels,
        num_classes=num_classes,
        device_type=device_type,
        cpu_bf16=cpu_bf16,
    )


def identity_of_train(
    train, image_size: int, where: str, *, in_channels: int, num_classes: int, device_type: str, cpu_bf16: str
):
    """The identity a run of the ``train`` section ``train`` (a :class:`lungseg.config.TrainConfig`; its
    preset applied as the training applies it, to the keys it was given) on ``image_size``² data builds,
    its precision resolved on ``device_type`` with a CPU running bf16 as ``cpu_bf16`` says (#24)."""
    import torch

    from lungseg.artifacts.checkpoint import model_identity
    from lungseg.training.presets import check_paper_size, resolve_preset
    from lungseg.training.setup import resolve_precision

    preset = check_paper_size(resolve_preset(train), image_size, where)
    cfg = preset.config
    precision = resolve_precision(cfg, torch.device(device_type), cpu_bf16=cpu_bf16)
    cfg = cfg.model_copy(update={"precision": precision})  # as recorded
    return make_identity(
        model_identity(cfg, in_channels, num_classes), cfg.model_dump(), preset.deviations, loss_of(cfg, num_classes)
    )


def expected_for(record) -> dict[str, Any]:
    """:func:`expected_identity` of a record's cell (its data's channels and classes when recorded)."""
    from lungseg.experiments.specs import get_table

    spec = get_table(record.table)
    kwargs = (record.identity or {}).get("model", {}).get("kwargs", {})
    return expected_identity(
        spec,
        record.profile,
        spec.row(record.row),
        overrides=record.overrides,
        in_channels=int(kwargs.get("in_channels", 1)),
        num_classes=int(kwargs.get("num_classes", 1)),
        device_type=record.device.type or "cpu",
        cpu_bf16=recorded_bf16(record),  # what the record says ran, never the checking CPU (#24)
    )


def recorded_bf16(record) -> str:
    """How ``record``'s run computed bf16 on its CPU: its ``device.bf16`` — ``native`` or ``emulated`` (it
    ran bf16), ``none`` when absent (the runner records it only for a run that ran bf16, #24). What
    :func:`expected_for` and ``lungseg results check`` judge a record's precision by, never the checking CPU."""
    return str(record.device.extra.get("bf16") or "none")


def differences(recorded: Mapping[str, Any], expected: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``key: recorded → expected`` for every leaf where they differ."""
    out = []
    for key in sorted(set(recorded) | set(expected), key=str):
        a, b = recorded.get(key, "<absent>"), expected.get(key, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} → {b!r}")
    return out


def split_difference(record) -> str:
    """How the data split ``record`` ran differs from its table's today (``""`` when it does not):
    ``data split published (seed 0, {...}) → prnet-211-26-27 (seed 0)``. A record without a stored
    split ran the source's published one (:meth:`lungseg.experiments.records.DataProvenance.split_used`)."""
    from lungseg.experiments.specs import get_table
    from lungseg.experiments.tables import split_record

    ran, want = record.data.split_used(), split_record(get_table(record.table))
    if ran == want:
        return ""
    counts = dict(sorted(record.data.counts.items())) if isinstance(record.data.counts, dict) else None
    return f"data split {ran.get('name')} (seed {ran.get('seed')}, {counts}) → {want['name']} (seed {want['seed']})"


def staleness(record, repo: Path | None = None) -> tuple[str, str]:
    """``("current", "")``, ``("unrecorded", note)`` or ``("stale", note)`` (marked, made by older
    code), ``("differs", what differs)`` (unmarked: the test fails), ``("missing", …)`` (neither
    recorded nor marked) or ``("invalid", why)`` (a marking neither the runner nor ``--mark`` writes:
    :func:`marking_problem`) for a record against what today's code builds for its cell — the model,
    training and loss (:func:`expected_for`) and the data split (:func:`split_difference`; a record
    marked ``unrecorded`` whose note does not name a split change it predates differs too).
    ``repo``: the repository whose history judges an ``unrecorded`` mark (default: the one holding
    the record's file)."""
    ident = record.identity
    if not ident:
        return "missing", "no identity (neither recorded nor marked unrecorded)"
    if repo is None and record.path is not None:
        from lungseg.tracking import repo_root

        repo = repo_root(Path(record.path).parent)
    problem = marking_problem(record, repo)
    if problem:
        return "invalid", problem
    split = split_difference(record)
    if ident.get("status") == UNRECORDED:
        note = str(ident.get("note") or "")
        return ("differs", split) if split and split not in note else (UNRECORDED, note)
    expected = expected_for(record)
    diff = differences(
        {k: v for k, v in ident.items() if k not in ("status", "stale")},
        {k: v for k, v in expected.items() if k != "status"},
    )
    diff += [split] if split else []
    if ident.get("stale"):  # recorded, and marked as made by older code (mark_records)
        if not diff:
            return "invalid", (
                f"identity marked stale ({ident['stale']}) but it is what today's code builds for its cell "
                "(remove the mark)"
            )
        return "stale", str(ident["stale"])
    return ("current", "") if not diff else ("differs", "; ".join(diff))


def marking_problem(record, repo: Path | None = None) -> str:
    """Why ``record``'s ``identity.status`` cannot be what the runner or ``lungseg results check --mark``
    wrote (``""`` when it can): a status other than ``recorded``/``unrecorded``; an ``unrecorded`` mark
    on a record that carries identity fields, on a ``record_version`` 2 record (the runner that writes
    version 2 records the identity), without a note, on a record made at or after
    :data:`IDENTITY_SINCE`, or whose note is not what git history says of it (:func:`unrecorded_note`;
    the last two only where ``repo``'s history holds the commits)."""
    ident = record.identity or {}
    status = ident.get("status")
    if status not in (RECORDED, UNRECORDED):
        return f"identity.status {status!r} is neither {RECORDED!r} nor {UNRECORDED!r}"
    if status == RECORDED:
        return ""
    mark = f"identity.status {UNRECORDED!r}"
    extra = sorted(set(ident) - {"status", "note"})
    if extra:
        return f"{mark} but the identity carries {', '.join(extra)}: a recorded identity marked unrecorded by hand"
    if (record.record_version or 0) >= RECORD_VERSION_WITH_IDENTITY:
        return f"{mark} in a record_version {record.record_version} record: that runner records the identity"
    if not ident.get("note"):
        return f"{mark} without a note (lungseg results check --mark writes it)"
    commit = record.git.commit
    if repo is None or not commit or not _git_knows(repo, IDENTITY_SINCE):
        return ""
    if _is_ancestor(IDENTITY_SINCE, commit, repo):
        return f"{mark} but made at {commit[:10]}, not before {IDENTITY_SINCE} (every run since records its identity)"
    want = unrecorded_note(record, repo)
    if ident["note"] != want:
        return f"identity.note {ident['note']!r} is not what git history says ({want!r}; --mark --renote writes it)"
    return ""


# ------------------------------------------------------------------------------------ older records


@functools.lru_cache(maxsize=4096)
def _is_ancestor(commit: str, of: str, repo: Path) -> bool | None:
    """Whether ``commit`` is ``of`` or comes before it in ``repo``'s history (None: git cannot tell)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "merge-base", "--is-ancestor", commit, of], capture_output=True, check=False
        )
    except OSError:
        return None
    return {0: True, 1: False}.get(out.returncode)


@functools.lru_cache(maxsize=64)
def _git_knows(repo: Path, commit: str) -> bool:
    """Whether ``repo``'s history holds ``commit`` (not in a shallow clone that cut it, nor outside git)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True, check=False
        )
    except OSError:
        return False
    return out.returncode == 0


def unrecorded_note(record, repo: Path) -> str:
    """What is known of an older record's identity: the commit it was made at and each
    :data:`LANDMARKS` change of its model it predates (decided by git history)."""
    commit = record.git.commit or "unknown commit"
    dirty = " (lungseg/ dirty)" if record.git.dirty else ""
    parts = [f"made at {commit[:10]}{dirty}, before records carried the resolved identity"]
    for landmark, models, what in LANDMARKS:
        if (models is None or record.model in models) and record.git.commit:
            before = _is_ancestor(record.git.commit, landmark, repo)
            if before and not record.git.commit.startswith(landmark):
                parts.append(f"made before {what}, commit {landmark}")
    split = split_difference(record)
    return "; ".join([*parts, split] if split else parts)


def unrecorded_identity(note: str) -> dict[str, Any]:
    return {"status": UNRECORDED, "note": note}


def check_records(results_dir: str | Path) -> dict[str, list[tuple[Any, str]]]:
    """Every record under ``results_dir`` by :func:`staleness`: ``{"current"|"unrecorded"|"stale"|
    "differs"|"missing"|"invalid": [(record, note), ...]}``."""
    from lungseg.experiments.records import load_records

    out: dict[str, list[tuple[Any, str]]] = {}
    for record in load_records(results_dir):
        status, note = staleness(record)
        out.setdefault(status, []).append((record, note))
    return out


def mark_records(
    results_dir: str | Path, repo: Path, stale_reason: str | None = None, *, renote: bool = False
) -> list[Any]:
    """Mark what :func:`check_records` cannot accept: a record without identity is marked
    ``unrecorded`` (:func:`unrecorded_note`, nothing invented); a recorded identity that differs from
    today's code is marked ``stale: <stale_reason> (differs: …)`` — only with a ``stale_reason``
    (``ConfigError`` otherwise). ``renote``: the note of every record already marked ``unrecorded`` is
    written again from today's :data:`LANDMARKS`. Returns the records rewritten."""
    import dataclasses

    from lungseg.errors import ConfigError
    from lungseg.io import atomic_write_json

    found = check_records(results_dir)
    # an unrecorded record whose note misses the data split it predates is noted again (a fact of
    # the record and its table, no reason needed); a recorded identity that differs needs a reason
    renoted = [(r, n) for r, n in found.get("differs", []) if (r.identity or {}).get("status") == UNRECORDED]
    differs = [(r, n) for r, n in found.get("differs", []) if (r.identity or {}).get("status") != UNRECORDED]
    if differs and not stale_reason:
        names = ", ".join(f"{r.table}/{r.profile}/{r.cell}" for r, _ in differs)
        raise ConfigError(f"records differ from today's code ({names}): say why with --stale-reason")
    written = []
    # --renote also writes again a note that is no longer what git history says (marking_problem)
    noted = [(r, n) for r, n in found.get("invalid", []) if n.startswith("identity.note ")]
    again = [*found.get(UNRECORDED, []), *noted] if renote else []
    for record, _note in [*found.get("missing", []), *again, *renoted]:
        new = dataclasses.replace(record, identity=unrecorded_identity(unrecorded_note(record, repo)))
        atomic_write_json(record.path, new.to_dict())
        written.append(new)
    for record, diff in differs:
        new = dataclasses.replace(record, identity={**record.identity, "stale": f"{stale_reason} (differs: {diff})"})
        atomic_write_json(record.path, new.to_dict())
        written.append(new)
    return written
