"""Training presets: ``default`` (``params.yaml`` as written) and ``paper`` (the papers' recipes).

``paper`` sets every hyper-parameter the papers state (``../shared/seeds`` beside the repository; the
design note ``../shared/design/architecture.md`` fixes the ambiguous ones and, where both are silent,
asks for "what a careful reviewer would expect", written here). A recipe per paper
(:data:`RECIPES`), picked by ``train.paper_recipe`` (``auto`` = the model's own paper: PR-Net's for
``prnet``, LG-Net's for every other model, see "Which recipe" below):

**LG-Net's recipe** (``lgnet``; every value stated by the LG-Net paper or the design note):

- **Training** (LG-Net §3, 实验设置: "Adam 优化器 …批尺寸设置为 4, 图片尺寸设置为 512×512, 初始学习率为
  0.01, 执行 120 次迭代"): Adam, lr 0.01, batch 4, 120 epochs, 512² images. The paper names no
  schedule, weight decay or early stopping, so none: constant lr, ``weight_decay`` 0, all 120 epochs
  (``early_stopping_patience`` 0). It says nothing of augmentation: ``train.augment`` is left as set.
- **Width**: base 64, the classic U-Net widths both papers build on (design note, "Common frame").
- **Loss** (LG-Net Eq. 14–16): ``dice_focal`` = 0.3·Dice + 0.7·Focal, α = β = 0.5, focusing 2, with
  the sum over **all** classes as written (``binary_background=True, class_reduction="sum"`` of
  :class:`lungseg.losses.DiceFocalLoss`; multi-class: ``class_reduction="sum"``).

**PR-Net's recipe** (``prnet``). The PR-Net paper (§3.1) states its data — 264 images, "分为 211 张用于
训练, 26 张用于验证, 27 张用于测试" — and its metrics, and that every model of its comparison was
"在相同的配置下进行评估, 使用相同的参数设置重新训练" (retrained with the same settings), but no
optimiser, lr, batch, epochs, loss or image size. Each value, with its source:

- ``loss: bce_dice`` — design note §PR-Net 7: "Loss: not stated in the paper; default BCE + soft Dice
  (equal weights)".
- ``base_channels: 64`` — design note, common frame: "the papers use the classic U-Net widths, base 64".
- ``lr: 0.001``, Adam (the optimiser lungseg trains with), ``scheduler: none``, ``weight_decay: 0`` —
  paper silent; design note silent on PR-Net's optimiser, so its rule for that case ("Where both are
  silent, choose what a careful reviewer would expect"): Adam at its standard step size 1e-3
  (Kingma & Ba's default, the common one for U-Net variants), constant since no schedule is stated,
  no weight decay since none is stated. LG-Net's 0.01 is not carried over: it is that paper's own
  setting, and at 0.01 the BatchNorm statistics PR-Net's skips and decoder also use lagged the weights
  (issue #22 item 1).
- ``batch_size: 4``, ``epochs: 120``, ``early_stopping_patience: 0`` — paper and design note silent;
  the careful reviewer's choice is the stated budget of the sibling paper (LG-Net §3, the same school
  and year: 贵州大学大数据与信息工程学院, 2023), all epochs run; ``best.pt`` is the best validation Dice,
  the use the paper's 26-image validation split implies.
- Image size: not stated (the Kaggle source slices are 512², the npy set 64²), so the recipe checks
  none (:func:`check_paper_size` passes every size).
- The split (211 / 26 / 27 of 264) is data, not a training setting: ``preprocess.split: seeded`` with
  those proportions, the ``prnet-kaggle`` table's default (:mod:`lungseg.experiments.specs`).

**Model options** (the model's own paper, whichever recipe trains it): LG-Net ``mrc_levels`` 4 (design
note: MRC on the four levels followed by a max-pool) and attention on at most 4096 tokens, exact
below (the paper's PCM is exact; at 512² the first skip has 262 144 tokens, which no device holds as
an N×N affinity — the design note's ``max_tokens`` rule; a user value ``≥ 4096`` or ``null`` (exact)
is as close to the paper and is no deviation); PR-Net ``dsa_scaled: false`` and
``dsa_softmax: query`` (Eq. 1: ``B_ij = exp(M_i·N_j) / Σ_k exp(M_k·N_j)``, no 1/√d, normalised over
the query index) and the same attention rule (design note §PR-Net 4).

Which recipe: ``paper_recipe: auto`` gives PR-Net its own and every other model LG-Net's (the baselines
appear in the papers' comparison tables without recipes of their own; the only stated training
setup is LG-Net's). A comparison table trains all its rows with one paper's recipe by writing
``paper_recipe`` (PR-Net's Table 1: ``prnet``, as the paper says it retrained every model alike).

The rule (:func:`resolve_preset`): the preset supplies the recipe's value for every key the user did
**not write** (the default of :class:`lungseg.config.TrainConfig`, or of the model's constructor for a
model option); a key the user wrote is **honoured**, and **recorded** as a deviation when it differs
from the recipe — the MLflow tag and param ``preset_deviations``, the checkpoint's
``preset_deviations`` and a ``lungseg: paper preset: …`` line on stderr — never silently replaced.
The resolved recipe is written into the effective config (``paper_recipe``). The data's image size
is not a training setting (``preprocess.image_size`` fixes it): a run of LG-Net's recipe on data of
another size than 512² is refused (:func:`check_paper_size`, a ``ConfigError``) unless
``train.allow_non_paper_size: true``, and then recorded as a deviation too.

**Written, not equal to the default.** What the user wrote is what :func:`lungseg.config.load_params`
found in the file: pydantic records the keys a section was given (``TrainConfig.model_fields_set``;
for a config built in code, the keyword arguments; for ``model_copy(update=...)``, the updated
keys too), and a model option is written when its model's entry of ``train.model_kwargs`` (or the
flat mapping) holds it. So ``train: {preset: paper, lr: 0.001}`` trains LG-Net at 0.001 — the library
default, written — and records ``lr=0.001 (paper 0.01)``; the same for ``base_channels: 8``. (The
rule once decided by value — a value equal to the library default counted as left — which silently
replaced a written default.) A file that writes every key, as the committed ``params.yaml`` does,
therefore keeps all of them under ``preset: paper``: write only the keys you mean to set. The
preset's result is checked like the file (:func:`lungseg.config.check_train`) before it is returned.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from dataclasses import dataclass, field
from typing import Any

from lungseg.config import TrainConfig, check_train, model_options
from lungseg.errors import ConfigError

PAPER_IMAGE_SIZE = 512
"""LG-Net §3: 图片尺寸设置为 512×512."""

#: ``train`` key → the paper's value (LG-Net §3 unless said; see the module docstring)
PAPER_TRAIN: dict[str, Any] = {
    "lr": 0.01,  # 初始学习率为 0.01
    "batch_size": 4,  # 批尺寸设置为 4
    "epochs": 120,  # 执行 120 次迭代
    "scheduler": "none",  # only an initial lr is stated: constant
    "weight_decay": 0.0,  # Adam, no weight decay stated
    "early_stopping_patience": 0,  # none stated: all 120 epochs
    "base_channels": 64,  # the classic U-Net widths (design note, common frame)
    "loss": "dice_focal",  # Eq. 14–16
}
#: ``train`` key → PR-Net's recipe (the paper states none of them: each source in the module docstring)
PRNET_TRAIN: dict[str, Any] = {
    "lr": 0.001,  # silent: Adam's standard step size (design note: "what a careful reviewer would expect")
    "batch_size": 4,  # silent: the sibling paper's stated batch (LG-Net §3)
    "epochs": 120,  # silent: the sibling paper's stated budget (LG-Net §3)
    "scheduler": "none",  # silent: no schedule stated, constant
    "weight_decay": 0.0,  # silent: none stated
    "early_stopping_patience": 0,  # silent: all epochs; best.pt by the paper's validation split
    "base_channels": 64,  # design note, common frame: base 64
    "loss": "bce_dice",  # design note §PR-Net 7: BCE + soft Dice, equal weights
}
#: attention token budget of the paper preset: exact up to 64×64 tokens (the design note's default)
PAPER_MAX_TOKENS = 4096
#: model → option → the paper's value (the model's own paper, whichever recipe trains it)
PAPER_MODEL_OPTIONS: dict[str, dict[str, Any]] = {
    "lgnet": {"mrc_levels": 4, "max_tokens": PAPER_MAX_TOKENS},
    "prnet": {"dsa_scaled": False, "dsa_softmax": "query", "max_tokens": PAPER_MAX_TOKENS},
}


@dataclass(frozen=True)
class Recipe:
    """One paper's training recipe: the ``train`` values and the image size it states (None: none)."""

    name: str
    paper: str
    train: dict[str, Any]
    image_size: int | None


#: ``train.paper_recipe`` → the recipe
RECIPES: dict[str, Recipe] = {
    "lgnet": Recipe("lgnet", "LG-Net §3", PAPER_TRAIN, PAPER_IMAGE_SIZE),
    "prnet": Recipe("prnet", "PR-Net (design note where the paper is silent)", PRNET_TRAIN, None),
}


def recipe_for(cfg: TrainConfig) -> Recipe:
    """The recipe ``preset: paper`` applies to ``cfg``: ``train.paper_recipe``, or for ``auto`` the
    model's own paper (PR-Net's for ``prnet``, LG-Net's for every other model)."""
    name = cfg.paper_recipe if cfg.paper_recipe != "auto" else ("prnet" if cfg.model == "prnet" else "lgnet")
    return RECIPES[name]


def paper_loss_options(num_classes: int) -> dict[str, Any]:
    """``DiceFocalLoss`` options that make it Eq. 14–15 as written: the sum over all classes, the
    background included (binary: ``binary_background``)."""
    return {"binary_background": True, "class_reduction": "sum"} if num_classes == 1 else {"class_reduction": "sum"}


def _as_paper(key: str, value: Any, paper: Any) -> bool:
    """Whether a user's ``value`` for ``key`` is the paper's (no deviation)."""
    if key == "max_tokens":  # exact (None) or at least the paper preset's budget
        return value is None or value >= paper
    return value == paper


@dataclass(frozen=True)
class PresetResult:
    """A preset applied to the user's ``train`` section."""

    config: TrainConfig
    """The effective settings (the model options of ``config.model`` under its own key; under
    ``paper``, ``paper_recipe`` is the recipe applied)."""
    deviations: dict[str, dict[str, Any]] = field(default_factory=dict)
    """``key → {"value": used, "paper": the paper's}`` for every paper setting the user changed."""
    filled: dict[str, Any] = field(default_factory=dict)
    """``key → paper value`` the preset put in place of a library default."""

    def describe_deviations(self) -> str:
        """``epochs=2 (paper 120); image_size=64 (paper 512)`` or ``none``."""
        if not self.deviations:
            return "none"
        return "; ".join(
            f"{k}={_show(d['value'])} ({d.get('source', 'paper')} {_show(d['paper'])}{d.get('note', '')})"
            for k, d in self.deviations.items()
        )

    def with_deviation(self, key: str, value: Any, paper: Any, note: str = "") -> PresetResult:
        entry = {"value": value, "paper": paper, **({"note": f", {note}"} if note else {})}
        return dataclasses.replace(self, deviations={**self.deviations, key: entry})


def _show(v: Any) -> str:
    return "null" if v is None else json.dumps(v) if isinstance(v, (dict, list)) else str(v)


def auto_left_to_preset(cfg: TrainConfig) -> set[str]:
    """The keys a preset treats as written: those the file gave, except ``loss: auto`` — "let the library
    choose" — which under a preset is the preset's choice, not a deviation from it (``params.yaml`` writes
    ``loss: auto``, and every paper-preset run from it listed "loss=auto (paper dice_focal)" although it
    trained with exactly the paper's loss)."""
    return {key for key in cfg.model_fields_set if not (key == "loss" and cfg.loss == "auto")}


def resolve_preset(cfg: TrainConfig) -> PresetResult:
    """``cfg`` with its preset applied, and what the preset filled in or found changed (see the
    module docstring for the rule: keys ``cfg`` was given are kept). ``default`` returns ``cfg`` as
    it is; ``paper``'s result is checked like the file's ``train`` section."""
    if cfg.preset == "default":
        return PresetResult(cfg)
    if cfg.preset == "nnunet":  # issue #25: nnU-Net's recipe (lungseg.training.nnunet_preset)
        from lungseg.training.nnunet_preset import resolve_nnunet

        return resolve_nnunet(cfg)
    written = auto_left_to_preset(cfg)
    recipe = recipe_for(cfg)
    changes: dict[str, Any] = {"paper_recipe": recipe.name}
    filled: dict[str, Any] = {}
    deviations: dict[str, dict[str, Any]] = {}
    for key, paper in recipe.train.items():
        value = getattr(cfg, key)
        if key not in written:
            if value != paper:
                changes[key] = filled[key] = paper
        elif not _as_paper(key, value, paper):
            deviations[key] = {"value": value, "paper": paper}
    options, _ = model_options(cfg)
    options = dict(options)
    paper_options = PAPER_MODEL_OPTIONS.get(cfg.model, {})
    if paper_options:
        from lungseg.models import model_class

        defaults = {n: p.default for n, p in inspect.signature(model_class(cfg.model)).parameters.items()}
        for key, paper in paper_options.items():
            name = f"model_kwargs.{cfg.model}.{key}"
            if key not in options:
                if defaults.get(key) != paper:  # a paper value the constructor does not default to
                    options[key] = filled[name] = paper
            elif not _as_paper(key, options[key], paper):
                deviations[name] = {"value": options[key], "paper": paper}
    kwargs = dict(cfg.model_kwargs or {})
    from lungseg.models import list_models

    per_model = {k: v for k, v in kwargs.items() if k in list_models()}
    if options or per_model:
        changes["model_kwargs"] = {**per_model, cfg.model: options}
    config = check_train(cfg.model_copy(update=changes), "train (preset applied)")
    return PresetResult(config, deviations, filled)


def check_paper_size(result: PresetResult, size: int, data_dir: Any) -> PresetResult:
    """Refuse (``ConfigError``) a ``paper`` run on ``size``² data unless ``allow_non_paper_size``;
    with it, the size is recorded as a deviation. ``default`` runs, and a recipe that states no size
    (PR-Net's), pass unchanged."""
    cfg = result.config
    if cfg.preset != "paper" or recipe_for(cfg).image_size in (None, size):
        return result
    if not cfg.allow_non_paper_size:
        raise ConfigError(
            f"{data_dir}: the paper preset trains at {PAPER_IMAGE_SIZE}² (LG-Net §3), this data is "
            f"{size}² (preprocess.image_size); preprocess at {PAPER_IMAGE_SIZE}, or set "
            f"train.allow_non_paper_size: true to run the recipe at {size}² (recorded as a "
            "deviation)"
        )
    return result.with_deviation("image_size", size, PAPER_IMAGE_SIZE, "allowed by train.allow_non_paper_size")


__all__ = [
    "PAPER_IMAGE_SIZE",
    "PAPER_MAX_TOKENS",
    "PAPER_MODEL_OPTIONS",
    "PAPER_TRAIN",
    "PRNET_TRAIN",
    "RECIPES",
    "PresetResult",
    "Recipe",
    "check_paper_size",
    "paper_loss_options",
    "recipe_for",
    "resolve_preset",
]
