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
    bad.write_text("train: [unclosed\n")
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
    with pytest.raises(ConfigError, match=r"params\.register: model_name 'x-\{arch\}': unknown placeholder\(s\) \{arch\}"):
        params_from_dict({"register": {"model_name": "x-{arch}"}})
    with pytest.raises(ConfigError, match=r"params\.register: model_name 'x-\{model'"):
        params_from_dict({"register": {"model_name": "x-{model"}})
    with pytest.raises(ConfigError, match="model_name is empty"):
        params_from_dict({"register": {"model_name": " "}})
