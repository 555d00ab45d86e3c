"""Typed configuration: ``params.yaml`` is parsed and checked once into :class:`Params`.

One section per pipeline stage (``preprocess``, ``train``, ``evaluate``, ``register``) plus
``mlflow`` (where runs are tracked). DVC stages depend on exactly the section they use, so a
change to ``train`` does not re-run ``preprocess``. Paths are never configured here: they are
command-line arguments (``dvc.yaml`` and the KFP components pass them).

Each section is a frozen pydantic v2 model (``extra="forbid"``, ``strict=True``): an unknown key or
a wrongly typed value is a :class:`~lungseg.errors.ConfigError` that names the file and the key,
so a typo never silently falls back to a default. Strict means a YAML value is taken as written —
``"10"`` is not an integer, ``1`` is not ``true`` — except that an integer is accepted where a number
is expected (``lr: 1`` is ``1.0``) and a list where a pair is (``hu_window: [-1000, 400]``). The
rules are declared on the fields (``Field`` bounds, ``Literal`` names) and in the models'
validators (rules across keys of a section; across sections in :class:`Params`), and run once,
when the file is read (:func:`load_params`): a bad value fails before the first stage runs, not
hours later at the stage that uses it, and no other module checks them again. A section built in
code (``TrainConfig(epochs=0)``) is checked the same way; ``model_copy(update=...)`` is not
(pydantic's rule): :func:`check_train` checks such a config.

The errors keep lungseg's one-line form: pydantic's first error becomes
``<file>.<section>.<key>: <problem>`` (:func:`config_error`), e.g.
``params.yaml.train.lr: must be > 0, got -0.1``.

**Which keys were written.** Each section remembers the keys the file gave (pydantic's
``model_fields_set``); ``train.preset: paper`` uses it to tell a value written in the file from a
library default (:mod:`lungseg.training.presets`), and :class:`Params` to run the checks across
sections only for sections the file gave (a KFP component receives its own section only).

Model options (``train.model_kwargs``) are given **per model**:
``model_kwargs: {lgnet: {max_tokens: 256}, prnet: {max_tokens: 256}}``; the entry of the trained
model (``train.model``) is used and the others are kept for when the model changes (a sweep
``dvc exp run -S train.model=unet`` then trains U-Net with its own options, none here). A flat
mapping (``{max_tokens: 256}``, as older files and ``lungseg results`` write it) holds options for
the trained model: one that this model does not take but another model does is ignored with a
warning (:func:`model_options` returns it), one that no model takes is an error. Each option's
name and value type are checked against the model's constructor signature at load time
(``max_tokens: many`` is refused there, not when the model is built).

The JSON schema of ``params.yaml`` (:func:`params_json_schema`) is committed as
``docs/params.schema.json`` (``python scripts/params_schema.py`` writes it; a test keeps it current).
"""

from __future__ import annotations

import re
import typing
import warnings
from functools import cache
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from lungseg.errors import ConfigError

Preset = Literal["default", "paper", "nnunet"]  # issue #25: nnunet
Scheduler = Literal["cosine", "plateau", "none", "poly"]  # issue #25: poly
Device = Literal["auto", "cpu", "cuda"]
Split = Literal["train", "val", "test", "all"]
PRESETS: tuple[str, ...] = typing.get_args(Preset)
SCHEDULERS: tuple[str, ...] = typing.get_args(Scheduler)
DEVICES: tuple[str, ...] = typing.get_args(Device)
SPLITS: tuple[str, ...] = typing.get_args(Split)
#: arguments every model takes, set by training itself (not model options)
COMMON_MODEL_ARGS = ("in_channels", "num_classes", "base_channels")
#: the floor ``register.min_metric: auto`` stands for when greater is better (see RegisterConfig)
AUTO_MIN_METRIC = 0.1


class Says(NamedTuple):
    """Field metadata: the rule as the error message states it (``must lie in [0, 2^32)``); the
    message is ``<rule>, got <value>`` whatever pydantic found wrong with the value."""

    rule: str


class Problem(Exception):
    """A rule broken at ``key`` (dotted, relative to the section; ``""`` = the section itself).

    Raised by the checks that run both inside validation (turned into a pydantic error that
    carries the key) and outside it (turned into a :class:`ConfigError` naming ``where.key``)."""

    def __init__(self, key: str, text: str):
        super().__init__(text)
        self.key, self.text = key, text

    def pydantic(self) -> PydanticCustomError:
        return PydanticCustomError("lungseg", "{text}", {"text": self.text, "key": self.key})

    def config_error(self, where: str) -> ConfigError:
        return ConfigError(f"{where}.{self.key}: {self.text}" if self.key else f"{where}: {self.text}")


Seed = Annotated[int, Field(ge=0, lt=2**32), Says("must lie in [0, 2^32)")]
Fraction = Annotated[float, Field(ge=0.0, lt=1.0, allow_inf_nan=False)]


class _Checked(type(BaseModel)):
    """Building a section in code (``TrainConfig(epochs=0)``) raises lungseg's :class:`ConfigError`
    (one line, ``train.epochs: …``) instead of pydantic's ``ValidationError``. (A metaclass, not an
    ``__init__``: pydantic would call a custom ``__init__`` for nested sections too, naming the
    section without its file.)"""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except ValidationError as exc:
            raise config_error(exc, cls.SECTION, cls) from exc


class Section(BaseModel, metaclass=_Checked):
    """A frozen, strict section of ``params.yaml``."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, use_attribute_docstrings=True)
    SECTION: ClassVar[str] = "params"
    """The name its errors start with when it is built in code."""

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


def _not_blank(value: str) -> str:
    if not value.strip():
        raise Problem("", "is empty").pydantic()
    return value


class PreprocessConfig(Section):
    """How raw CT data becomes a canonical training set."""

    SECTION: ClassVar[str] = "preprocess"

    image_size: int = Field(256, ge=8)
    """Every slice is resized to ``image_size``² (bilinear images, nearest-neighbour masks); a
    multiple of the trained model's ``size_divisor`` when the file has a ``train`` section."""
    hu_window: tuple[float, float] = (-1000.0, 400.0)
    """(low, high) HU window for sources in Hounsfield units (NIfTI, DICOM, Kaggle TIFF)."""
    val_fraction: Fraction = 0.15
    """Fraction of the training pool held out for validation (seeded, patient-level when possible)."""
    test_fraction: Fraction = 0.15
    """Fraction held out for testing when the source has no published test split."""
    seed: Seed = 0
    # issue #22 item 4: a seeded split of the whole set instead of the source's published test set
    split: Literal["published", "seeded"] = "published"
    """``published``: a source's published test set is kept (the training pool split into train/val);
    ``seeded``: every slice is split by ``test_fraction`` then ``val_fraction`` of the rest with
    ``seed``, the published test set ignored (e.g. the PR-Net paper's 211/26/27 proportions on the
    Kaggle lung fields; :mod:`lungseg.data.splits`). Sources without a published split: the same."""
    # issue #25: nnU-Net's CT normalisation beside the window (lungseg.data.normalize, lungseg.models.input_norm)
    normalization: Literal["window", "ct_zscore"] = "window"
    """``window``: the model sees the slice as stored ([0, 1], the HU window); ``ct_zscore``: nnU-Net's
    CTNormalization — the training split's foreground 0.5/99.5 percentiles, mean and std, computed at
    preprocessing (meta.json), recorded with the model and applied by the network before every forward
    (training, evaluate, predict, serving): clip, then z-score. The stored images stay in [0, 1]."""
    multiclass: bool = False
    """Inf-Net COVID-SemiSeg only: keep ground-glass / consolidation as classes 1 / 2."""
    label_names: list[str] | None = None
    """Names of the label values 0..K-1 for readers whose labels are generic (``pairs``, ``nifti``,
    ``dicom``: ``background``/``foreground``), e.g. ``[background, lung]`` for a lung-field model that
    then serves in ``lungseg predict``'s cascade; recorded with the data and the model. Default: a
    ``labels.json`` beside the raw data, else the reader's names."""

    @field_validator("hu_window", mode="before")
    @classmethod
    def _pair_from_list(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value  # YAML and JSON have lists only

    @field_validator("hu_window")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        import math

        low, high = value
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise Problem("", f"must be [low, high] with low < high, got {[low, high]}").pydantic()
        return value

    @field_validator("label_names")
    @classmethod
    def _unique_names(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (len(set(value)) != len(value) or not all(n.strip() for n in value)):
            raise Problem("", f"label names must be unique, non-empty strings, got {value}").pydantic()
        return value

    @model_validator(mode="after")
    def _something_left_to_train_on(self) -> PreprocessConfig:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise Problem(
                "",
                f"val_fraction + test_fraction must be < 1 (nothing left to train on), got "
                f"{self.val_fraction} + {self.test_fraction}",
            ).pydantic()
        return self


def _enum(names: typing.Callable[[], list[str]]) -> typing.Callable[[dict[str, Any]], None]:
    """``json_schema_extra`` listing the names a registry holds when the schema is generated."""

    def extra(schema: dict[str, Any]) -> None:
        schema["enum"] = names()

    return extra


def _options_schema(schema: dict[str, Any]) -> None:
    """``train.model_kwargs`` in the JSON schema: each model's options (from its constructor) under
    its name; other keys are a flat mapping of the trained model's options."""
    schema["properties"] = {m: _options_model(m).model_json_schema() for m in _model_names()}


def _model_names() -> list[str]:
    from lungseg.models import list_models

    return list_models()


def _loss_names() -> list[str]:
    from lungseg.losses import list_losses

    return ["auto", *list_losses()]


class TrainConfig(Section):
    """How a model is trained. ``preset: paper`` fills in the paper's setup (see training.presets)."""

    SECTION: ClassVar[str] = "train"

    model: str = Field("lgnet", json_schema_extra=_enum(_model_names))
    """A model of the zoo (``lungseg models list``)."""
    base_channels: int = Field(8, ge=1)
    model_kwargs: dict[str, Any] = Field(default_factory=dict, json_schema_extra=_options_schema)
    """Model constructor options per model, e.g. ``{lgnet: {max_tokens: 1024, use_ff: false}}``
    (see the module docstring; a flat mapping is read as options of ``model``)."""
    loss: str = Field("auto", json_schema_extra=_enum(_loss_names))
    """``auto`` = the model's paper loss (LG-Net: dice_focal, PR-Net: bce_dice, others: bce_dice)."""
    preset: Preset = "default"
    """``default`` (the values here as written) or ``paper``: the paper's value for every key the file
    does not write, a written key honoured and recorded as a deviation when it differs from the paper
    (:mod:`lungseg.training.presets`: Adam lr 0.01, batch 4, 120 epochs, base 64, Eq. 14–15 loss, …)."""
    allow_non_paper_size: bool = False
    """``preset: paper`` refuses data that is not 512² (the paper's size, fixed by
    ``preprocess.image_size``) unless this is true; the size is then recorded as a deviation.
    No effect under ``preset: default``."""
    # issue #22 item 4: which paper's training recipe ``preset: paper`` applies
    paper_recipe: Literal["auto", "lgnet", "prnet"] = "auto"
    """``preset: paper`` only (:mod:`lungseg.training.presets`): ``auto`` = the model's own paper
    (PR-Net: the PR-Net recipe; every other model LG-Net's, the one paper that states a training
    setup); ``lgnet`` / ``prnet`` = that paper's recipe for any model (a comparison table trains
    all its rows with its paper's recipe). No effect under ``preset: default``."""
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(4, ge=1)
    lr: float = Field(1e-3, gt=0, allow_inf_nan=False)
    weight_decay: float = Field(1e-5, ge=0, allow_inf_nan=False)
    scheduler: Scheduler = "cosine"
    """``cosine``, ``plateau``, ``none`` or ``poly`` (nnU-Net's ``lr · (1 − epoch/epochs)^0.9``)."""
    # issue #25: nnU-Net's recipe (train.preset: nnunet; lungseg.training.nnunet_preset)
    optimizer: Literal["adam", "sgd_nesterov"] = "adam"
    """``adam`` or ``sgd_nesterov`` (SGD, Nesterov momentum 0.99, as nnU-Net); ``weight_decay`` either way."""
    grad_clip: float = Field(0.0, ge=0, allow_inf_nan=False)
    """Clip the gradients' global norm to this before each step (nnU-Net: 12); 0 = no clipping."""
    iterations_per_epoch: int = Field(0, ge=0)
    """0 = an epoch is one pass over the shuffled training split; N = N batches drawn with replacement
    (nnU-Net: 250), a part of each forced to hold foreground by ``oversample_foreground``."""
    oversample_foreground: float = Field(0.0, ge=0, le=1, allow_inf_nan=False)
    """With ``iterations_per_epoch``: the share of each batch, its last positions, drawn among the slices
    holding foreground (nnU-Net: 0.33, ``round(batch · (1 − p))`` positions free)."""
    early_stopping_patience: int = Field(10, ge=0)
    """Epochs without a better validation Dice before stopping; 0 disables."""
    min_epochs: int = Field(0, ge=0)
    """Warm-up: before this epoch the validation Dice neither selects ``best.pt`` nor counts towards
    early stopping (on a tiny validation set the first epochs' Dice is noise: a lucky early value
    would be kept as the best model and end the run). 0 = from the first epoch; at most ``epochs``."""
    augment: Annotated[bool | Literal["light", "nnunet"], Says("expected light, nnunet, true or false")] = True
    """``true``/``light``: flips, ±10°, 0.9–1.1 scale, mild intensity jitter (lungseg.training.augment);
    ``nnunet``: nnU-Net's 2-D family (lungseg.training.nnunet_augment); ``false``: none."""
    amp: bool = True
    """Deprecated spelling of ``precision`` (kept working): ``false`` = ``precision: fp32``; ``true``
    (the default) leaves the choice to ``precision``. ``amp: false`` with ``precision: bf16``, or an
    ``amp: true`` written beside ``precision: fp32``, is a ``ConfigError``."""
    # issue #24: the one precision setting (resolved per device by lungseg.training.setup.resolve_precision)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Training (and validation) arithmetic: ``bf16`` = ``torch.autocast`` to bfloat16 (on CUDA; on a
    CPU only with native bf16 — AVX-512 BF16/AMX — else a note and fp32), ``fp32`` = none, ``auto`` =
    bf16 on CUDA, fp32 on a CPU. The run records the resolved value (``effective.precision``)."""
    # issue #24: torch.compile (inductor) of the model the train step runs; opt-in (compile time)
    compile: bool = False
    """Compile the model's forward (and so its backward) with ``torch.compile`` (inductor) before the
    first epoch: a one-off compile time per process (also after ``--resume``) for faster steps."""
    channels_last: bool = True
    """channels_last memory format — used only on CUDA."""
    seed: Seed = 0
    num_workers: int = Field(0, ge=0)
    device: Device = "auto"
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``."""
    progress_every_s: Annotated[float, Field(gt=0, allow_inf_nan=False), Says("must be > 0 (seconds)")] = 30.0
    """When stderr is not a terminal (KFP and DVC logs, ``nohup``): a progress line inside an epoch
    (step, loss, Dice, images/s, ETA) at most every this many seconds. On a terminal a progress bar."""
    sync_batchnorm: bool = False
    """Under ``torchrun`` (DDP): BatchNorm statistics over the global batch (``torch.nn.SyncBatchNorm``,
    CUDA only) instead of each process's part; ignored in a single process."""
    data_on_device: Annotated[bool | Literal["auto"], Says("expected auto, true or false")] = "auto"
    """CUDA only: keep the training and validation arrays on the GPU (copied once before the first
    epoch; batches are then indexed and augmented there). ``auto``: when they take at most a quarter
    of the GPU's free memory; ``true``: always (a ``ConfigError`` if they do not fit); ``false``: kept
    in host memory, each batch copied over. The trained numbers are the same either way."""
    checkpoint_every: int = Field(1, ge=1)
    """Write the full ``checkpoint.pt`` (model, optimizer, scheduler, RNG states) every this many
    epochs, and at the last epoch, at an early stop and whenever ``best.pt`` is written. A resumed
    run re-runs the epochs after the last one written (bitwise the same on the CPU)."""
    checkpoint_async: bool = False
    """Write ``checkpoint.pt``/``best.pt`` in a background thread from a CPU snapshot taken at the end
    of the epoch, while the next epoch trains (same files, same atomic rename; a write error stops
    the run at the next write or at the end)."""
    # precise BN (#22): BatchNorm statistics recomputed before each validation
    precise_bn: Annotated[bool | Literal["auto"], Says("expected auto, true or false")] = "auto"
    """Before each validation (so before ``best.pt``/``checkpoint.pt`` are written) recompute the
    BatchNorm running statistics over training batches (no gradients, un-augmented, a cumulative
    average; :mod:`lungseg.training.precise_bn`). ``auto``/``true``: for every model with BatchNorm
    layers (a no-op for the others); ``false``: the running averages of the training steps."""
    precise_bn_images: Annotated[
        Annotated[int, Field(ge=1)] | Literal["auto"], Says("must be an integer >= 1 or auto")
    ] = "auto"
    """How many training images precise BN passes over (a seeded subset drawn per epoch when fewer
    than the split): ``auto`` = the whole training split, at most 1024 images."""

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        models = _model_names()
        if value not in models:
            raise Problem("", f"unknown model {value!r} (allowed: {', '.join(models)})").pydantic()
        return value

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, value: str) -> str:
        if value != "auto" and value not in (losses := _loss_names()):
            raise Problem("", f"unknown loss {value!r} (allowed: {', '.join(losses)})").pydantic()
        return value

    @model_validator(mode="after")
    def _across_keys(self) -> TrainConfig:
        if {"amp", "precision"} <= self.model_fields_set and self.amp == (self.precision == "fp32"):  # issue #24
            raise Problem(
                "amp",
                f"{str(self.amp).lower()} contradicts train.precision: {self.precision} (drop amp: it is "
                "the deprecated spelling of precision, false = fp32)",
            ).pydantic()
        if self.oversample_foreground and not self.iterations_per_epoch:  # issue #25
            raise Problem(
                "oversample_foreground", "needs train.iterations_per_epoch > 0 (batches drawn with replacement)"
            ).pydantic()
        if self.min_epochs > self.epochs:
            raise Problem(
                "min_epochs",
                f"{self.min_epochs} is more than train.epochs ({self.epochs}): no epoch could be kept as best.pt",
            ).pydantic()
        try:
            _model_options(self)
        except Problem as exc:
            raise exc.pydantic() from exc
        return self


class EvaluateConfig(Section):
    """How a trained model is scored (``lungseg evaluate``)."""

    SECTION: ClassVar[str] = "evaluate"

    split: Split = "test"
    """The split of the processed set that is scored (``all``: every slice)."""
    threshold: Annotated[
        float, Field(ge=0.0, le=1.0, allow_inf_nan=False), Says("must lie in [0, 1] (a probability)")
    ] = 0.5
    """Probability above which a pixel is foreground (binary models)."""
    n_overlays: int = Field(3, ge=1)
    """Best and worst cases drawn in the overlay figure (each)."""
    postprocess: Literal["auto", "none", "largest_components+fill_holes"] = "auto"
    """Post-processing of the labels, part of the served model (:mod:`lungseg.artifacts.serving`):
    ``auto`` = ``largest_components+fill_holes`` for a lung-field model (its only foreground label is
    ``lung``; lungmask's default), ``none`` for any other."""
    # issue #25: mirror (logits averaged, nnU-Net's inference) and auto (by the training preset)
    tta: Literal["auto", "none", "flips", "mirror"] = "auto"
    """Test-time augmentation, part of the served model: ``flips`` averages the probabilities over the
    four horizontal/vertical mirrorings, ``mirror`` their logits (then sigmoid/softmax: nnU-Net's
    ``_internal_maybe_mirror_and_predict``); ``auto`` = ``mirror`` for a model trained with
    ``train.preset: nnunet``, ``none`` otherwise (:func:`lungseg.artifacts.serving.resolve_tta`)."""
    # issue #24: the served model's arithmetic (lungseg.artifacts.serving, part of the fingerprint)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Arithmetic of the forward pass, part of the served model: ``bf16`` = bf16 autocast (evaluation
    scores with it, on any CPU; ``lungseg predict`` serves it where the device has bf16, else fp32 with
    a note), ``fp32``, ``auto`` = fp32 on every device (served as evaluated, #20)."""


def _placeholders(template: str) -> list[str]:
    import string

    return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]


class RegisterConfig(Section):
    """When an evaluated model is registered and promoted (``lungseg register``)."""

    SECTION: ClassVar[str] = "register"

    model_name: str = "lungseg-{model}"
    """Registered-model name; ``{model}`` (the only placeholder) becomes the trained architecture
    (``train.model`` as recorded by the training run), so a sweep over architectures registers each
    under its own name and ``champion`` compares like with like."""
    metric: str = "dice_mean"
    """Key of the evaluation summary that decides promotion."""
    greater_is_better: bool = True
    """Whether a higher ``metric`` is better (false for distances such as ``hd95_mean``)."""
    min_metric: Annotated[
        Annotated[float, Field(allow_inf_nan=False)] | Literal["auto"] | None, Says("must be a number, auto or null")
    ] = "auto"
    """The worst score a champion may have: a candidate whose ``metric`` is below it (above it when
    ``greater_is_better`` is false) is registered and tagged but never promoted, even when there is
    no champion yet. ``auto`` (default) = 0.1 when ``greater_is_better`` — meant for Dice/IoU-like
    scores in [0, 1]: a model that learned nothing (Dice 0, it predicts no foreground) is refused,
    any model that learned something passes — and no floor when lower is better (a distance such as
    ``hd95_mean`` has no natural ceiling: give one explicitly). A number sets the floor, ``null``
    disables it. See :attr:`floor`."""
    min_margin_over_trivial: Annotated[
        Annotated[float, Field(ge=0.0, allow_inf_nan=False)] | None, Says("must be a number >= 0 or null")
    ] = 0.05
    """How much ``metric`` must beat the best trivial predictor (all background / all foreground, scored
    by the evaluation on the same set) by for the model to be promoted, in the metric's units; ``null``
    disables the check. 0.05: on the bundled sample all-foreground scores Dice ~0.24 and the demo LG-Net
    ~0.65, while an untrained net that is all-foreground but a few pixels lands within ~0.01 of it."""
    champion_alias: str = "champion"
    """Alias of the best registered version (moved only when a candidate beats it)."""
    challenger_alias: str = "challenger"
    """Alias a registered version that did not become champion gets."""

    _metric_not_blank = field_validator("metric")(_not_blank)

    @field_validator("champion_alias", "challenger_alias")
    @classmethod
    def _usable_alias(cls, alias: str) -> str:
        import re

        if not re.fullmatch(r"[\w\-]{1,255}", alias) or alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
            raise Problem(
                "", f"{alias!r} is not a usable MLflow alias (letters, digits, _ and -; not 'latest' or v<number>)"
            ).pydantic()
        return alias

    @model_validator(mode="after")
    def _names(self) -> RegisterConfig:
        try:
            fields = _placeholders(self.model_name)
        except ValueError as exc:
            raise Problem("", f"model_name {self.model_name!r}: {exc}").pydantic() from exc
        bad = [f for f in fields if f != "model"]
        if bad:
            raise Problem(
                "",
                f"model_name {self.model_name!r}: unknown placeholder(s) "
                f"{', '.join('{' + f + '}' for f in bad)} (allowed: {{model}})",
            ).pydantic()
        if not self.resolved_name("x").strip():
            raise Problem("", "model_name is empty").pydantic()
        if self.champion_alias == self.challenger_alias:
            raise Problem("", f"champion_alias and challenger_alias are both {self.champion_alias!r}").pydantic()
        return self

    @property
    def floor(self) -> float | None:
        """The effective ``min_metric`` (``auto`` resolved; None = no floor)."""
        if self.min_metric == "auto":
            return AUTO_MIN_METRIC if self.greater_is_better else None
        return None if self.min_metric is None else float(self.min_metric)

    @property
    def needs_model(self) -> bool:
        """Whether the name depends on the trained architecture (holds ``{model}``)."""
        return "model" in _placeholders(self.model_name)

    def resolved_name(self, model: str) -> str:
        """The registered-model name for a run of architecture ``model``."""
        return self.model_name.format(model=model)


class MlflowConfig(Section):
    """Where runs are tracked."""

    SECTION: ClassVar[str] = "mlflow"

    tracking_uri: str = "sqlite:///mlflow.db"
    """Used when ``MLFLOW_TRACKING_URI`` is unset; the embedded default needs no server."""
    experiment: str = "lungseg"
    """MLflow experiment of the runs."""

    _not_blank = field_validator("tracking_uri", "experiment")(_not_blank)


# ``register`` is also ABCMeta.register (pydantic models are ABCs): a field of that name is fine on an
# instance (``params.register``), pydantic warns only because the class attribute exists
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", r'Field name "register" in "Params" shadows', UserWarning)

    class Params(Section):
        """All of ``params.yaml``; a section the file leaves out (or leaves empty) has its defaults."""

        preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
        train: TrainConfig = Field(default_factory=TrainConfig)
        evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
        register: RegisterConfig = Field(default_factory=RegisterConfig)
        mlflow: MlflowConfig = Field(default_factory=MlflowConfig)

        def written(self) -> dict[str, dict[str, Any]]:
            """Every section with only the keys that were given (``{}`` for a section left out): what
            to pass on (KFP pipeline arguments) so the receiver records the same written keys, which
            the ``paper`` preset decides by. Read back (``params_from_dict``), each section has the same
            values and written keys."""
            return {name: getattr(self, name).model_dump(exclude_unset=True) for name in type(self).model_fields}

        @model_validator(mode="before")
        @classmethod
        def _empty_sections(cls, data: Any) -> Any:
            if isinstance(data, dict):  # ``train:`` with nothing under it is YAML's null
                return {k: ({} if v is None else v) for k, v in data.items()}
            return data

        @model_validator(mode="after")
        def _across_sections(self) -> Params:
            """Run only for sections the file gave: a KFP component receives its own section only (the
            others are defaults, not the user's choice)."""
            if {"preprocess", "train"} <= self.model_fields_set:
                from lungseg.models import model_class

                divisor = int(getattr(model_class(self.train.model), "size_divisor", 1))
                if self.preprocess.image_size % divisor:
                    raise Problem(
                        "preprocess.image_size",
                        f"{self.preprocess.image_size} is not a multiple of {divisor}, which "
                        f"{self.train.model} needs (train.model)",
                    ).pydantic()
            return self


# ---------------------------------------------------------------------- pydantic errors → one line
_TYPE_TEXT = {
    "int_type": "expected an integer",
    "bool_type": "expected true/false",
    "float_type": "expected a number",
    "string_type": "expected a string",
    "dict_type": "expected a mapping",
    "none_required": "expected null",
}
_RANGE_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number")
#: the word an unknown name is called in messages (``unknown schedule 'step'``), when not the key
_NOUNS = {"scheduler": "schedule"}


def _bound(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _range_rule(metadata: list[Any]) -> str:
    """``must be ≥ 1`` / ``must be > 0`` / ``must lie in [0, 1)`` from a field's bounds."""
    bounds = {a: getattr(m, a) for m in metadata for a in ("ge", "gt", "le", "lt") if getattr(m, a, None) is not None}
    low = next(((a, v) for a, v in bounds.items() if a in ("ge", "gt")), None)
    high = next(((a, v) for a, v in bounds.items() if a in ("le", "lt")), None)
    if low and high:
        opening, closing = "[" if low[0] == "ge" else "(", "]" if high[0] == "le" else ")"
        return f"must lie in {opening}{_bound(low[1])}, {_bound(high[1])}{closing}"
    if low:
        return f"must be {'≥' if low[0] == 'ge' else '>'} {_bound(low[1])}"
    if high:
        return f"must be {'≤' if high[0] == 'le' else '<'} {_bound(high[1])}"
    return "must be a finite number"


def _walk(root: type[BaseModel], loc: tuple[Any, ...]) -> tuple[list[str], Any, type[BaseModel] | None]:
    """The dotted key parts of ``loc`` that name fields (tuple indices as ``[i]``), the last field's
    ``FieldInfo`` (None at a section) and the model that holds the last field (or the section)."""
    parts: list[str] = []
    cls: type[BaseModel] | None = root
    holder: type[BaseModel] | None = root
    field = None
    for part in loc:
        if isinstance(part, str) and cls is not None and part in cls.model_fields:
            holder, field = cls, cls.model_fields[part]
            parts.append(part)
            sub = field.annotation
            cls = sub if isinstance(sub, type) and issubclass(sub, BaseModel) else None
            if cls is not None:
                holder, field = cls, None
        elif isinstance(part, int) and field is not None and parts:
            parts[-1] += f"[{part}]"
        else:
            break  # a union member's tag, an unknown key
    return parts, field, holder


def _pair_problem(err: dict[str, Any], field: Any) -> bool:
    """Whether ``err`` is about the length or type of a tuple field as a whole (a list in YAML)."""
    kinds = ("tuple_type", "too_short", "too_long", "missing")
    return field is not None and typing.get_origin(field.annotation) is tuple and err["type"] in kinds


def _problem(err: dict[str, Any], field: Any, name: str) -> str:
    kind, value = err["type"], err.get("input")
    shown = list(value) if isinstance(value, tuple) else value
    says = next((m.rule for m in (field.metadata if field else []) if isinstance(m, Says)), None)
    if says:
        return f"{says}, got {shown!r}"
    if kind == "model_type":
        return f"expected a mapping, got {type(value).__name__}"
    if _pair_problem(err, field):
        return f"expected a list of {len(typing.get_args(field.annotation))} values, got {shown!r}"
    if kind in _TYPE_TEXT:
        return f"{_TYPE_TEXT[kind]}, got {shown!r}"
    if kind == "literal_error" and field is not None:
        allowed = ", ".join(typing.get_args(field.annotation))
        return f"unknown {_NOUNS.get(name, name)} {value!r} (allowed: {allowed})"
    if kind in _RANGE_ERRORS and field is not None:
        return f"{_range_rule(field.metadata)}, got {shown!r}"
    return f"{err['msg'][:1].lower()}{err['msg'][1:]}, got {shown!r}"


def config_error(exc: ValidationError, where: str, root: type[BaseModel] | None = None) -> ConfigError:
    """pydantic's ``ValidationError`` on ``root`` as lungseg's one line: ``where.key: problem``.

    The first error is reported; unknown keys first (all of one section together, as
    ``unknown key(s) a, b (allowed: …)``), as the hand-written parser did."""
    root = root or Params
    errors = exc.errors(include_url=False)
    extra = [e for e in errors if e["type"] == "extra_forbidden"]
    if extra:
        parent = extra[0]["loc"][:-1]
        parts, _, holder = _walk(root, parent)
        unknown = sorted(str(e["loc"][-1]) for e in extra if e["loc"][:-1] == parent)
        allowed = sorted(holder.model_fields) if holder is not None else []
        return ConfigError(
            f"{'.'.join([where, *parts])}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(allowed)})"
        )
    err = errors[0]
    parts, field, _ = _walk(root, err["loc"])
    if err["type"] == "lungseg":
        key = err["ctx"]["key"]
        return ConfigError(f"{'.'.join([where, *parts, *([key] if key else [])])}: {err['ctx']['text']}")
    name = parts[-1].split("[")[0] if parts else ""
    if _pair_problem(err, field):
        parts[-1] = name  # the pair as a whole, not the missing element
    return ConfigError(f"{'.'.join([where, *parts])}: {_problem(err, field, name)}")


def _validated(cls: type[Section], data: Any, where: str) -> Any:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise config_error(exc, where, cls) from exc


# ----------------------------------------------------------------------------------- public checks
def validate(params: Params, where: str = "params", sections: set[str] | frozenset[str] | None = None) -> Params:
    """``params`` checked again (returned as a new :class:`Params`); :class:`ConfigError` naming
    ``where`` and the key otherwise. For a config changed with ``model_copy(update=...)`` (which
    pydantic does not check); one read by :func:`load_params` or built in code is checked already.

    ``sections`` are the sections the file gave (default: every section): the checks across
    sections run only when both sections were given.
    """
    names = set(Params.model_fields) if sections is None else set(sections)
    for name in set(Params.model_fields) - names:
        section = getattr(params, name)
        _validated(type(section), _written(section), f"{where}.{name}")
    return _validated(Params, {n: _written(getattr(params, n)) for n in names}, where)


def check_train(cfg: TrainConfig, where: str) -> TrainConfig:
    """``cfg`` checked again like the file's ``train`` section (returned as a new config with the same
    written keys); for configs changed with ``model_copy(update=...)``, which pydantic does not check."""
    return _validated(TrainConfig, _written(cfg), where)


def _written(section: Section) -> dict[str, Any]:
    """The keys of ``section`` that were given (read from the file, passed in code, or updated by
    ``model_copy``) with their values as they are (not serialised: they may be unchecked)."""
    return {key: getattr(section, key) for key in section.model_fields_set}


def model_options(cfg: TrainConfig, where: str = "train") -> tuple[dict[str, Any], list[str]]:
    """``(options for cfg.model, ignored)`` from ``cfg.model_kwargs`` (see the module docstring).

    ``ignored`` lists the flat options that ``cfg.model`` does not take but another model does
    (the caller warns); an option no model takes, a per-model entry for an unknown model, or an
    option that model does not take (or a value of a type its constructor does not accept) is a
    :class:`ConfigError` naming the key.
    """
    try:
        return _model_options(cfg)
    except Problem as exc:
        raise exc.config_error(where) from exc


def _model_options(cfg: TrainConfig) -> tuple[dict[str, Any], list[str]]:
    """:func:`model_options`, raising :class:`Problem` (keys relative to ``train``)."""
    from lungseg.models import list_models

    kwargs = cfg.model_kwargs or {}
    if not kwargs:
        return {}, []
    models = list_models()
    keyed = [k for k in kwargs if k in models]
    if keyed and len(keyed) < len(kwargs):
        other = sorted(k for k in kwargs if k not in models)
        raise Problem(
            "model_kwargs",
            f"mixes per-model entries ({', '.join(keyed)}) with option(s) {', '.join(other)}: write every "
            f"option under its model, e.g. {{{keyed[0]}: {{{other[0]}: ...}}}}",
        )
    if keyed:  # per model
        for name in keyed:
            _check_entry(name, kwargs[name] or {})
        return dict(kwargs.get(cfg.model) or {}), []
    return _flat_options(cfg.model, kwargs, models)


def _check_entry(name: str, opts: Any) -> None:
    """Model ``name``'s entry of ``train.model_kwargs``: a mapping of options it takes, of its types."""
    where = f"model_kwargs.{name}"
    if not isinstance(opts, dict):
        raise Problem(where, f"expected a mapping of {name}'s options, got {opts!r}")
    takes = _options_of(name)
    bad = sorted(set(opts) - set(takes))
    if bad:
        raise Problem(where, f"{name} takes no option(s) {', '.join(bad)} (its options: {', '.join(takes) or 'none'})")
    _check_option_values(name, opts, where)


def _flat_options(model: str, kwargs: dict[str, Any], models: list[str]) -> tuple[dict[str, Any], list[str]]:
    """A flat ``train.model_kwargs``: ``model``'s options, and those only another model takes (ignored)."""
    takes = _options_of(model)
    used, ignored = {}, []
    for key, value in kwargs.items():
        if key in takes:
            used[key] = value
            continue
        if not any(key in _options_of(m) for m in models):
            raise Problem(
                f"model_kwargs.{key}",
                f"no model takes option {key!r} ({model}'s options: {', '.join(takes) or 'none'})",
            )
        ignored.append(key)
    _check_option_values(model, used, "model_kwargs")
    return used, ignored


def _options_of(model: str) -> list[str]:
    """The keyword options of ``model``'s constructor beyond the common ones (read from its
    signature; the model is not built)."""
    return list(_options_model(model).model_fields)


@cache
def _options_model(model: str) -> type[BaseModel]:
    """A strict pydantic model of ``model``'s constructor options (names, annotated types and
    defaults from its signature): checks option values at load time without building the model."""
    import inspect

    from pydantic import create_model

    from lungseg.models import model_class

    cls = model_class(model)
    hints = typing.get_type_hints(cls.__init__)
    fields = {
        n: (hints.get(n, Any), p.default)
        for n, p in inspect.signature(cls).parameters.items()
        if n not in COMMON_MODEL_ARGS and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }
    config = ConfigDict(extra="forbid", strict=True, arbitrary_types_allowed=True)
    return create_model(f"{cls.__name__}Options", __config__=config, **fields)


def _check_option_values(model: str, options: dict[str, Any], where: str) -> None:
    try:
        _options_model(model).model_validate(options)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        key = str(err["loc"][0])
        value = err.get("input")
        if err["type"] in _TYPE_TEXT:
            text = f"{_TYPE_TEXT[err['type']]}"
        else:
            text = f"{err['msg'][:1].lower()}{err['msg'][1:]}"
        raise Problem(f"{where}.{key}", f"{text}, got {value!r} ({model}'s constructor)") from exc


# ----------------------------------------------------------------------------------- loading
def params_from_dict(data: dict[str, Any] | None, source: str = "params") -> Params:
    """:class:`Params` from a parsed mapping, every value checked; ``source`` names it in error
    messages. The sections and keys ``data`` holds are the ones the config records as written."""
    return _validated(Params, {} if data is None else data, source)


def load_params(path: str | Path) -> Params:
    """Parse ``params.yaml`` once into typed, checked config; errors name the file and key."""
    path = Path(path)
    return params_from_dict(read_params_file(path), str(path))


def read_params_file(path: Path) -> Any:
    """``path`` parsed the way DVC reads and writes it, and checked for what PyYAML lets through:

    - numbers as YAML 1.2 reads them: ``1e-3`` is a float (PyYAML's YAML 1.1 wants ``1.0e-3`` and
      reads ``1e-3`` as a string; DVC's ``dvc exp run -S train.lr=1e-9`` writes ``1e-09``);
    - a key written twice in one mapping is a :class:`ConfigError` naming both lines (PyYAML keeps
      the last silently, so a second ``train:`` section would replace the first without a word).

    A missing file or invalid YAML is a one-line :class:`ConfigError` naming the file."""
    import yaml

    if not path.is_file():
        raise ConfigError(f"{path}: parameter file not found")
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_params_loader(str(path))) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc


def _params_loader(source: str):
    """A ``yaml.SafeLoader`` with YAML 1.2 floats and duplicate keys refused (:func:`read_params_file`)."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen: dict[Any, int] = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=True)
                    line = key_node.start_mark.line + 1
                    if isinstance(key, typing.Hashable) and key in seen:
                        raise ConfigError(
                            f"{source}: line {line}: key {key!r} is written twice in one mapping (first on "
                            f"line {seen[key]}); YAML would keep only the last: remove one"
                        )
                    if isinstance(key, typing.Hashable):
                        seen[key] = line
            return super().construct_mapping(node, deep=deep)

    float_tag = "tag:yaml.org,2002:float"
    Loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != float_tag]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    Loader.add_implicit_resolver(float_tag, _YAML12_FLOAT, list("-+0123456789."))
    return Loader


#: YAML 1.2 core schema floats (``1e-3``, ``1.5``, ``.5``, ``-1E+4``, ``.inf``, ``.nan``; ``_`` digit
#: groups as PyYAML allows them)
_YAML12_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
    |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


def params_json_schema() -> dict[str, Any]:
    """The JSON schema of ``params.yaml`` (committed as ``docs/params.schema.json``): every key, its
    type, bounds, allowed names (the model and loss registries' at generation time) and description."""
    schema = Params.model_json_schema()
    schema["title"] = "params.yaml"
    schema["description"] = (
        "lungseg's parameter file (lungseg.config.Params): one section per stage. Generated by "
        "scripts/params_schema.py; the library's checks are the reference (lungseg.config)."
    )
    return schema


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
