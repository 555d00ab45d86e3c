"""``train.preset: nnunet``: nnU-Net v2's 2-D training recipe for any model of the zoo (issue #25).

Every value of :data:`NNUNET_TRAIN` is nnU-Net's, read in its source (repository ``MIC-DKFZ/nnUNet``;
``docs/nnunet.md`` has the full table with file and function per choice):

==========================  ==================  =====================================================
``train`` key               value               nnU-Net v2 source
==========================  ==================  =====================================================
``optimizer``               ``sgd_nesterov``    ``nnUNetTrainer.configure_optimizers``: SGD, momentum 0.99,
                                                Nesterov (:func:`lungseg.training.poly_lr.nnunet_optimizer`)
``lr``                      0.01                ``nnUNetTrainer.__init__``: ``initial_lr = 1e-2``
``weight_decay``            3e-5                ``nnUNetTrainer.__init__``: ``weight_decay = 3e-5``
``scheduler``               ``poly``            ``lr_scheduler/polylr.py``: ``PolyLRScheduler`` (exponent
                                                0.9, ``max_steps = num_epochs``, stepped per epoch)
``epochs``                  1000                ``nnUNetTrainer.__init__``: ``num_epochs = 1000``
``iterations_per_epoch``    250                 ``nnUNetTrainer.__init__``: ``num_iterations_per_epoch``
``oversample_foreground``   0.33                ``nnUNetTrainer.__init__``: ``oversample_foreground_percent``;
                                                ``nnUNetDataLoaderBase._oversample_last_XX_percent``
``grad_clip``               12                  ``nnUNetTrainer.train_step``: ``clip_grad_norm_(…, 12)``
``loss``                    ``bce_dice``        ``nnUNetTrainer._build_loss``: ``DC_and_CE_loss`` (weights
                            (batch Dice)        1/1, ``batch_dice`` True for 2-D, smooth 1e-5):
                                                :data:`NNUNET_LOSS_OPTIONS`
``augment``                 ``nnunet``          ``nnUNetTrainer.get_training_transforms``
                                                (:mod:`lungseg.training.nnunet_augment`)
``early_stopping_patience`` 0                   nnU-Net trains every epoch (``run_training``)
==========================  ==================  =====================================================

Deep supervision: where the model has heads (``deep_supervision_weights``: Inf-Net, AWSnet) the
training loop trains every head (:class:`lungseg.losses.DeepSupervisionLoss`) under any preset;
U-Net, LG-Net and PR-Net have none (a deviation from nnU-Net's decoder-pyramid heads, not a setting).

The rule is the paper preset's (:mod:`lungseg.training.presets`): a key the user did not write gets
nnU-Net's value; a written key is honoured and recorded as a deviation when it differs (the
checkpoint's and MLflow's ``preset_deviations``, ``source: nnU-Net``). Structural deviations that
no setting can change (2-D slices, no planning, batch size as written, ``best.pt`` by validation
Dice, sigmoid instead of 2-channel softmax, …) are listed in :data:`STRUCTURAL_DEVIATIONS` and on
``docs/nnunet.md``.
"""

from __future__ import annotations

from typing import Any

from lungseg.config import TrainConfig, check_train
from lungseg.errors import ConfigError
from lungseg.training.presets import PresetResult

#: the source named in each deviation entry (``preset_deviations[key]["source"]``)
SOURCE = "nnU-Net"

#: ``train`` key → nnU-Net v2's value (sources in the module docstring)
NNUNET_TRAIN: dict[str, Any] = {
    "optimizer": "sgd_nesterov",  # configure_optimizers: SGD(momentum=0.99, nesterov=True)
    "lr": 1e-2,  # __init__: initial_lr
    "weight_decay": 3e-5,  # __init__: weight_decay
    "scheduler": "poly",  # configure_optimizers: PolyLRScheduler(optimizer, initial_lr, num_epochs), exponent 0.9
    "epochs": 1000,  # __init__: num_epochs
    "iterations_per_epoch": 250,  # __init__: num_iterations_per_epoch
    "oversample_foreground": 0.33,  # __init__: oversample_foreground_percent
    "grad_clip": 12.0,  # train_step: torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
    "loss": "bce_dice",  # _build_loss: DC_and_CE_loss({'batch_dice': ..., 'smooth': 1e-5, 'do_bg': False}, {}, 1, 1)
    "augment": "nnunet",  # get_training_transforms
    "early_stopping_patience": 0,  # run_training: every epoch, no early stop
}
#: ``bce_dice``'s options under the preset: the Dice pooled over the batch (nnU-Net's ``batch_dice``,
#: True for the 2-D configuration in ``ExperimentPlanner.plan_experiment``); MONAI's smooth 1e-5 is
#: nnU-Net's ``smooth``
NNUNET_LOSS_OPTIONS: dict[str, Any] = {"batch": True}

#: what the preset cannot make nnU-Net's (recorded on docs/nnunet.md; not settings)
STRUCTURAL_DEVIATIONS: tuple[str, ...] = (
    "2-D whole slices, not planned patches of volumes (no patch-size, batch-size or topology planning)",
    "the zoo's model, not nnU-Net's PlainConvUNet; deep supervision only where the model has heads",
    "one sigmoid channel (BCE + foreground Dice) instead of a 2-channel softmax (CE + Dice)",
    "best.pt by validation Dice over the whole val split (nnU-Net predicts with checkpoint_final)",
    "bf16 autocast where lungseg uses it (nnU-Net: fp16 + GradScaler on CUDA)",
    "validation: one full pass over the val split (nnU-Net: 50 random batches, a pseudo-Dice)",
)


#: the note of the ``precise_bn`` deviation: lungseg's addition, on by default (``auto``), not nnU-Net's
PRECISE_BN_NOTE = (
    ", lungseg's addition: BatchNorm statistics recomputed before each validation (a no-op for a model "
    "without BatchNorm); nnU-Net keeps the running averages"
)


def nnunet_loss_options(cfg: TrainConfig, loss_name: str) -> dict[str, Any]:
    """The loss options the preset gives ``loss_name``: :data:`NNUNET_LOSS_OPTIONS` for ``bce_dice``
    under ``preset: nnunet``, none otherwise (a written other loss keeps its defaults)."""
    return dict(NNUNET_LOSS_OPTIONS) if cfg.preset == "nnunet" and loss_name == "bce_dice" else {}


def resolve_nnunet(cfg: TrainConfig) -> PresetResult:
    """``cfg`` with nnU-Net's recipe applied: each :data:`NNUNET_TRAIN` key ``cfg`` was not given
    (``model_fields_set``) takes nnU-Net's value (``filled``); a given key that differs is kept and
    recorded (``deviations[key] = {"value", "paper": nnU-Net's value, "source": "nnU-Net"}``). The
    result is checked like the file's ``train`` section."""
    from lungseg.training.presets import auto_left_to_preset

    written = auto_left_to_preset(cfg)
    changes: dict[str, Any] = {}
    filled: dict[str, Any] = {}
    deviations: dict[str, dict[str, Any]] = {}
    for key, value in NNUNET_TRAIN.items():
        mine = getattr(cfg, key)
        if key not in written:
            if mine != value:
                changes[key] = filled[key] = value
        elif mine != value:
            deviations[key] = {"value": mine, "paper": value, "source": SOURCE}
    if cfg.precise_bn:  # lungseg's addition (#22), not nnU-Net's: recorded whenever it is on (review of #25)
        deviations["precise_bn"] = {"value": cfg.precise_bn, "paper": False, "source": SOURCE, "note": PRECISE_BN_NOTE}
    _refuse_filled_oversampling_without_iterations(
        changes.get("iterations_per_epoch", cfg.iterations_per_epoch), filled
    )
    config = check_train(cfg.model_copy(update=changes), "train (preset nnunet applied)")
    return PresetResult(config, deviations, filled)


def _refuse_filled_oversampling_without_iterations(iterations: int, filled: dict[str, Any]) -> None:
    """``iterations_per_epoch: 0`` written under the preset, which filled ``oversample_foreground``:
    a ``ConfigError`` that says the preset filled it and how to fix it (review of #25: the generic
    check named only ``oversample_foreground``, a key the user never wrote)."""
    if filled.get("oversample_foreground") and not iterations:
        raise ConfigError(
            f"train.iterations_per_epoch: {iterations} (passes over the data) cannot take nnU-Net's "
            f"foreground oversampling, which preset nnunet filled in (oversample_foreground "
            f"{filled['oversample_foreground']}: batches drawn with replacement); write "
            "train.oversample_foreground: 0 to train on passes without it, or a positive iterations_per_epoch"
        )


__all__ = [
    "NNUNET_LOSS_OPTIONS",
    "NNUNET_TRAIN",
    "SOURCE",
    "STRUCTURAL_DEVIATIONS",
    "nnunet_loss_options",
    "resolve_nnunet",
]
