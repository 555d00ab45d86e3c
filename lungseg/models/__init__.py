"""The model zoo: ``create_model(name, **kwargs)`` and ``list_models()``.

Every model takes the same vocabulary ``in_channels=1, num_classes=1, base_channels=64`` (plus
model-specific keyword arguments documented in its module), returns logits
``(B, num_classes, H, W)`` and has a ``size_divisor`` attribute: H and W must be multiples of it,
otherwise ``forward`` raises ``ValueError``.

Model modules are imported on first use, so importing this package stays cheap.
"""

from __future__ import annotations

import importlib
import importlib.util

from torch import nn

# name → (module, class). Order = the order of ``list_models()`` and of the docs table.
_REGISTRY: dict[str, tuple[str, str]] = {
    "unet": ("unet", "UNet"),
    "attention_unet": ("attention_unet", "AttentionUNet"),
    "unetpp": ("unetpp", "UNetPlusPlus"),
    "segnet": ("segnet", "SegNet"),
    "u2net_p": ("u2net", "U2NetP"),
    "lgnet": ("lgnet", "LGNet"),
    "prnet": ("prnet", "PRNet"),
    "anamnet": ("anamnet", "AnamNet"),
    "lightunet": ("lightunet", "LightUNet"),
    "infnet": ("infnet", "InfNet"),
    "awsnet": ("awsnet", "AWSNet"),
}


def _available() -> dict[str, tuple[str, str]]:
    out = {}
    for name, (mod, cls) in _REGISTRY.items():
        if importlib.util.find_spec(f"{__name__}.{mod}") is not None:
            out[name] = (mod, cls)
    return out


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, in a stable order."""
    return list(_available())


def model_class(name: str) -> type[nn.Module]:
    """The class registered under ``name`` (``ValueError`` listing the valid names otherwise)."""
    avail = _available()
    if name not in avail:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(avail)}")
    mod, cls = avail[name]
    return getattr(importlib.import_module(f"{__name__}.{mod}"), cls)


def create_model(
    name: str, *, in_channels: int = 1, num_classes: int = 1, base_channels: int = 64, **kwargs
) -> nn.Module:
    """Build model ``name``; ``kwargs`` are that model's own options (see its module docstring)."""
    return model_class(name)(in_channels=in_channels, num_classes=num_classes, base_channels=base_channels, **kwargs)


def complete_options(name: str, options: dict, *, recorded: bool = False) -> dict:
    """``options`` with every *versioned* option of model ``name`` explicit.

    A model class may declare ``versioned_options = {option: value_before_it_existed}`` for an
    option whose default changes the architecture and that was added after checkpoints had been
    written (LG-Net's ``mrc_levels``: those checkpoints have MRC on all 5 levels). New identities
    (``recorded=False``) write the option's current default, so an identity without it can only
    come from before the option: ``recorded=True`` (an identity read from a checkpoint) fills the
    old value, and such a checkpoint keeps loading.
    """
    import inspect

    cls = model_class(name)
    versioned = getattr(cls, "versioned_options", {})
    out = dict(options)
    params = inspect.signature(cls).parameters
    for key, old in versioned.items():
        if key not in out:
            out[key] = old if recorded else params[key].default
    return out


def create_recorded(identity: dict) -> nn.Module:
    """The network of a recorded identity ``{name, kwargs}`` (a checkpoint's or a logged model's),
    its versioned options filled as they were when it was recorded (:func:`complete_options`)."""
    name = identity["name"]
    net = create_model(name, **complete_options(name, identity["kwargs"], recorded=True))
    if identity.get("input_norm"):  # issue #25: nnU-Net's CT normalisation, applied by the network itself
        from lungseg.models.input_norm import attach

        net = attach(net, identity["input_norm"])
    return net


__all__ = ["complete_options", "create_model", "create_recorded", "list_models", "model_class"]
