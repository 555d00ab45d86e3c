"""Each decision applies the register policy as it is now (an adversarial review of #20 found three ways
around it): a metric the trivial baselines do not score is refused instead of skipping the trivial check;
a champion that no longer passes the policy is demoted, never kept as "already champion"; a version decided
again under another policy carries that decision's metric and value, not the first one's."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from lungseg.errors import DataError
from lungseg.registry import register
from registry_helpers import BASELINES, log_tiny_model, register_params, write_candidate

SET_A = "sha256:" + "a" * 64
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _aliases(client, name):
    return dict(client.get_registered_model(name).aliases)


def test_a_metric_the_baselines_do_not_score_is_refused_not_skipped(tmp_path, tracking_uri):
    """roc_auc_pooled was not among the baselines: a model with AUC 0.48 (worse than a constant's 0.5)
    became champion with best_trivial null."""
    name = "lsg-auc"
    run_info = log_tiny_model(tracking_uri)
    model_dir, eval_dir = write_candidate(tmp_path / "a", run_info, dice=0.5, fingerprint=SET_A)
    metrics = json.loads((eval_dir / "metrics.json").read_text(encoding="utf-8"))
    metrics["roc_auc_pooled"] = 0.4819
    (eval_dir / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    params = register_params(tracking_uri, name, metric="roc_auc_pooled")
    with pytest.raises(DataError) as err:
        register(params, model_dir, eval_dir, tmp_path / "d.json")
    assert "the trivial baselines score no register.metric 'roc_auc_pooled'" in str(err.value)
    assert not (tmp_path / "d.json").exists()
    with pytest.raises(MlflowException):  # nothing registered
        MlflowClient(tracking_uri=tracking_uri).get_registered_model(name)
    # scored by the baselines (as lungseg evaluate now writes them: a constant's AUC is 0.5): compared
    metrics["baselines"] = {k: {**v, "roc_auc_pooled": 0.5} for k, v in BASELINES.items()}
    (eval_dir / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    d = register(params, model_dir, eval_dir, tmp_path / "d.json")
    assert d.decision == "challenger" and "does not beat the best trivial predictor" in d.reason
    # the user may still turn the check off, explicitly
    d = register(
        register_params(tracking_uri, "lsg-auc-off", metric="roc_auc_pooled", min_margin_over_trivial=None),
        model_dir,
        eval_dir,
        tmp_path / "off.json",
    )
    assert d.decision == "champion" and d.best_trivial == 0.5  # shown beside it, not enforced


def test_a_champion_that_fails_the_policy_now_is_demoted(tmp_path, tracking_uri):
    """Promoted with the margin check off, the same evaluation registered again with the margin on said
    'already champion (repeated run)' and kept the alias."""
    name = "lsg-demote"
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    baselines = {"all_background": {"dice_mean": 0.0}, "all_foreground": {"dice_mean": 0.2380}}
    run_info = log_tiny_model(tracking_uri)
    model_dir, eval_dir = write_candidate(tmp_path / "a", run_info, dice=0.2220, fingerprint=SET_A, baselines=baselines)
    loose = register(
        register_params(tracking_uri, name, min_margin_over_trivial=None), model_dir, eval_dir, tmp_path / "1.json"
    )
    assert loose.decision == "champion"
    strict = register(register_params(tracking_uri, name), model_dir, eval_dir, tmp_path / "2.json")
    assert strict.version == loose.version and strict.reused_version
    assert strict.decision == "challenger"
    assert f"champion v{loose.version} no longer passes the policy, demoted" in strict.reason
    assert "does not beat the best trivial predictor" in strict.reason
    assert _aliases(client, name) == {"challenger": int(loose.version)} or _aliases(client, name) == {
        "challenger": str(loose.version)
    }
    record = json.loads((tmp_path / "2.json").read_text(encoding="utf-8"))
    assert record["decision"] == "challenger"
    assert client.get_model_version(name, loose.version).tags["lungseg.decision"] == "challenger"
    # a better model may now become champion: nothing stale stands in its way
    other = log_tiny_model(tracking_uri)
    good_dir, good_eval = write_candidate(tmp_path / "b", other, dice=0.45, fingerprint=SET_A, baselines=baselines)
    good = register(register_params(tracking_uri, name), good_dir, good_eval, tmp_path / "3.json")
    assert good.decision == "champion" and good.reason == "no champion yet"


def test_a_version_decided_again_under_another_metric_carries_that_decision(tmp_path, tracking_uri):
    """The reused version kept metric=dice_mean and its value while the decision compared iou_mean."""
    name = "lsg-retag"
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    run_info = log_tiny_model(tracking_uri)
    model_dir, eval_dir = write_candidate(tmp_path / "a", run_info, dice=0.5, fingerprint=SET_A)
    first = register(register_params(tracking_uri, name), model_dir, eval_dir, tmp_path / "1.json")
    tags = client.get_model_version(name, first.version).tags
    assert (tags["lungseg.metric"], float(tags["lungseg.metric_value"])) == ("dice_mean", 0.5)
    again = register(register_params(tracking_uri, name, metric="iou_mean"), model_dir, eval_dir, tmp_path / "2.json")
    assert again.reused_version and again.version == first.version and again.metric == "iou_mean"
    tags = client.get_model_version(name, first.version).tags
    assert tags["lungseg.metric"] == "iou_mean"
    assert float(tags["lungseg.metric_value"]) == pytest.approx(0.4) == again.candidate
    assert float(tags["lungseg.best_trivial_value"]) == pytest.approx(0.01)  # iou's baseline, not dice's
