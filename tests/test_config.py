from pathlib import Path

import pytest

from lungseg.config import Params, TrainConfig, flatten, load_params, params_from_dict
from lungseg.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_repo_params_parse_into_typed_sections():
    params = load_params(REPO / "params.yaml")
    assert isinstance(params, Params)
    assert isinstance(params.train, TrainConfig)
    assert params.preprocess.hu_window == (-1000.0, 400.0)
    assert isinstance(params.train.lr, float)


def test_defaults_fill_missing_sections():
    params = params_from_dict({"train": {"model": "prnet"}})
    assert params.train.model == "prnet"
    assert params.evaluate.threshold == 0.5


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"params\.train: unknown key\(s\) learning_rate"):
        params_from_dict({"train": {"learning_rate": 0.1}})


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"params\.train\.epochs: expected an integer"):
        params_from_dict({"train": {"epochs": "ten"}})
    with pytest.raises(ConfigError, match=r"params\.train\.amp: expected true/false"):
        params_from_dict({"train": {"amp": 1}})
    with pytest.raises(ConfigError, match=r"hu_window: expected a list of 2"):
        params_from_dict({"preprocess": {"hu_window": [1]}})


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ConfigError, match="parameter file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_params(bad)


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": {}}) == {"a.b": 1, "a.c.d": 2, "e": {}}


def test_register_model_name_template():
    from lungseg.config import RegisterConfig

    assert RegisterConfig().resolved_name("lgnet") == "lungseg-lgnet"
    assert RegisterConfig(model_name="fixed").resolved_name("prnet") == "fixed"
    assert RegisterConfig().needs_model and not RegisterConfig(model_name="fixed").needs_model
    assert not RegisterConfig(model_name="x-{{model}}").needs_model  # an escaped brace is literal text
    with pytest.raises(
        ConfigError, match=r"params\.register: model_name 'x-\{arch\}': unknown placeholder\(s\) \{arch\}"
    ):
        params_from_dict({"register": {"model_name": "x-{arch}"}})
    with pytest.raises(ConfigError, match=r"params\.register: model_name 'x-\{model'"):
        params_from_dict({"register": {"model_name": "x-{model"}})
    with pytest.raises(ConfigError, match="model_name is empty"):
        params_from_dict({"register": {"model_name": " "}})


# ------------------------------------------------------------------ every value checked at load time
@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("evaluate", "threshold", 1.5, r"evaluate\.threshold: must lie in \[0, 1\]"),
        ("evaluate", "split", "holdout", r"evaluate\.split: unknown split 'holdout'"),
        ("evaluate", "n_overlays", 0, r"evaluate\.n_overlays: must be ≥ 1"),
        ("train", "model", "resnet", r"train\.model: unknown model 'resnet'"),
        ("train", "epochs", 0, r"train\.epochs: must be ≥ 1"),
        ("train", "lr", -0.1, r"train\.lr: must be > 0"),
        ("train", "weight_decay", -1.0, r"train\.weight_decay: must be ≥ 0"),
        ("train", "scheduler", "step", r"train\.scheduler: unknown schedule 'step'"),
        ("train", "preset", "fast", r"train\.preset: unknown preset 'fast'"),
        ("train", "device", "tpu", r"train\.device: unknown device 'tpu'"),
        ("train", "loss", "l1", r"train\.loss: unknown loss 'l1'"),
        ("train", "min_epochs", -1, r"train\.min_epochs: must be ≥ 0"),
        ("train", "seed", -3, r"train\.seed: must lie in \[0, 2\^32\)"),
        ("train", "progress_every_s", 0, r"train\.progress_every_s: must be > 0 \(seconds\)"),
        ("train", "allow_non_paper_size", "yes", r"train\.allow_non_paper_size: expected true/false"),
        ("train", "data_on_device", "yes", r"train\.data_on_device: expected auto, true or false, got 'yes'"),
        ("train", "checkpoint_every", 0, r"train\.checkpoint_every: must be ≥ 1, got 0"),
        ("train", "checkpoint_async", "later", r"train\.checkpoint_async: expected true/false"),
        ("preprocess", "hu_window", [400, -1000], r"preprocess\.hu_window: must be \[low, high\] with low < high"),
        ("preprocess", "val_fraction", 1.0, r"preprocess\.val_fraction: must lie in \[0, 1\)"),
        ("preprocess", "image_size", 4, r"preprocess\.image_size: must be ≥ 8"),
        ("register", "champion_alias", "latest", r"register\.champion_alias: 'latest' is not a usable MLflow alias"),
        ("register", "min_metric", "low", r"register\.min_metric: must be a number, auto or null"),
        ("mlflow", "experiment", " ", r"mlflow\.experiment: is empty"),
    ],
)
def test_every_value_is_checked_at_load_time(tmp_path, section, key, value, message):
    """A bad value is a ConfigError naming the file and the key when the file is read — before any
    stage runs (it was a raw ValueError at the evaluate step for threshold 1.5)."""
    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params[section][key] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"params\.yaml\.{message}"):
        load_params(path)


def test_the_loop_settings_have_defaults_that_train_as_before_and_accept_their_values():
    """data_on_device (CUDA only), checkpoint_every and checkpoint_async change how the loop runs,
    never what it trains; the defaults are today's behaviour (a full checkpoint every epoch, written
    at once; the data on the GPU when it fits)."""
    default = params_from_dict({}).train
    assert (default.data_on_device, default.checkpoint_every, default.checkpoint_async) == ("auto", 1, False)
    for value in ("auto", True, False):
        assert params_from_dict({"train": {"data_on_device": value}}).train.data_on_device == value
    set_ = params_from_dict({"train": {"checkpoint_every": 5, "checkpoint_async": True}}).train
    assert (set_.checkpoint_every, set_.checkpoint_async) == (5, True)
    from lungseg.config import check_train

    with pytest.raises(ConfigError, match=r"train\.data_on_device: expected auto, true or false, got 'gpu'"):
        check_train(default.model_copy(update={"data_on_device": "gpu"}), "train")  # model_copy does not check
    with pytest.raises(ConfigError, match=r"^train\.data_on_device: expected auto, true or false, got 'gpu'$"):
        TrainConfig(data_on_device="gpu")  # a config built in code is checked like the file, one line


def test_checks_across_sections_only_when_both_are_given():
    with pytest.raises(ConfigError, match=r"preprocess\.image_size: 48 is not a multiple of 32, which segnet needs"):
        params_from_dict({"preprocess": {"image_size": 48}, "train": {"model": "segnet"}})
    # a KFP component gets its own section only: the other sections' defaults are not compared with it
    assert params_from_dict({"preprocess": {"image_size": 48}}).preprocess.image_size == 48
    with pytest.raises(ConfigError, match="val_fraction \\+ test_fraction must be < 1"):
        params_from_dict({"preprocess": {"val_fraction": 0.5, "test_fraction": 0.5}})


# ------------------------------------------------------------------ model options per model
def test_model_options_are_per_model_and_checked_against_the_constructor():
    from lungseg.config import model_options

    per_model = {"lgnet": {"max_tokens": 256}, "prnet": {"max_tokens": 128, "use_pam": False}}
    lg = params_from_dict({"train": {"model": "lgnet", "model_kwargs": per_model}}).train
    assert model_options(lg) == ({"max_tokens": 256}, [])
    pr = params_from_dict({"train": {"model": "prnet", "model_kwargs": per_model}}).train
    assert model_options(pr) == ({"max_tokens": 128, "use_pam": False}, [])
    unet = params_from_dict({"train": {"model": "unet", "model_kwargs": per_model}}).train
    assert model_options(unet) == ({}, [])  # no entry for unet: its defaults
    with pytest.raises(ConfigError, match=r"train\.model_kwargs\.unet: unet takes no option\(s\) max_tokens"):
        params_from_dict({"train": {"model_kwargs": {"unet": {"max_tokens": 256}}}})
    with pytest.raises(
        ConfigError, match=r"train\.model_kwargs: mixes per-model entries \(lgnet\) with option\(s\) use_pam"
    ):
        params_from_dict({"train": {"model_kwargs": {"lgnet": {}, "use_pam": False}}})


def test_flat_model_options_apply_to_the_trained_model_or_are_ignored_when_another_model_takes_them():
    from lungseg.config import model_options

    flat = params_from_dict({"train": {"model": "unet", "model_kwargs": {"max_tokens": 256, "up": "bilinear"}}}).train
    assert model_options(flat) == ({"up": "bilinear"}, ["max_tokens"])  # LG-Net's option: ignored (warned)
    with pytest.raises(ConfigError, match=r"train\.model_kwargs\.max_token: no model takes option 'max_token'"):
        params_from_dict({"train": {"model": "lgnet", "model_kwargs": {"max_token": 256}}})


@pytest.mark.slow
def test_the_readme_sweep_loads_and_builds_every_registered_model():
    """`dvc exp run -S train.model=<m>` with the committed params.yaml, for every model of the zoo: the
    file loads and the model builds with the options it gets (5 of 7 crashed on max_tokens before)."""
    import yaml

    from lungseg.artifacts.checkpoint import build_model, model_identity
    from lungseg.models import list_models

    data = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    for name in list_models():
        data["train"]["model"] = name
        params = params_from_dict(data, f"params.yaml (train.model={name})")
        model = build_model(model_identity(params.train, 1, 1))
        assert type(model).__name__ and sum(p.numel() for p in model.parameters()) > 0, name


def test_register_min_metric_auto_is_a_floor_for_greater_is_better_only():
    from lungseg.config import AUTO_MIN_METRIC, RegisterConfig

    assert RegisterConfig().floor == AUTO_MIN_METRIC == 0.1
    assert RegisterConfig(metric="hd95_mean", greater_is_better=False).floor is None
    assert RegisterConfig(min_metric=None).floor is None
    assert params_from_dict({"register": {"min_metric": 0.5}}).register.floor == 0.5
    assert params_from_dict({"register": {"min_metric": None}}).register.floor is None


@pytest.mark.parametrize(
    ("command", "section", "value"),
    [
        ("train", "train", {"model": "unet", "model_kwargs": {"unet": {"max_tokens": 256}}}),
        ("evaluate", "evaluate", {"threshold": 1.5}),
        ("register", "register", {"min_metric": "high"}),
    ],
)
def test_cli_answers_a_bad_value_with_one_line(tmp_path, capsys, command, section, value):
    import yaml

    from lungseg.cli import main

    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params[section].update(value)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    args = {
        "train": ["--data", "d", "--output", "o"],
        "evaluate": ["--model", "m", "--data", "d", "--output", "o"],
        "register": ["--model", "m", "--evaluation", "e", "--output", "o.json"],
    }[command]
    assert main([command, *args, "--params", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}.{section}.") and len(err.strip().splitlines()) == 1, err
    assert not (Path("o").exists() or Path("o.json").exists())


# ------------------------------------------------------------------ pydantic: one set of rules, at load
def test_integers_are_numbers_and_lists_are_pairs_but_nothing_else_is_converted():
    """The contract of the hand-written parser, kept by strict pydantic models: an integer where a
    number is expected, a list where a pair is; a string is never a number, 0/1 never a bool."""
    params = params_from_dict({"train": {"lr": 1, "progress_every_s": 30}, "preprocess": {"hu_window": [-1000, 400]}})
    assert params.train.lr == 1.0 and isinstance(params.train.lr, float)
    assert isinstance(params.train.progress_every_s, float)
    assert params.preprocess.hu_window == (-1000.0, 400.0) and all(
        isinstance(v, float) for v in params.preprocess.hu_window
    )
    assert params_from_dict({"register": {"min_metric": 0}}).register.min_metric == 0.0
    for section, key, value, message in [
        ("train", "lr", "0.1", r"params\.train\.lr: expected a number, got '0\.1'$"),
        ("train", "lr", True, r"params\.train\.lr: expected a number, got True$"),
        ("train", "epochs", 2.0, r"params\.train\.epochs: expected an integer, got 2\.0$"),
        ("train", "epochs", True, r"params\.train\.epochs: expected an integer, got True$"),
        ("train", "model", 3, r"params\.train\.model: expected a string, got 3$"),
        ("train", "model_kwargs", [1], r"params\.train\.model_kwargs: expected a mapping, got \[1\]$"),
        ("preprocess", "hu_window", [-1000, "x"], r"params\.preprocess\.hu_window\[1\]: expected a number, got 'x'$"),
        ("preprocess", "hu_window", [1, 2, 3], r"params\.preprocess\.hu_window: expected a list of 2 values"),
        ("preprocess", "hu_window", "wide", r"params\.preprocess\.hu_window: expected a list of 2 values"),
        ("register", "min_metric", True, r"params\.register\.min_metric: must be a number, auto or null, got True$"),
    ]:
        with pytest.raises(ConfigError, match=message):
            params_from_dict({section: {key: value}})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"training": {}},
            r"^params: unknown key\(s\) training \(allowed: evaluate, mlflow, preprocess, register, train\)$",
        ),
        ({"train": [1]}, r"^params\.train: expected a mapping, got list$"),
        ({"train": {"lr": float("inf")}}, r"^params\.train\.lr: must be > 0, got inf$"),
        ({"train": {"weight_decay": float("nan")}}, r"^params\.train\.weight_decay: must be ≥ 0, got nan$"),
        ({"train": {"epochs": 5, "min_epochs": 6}}, r"^params\.train\.min_epochs: 6 is more than train\.epochs \(5\)"),
        ({"train": {"seed": 2**32}}, r"^params\.train\.seed: must lie in \[0, 2\^32\), got 4294967296$"),
        (
            {"preprocess": {"test_fraction": -0.1}},
            r"^params\.preprocess\.test_fraction: must lie in \[0, 1\), got -0\.1$",
        ),
        ({"preprocess": {"hu_window": [0, float("inf")]}}, r"^params\.preprocess\.hu_window: must be \[low, high\]"),
        ({"evaluate": {"threshold": -0.5}}, r"^params\.evaluate\.threshold: must lie in \[0, 1\] \(a probability\)"),
        (
            {"register": {"champion_alias": "v3"}},
            r"^params\.register\.champion_alias: 'v3' is not a usable MLflow alias",
        ),
        (
            {"register": {"challenger_alias": "champion"}},
            r"^params\.register: champion_alias and challenger_alias are both",
        ),
        ({"register": {"metric": " "}}, r"^params\.register\.metric: is empty$"),
        ({"mlflow": {"tracking_uri": ""}}, r"^params\.mlflow\.tracking_uri: is empty$"),
        (
            {"train": {"model": "lgnet", "learning_rate": 1, "batch": 2}},
            r"^params\.train: unknown key\(s\) batch, learning_rate",
        ),
    ],
)
def test_each_rule_is_one_line_naming_the_key(data, message):
    with pytest.raises(ConfigError, match=message) as info:
        params_from_dict(data)
    assert "\n" not in str(info.value)


def test_a_section_built_in_code_is_checked_and_model_copy_is_checked_by_check_train():
    from lungseg.config import PreprocessConfig, check_train, validate

    with pytest.raises(ConfigError, match=r"^train\.epochs: must be ≥ 1, got 0$"):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError, match=r"^preprocess\.image_size: must be ≥ 8, got 4$"):
        PreprocessConfig(image_size=4)
    with pytest.raises(ConfigError, match=r"^params\.train\.scheduler: unknown schedule 'step'"):
        Params(train={"scheduler": "step"})
    unchecked = TrainConfig(epochs=3).model_copy(update={"scheduler": "step"})  # pydantic: update is not checked
    with pytest.raises(ConfigError, match=r"^train \(copied\)\.scheduler: unknown schedule 'step'"):
        check_train(unchecked, "train (copied)")
    again = check_train(TrainConfig(epochs=3), "train")
    assert again == TrainConfig(epochs=3) and again.model_fields_set == {"epochs"}  # written keys kept
    params = params_from_dict({"preprocess": {"image_size": 48}})
    bad = params.model_copy(update={"train": TrainConfig(model="segnet")})
    assert validate(bad, "p", {"preprocess"}).preprocess.image_size == 48  # train not given: not compared
    with pytest.raises(ConfigError, match=r"^p\.preprocess\.image_size: 48 is not a multiple of 32"):
        validate(bad, "p")
    with pytest.raises(ValueError, match="frozen"):  # a changed value: model_copy or a new section
        params.train.lr = 0.1  # type: ignore[misc]


def test_the_keys_the_file_wrote_are_recorded():
    params = params_from_dict({"train": {"lr": 0.001, "model": "lgnet"}, "evaluate": None})
    assert params.model_fields_set == {"train", "evaluate"}
    assert params.train.model_fields_set == {"lr", "model"}  # 0.001 is the default, and it was written
    assert params.evaluate == params_from_dict({}).evaluate and params.evaluate.model_fields_set == set()
    committed = load_params(REPO / "params.yaml")
    import yaml

    assert committed.train.model_fields_set == set(
        yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))["train"]
    )


@pytest.mark.parametrize(
    ("model", "size", "ok"),
    [("lgnet", 48, True), ("lgnet", 40, False), ("unet", 24, False), ("infnet", 48, False), ("infnet", 64, True)],
)
def test_the_image_size_divisor_is_the_chosen_models(model, size, ok):
    """``preprocess.image_size`` must suit ``train.model`` (its ``size_divisor``: 16 or 32), not a
    fixed 16 (preprocess re-checked "multiple of 16" while config took any size ≥ 8)."""
    from lungseg.models import model_class

    data = {"preprocess": {"image_size": size}, "train": {"model": model}}
    divisor = model_class(model).size_divisor
    if ok:
        assert params_from_dict(data).preprocess.image_size == size
    else:
        with pytest.raises(
            ConfigError, match=rf"image_size: {size} is not a multiple of {divisor}, which {model} needs"
        ):
            params_from_dict(data)


def test_model_option_values_are_checked_against_the_constructor_at_load():
    """``max_tokens: many`` fails when the file is read (it failed when the model was built, after
    the data was loaded); per-model entries, the flat form and every model's entry alike."""
    bad = [
        (
            {"model": "lgnet", "model_kwargs": {"lgnet": {"max_tokens": "many"}}},
            r"model_kwargs\.lgnet\.max_tokens: expected an integer, got 'many' \(lgnet's constructor\)",
        ),
        (
            {"model": "unet", "model_kwargs": {"prnet": {"dsa_scaled": "no"}}},
            r"model_kwargs\.prnet\.dsa_scaled: expected true/false, got 'no'",
        ),
        ({"model": "lgnet", "model_kwargs": {"use_ff": 0}}, r"model_kwargs\.use_ff: expected true/false, got 0"),
        (
            {"model": "unet", "model_kwargs": {"unet": {"up": "nearest"}}},
            r"model_kwargs\.unet\.up: input should be 'transpose' or 'bilinear', got 'nearest'",
        ),
    ]
    for train, message in bad:
        with pytest.raises(ConfigError, match=rf"^params\.train\.{message}"):
            params_from_dict({"train": train})
    ok = params_from_dict(
        {"train": {"model": "lgnet", "model_kwargs": {"lgnet": {"max_tokens": None, "rse_dropout": 0}}}}
    )
    from lungseg.config import model_options

    assert model_options(ok.train) == ({"max_tokens": None, "rse_dropout": 0}, [])  # the values as written


def test_the_committed_json_schema_is_current():
    """docs/params.schema.json is generated (python scripts/params_schema.py): a changed section,
    model option or registry needs it regenerated."""
    import json

    from lungseg.config import params_json_schema

    committed = json.loads((REPO / "docs" / "params.schema.json").read_text(encoding="utf-8"))
    assert committed == params_json_schema(), "run: python scripts/params_schema.py"
    train = committed["$defs"]["TrainConfig"]
    assert train["additionalProperties"] is False and train["properties"]["scheduler"]["enum"] == [
        "cosine",
        "plateau",
        "none",
        "poly",  # issue #25: nnU-Net's poly schedule
    ]
    assert (
        "lgnet" in train["properties"]["model"]["enum"]
        and "max_tokens" in train["properties"]["model_kwargs"]["properties"]["lgnet"]["properties"]
    )
    assert train["properties"]["lr"]["exclusiveMinimum"] == 0


def test_the_committed_params_file_validates_against_the_json_schema():
    import json

    import jsonschema
    import yaml

    schema = json.loads((REPO / "docs" / "params.schema.json").read_text(encoding="utf-8"))
    jsonschema.validate(yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8")), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"train": {"learning_rate": 0.1}}, schema)
