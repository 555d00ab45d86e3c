"""lungseg.registry against a real MLflow registry (embedded sqlite store; the server case is in
tests/integration/test_servers.py)."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from lungseg.cli import main
from lungseg.config import params_from_dict
from lungseg.errors import ConfigError, DataError
from lungseg.registry import register
from registry_helpers import log_tiny_model, write_candidate

SET_A = "sha256:" + "a" * 64
SET_B = "sha256:" + "b" * 64


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def params(tracking_uri, request):
    name = "lsg-" + request.node.name.replace("[", "-").replace("]", "")
    return params_from_dict({"register": {"model_name": name}, "mlflow": {"tracking_uri": tracking_uri}})


def _candidate(tmp_path, tracking_uri, tag, *, dice, fingerprint=SET_A, run_info=None):
    run_info = run_info or log_tiny_model(tracking_uri)
    model_dir, eval_dir = write_candidate(tmp_path / tag, run_info, dice=dice, fingerprint=fingerprint)
    return model_dir, eval_dir, run_info


class _Alias:
    def __init__(self, mv):
        self.mv, self.version = mv, str(mv.version)

    def __getattr__(self, item):
        return getattr(self.mv, item)


def _alias(client, name, alias):
    """The version an alias points to, with ``version`` as a string (sqlite stores ints)."""
    return _Alias(client.get_model_version_by_alias(name, alias))


@pytest.mark.slow
def test_first_model_becomes_champion_and_decision_is_recorded(tmp_path, tracking_uri, params):
    model_dir, eval_dir, run_info = _candidate(tmp_path, tracking_uri, "c1", dice=0.61)
    out = tmp_path / "reports" / "registration.json"
    decision = register(params, model_dir, eval_dir, out)

    assert decision.decision == "champion" and decision.alias == "champion"
    assert decision.champion_before is None and decision.candidate == pytest.approx(0.61)
    written = json.loads(out.read_text(encoding="utf-8"))
    for key in ("model_name", "version", "metric", "candidate", "champion_before", "decision", "alias"):
        assert key in written
    assert written["version"] == decision.version and written["decision"] == "champion"
    assert not list(out.parent.glob(".*tmp*")), "atomic write left a temporary file"

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    mv = _alias(client, params.register.model_name, "champion")
    assert mv.version == decision.version and mv.status == "READY" and mv.run_id == run_info["run_id"]
    assert mv.tags["lungseg.decision"] == "champion"
    assert float(mv.tags["lungseg.candidate_value"]) == pytest.approx(0.61)
    assert mv.tags["lungseg.champion_before_value"] == "none"
    assert mv.tags["lungseg.eval_fingerprint"] == SET_A
    assert mv.current_stage in (None, "None"), "stages are deprecated and must not be used"
    assert decision.describe().startswith(f"{params.register.model_name} v{decision.version}: champion")


@pytest.mark.slow
def test_better_moves_champion_worse_and_tie_become_challenger(tmp_path, tracking_uri, params):
    name = params.register.model_name
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    first = register(params, *_candidate(tmp_path, tracking_uri, "a", dice=0.50)[:2], tmp_path / "a.json")
    better = register(params, *_candidate(tmp_path, tracking_uri, "b", dice=0.70)[:2], tmp_path / "b.json")
    assert better.decision == "champion" and better.champion_before == pytest.approx(0.50)
    assert better.champion_before_version == first.version
    assert _alias(client, name, "champion").version == better.version

    worse = register(params, *_candidate(tmp_path, tracking_uri, "c", dice=0.60)[:2], tmp_path / "c.json")
    assert worse.decision == "challenger" and worse.champion_before == pytest.approx(0.70)
    assert _alias(client, name, "champion").version == better.version
    assert _alias(client, name, "challenger").version == worse.version
    tags = client.get_model_version(name, worse.version).tags
    assert tags["lungseg.decision"] == "challenger"
    assert float(tags["lungseg.champion_before_value"]) == pytest.approx(0.70)
    assert float(tags["lungseg.candidate_value"]) == pytest.approx(0.60)

    tie = register(params, *_candidate(tmp_path, tracking_uri, "d", dice=0.70)[:2], tmp_path / "d.json")
    assert tie.decision == "challenger", "a tie keeps the champion"
    assert _alias(client, name, "champion").version == better.version


@pytest.mark.slow
def test_lower_is_better_metric(tmp_path, tracking_uri, request):
    params = params_from_dict(
        {
            "register": {"model_name": "lsg-" + request.node.name, "metric": "hd95_mean", "greater_is_better": False},
            "mlflow": {"tracking_uri": tracking_uri},
        }
    )

    def cand(tag, hd95):
        model_dir, eval_dir, _ = _candidate(tmp_path, tracking_uri, tag, dice=0.5)
        m = json.loads((eval_dir / "metrics.json").read_text(encoding="utf-8"))
        m["hd95_mean"] = hd95
        (eval_dir / "metrics.json").write_text(json.dumps(m), encoding="utf-8")
        return model_dir, eval_dir

    assert register(params, *cand("a", 12.0), tmp_path / "a.json").decision == "champion"
    assert register(params, *cand("b", 15.0), tmp_path / "b.json").decision == "challenger"
    assert register(params, *cand("c", 9.5), tmp_path / "c.json").decision == "champion"


@pytest.mark.slow
def test_different_evaluation_set_is_not_compared_until_champion_is_reevaluated(tmp_path, tracking_uri, params):
    name = params.register.model_name
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    champ_run = log_tiny_model(tracking_uri)
    champ = register(
        params, *write_candidate(tmp_path / "champ", champ_run, dice=0.40, fingerprint=SET_A), tmp_path / "champ.json"
    )
    assert champ.decision == "champion"

    # a much higher number on ANOTHER set must not dethrone the champion blindly
    other = register(
        params, *_candidate(tmp_path, tracking_uri, "other", dice=0.95, fingerprint=SET_B)[:2], tmp_path / "other.json"
    )
    assert other.decision == "challenger"
    assert "different evaluation set" in other.reason
    assert _alias(client, name, "champion").version == champ.version

    # the champion's own run re-evaluated on set B: the alias follows it onto the new set
    moved = register(
        params, *write_candidate(tmp_path / "champB", champ_run, dice=0.45, fingerprint=SET_B), tmp_path / "champB.json"
    )
    assert moved.decision == "champion" and moved.version != champ.version
    assert _alias(client, name, "champion").version == moved.version

    # now candidates on set B are compared with the champion's set-B number (0.45)
    again = register(
        params, *_candidate(tmp_path, tracking_uri, "again", dice=0.50, fingerprint=SET_B)[:2], tmp_path / "again.json"
    )
    assert again.decision == "champion" and again.champion_before == pytest.approx(0.45)


@pytest.mark.slow
def test_missing_fingerprint_never_compares(tmp_path, tracking_uri, params):
    register(params, *_candidate(tmp_path, tracking_uri, "a", dice=0.3)[:2], tmp_path / "a.json")
    unknown = register(
        params, *_candidate(tmp_path, tracking_uri, "b", dice=0.9, fingerprint=None)[:2], tmp_path / "b.json"
    )
    assert unknown.decision == "challenger" and unknown.fingerprint_source == "none"


@pytest.mark.slow
def test_repeated_run_reuses_its_version(tmp_path, tracking_uri, params):
    name = params.register.model_name
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    model_dir, eval_dir, _ = _candidate(tmp_path, tracking_uri, "a", dice=0.55)
    first = register(params, model_dir, eval_dir, tmp_path / "1.json")
    second = register(params, model_dir, eval_dir, tmp_path / "2.json")
    assert second.reused_version and second.version == first.version
    assert second.decision == "champion"
    versions = client.search_model_versions(f"name = '{name}'")
    assert len(versions) == 1
    assert not [m for m in client.search_registered_models() if m.name == f"{name}.lock"], "lock not released"


@pytest.mark.slow
def test_bad_inputs_are_user_errors(tmp_path, tracking_uri, params):
    with pytest.raises(DataError, match="mlflow_run.json"):
        register(params, tmp_path / "nope", tmp_path / "nope", tmp_path / "o.json")
    model_dir, eval_dir, _ = _candidate(tmp_path, tracking_uri, "a", dice=0.5)
    bad = params_from_dict({"register": {"metric": "no_such_metric"}, "mlflow": {"tracking_uri": tracking_uri}})
    with pytest.raises(ConfigError, match="no_such_metric"):
        register(bad, model_dir, eval_dir, tmp_path / "o.json")
    assert not (tmp_path / "o.json").exists()


@pytest.mark.slow
def test_cli_register(tmp_path, tracking_uri, params, capsys):
    model_dir, eval_dir, _ = _candidate(tmp_path, tracking_uri, "a", dice=0.42)
    params_file = tmp_path / "params.yaml"
    sections = params.to_dict()
    params_file.write_text(
        json.dumps({k: sections[k] for k in ("register", "mlflow")}), encoding="utf-8"
    )  # JSON is YAML
    out = tmp_path / "reg.json"
    code = main(
        [
            "register",
            "--model",
            str(model_dir),
            "--evaluation",
            str(eval_dir),
            "--output",
            str(out),
            "--params",
            str(params_file),
        ]
    )
    assert code == 0
    assert "champion" in capsys.readouterr().out
    assert json.loads(out.read_text(encoding="utf-8"))["decision"] == "champion"
    code = main(
        [
            "register",
            "--model",
            str(tmp_path / "missing"),
            "--evaluation",
            str(eval_dir),
            "--output",
            str(out),
            "--params",
            str(params_file),
        ]
    )
    assert code == 2 and capsys.readouterr().err.startswith("error: ")


@pytest.mark.slow
def test_runs_uri_is_registered_and_global_mlflow_state_is_untouched(tmp_path, tracking_uri, params, monkeypatch):
    import os

    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    before = mlflow.get_tracking_uri()
    run_info = log_tiny_model(tracking_uri, model_uri_style="runs")
    assert run_info["model_uri"].startswith("runs:/")
    decision = register(
        params, *write_candidate(tmp_path / "r", run_info, dice=0.3, fingerprint=SET_A), tmp_path / "r.json"
    )
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    mv = client.get_model_version(params.register.model_name, decision.version)
    assert mv.status == "READY" and mv.run_id == run_info["run_id"]
    assert mlflow.get_tracking_uri() == before
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ


@pytest.mark.slow
def test_model_name_template_is_filled_with_the_runs_architecture(tmp_path, tracking_uri, request):
    prefix = "lsg-tpl-" + request.node.name[-8:]
    params = params_from_dict(
        {"register": {"model_name": prefix + "-{model}"}, "mlflow": {"tracking_uri": tracking_uri}}
    )
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    # 1. the architecture recorded in mlflow_run.json (what `lungseg train` writes)
    info = {**log_tiny_model(tracking_uri), "model": "prnet"}
    model_dir, eval_dir, _ = _candidate(tmp_path, tracking_uri, "a", dice=0.5, run_info=info)
    decision = register(params, model_dir, eval_dir, tmp_path / "a.json")
    assert decision.model_name == f"{prefix}-prnet" and decision.decision == "champion"
    assert _alias(client, f"{prefix}-prnet", "champion").version == decision.version

    # 2. an older mlflow_run.json without "model": the run's `model` tag (set by training) decides
    info = log_tiny_model(tracking_uri)
    client.set_tag(info["run_id"], "model", "unet")
    model_dir, eval_dir, _ = _candidate(tmp_path, tracking_uri, "b", dice=0.1, run_info=info)
    decision = register(params, model_dir, eval_dir, tmp_path / "b.json")
    # a worse U-Net does not compete with the PR-Net champion: it is champion of its own name
    assert decision.model_name == f"{prefix}-unet" and decision.decision == "champion"

    # 3. neither: a clear error naming the file, nothing registered, nothing written
    info = log_tiny_model(tracking_uri)
    model_dir, eval_dir, _ = _candidate(tmp_path, tracking_uri, "c", dice=0.9, run_info=info)
    with pytest.raises(DataError, match=r"mlflow_run.json.*no 'model' recorded"):
        register(params, model_dir, eval_dir, tmp_path / "c.json")
    assert not (tmp_path / "c.json").exists()
    names = {m.name for m in client.search_registered_models()}
    assert {f"{prefix}-prnet", f"{prefix}-unet"} <= names
    assert not any(n.startswith(prefix) and n not in (f"{prefix}-prnet", f"{prefix}-unet") for n in names)


# ------------------------------------------------------------------ the evaluation must belong to the model
def _versions(client, name):
    from mlflow.exceptions import MlflowException

    try:
        return client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return []


@pytest.mark.slow
def test_evaluation_of_another_model_is_refused_and_nothing_is_registered(tmp_path, tracking_uri, params, capsys):
    """`register --model A --evaluation <B's report>` promoted A on B's Dice; now: error, exit 2, nothing."""
    name = params.register.model_name
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    model_a, _, _ = _candidate(tmp_path, tracking_uri, "a", dice=0.30)
    _, eval_b, _ = _candidate(tmp_path, tracking_uri, "b", dice=0.90)
    with pytest.raises(DataError, match=r"eval/metrics\.json: is the evaluation of training run \w+, but .* is run"):
        register(params, model_a, eval_b, tmp_path / "x.json")
    # same run, other weights (best.pt replaced after the evaluation)
    model_c, eval_c, _ = _candidate(tmp_path, tracking_uri, "c", dice=0.5)
    (model_c / "best.pt").write_bytes(b"other weights")
    with pytest.raises(DataError, match=r"metrics\.json: was computed on other weights than .*best\.pt"):
        register(params, model_c, eval_c, tmp_path / "x.json")
    # a report that does not say which model it evaluated (older lungseg evaluate)
    model_d, eval_d, _ = _candidate(tmp_path, tracking_uri, "d", dice=0.5)
    m = json.loads((eval_d / "metrics.json").read_text(encoding="utf-8"))
    del m["model_sha256"], m["run_id"]
    (eval_d / "metrics.json").write_text(json.dumps(m), encoding="utf-8")
    with pytest.raises(DataError, match=r"does not say which model it evaluated"):
        register(params, model_d, eval_d, tmp_path / "x.json")
    # the last epoch's checkpoint evaluated (best.pt was broken): not the registered weights
    model_e, eval_e, _ = _candidate(tmp_path, tracking_uri, "e", dice=0.5)
    m = json.loads((eval_e / "metrics.json").read_text(encoding="utf-8"))
    m.update(checkpoint="checkpoint.pt", checkpoint_fallback="best.pt: not a readable checkpoint")
    (eval_e / "metrics.json").write_text(json.dumps(m), encoding="utf-8")
    with pytest.raises(DataError, match=r"evaluated checkpoint\.pt \(best\.pt: not a readable checkpoint\)"):
        register(params, model_e, eval_e, tmp_path / "x.json")

    params_file = tmp_path / "params.yaml"
    params_file.write_text(json.dumps({k: params.to_dict()[k] for k in ("register", "mlflow")}), encoding="utf-8")
    capsys.readouterr()
    code = main(
        [
            "register",
            "--model",
            str(model_a),
            "--evaluation",
            str(eval_b),
            "--output",
            str(tmp_path / "x.json"),
            "--params",
            str(params_file),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert _versions(client, name) == [] and not (tmp_path / "x.json").exists()


@pytest.mark.slow
def test_below_min_metric_is_registered_but_never_promoted(tmp_path, tracking_uri, params):
    """A first registration became champion whatever its score (even Dice 0)."""
    name = params.register.model_name
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    assert params.register.floor == 0.1  # the documented default (auto, greater is better)
    zero = register(params, *_candidate(tmp_path, tracking_uri, "zero", dice=0.0)[:2], tmp_path / "zero.json")
    assert zero.decision == "challenger" and zero.champion_before is None
    assert "below register.min_metric 0.1" in zero.reason
    assert json.loads((tmp_path / "zero.json").read_text(encoding="utf-8"))["reason"] == zero.reason
    tags = client.get_model_version(name, zero.version).tags
    assert tags["lungseg.below_min_metric"] == "true" and tags["lungseg.decision"] == "challenger"
    assert "champion" not in client.get_registered_model(name).aliases
    ok = register(params, *_candidate(tmp_path, tracking_uri, "ok", dice=0.35)[:2], tmp_path / "ok.json")
    assert ok.decision == "champion"
    # a better score below a raised floor does not dethrone the champion either
    strict = params_from_dict(
        {**{k: params.to_dict()[k] for k in ("mlflow",)}, "register": {"model_name": name, "min_metric": 0.9}}
    )
    high = register(strict, *_candidate(tmp_path, tracking_uri, "high", dice=0.8)[:2], tmp_path / "high.json")
    assert high.decision == "challenger" and high.champion_before == pytest.approx(0.35)
    assert _alias(client, name, "champion").version == ok.version


@pytest.mark.slow
def test_register_output_naming_a_folder_is_refused_before_registering(tmp_path, tracking_uri, params):
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    model_dir, eval_dir, _ = _candidate(tmp_path, tracking_uri, "a", dice=0.5)
    (tmp_path / "out.json").mkdir()
    with pytest.raises(DataError, match=r"out\.json: is a folder"):
        register(params, model_dir, eval_dir, tmp_path / "out.json")
    assert _versions(client, params.register.model_name) == []


# ------------------------------------------------------------------ issue #20: every decision its own version
@pytest.mark.slow
def test_each_evaluation_is_its_own_version_and_the_champion_never_flips(tmp_path, tracking_uri, params):
    """Issue #20, 2: A (0.2377 at threshold 0.5) → champion; B (0.2707) beats it; A re-evaluated at
    threshold 0.55 (0.4017) is a NEW version with its own tags and beats B; registering B and A's
    0.55 evaluation again moves nothing (the v2 → v3 → v2 flip-flop of stale tags cannot happen)."""
    name = params.register.model_name
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    run_a, run_b = log_tiny_model(tracking_uri), log_tiny_model(tracking_uri)
    a50 = write_candidate(tmp_path / "a50", run_a, dice=0.2377, fingerprint=SET_A)
    b = write_candidate(tmp_path / "b", run_b, dice=0.2707, fingerprint=SET_A)
    a55 = write_candidate(tmp_path / "a55", run_a, dice=0.4017, fingerprint=SET_A, threshold=0.55)

    first = register(params, *a50, tmp_path / "1.json")
    second = register(params, *b, tmp_path / "2.json")
    third = register(params, *a55, tmp_path / "3.json")
    assert [d.decision for d in (first, second, third)] == ["champion", "champion", "champion"]
    assert len({first.version, second.version, third.version}) == 3, "a new evaluation reused an older version"
    assert not third.reused_version and third.champion_before == pytest.approx(0.2707)

    again_b = register(params, *b, tmp_path / "4.json")
    again_a = register(params, *a55, tmp_path / "5.json")
    assert again_b.reused_version and again_b.version == second.version and again_b.decision == "challenger"
    assert again_a.reused_version and again_a.version == third.version and again_a.decision == "champion"
    assert _alias(client, name, "champion").version == third.version
    assert len(client.search_model_versions(f"name = '{name}'")) == 3

    # every version's tags are those of its own evaluation and agree with where the alias is
    for decision, dice, threshold in ((first, 0.2377, "0.5"), (again_b, 0.2707, "0.5"), (again_a, 0.4017, "0.55")):
        tags = client.get_model_version(name, decision.version).tags
        assert float(tags["lungseg.metric_value"]) == pytest.approx(dice)
        assert float(tags["lungseg.candidate_value"]) == pytest.approx(dice)
        assert tags["lungseg.serving_threshold"] == threshold
    champion_tags = client.get_model_version(name, third.version).tags
    assert champion_tags["lungseg.decision"] == "champion"
    assert client.get_model_version(name, second.version).tags["lungseg.decision"] == "challenger"

    from lungseg.lineage import describe

    text = describe(f"models:/{name}@champion", tracking_uri).describe()
    assert "promoted on: dice_mean = 0.4017" in text and "(champion:" in text


@pytest.mark.slow
def test_the_champions_run_reevaluated_worse_on_the_same_set_does_not_move_the_alias(tmp_path, tracking_uri, params):
    """The alias follows the champion's own run only onto ANOTHER set; on the same set another
    threshold that scores worse is compared like any candidate."""
    name = params.register.model_name
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    run = log_tiny_model(tracking_uri)
    good = register(params, *write_candidate(tmp_path / "g", run, dice=0.40, fingerprint=SET_A), tmp_path / "g.json")
    worse = register(
        params,
        *write_candidate(tmp_path / "w", run, dice=0.24, fingerprint=SET_A, threshold=0.9),
        tmp_path / "w.json",
    )
    assert good.decision == "champion" and worse.decision == "challenger" and worse.version != good.version
    assert _alias(client, name, "champion").version == good.version


@pytest.mark.slow
def test_register_output_naming_an_existing_file_is_refused_before_registering(tmp_path, tracking_uri, params):
    """Issue #20: `lungseg register --output FILE` overwrote an existing file (the README says it is refused)."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    model_dir, eval_dir, _ = _candidate(tmp_path, tracking_uri, "a", dice=0.5)
    (tmp_path / "out.json").write_text("{}", encoding="utf-8")
    with pytest.raises(DataError, match=r"out\.json: exists: a decision record is never overwritten"):
        register(params, model_dir, eval_dir, tmp_path / "out.json")
    assert (tmp_path / "out.json").read_text(encoding="utf-8") == "{}"
    assert _versions(client, params.register.model_name) == []


@pytest.mark.slow
def test_a_preprocessing_mismatch_evaluation_is_tagged_and_promotes_only_when_allowed_again(
    tmp_path, tracking_uri, params, capsys
):
    """Issue #20: an evaluation made with --allow-preprocessing-mismatch became champion untagged."""
    name = params.register.model_name
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    mismatch = ["image_size: data 32, model 16"]
    m1 = write_candidate(
        tmp_path / "m1", log_tiny_model(tracking_uri), dice=0.8, fingerprint=SET_A, preprocessing_mismatch=mismatch
    )
    refused = register(params, *m1, tmp_path / "m1.json")
    assert refused.decision == "challenger" and "--allow-preprocessing-mismatch" in refused.reason
    assert client.get_model_version(name, refused.version).tags["lungseg.preprocessing_mismatch"] == mismatch[0]
    assert "champion" not in client.get_registered_model(name).aliases

    model_dir, eval_dir = write_candidate(
        tmp_path / "m2", log_tiny_model(tracking_uri), dice=0.8, fingerprint=SET_A, preprocessing_mismatch=mismatch
    )
    params_file = tmp_path / "params.yaml"
    params_file.write_text(json.dumps({k: params.to_dict()[k] for k in ("register", "mlflow")}), encoding="utf-8")
    args = ["register", "--model", str(model_dir), "--evaluation", str(eval_dir), "--params", str(params_file)]
    assert main([*args, "--output", str(tmp_path / "m2.json"), "--allow-preprocessing-mismatch"]) == 0
    allowed = json.loads((tmp_path / "m2.json").read_text(encoding="utf-8"))
    assert allowed["decision"] == "champion"
    assert client.get_model_version(name, allowed["version"]).tags["lungseg.preprocessing_mismatch"] == mismatch[0]


@pytest.mark.slow
def test_a_detour_through_another_set_cannot_move_the_alias_to_other_serving_settings(tmp_path, tracking_uri, params):
    """Review finding: the champion (threshold 0.54 on test) re-evaluated at threshold 0.5 on val followed
    the alias ('same run … on another set'), and back on test at 0.5 it became champion although it
    scores worse there than the champion's own settings. The alias follows the run only with the same
    serving settings; other settings are another served model, compared like any candidate."""
    name = params.register.model_name
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    run = log_tiny_model(tracking_uri)
    test54 = register(
        params,
        *write_candidate(tmp_path / "t54", run, dice=0.62, fingerprint=SET_A, threshold=0.54),
        tmp_path / "1.json",
    )
    val50 = register(
        params,
        *write_candidate(tmp_path / "v50", run, dice=0.70, fingerprint=SET_B, threshold=0.5),
        tmp_path / "2.json",
    )
    assert test54.decision == "champion"
    assert val50.decision == "challenger" and "different evaluation set" in val50.reason
    assert _alias(client, name, "champion").version == test54.version
    val54 = register(
        params,
        *write_candidate(tmp_path / "v54", run, dice=0.66, fingerprint=SET_B, threshold=0.54),
        tmp_path / "3.json",
    )
    assert val54.decision == "champion" and "re-evaluated on another set" in val54.reason  # same served model
