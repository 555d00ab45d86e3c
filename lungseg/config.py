"""Typed configuration: ``params.yaml`` is parsed once into :class:`Params`.

One section per pipeline stage (``preprocess``, ``train``, ``evaluate``, ``register``) plus
``mlflow`` (where runs are tracked). DVC stages depend on exactly the section they use, so a
change to ``train`` does not re-run ``preprocess``. Paths are never configured here: they are
command-line arguments (``dvc.yaml`` and the KFP components pass them).

Unknown keys and wrongly typed values are rejected with a :class:`~lungseg.errors.ConfigError`
that names the file and the key, so a typo never silently falls back to a default. Every value is
then checked once, at load time, by :func:`validate` (ranges, names of models/losses/schedules,
each model's options against its constructor): a bad value fails before the first stage runs,
not hours later at the stage that uses it. All the rules live in :func:`validate` and the
``_check_*`` functions below it.

Model options (``train.model_kwargs``) are given **per model**:
``model_kwargs: {lgnet: {max_tokens: 256}, prnet: {max_tokens: 256}}``; the entry of the trained
model (``train.model``) is used and the others are kept for when the model changes (a sweep
``dvc exp run -S train.model=unet`` then trains U-Net with its own options, none here). A flat
mapping (``{max_tokens: 256}``, as older files and ``lungseg results`` write it) holds options for
the trained model: one that this model does not take but another model does is ignored with a
warning (:func:`model_options` returns it), one that no model takes is an error.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lungseg.errors import ConfigError


@dataclass(frozen=True)
class PreprocessConfig:
    """How raw CT data becomes a canonical training set."""

    image_size: int = 256
    """Every slice is resized to ``image_size``² (bilinear images, nearest-neighbour masks)."""
    hu_window: tuple[float, float] = (-1000.0, 400.0)
    """(low, high) HU window for sources in Hounsfield units (NIfTI, DICOM, Kaggle TIFF)."""
    val_fraction: float = 0.15
    """Fraction of the training pool held out for validation (seeded, patient-level when possible)."""
    test_fraction: float = 0.15
    """Fraction held out for testing when the source has no published test split."""
    seed: int = 0
    multiclass: bool = False
    """Inf-Net COVID-SemiSeg only: keep ground-glass / consolidation as classes 1 / 2."""


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained. ``preset: paper`` fills in the paper's setup (see training.presets)."""

    model: str = "lgnet"
    base_channels: int = 8
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    """Model constructor options per model, e.g. ``{lgnet: {max_tokens: 1024, use_ff: false}}``
    (see the module docstring; a flat mapping is read as options of ``model``)."""
    loss: str = "auto"
    """``auto`` = the model's paper loss (LG-Net: dice_focal, PR-Net: bce_dice, others: bce_dice)."""
    preset: str = "default"
    """``default`` (the values here as written) or ``paper``: the paper's value for every key left at
    its library default, a changed key honoured and recorded as a deviation
    (:mod:`lungseg.training.presets`: Adam lr 0.01, batch 4, 120 epochs, base 64, Eq. 14–15 loss, …)."""
    allow_non_paper_size: bool = False
    """``preset: paper`` refuses data that is not 512² (the paper's size, fixed by
    ``preprocess.image_size``) unless this is true; the size is then recorded as a deviation.
    No effect under ``preset: default``."""
    epochs: int = 30
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-5
    scheduler: str = "cosine"
    """``cosine``, ``plateau`` or ``none``."""
    early_stopping_patience: int = 10
    """Epochs without a better validation Dice before stopping; 0 disables."""
    min_epochs: int = 0
    """Warm-up: before this epoch the validation Dice neither selects ``best.pt`` nor counts towards
    early stopping (on a tiny validation set the first epochs' Dice is noise: a lucky early value
    would be kept as the best model and end the run). 0 = from the first epoch."""
    augment: bool = True
    amp: bool = True
    """Mixed precision (bf16) — used only on CUDA."""
    channels_last: bool = True
    """channels_last memory format — used only on CUDA."""
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``."""
    progress_every_s: float = 30.0
    """When stderr is not a terminal (KFP and DVC logs, ``nohup``): a progress line inside an epoch
    (step, loss, Dice, images/s, ETA) at most every this many seconds. On a terminal a progress bar."""
    sync_batchnorm: bool = False
    """Under ``torchrun`` (DDP): BatchNorm statistics over the global batch (``torch.nn.SyncBatchNorm``,
    CUDA only) instead of each process's part; ignored in a single process."""
    data_on_device: bool | str = "auto"
    """CUDA only: keep the training and validation arrays on the GPU (copied once before the first
    epoch; batches are then indexed and augmented there). ``auto``: when they take at most a quarter
    of the GPU's free memory; ``true``: always (a ``ConfigError`` if they do not fit); ``false``: kept
    in host memory, each batch copied over. The trained numbers are the same either way."""
    checkpoint_every: int = 1
    """Write the full ``checkpoint.pt`` (model, optimizer, scheduler, RNG states) every this many
    epochs, and at the last epoch, at an early stop and whenever ``best.pt`` is written. A resumed
    run re-runs the epochs after the last one written (bitwise the same on the CPU)."""
    checkpoint_async: bool = False
    """Write ``checkpoint.pt``/``best.pt`` in a background thread from a CPU snapshot taken at the end
    of the epoch, while the next epoch trains (same files, same atomic rename; a write error stops
    the run at the next write or at the end)."""


@dataclass(frozen=True)
class EvaluateConfig:
    split: str = "test"
    threshold: float = 0.5
    n_overlays: int = 3
    """Best and worst cases drawn in the overlay figure (each)."""


#: the floor ``register.min_metric: auto`` stands for when greater is better (see RegisterConfig)
AUTO_MIN_METRIC = 0.1


@dataclass(frozen=True)
class RegisterConfig:
    model_name: str = "lungseg-{model}"
    """Registered-model name; ``{model}`` (the only placeholder) becomes the trained architecture
    (``train.model`` as recorded by the training run), so a sweep over architectures registers each
    under its own name and ``champion`` compares like with like."""
    metric: str = "dice_mean"
    """Key of the evaluation summary that decides promotion."""
    greater_is_better: bool = True
    min_metric: float | str | None = "auto"
    """The worst score a champion may have: a candidate whose ``metric`` is below it (above it when
    ``greater_is_better`` is false) is registered and tagged but never promoted, even when there is
    no champion yet. ``auto`` (default) = 0.1 when ``greater_is_better`` — meant for Dice/IoU-like
    scores in [0, 1]: a model that learned nothing (Dice 0, it predicts no foreground) is refused,
    any model that learned something passes — and no floor when lower is better (a distance such as
    ``hd95_mean`` has no natural ceiling: give one explicitly). A number sets the floor, ``null``
    disables it. See :attr:`floor`."""
    champion_alias: str = "champion"
    challenger_alias: str = "challenger"

    def __post_init__(self) -> None:
        import string

        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(self.model_name) if f is not None]
        except ValueError as exc:
            raise ConfigError(f"model_name {self.model_name!r}: {exc}") from exc
        bad = [f for f in fields if f != "model"]
        if bad:
            raise ConfigError(
                f"model_name {self.model_name!r}: unknown placeholder(s) "
                f"{', '.join('{' + f + '}' for f in bad)} (allowed: {{model}})"
            )
        if not self.resolved_name("x").strip():
            raise ConfigError("model_name is empty")

    @property
    def floor(self) -> float | None:
        """The effective ``min_metric`` (``auto`` resolved; None = no floor)."""
        if self.min_metric == "auto":
            return AUTO_MIN_METRIC if self.greater_is_better else None
        return None if self.min_metric is None else float(self.min_metric)

    @property
    def needs_model(self) -> bool:
        """Whether the name depends on the trained architecture (holds ``{model}``)."""
        import string

        return any(f == "model" for _, f, _, _ in string.Formatter().parse(self.model_name))

    def resolved_name(self, model: str) -> str:
        """The registered-model name for a run of architecture ``model``."""
        return self.model_name.format(model=model)


@dataclass(frozen=True)
class MlflowConfig:
    tracking_uri: str = "sqlite:///mlflow.db"
    """Used when ``MLFLOW_TRACKING_URI`` is unset; the embedded default needs no server."""
    experiment: str = "lungseg"


@dataclass(frozen=True)
class Params:
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    register: RegisterConfig = field(default_factory=RegisterConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is list:
        (arg,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, arg, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {where}")  # programming error


def _build(cls: type, data: Any, where: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as exc:  # a dataclass's own check (__post_init__): say which section
        raise ConfigError(f"{where}: {exc}") from exc


# ----------------------------------------------------------------------------------- validation
PRESETS = ("default", "paper")
SCHEDULERS = ("cosine", "plateau", "none")
DEVICES = ("auto", "cpu", "cuda")
SPLITS = ("train", "val", "test", "all")
#: arguments every model takes, set by training itself (not model options)
COMMON_MODEL_ARGS = ("in_channels", "num_classes", "base_channels")


def validate(params: Params, where: str = "params", sections: set[str] | frozenset[str] | None = None) -> None:
    """Check every value of ``params``; :class:`ConfigError` naming ``where`` and the key otherwise.

    ``sections`` are the sections the file gave (checks across sections, e.g. that
    ``preprocess.image_size`` suits ``train.model``, run only when both were given: a KFP component
    receives its own section only, the others are defaults).
    """
    _check_preprocess(params.preprocess, f"{where}.preprocess")
    check_train(params.train, f"{where}.train")
    _check_evaluate(params.evaluate, f"{where}.evaluate")
    _check_register(params.register, f"{where}.register")
    _check_mlflow(params.mlflow, f"{where}.mlflow")
    given = set(sections) if sections is not None else {f.name for f in dataclasses.fields(Params)}
    if {"preprocess", "train"} <= given:
        from lungseg.models import model_class

        divisor = int(getattr(model_class(params.train.model), "size_divisor", 1))
        if params.preprocess.image_size % divisor:
            raise ConfigError(
                f"{where}.preprocess.image_size: {params.preprocess.image_size} is not a multiple of "
                f"{divisor}, which {params.train.model} needs (train.model)"
            )


def _need(ok: bool, where: str, problem: str) -> None:
    if not ok:
        raise ConfigError(f"{where}: {problem}")


def _one_of(value: str, allowed: tuple[str, ...] | list[str], where: str, what: str) -> None:
    _need(value in allowed, where, f"unknown {what} {value!r} (allowed: {', '.join(allowed)})")


def _finite(value: float) -> bool:
    import math

    return math.isfinite(value)


def _check_preprocess(cfg: PreprocessConfig, where: str) -> None:
    _need(cfg.image_size >= 8, f"{where}.image_size", f"must be ≥ 8, got {cfg.image_size}")
    low, high = cfg.hu_window
    _need(
        _finite(low) and _finite(high) and low < high,
        f"{where}.hu_window",
        f"must be [low, high] with low < high, got {[low, high]}",
    )
    for key in ("val_fraction", "test_fraction"):
        value = getattr(cfg, key)
        _need(0.0 <= value < 1.0, f"{where}.{key}", f"must lie in [0, 1), got {value}")
    _need(
        cfg.val_fraction + cfg.test_fraction < 1.0,
        where,
        f"val_fraction + test_fraction must be < 1 (nothing left to train on), got "
        f"{cfg.val_fraction} + {cfg.test_fraction}",
    )
    _need(0 <= cfg.seed < 2**32, f"{where}.seed", f"must lie in [0, 2^32), got {cfg.seed}")


def check_train(cfg: TrainConfig, where: str) -> None:
    """The ``train`` section's checks (public: training repeats them for configs built in code)."""
    from lungseg.models import list_models

    _one_of(cfg.model, list_models(), f"{where}.model", "model")
    for key in ("epochs", "batch_size", "base_channels", "checkpoint_every"):
        _need(getattr(cfg, key) >= 1, f"{where}.{key}", f"must be ≥ 1, got {getattr(cfg, key)}")
    _need(_finite(cfg.lr) and cfg.lr > 0, f"{where}.lr", f"must be > 0, got {cfg.lr}")
    _need(
        _finite(cfg.weight_decay) and cfg.weight_decay >= 0,
        f"{where}.weight_decay",
        f"must be ≥ 0, got {cfg.weight_decay}",
    )
    for key in ("early_stopping_patience", "min_epochs", "num_workers"):
        _need(getattr(cfg, key) >= 0, f"{where}.{key}", f"must be ≥ 0, got {getattr(cfg, key)}")
    _need(
        cfg.min_epochs <= cfg.epochs,
        f"{where}.min_epochs",
        f"{cfg.min_epochs} is more than train.epochs ({cfg.epochs}): no epoch could be kept as best.pt",
    )
    _need(0 <= cfg.seed < 2**32, f"{where}.seed", f"must lie in [0, 2^32), got {cfg.seed}")
    _need(
        _finite(cfg.progress_every_s) and cfg.progress_every_s > 0,
        f"{where}.progress_every_s",
        f"must be > 0 (seconds), got {cfg.progress_every_s}",
    )
    _one_of(cfg.preset, PRESETS, f"{where}.preset", "preset")
    _one_of(cfg.scheduler, SCHEDULERS, f"{where}.scheduler", "schedule")
    _one_of(cfg.device, DEVICES, f"{where}.device", "device")
    _need(
        isinstance(cfg.sync_batchnorm, bool),
        f"{where}.sync_batchnorm",
        f"expected true/false, got {cfg.sync_batchnorm!r}",
    )
    _need(
        isinstance(cfg.data_on_device, bool) or cfg.data_on_device == "auto",
        f"{where}.data_on_device",
        f"expected auto, true or false, got {cfg.data_on_device!r}",
    )
    _need(
        isinstance(cfg.checkpoint_async, bool),
        f"{where}.checkpoint_async",
        f"expected true/false, got {cfg.checkpoint_async!r}",
    )
    if cfg.loss != "auto":
        from lungseg.losses import list_losses

        _one_of(cfg.loss, ["auto", *list_losses()], f"{where}.loss", "loss")
    model_options(cfg, where)  # raises for options that no model takes


def model_options(cfg: TrainConfig, where: str = "train") -> tuple[dict[str, Any], list[str]]:
    """``(options for cfg.model, ignored)`` from ``cfg.model_kwargs`` (see the module docstring).

    ``ignored`` lists the flat options that ``cfg.model`` does not take but another model does
    (the caller warns); an option no model takes, a per-model entry for an unknown model, or an
    option that model does not take is a :class:`ConfigError` naming the key.
    """
    from lungseg.models import list_models

    kwargs = cfg.model_kwargs or {}
    if not kwargs:
        return {}, []
    models = list_models()
    keyed = [k for k in kwargs if k in models]
    if keyed and len(keyed) < len(kwargs):
        other = sorted(k for k in kwargs if k not in models)
        raise ConfigError(
            f"{where}.model_kwargs: mixes per-model entries ({', '.join(keyed)}) with "
            f"option(s) {', '.join(other)}: write every option under its model, e.g. "
            f"{{{keyed[0]}: {{{other[0]}: ...}}}}"
        )
    if keyed:  # per model
        for name in keyed:
            opts = kwargs[name] or {}
            _need(
                isinstance(opts, dict),
                f"{where}.model_kwargs.{name}",
                f"expected a mapping of {name}'s options, got {opts!r}",
            )
            takes = _options_of(name)
            bad = sorted(set(opts) - set(takes))
            _need(
                not bad,
                f"{where}.model_kwargs.{name}",
                f"{name} takes no option(s) {', '.join(bad)} (its options: {', '.join(takes) or 'none'})",
            )
        return dict(kwargs.get(cfg.model) or {}), []
    takes = _options_of(cfg.model)
    used, ignored = {}, []
    for key, value in kwargs.items():
        if key in takes:
            used[key] = value
            continue
        others = [m for m in models if key in _options_of(m)]
        _need(
            bool(others),
            f"{where}.model_kwargs.{key}",
            f"no model takes option {key!r} ({cfg.model}'s options: {', '.join(takes) or 'none'})",
        )
        ignored.append(key)
    return used, ignored


def _options_of(model: str) -> list[str]:
    """The keyword options of ``model``'s constructor beyond the common ones (read from its
    signature; the model is not built)."""
    import inspect

    from lungseg.models import model_class

    sig = inspect.signature(model_class(model))
    return [
        n
        for n, p in sig.parameters.items()
        if n not in COMMON_MODEL_ARGS and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]


def _check_evaluate(cfg: EvaluateConfig, where: str) -> None:
    _one_of(cfg.split, SPLITS, f"{where}.split", "split")
    _need(
        _finite(cfg.threshold) and 0.0 <= cfg.threshold <= 1.0,
        f"{where}.threshold",
        f"must lie in [0, 1] (a probability), got {cfg.threshold}",
    )
    _need(cfg.n_overlays >= 1, f"{where}.n_overlays", f"must be ≥ 1, got {cfg.n_overlays}")


def _check_register(cfg: RegisterConfig, where: str) -> None:
    import re

    _need(bool(cfg.metric.strip()), f"{where}.metric", "is empty")
    for key in ("champion_alias", "challenger_alias"):
        alias = getattr(cfg, key)
        _need(
            bool(re.fullmatch(r"[\w\-]{1,255}", alias))
            and alias.lower() != "latest"
            and not re.fullmatch(r"[vV]\d+", alias),
            f"{where}.{key}",
            f"{alias!r} is not a usable MLflow alias (letters, digits, _ and -; not 'latest' or v<number>)",
        )
    _need(
        cfg.champion_alias != cfg.challenger_alias,
        where,
        f"champion_alias and challenger_alias are both {cfg.champion_alias!r}",
    )
    if isinstance(cfg.min_metric, str):
        _need(
            cfg.min_metric == "auto", f"{where}.min_metric", f"must be a number, auto or null, got {cfg.min_metric!r}"
        )
    elif cfg.min_metric is not None:
        _need(
            _finite(cfg.min_metric),
            f"{where}.min_metric",
            f"must be a finite number, auto or null, got {cfg.min_metric}",
        )


def _check_mlflow(cfg: MlflowConfig, where: str) -> None:
    _need(bool(cfg.tracking_uri.strip()), f"{where}.tracking_uri", "is empty")
    _need(bool(cfg.experiment.strip()), f"{where}.experiment", "is empty")


def params_from_dict(data: dict[str, Any], source: str = "params") -> Params:
    """Build :class:`Params` from a parsed mapping and :func:`validate` it; ``source`` names it in
    error messages."""
    params = _build(Params, data, source)
    validate(params, source, set(data) if isinstance(data, dict) else None)
    return params


def load_params(path: str | Path) -> Params:
    """Parse ``params.yaml`` once into typed config; errors name the file and key."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: parameter file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return params_from_dict(data, str(path))


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (for MLflow params)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out
