"""Typed configuration: ``params.yaml`` is parsed once into :class:`Params`.

One section per pipeline stage (``preprocess``, ``train``, ``evaluate``, ``register``) plus
``mlflow`` (where runs are tracked). DVC stages depend on exactly the section they use, so a
change to ``train`` does not re-run ``preprocess``. Paths are never configured here: they are
command-line arguments (``dvc.yaml`` and the KFP components pass them).

Unknown keys and wrongly typed values are rejected with a :class:`~lungseg.errors.ConfigError`
that names the file and the key, so a typo never silently falls back to a default.
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
    """How a model is trained. ``preset: paper`` overrides with the paper's setup (see training)."""

    model: str = "lgnet"
    base_channels: int = 8
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra constructor arguments, e.g. ``{max_tokens: 1024, use_ff: false}``."""
    loss: str = "auto"
    """``auto`` = the model's paper loss (LG-Net: dice_focal, PR-Net: bce_dice, others: bce_dice)."""
    preset: str = "default"
    """``default`` or ``paper`` (LG-Net paper: Adam lr 0.01, batch 4, 512², 120 epochs)."""
    epochs: int = 30
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-5
    scheduler: str = "cosine"
    """``cosine``, ``plateau`` or ``none``."""
    early_stopping_patience: int = 10
    """Epochs without a better validation Dice before stopping; 0 disables."""
    augment: bool = True
    amp: bool = True
    """Mixed precision (bf16) — used only on CUDA."""
    channels_last: bool = True
    """channels_last memory format — used only on CUDA."""
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``."""


@dataclass(frozen=True)
class EvaluateConfig:
    split: str = "test"
    threshold: float = 0.5
    n_overlays: int = 3
    """Best and worst cases drawn in the overlay figure (each)."""


@dataclass(frozen=True)
class RegisterConfig:
    model_name: str = "lungseg-{model}"
    """Registered-model name; ``{model}`` (the only placeholder) becomes the trained architecture
    (``train.model`` as recorded by the training run), so a sweep over architectures registers each
    under its own name and ``champion`` compares like with like."""
    metric: str = "dice_mean"
    """Key of the evaluation summary that decides promotion."""
    greater_is_better: bool = True
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
            raise ConfigError(f"model_name {self.model_name!r}: unknown placeholder(s) "
                              f"{', '.join('{' + f + '}' for f in bad)} (allowed: {{model}})")
        if not self.resolved_name("x").strip():
            raise ConfigError("model_name is empty")

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


def params_from_dict(data: dict[str, Any], source: str = "params") -> Params:
    """Build :class:`Params` from a parsed mapping; ``source`` names it in error messages."""
    return _build(Params, data, source)


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
