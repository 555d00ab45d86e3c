"""``train.preset: paper`` is the papers' recipe: every stated hyper-parameter, deviations recorded,
data of another size refused unless ``train.allow_non_paper_size``."""

from __future__ import annotations

import json
import subprocess

import mlflow
import pytest

from lungseg.artifacts.checkpoint import load_checkpoint, model_identity
from lungseg.config import TrainConfig, load_params, params_from_dict
from lungseg.errors import ConfigError
from lungseg.losses import DiceFocalLoss
from lungseg.models import model_class
from lungseg.training import train
from lungseg.training.presets import check_paper_size, paper_loss_options, resolve_preset
from train_helpers import cli_env, lungseg_cmd, processed_sample, write_params

#: (train key, the paper's value, where the paper states it) — written from the papers, not from the code
PAPER_TRAIN = [
    ("lr", 0.01, "LG-Net §3 实验设置: 初始学习率为 0.01"),
    ("batch_size", 4, "LG-Net §3: 批尺寸设置为 4"),
    ("epochs", 120, "LG-Net §3: 执行 120 次迭代"),
    ("scheduler", "none", "LG-Net §3 states an initial lr only: no schedule"),
    ("weight_decay", 0.0, "LG-Net §3: Adam, no weight decay stated"),
    ("early_stopping_patience", 0, "LG-Net §3: 120 epochs, no early stopping stated"),
    ("base_channels", 64, "classic U-Net widths 64…1024 (architecture.md, common frame)"),
    ("loss", "dice_focal", "LG-Net Eq. 14–16: 0.3·Dice + 0.7·Focal"),
]
#: PR-Net's recipe: (train key, value, source) — the paper states none of them (§3.1 gives the split
#: and that every model was retrained alike); the design note's reading, or its "careful reviewer" rule
PRNET_TRAIN = [
    ("lr", 0.001, "silent: Adam's standard step size (design note: what a careful reviewer expects)"),
    ("batch_size", 4, "silent: the sibling paper's stated batch (LG-Net §3)"),
    ("epochs", 120, "silent: the sibling paper's stated budget (LG-Net §3)"),
    ("scheduler", "none", "silent: no schedule stated"),
    ("weight_decay", 0.0, "silent: none stated"),
    ("early_stopping_patience", 0, "silent: every epoch, best.pt by the validation split"),
    ("base_channels", 64, "architecture.md common frame: base 64"),
    ("loss", "bce_dice", "architecture.md PR-Net 7: BCE + soft Dice, equal weights"),
]
#: (model, option, the paper's value, where stated)
PAPER_MODEL = [
    ("lgnet", "mrc_levels", 4, "LG-Net §2.2 + architecture.md 1: MRC on the 4 levels followed by a max-pool"),
    ("lgnet", "max_tokens", 4096, "LG-Net §2.3 PCM exact; architecture.md 3: ≥ 64·64 tokens exact"),
    ("prnet", "dsa_scaled", False, "PR-Net Eq. 1: softmax(QKᵀ) without 1/√d"),
    ("prnet", "dsa_softmax", "query", "PR-Net Eq. 1: B_ij = exp(M_i·N_j) / Σ_k exp(M_k·N_j)"),
    ("prnet", "max_tokens", 4096, "architecture.md PR-Net 4: same max_tokens rule as LG-Attention"),
]


@pytest.mark.parametrize(("key", "value", "where"), PAPER_TRAIN, ids=[k for k, _, _ in PAPER_TRAIN])
def test_the_paper_preset_sets_every_stated_training_value(key, value, where):
    # LG-Net's recipe: LG-Net and every baseline (auto), and PR-Net when a table asks for it
    for model, recipe in (("lgnet", "auto"), ("unet", "auto"), ("infnet", "auto"), ("prnet", "lgnet")):
        result = resolve_preset(TrainConfig(model=model, preset="paper", paper_recipe=recipe))
        assert getattr(result.config, key) == value, (model, where)
        assert result.config.paper_recipe == "lgnet" and not result.deviations


@pytest.mark.parametrize(("key", "value", "where"), PRNET_TRAIN, ids=[k for k, _, _ in PRNET_TRAIN])
def test_the_paper_preset_gives_prnet_its_own_recipe(key, value, where):
    # PR-Net's recipe: PR-Net (auto), and any model of a table that asks for it (the PR-Net paper's
    # comparison retrained every model with the same settings)
    for model, recipe in (("prnet", "auto"), ("prnet", "prnet"), ("unet", "prnet"), ("lgnet", "prnet")):
        result = resolve_preset(TrainConfig(model=model, preset="paper", paper_recipe=recipe))
        assert getattr(result.config, key) == value, (model, where)
        assert result.config.paper_recipe == "prnet" and not result.deviations
    # the model options stay the model's own paper's, whichever recipe trains it
    from lungseg.experiments.identity import constructor_arguments

    for model, options in (("lgnet", {"mrc_levels": 4, "max_tokens": 4096}), ("prnet", {"dsa_softmax": "query"})):
        for recipe in ("lgnet", "prnet"):
            cfg = resolve_preset(TrainConfig(model=model, preset="paper", paper_recipe=recipe)).config
            args = constructor_arguments(model, model_identity(cfg, 1, 1)["kwargs"])
            assert {k: args[k] for k in options} == options, (model, recipe)
    assert resolve_preset(TrainConfig(model="prnet", preset="default")).config.paper_recipe == "auto"  # untouched


def test_the_prnet_recipe_states_no_image_size(tmp_path):
    """The PR-Net paper states no resolution: its recipe refuses no size and records none; LG-Net's
    recipe on PR-Net (a table that asks for it) still refuses 64²."""
    pr = resolve_preset(TrainConfig(model="prnet", preset="paper"))
    for size in (64, 256, 512):
        assert check_paper_size(pr, size, tmp_path) is pr
    with pytest.raises(ConfigError, match="trains at 512²"):
        check_paper_size(resolve_preset(TrainConfig(model="prnet", preset="paper", paper_recipe="lgnet")), 64, tmp_path)


@pytest.mark.parametrize(
    ("model", "option", "value", "where"), PAPER_MODEL, ids=[f"{m}-{o}" for m, o, _, _ in PAPER_MODEL]
)
def test_the_paper_preset_builds_the_papers_model(model, option, value, where):
    cfg = resolve_preset(TrainConfig(model=model, preset="paper")).config
    identity = model_identity(cfg, 1, 1)
    assert identity["kwargs"]["base_channels"] == 64
    import inspect

    used = identity["kwargs"].get(option, inspect.signature(model_class(model)).parameters[option].default)
    assert used == value, where  # what the constructor receives (the 129 M-parameter net is not built)


def test_the_paper_loss_is_eq_14_15_as_written():
    """LG-Net Eq. 14: Dice summed over all classes, background included (binary: 2 classes); Eq. 15:
    focal summed over classes; Eq. 16: γ = 0.3; α = β = 0.5; focusing 2."""
    import torch

    loss = DiceFocalLoss(num_classes=1, **paper_loss_options(1))
    assert loss.binary_background and loss.class_reduction == "sum" and loss.gamma_weight == 0.3
    assert paper_loss_options(3) == {"class_reduction": "sum"}
    # the Dice term scores background and foreground: a perfect foreground with a wrong background
    # pixel count is still penalised through the background ratio
    logits = torch.full((1, 1, 4, 4), 8.0)
    masks = torch.ones(1, 4, 4, dtype=torch.long)
    masks[0, 0, 0] = 0
    mean_form = DiceFocalLoss(num_classes=1)(logits, masks)
    assert loss(logits, masks) > mean_form


def test_a_changed_setting_is_honoured_and_recorded_never_replaced():
    cfg = TrainConfig(
        model="prnet",
        preset="paper",
        epochs=2,
        lr=0.002,
        base_channels=4,
        model_kwargs={"lgnet": {"max_tokens": 256}, "prnet": {"max_tokens": 256}},
    )
    result = resolve_preset(cfg)
    assert (result.config.epochs, result.config.lr, result.config.base_channels) == (2, 0.002, 4)  # honoured
    assert result.config.model_kwargs["prnet"] == {"max_tokens": 256, "dsa_scaled": False, "dsa_softmax": "query"}
    assert result.config.model_kwargs["lgnet"] == {"max_tokens": 256}  # another model's entry kept
    assert result.deviations == {  # against PR-Net's own recipe
        "epochs": {"value": 2, "paper": 120},
        "lr": {"value": 0.002, "paper": 0.001},
        "base_channels": {"value": 4, "paper": 64},
        "model_kwargs.prnet.max_tokens": {"value": 256, "paper": 4096},
    }
    assert result.describe_deviations() == (
        "lr=0.002 (paper 0.001); epochs=2 (paper 120); base_channels=4 (paper 64); "
        "model_kwargs.prnet.max_tokens=256 (paper 4096)"
    )
    # the same keys against LG-Net's recipe (a table that trains PR-Net with it)
    lg = resolve_preset(cfg.model_copy(update={"paper_recipe": "lgnet"}))
    assert lg.config.lr == 0.002 and lg.deviations["lr"] == {"value": 0.002, "paper": 0.01}
    # PR-Net's Eq. 1 softmax written as the key softmax: honoured and recorded
    key = resolve_preset(TrainConfig(model="prnet", preset="paper", model_kwargs={"prnet": {"dsa_softmax": "key"}}))
    assert key.config.model_kwargs["prnet"]["dsa_softmax"] == "key"
    assert key.deviations == {"model_kwargs.prnet.dsa_softmax": {"value": "key", "paper": "query"}}
    # a loss written against PR-Net's recipe (bce_dice) is honoured and recorded
    focal = resolve_preset(TrainConfig(model="prnet", preset="paper", loss="dice_focal"))
    assert focal.config.loss == "dice_focal" and focal.deviations == {
        "loss": {"value": "dice_focal", "paper": "bce_dice"}
    }
    # exact attention, or more tokens than the preset's budget, is as close to the paper: no deviation
    for tokens in (None, 16384):
        exact = resolve_preset(
            TrainConfig(model="lgnet", preset="paper", model_kwargs={"lgnet": {"max_tokens": tokens}})
        )
        assert not exact.deviations and exact.config.model_kwargs["lgnet"]["max_tokens"] == tokens
    five = resolve_preset(TrainConfig(model="lgnet", preset="paper", model_kwargs={"mrc_levels": 5}))
    assert five.deviations == {"model_kwargs.lgnet.mrc_levels": {"value": 5, "paper": 4}}
    assert resolve_preset(TrainConfig(preset="default", epochs=2)).config == TrainConfig(epochs=2)  # untouched


def test_a_written_value_equal_to_the_library_default_survives_the_paper_preset():
    """The rule decides by the keys the file wrote (``model_fields_set``), not by value: lr 0.001 and
    base_channels 8 are the library defaults, written, so they are kept and recorded (they were
    silently replaced by the paper's 0.01 and 64 when the rule compared values)."""
    for written, key, value, paper in [
        ({"lr": 0.001}, "lr", 0.001, 0.01),
        ({"base_channels": 8}, "base_channels", 8, 64),
    ]:
        assert getattr(TrainConfig(), key) == value  # the library default
        train = params_from_dict({"train": {"preset": "paper", **written}}).train
        result = resolve_preset(train)
        assert getattr(result.config, key) == value
        assert result.deviations == {key: {"value": value, "paper": paper}}
        assert key not in result.filled and {"epochs", "weight_decay"} <= set(result.filled)  # the rest: the paper
    # a model option written with the constructor's default is kept too (PR-Net's default dsa_scaled=True)
    pr = params_from_dict(
        {"train": {"model": "prnet", "preset": "paper", "model_kwargs": {"prnet": {"dsa_scaled": True}}}}
    )
    result = resolve_preset(pr.train)
    assert result.config.model_kwargs["prnet"]["dsa_scaled"] is True
    assert result.deviations["model_kwargs.prnet.dsa_scaled"] == {"value": True, "paper": False}
    # left out, the same option gets the paper's value
    assert (
        resolve_preset(TrainConfig(model="prnet", preset="paper")).config.model_kwargs["prnet"]["dsa_scaled"] is False
    )


def test_the_pipeline_passes_the_written_keys_so_a_component_resolves_the_preset_alike():
    """KFP components receive the sections as JSON: only the keys the file wrote travel, so the train
    component fills (and keeps) the same keys as ``lungseg train`` on the same file."""
    from components.runtime import stage_params
    from pipelines import ops

    params = params_from_dict({"train": {"preset": "paper", "lr": 0.001}, "mlflow": {"experiment": "x"}})
    args = ops.pipeline_arguments(params, dataset="medseg", input_uri="s3://b/raw")
    assert json.loads(args["train_params"]) == {"preset": "paper", "lr": 0.001}
    staged = stage_params(train=args["train_params"], mlflow=args["mlflow_params"])
    here, there = resolve_preset(params.train), resolve_preset(staged.train)
    assert there.config == here.config and there.deviations == here.deviations == {
        "lr": {"value": 0.001, "paper": 0.01}
    }
    assert there.config.epochs == 120 and params_from_dict(params.written()) == params


def test_the_preset_result_is_checked_like_the_file():
    result = resolve_preset(params_from_dict({"train": {"preset": "paper", "epochs": 2}}).train)
    assert result.config.model_fields_set >= {"preset", "epochs", "lr"}  # the filled keys count as written
    assert resolve_preset(result.config).deviations == result.deviations  # resolving again changes nothing
    unchecked = TrainConfig(preset="paper").model_copy(update={"min_epochs": 200})  # model_copy: not checked
    with pytest.raises(ConfigError, match=r"^train \(preset applied\)\.min_epochs: 200 is more than train\.epochs"):
        resolve_preset(unchecked)


@pytest.mark.slow
def test_training_keeps_a_written_default_under_the_paper_preset(tmp_path, tiny_data):
    """``train: {preset: paper, lr: 0.001, base_channels: 8}`` trains at 0.001 with width 8, and the
    run records both as deviations from the paper."""
    import yaml

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    train_cfg = {"preset": "paper", "lr": 0.001, "base_channels": 8, "epochs": 1, "allow_non_paper_size": True}
    path = tmp_path / "p.yaml"
    path.write_text(
        yaml.safe_dump({"train": {**train_cfg, "model": "unet", "device": "cpu"}, "mlflow": {"tracking_uri": uri}}),
        encoding="utf-8",
    )
    result = train(load_params(path), tiny_data, tmp_path / "out")
    ckpt = load_checkpoint(tmp_path / "out" / "checkpoint.pt")
    assert ckpt["optimizer_state"]["param_groups"][0]["lr"] == 0.001 and ckpt["config"]["lr"] == 0.001
    assert ckpt["model_identity"]["kwargs"]["base_channels"] == 8
    assert {"lr", "base_channels"} <= set(ckpt["preset_deviations"])
    tags = mlflow.MlflowClient(uri).get_run(result.run_id).data.tags
    assert (
        "lr=0.001 (paper 0.01)" in tags["preset_deviations"]
        and "base_channels=8 (paper 64)" in tags["preset_deviations"]
    )


def test_data_of_another_size_is_refused_unless_allowed(tmp_path):
    result = resolve_preset(TrainConfig(preset="paper"))
    with pytest.raises(
        ConfigError,
        match=r"data: the paper preset trains at 512² .* this data is 64² .*"
        r"train.allow_non_paper_size: true",
    ):
        check_paper_size(result, 64, tmp_path / "data")
    assert check_paper_size(result, 512, tmp_path) is result
    allowed = check_paper_size(resolve_preset(TrainConfig(preset="paper", allow_non_paper_size=True)), 64, tmp_path)
    assert allowed.deviations == {
        "image_size": {"value": 64, "paper": 512, "note": ", allowed by train.allow_non_paper_size"}
    }
    assert check_paper_size(resolve_preset(TrainConfig()), 64, tmp_path).deviations == {}  # default preset: no check


def test_training_refuses_the_paper_preset_on_small_data(tmp_path, tiny_data):
    params = write_params(tmp_path / "p.yaml", f"sqlite:///{tmp_path / 'mlflow.db'}", preset="paper", epochs=1)
    with pytest.raises(ConfigError, match=r"this data is 32²"):
        train(load_params(params), tiny_data, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.yaml"]  # refused before any run, store or output


@pytest.mark.slow
def test_the_cli_refuses_the_paper_preset_on_small_data_in_one_line(tmp_path, tiny_data):
    params = write_params(tmp_path / "p.yaml", f"sqlite:///{tmp_path / 'mlflow.db'}", preset="paper", epochs=1)
    proc = subprocess.run(
        lungseg_cmd("train", "--data", str(tiny_data), "--output", str(tmp_path / "out"), "--params", str(params)),
        env=cli_env(),
        capture_output=True,
        text=True,
        encoding="utf-8",
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {tiny_data}: the paper preset trains at 512²") and "allow_non_paper_size" in last
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


@pytest.mark.slow
def test_cpu_paper_runs_the_recipe_end_to_end_and_records_its_deviations(tmp_path_factory, tmp_path, capsys):
    """The ``cpu-paper`` check: the paper preset on the bundled sample at 64² with the size override,
    one epoch, a tiny width — both recorded as deviations, everything else the paper's."""
    data = processed_sample(tmp_path_factory, 64)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    train_cfg = {"model": "lgnet", "preset": "paper", "allow_non_paper_size": True, "epochs": 1, "base_channels": 4}
    path = tmp_path / "p.yaml"
    import yaml

    path.write_text(
        yaml.safe_dump({"train": {**train_cfg, "device": "cpu"}, "mlflow": {"tracking_uri": uri}}), encoding="utf-8"
    )
    result = train(load_params(path), data, tmp_path / "out")
    err = capsys.readouterr().err
    expected = (
        "epochs=1 (paper 120); base_channels=4 (paper 64); "
        "image_size=64 (paper 512, allowed by train.allow_non_paper_size)"
    )
    assert (
        f"lungseg: paper preset: set lr 0.01, scheduler none, weight_decay 0.0, early_stopping_patience 0, "
        f"loss dice_focal (the paper's values for settings left at their defaults); honouring settings that "
        f"differ from the paper: {expected}" in err
    )
    run = mlflow.MlflowClient(uri).get_run(result.run_id)
    assert run.data.tags["preset_deviations"] == expected and run.data.params["preset_deviations"] == expected
    assert run.data.params["effective.lr"] == "0.01" and run.data.params["effective.scheduler"] == "none"
    assert run.data.params["train.loss_resolved"] == "dice_focal"
    assert run.data.params["train.loss_options"] == '{"binary_background": true, "class_reduction": "sum"}'
    ckpt = load_checkpoint(tmp_path / "out" / "checkpoint.pt")
    assert ckpt["config"]["lr"] == 0.01 and ckpt["config"]["batch_size"] == 4 and ckpt["config"]["weight_decay"] == 0
    assert ckpt["optimizer_state"]["param_groups"][0]["lr"] == 0.01 and ckpt["scheduler_state"] is None
    assert set(ckpt["preset_deviations"]) == {"epochs", "base_channels", "image_size"}
    assert (
        ckpt["model_identity"]["kwargs"]["base_channels"] == 4 and ckpt["model_identity"]["kwargs"]["mrc_levels"] == 4
    )


@pytest.mark.slow
def test_prnet_trains_with_its_own_recipe_end_to_end(tmp_path, tiny_data, capsys):
    """PR-Net under ``preset: paper``: PR-Net's recipe (lr 1e-3, BCE+Dice, DSA as Eq. 1 with the
    query softmax), no size refused (the paper states none: 32² data trains), the written keys
    recorded as deviations from that recipe, Eq. 1's DSA in the trained model."""
    import yaml

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    train_cfg = {"model": "prnet", "preset": "paper", "epochs": 1, "base_channels": 4, "device": "cpu"}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"train": train_cfg, "mlflow": {"tracking_uri": uri}}), encoding="utf-8")
    result = train(load_params(path), tiny_data, tmp_path / "out")
    err = capsys.readouterr().err
    assert "honouring settings that differ from the paper: epochs=1 (paper 120); base_channels=4 (paper 64)" in err
    ckpt = load_checkpoint(tmp_path / "out" / "checkpoint.pt")
    cfg = ckpt["config"]
    assert (cfg["lr"], cfg["batch_size"], cfg["loss"], cfg["scheduler"], cfg["paper_recipe"]) == (
        0.001,
        4,
        "bce_dice",
        "none",
        "prnet",
    )
    assert ckpt["optimizer_state"]["param_groups"][0]["lr"] == 0.001
    assert set(ckpt["preset_deviations"]) == {"epochs", "base_channels"}  # no image size: none stated
    from lungseg.experiments.identity import constructor_arguments

    args = constructor_arguments("prnet", ckpt["model_identity"]["kwargs"])
    assert args["dsa_softmax"] == "query" and args["dsa_scaled"] is False and args["max_tokens"] == 4096
    run = mlflow.MlflowClient(uri).get_run(result.run_id)
    assert run.data.params["preset_deviations"] == "epochs=1 (paper 120); base_channels=4 (paper 64)"


@pytest.mark.parametrize("preset, loss", [("paper", "dice_focal"), ("nnunet", "bce_dice")])
def test_a_written_loss_auto_is_the_presets_choice_not_a_deviation(preset, loss):
    """params.yaml writes `loss: auto`; every paper-preset run from it listed "loss=auto (paper dice_focal)"
    as a deviation although it trained with the paper's loss (review of #22)."""
    from lungseg.config import params_from_dict
    from lungseg.training.presets import resolve_preset

    cfg = params_from_dict({"train": {"preset": preset, "loss": "auto", "model": "lgnet"}}).train
    result = resolve_preset(cfg)
    assert result.config.loss == loss and result.filled["loss"] == loss and "loss" not in result.deviations
    other = "bce_dice" if loss == "dice_focal" else "dice_focal"
    written = params_from_dict({"train": {"preset": preset, "loss": other, "model": "lgnet"}}).train
    assert resolve_preset(written).deviations["loss"]["value"] == other  # another written loss is still recorded
