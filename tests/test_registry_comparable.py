"""The champion is only ever compared with a like model (adversarial review of #20).

Registering a 3-class covid-semiseg model (labels ggo/consolidation) under the binary model's name
``lungseg-unet`` reported its ``dice_mean_fg_mean`` 0.042 beside the binary champion's ``dice_mean`` 0.2631
of another dataset: the champion's tag was read without checking what it measured. Now every version
records what its number means (metric, label names, dataset, split, evaluation set) and two numbers are
compared — or printed side by side — only when all of them are recorded and equal
(:mod:`lungseg.registry.comparable`): another task is refused before anything is registered; another
metric, dataset or set is a challenger whose reason names what differs."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from lungseg.cli import main
from lungseg.errors import DataError
from lungseg.registry import register
from registry_helpers import PREPROCESS, log_tiny_model, register_params, write_candidate

SET_A = "sha256:" + "a" * 64
SET_C = "sha256:" + "c" * 64
BINARY = {**PREPROCESS, "dataset": "medseg"}
THREE_CLASS_ID = {"name": "unet", "kwargs": {"in_channels": 1, "num_classes": 3, "base_channels": 2}}
THREE_CLASS = {
    **PREPROCESS,
    "dataset": "covid-semiseg",
    "num_labels": 3,
    "label_names": ["background", "ggo", "consolidation"],
}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _client(tracking_uri):
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _champion(client, name):
    return str(client.get_model_version_by_alias(name, "champion").version)


def _binary_champion(tmp_path, tracking_uri, name, dice=0.2631):
    run = log_tiny_model(tracking_uri)
    d = register(
        register_params(tracking_uri, name),
        *write_candidate(tmp_path / "champ", run, dice=dice, fingerprint=SET_A, preprocess=BINARY),
        tmp_path / "champ.json",
    )
    assert d.decision == "champion"
    return d


def _three_class(tmp_path, tracking_uri, tag="semiseg"):
    """The reviewer's candidate: a 3-class covid-semiseg U-Net, dice_mean_fg_mean 0.042 on its own test set."""
    baselines = {
        "all_background": {"dice_mean": 0.0, "dice_mean_fg_mean": 0.0},
        "all_foreground": {"dice_mean": 0.01, "dice_mean_fg_mean": 0.01},
    }
    return write_candidate(
        tmp_path / tag,
        log_tiny_model(tracking_uri),
        dice=0.30,
        fingerprint=SET_C,
        identity=THREE_CLASS_ID,
        preprocess=THREE_CLASS,
        baselines=baselines,
        extra_metrics={"dice_mean_fg_mean": 0.042},
    )


def test_a_three_class_model_under_the_binary_models_name_is_refused(tmp_path, tracking_uri, capsys):
    name = "lungseg-unet"
    client = _client(tracking_uri)
    champ = _binary_champion(tmp_path, tracking_uri, name)
    assert client.get_model_version(name, champ.version).tags["lungseg.label_names"] == "background,infection"
    model_dir, eval_dir = _three_class(tmp_path, tracking_uri)
    params = register_params(tracking_uri, name, metric="dice_mean_fg_mean", min_metric=None)
    with pytest.raises(DataError) as err:
        register(params, model_dir, eval_dir, tmp_path / "d.json")
    line = str(err.value)
    assert "\n" not in line and line.startswith(f"{eval_dir / 'metrics.json'}: ")
    assert f"segments other labels than {name}'s champion (champion v{champ.version} vs candidate run " in line
    for differs in (
        "metric dice_mean vs dice_mean_fg_mean",
        "labels background,infection vs background,ggo,consolidation",
        "dataset medseg vs covid-semiseg",
        f"evaluation set {SET_A[:19]}… vs {SET_C[:19]}…",
    ):
        assert differs in line
    assert (
        'nothing registered — register it under another register.model_name (e.g. "lungseg-unet-covid-semiseg")' in line
    )
    assert "0.2631" not in line and "0.042" not in line  # no unlike numbers side by side
    # nothing registered, nothing moved, no decision written
    assert [str(v.version) for v in client.search_model_versions(f"name = '{name}'")] == [champ.version]
    assert _champion(client, name) == champ.version and not (tmp_path / "d.json").exists()
    # the same metric key (dice_mean is written for a 3-class model too) does not make it comparable
    with pytest.raises(DataError, match="labels background,infection vs background,ggo,consolidation"):
        register(register_params(tracking_uri, name), model_dir, eval_dir, tmp_path / "d.json")
    # the CLI: one line, exit 2
    params_file = tmp_path / "params.yaml"
    params_file.write_text(json.dumps({k: params.to_dict()[k] for k in ("register", "mlflow")}), encoding="utf-8")
    args = ["register", "--model", str(model_dir), "--evaluation", str(eval_dir), "--params", str(params_file)]
    capsys.readouterr()
    assert main([*args, "--output", str(tmp_path / "cli.json")]) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and err_lines[0].startswith("error: ") and "other labels" in err_lines[0]
    # under its own name it is a model of its own: registered, compared with nothing but its trivial baselines
    own = register(
        register_params(tracking_uri, "lungseg-unet-covid-semiseg", metric="dice_mean_fg_mean", min_metric=None),
        model_dir,
        eval_dir,
        tmp_path / "own.json",
    )
    assert (own.champion_before, own.champion_before_version) == (None, None)  # compared with nothing
    assert own.decision == "challenger" and "does not beat the best trivial predictor" in own.reason  # 0.042
    tags = client.get_model_version("lungseg-unet-covid-semiseg", own.version).tags
    assert (tags["lungseg.label_names"], tags["lungseg.dataset"]) == ("background,ggo,consolidation", "covid-semiseg")


def test_same_labels_on_another_dataset_is_a_challenger_not_compared(tmp_path, tracking_uri):
    """Same labels, another dataset — even with the same evaluation-set fingerprint (the weak per_image ids
    fallback of two datasets numbered alike): never compared, the champion's number never printed."""
    name = "lsg-dataset"
    client = _client(tracking_uri)
    champ = _binary_champion(tmp_path, tracking_uri, name, dice=0.40)
    other = register(
        register_params(tracking_uri, name),
        *write_candidate(
            tmp_path / "other",
            log_tiny_model(tracking_uri),
            dice=0.95,
            fingerprint=SET_A,
            preprocess={**BINARY, "dataset": "covid-binary"},
        ),
        tmp_path / "other.json",
    )
    assert other.decision == "challenger" and other.alias == "challenger"
    assert other.reason == (
        f"champion v{champ.version} was evaluated differently (champion vs candidate: dataset medseg vs "
        "covid-binary): not compared; re-evaluate and register the champion's run on this set to compare"
    )
    assert other.champion_before is None and other.champion_before_version == champ.version
    assert f"(dice_mean 0.9500 vs champion v{champ.version} not compared, best trivial" in other.describe()
    record = json.loads((tmp_path / "other.json").read_text(encoding="utf-8"))
    assert record["champion_before"] is None and record["decision"] == "challenger"
    tags = client.get_model_version(name, other.version).tags
    assert tags["lungseg.champion_before_value"] == "none" and tags["lungseg.dataset"] == "covid-binary"
    assert (
        f"champion before: v{champ.version}, not compared" in client.get_model_version(name, other.version).description
    )
    assert _champion(client, name) == champ.version


def test_another_metric_key_is_a_challenger_and_no_unlike_number_is_reported(tmp_path, tracking_uri):
    """Before: 'champion v1 has no recorded iou_mean' with champion_before = the champion's dice_mean."""
    name = "lsg-metric"
    client = _client(tracking_uri)
    champ = _binary_champion(tmp_path, tracking_uri, name, dice=0.50)
    cand = register(
        register_params(tracking_uri, name, metric="iou_mean"),
        *write_candidate(
            tmp_path / "iou", log_tiny_model(tracking_uri), dice=0.90, fingerprint=SET_A, preprocess=BINARY
        ),
        tmp_path / "iou.json",
    )
    assert cand.decision == "challenger" and cand.candidate == pytest.approx(0.72)
    assert "(champion vs candidate: metric dice_mean vs iou_mean): not compared" in cand.reason
    assert cand.champion_before is None  # 0.50 is a dice_mean: not reported beside an iou_mean
    assert _champion(client, name) == champ.version
    # a below-the-floor candidate beside an unlike champion: its number is not reported either
    low = register(
        register_params(tracking_uri, name, metric="iou_mean", min_metric=0.9),
        *write_candidate(
            tmp_path / "low", log_tiny_model(tracking_uri), dice=0.5, fingerprint=SET_A, preprocess=BINARY
        ),
        tmp_path / "low.json",
    )
    assert "below register.min_metric" in low.reason and low.champion_before is None


def test_like_for_like_is_compared_as_before(tmp_path, tracking_uri):
    name = "lsg-like"
    client = _client(tracking_uri)
    champ = _binary_champion(tmp_path, tracking_uri, name, dice=0.50)
    tags = client.get_model_version(name, champ.version).tags
    assert {k: tags[k] for k in ("lungseg.metric", "lungseg.label_names", "lungseg.dataset", "lungseg.eval_split")} == {
        "lungseg.metric": "dice_mean",
        "lungseg.label_names": "background,infection",
        "lungseg.dataset": "medseg",
        "lungseg.eval_split": "test",
    }

    def cand(tag, dice):
        run = log_tiny_model(tracking_uri)
        return write_candidate(tmp_path / tag, run, dice=dice, fingerprint=SET_A, preprocess=BINARY)

    better = register(register_params(tracking_uri, name), *cand("better", 0.60), tmp_path / "better.json")
    assert better.decision == "champion" and better.champion_before == pytest.approx(0.50)
    assert better.reason == f"beats champion v{champ.version} on the same evaluation set"
    assert f"(dice_mean 0.6000 vs champion 0.5000 v{champ.version}" in better.describe()
    worse = register(register_params(tracking_uri, name), *cand("worse", 0.55), tmp_path / "worse.json")
    assert worse.decision == "challenger" and worse.champion_before == pytest.approx(0.60)
    assert worse.reason == f"does not beat champion v{better.version} on the same evaluation set"
    assert _champion(client, name) == better.version


def test_a_champion_that_does_not_record_its_labels_is_not_compared_until_registered_again(tmp_path, tracking_uri):
    """A champion registered by an older lungseg (no lungseg.label_names / lungseg.dataset): not compared;
    registering its evaluation again (the reused version) records them, and candidates are compared again."""
    name = "lsg-older"
    client = _client(tracking_uri)
    run = log_tiny_model(tracking_uri)
    champ_dirs = write_candidate(tmp_path / "champ", run, dice=0.50, fingerprint=SET_A, preprocess=BINARY)
    champ = register(register_params(tracking_uri, name), *champ_dirs, tmp_path / "champ.json")
    for key in ("lungseg.label_names", "lungseg.dataset"):
        client.delete_model_version_tag(name, champ.version, key)
    cand_dirs = write_candidate(
        tmp_path / "cand", log_tiny_model(tracking_uri), dice=0.60, fingerprint=SET_A, preprocess=BINARY
    )
    first = register(register_params(tracking_uri, name), *cand_dirs, tmp_path / "1.json")
    assert first.decision == "challenger" and first.champion_before is None
    assert "labels not recorded by the champion; dataset not recorded by the champion" in first.reason
    again = register(register_params(tracking_uri, name), *champ_dirs, tmp_path / "2.json")
    assert again.reused_version and again.version == champ.version and again.decision == "champion"
    assert client.get_model_version(name, champ.version).tags["lungseg.label_names"] == "background,infection"
    decided = register(register_params(tracking_uri, name), *cand_dirs, tmp_path / "3.json")
    assert decided.version == first.version and decided.decision == "champion"
    assert decided.champion_before == pytest.approx(0.50)
