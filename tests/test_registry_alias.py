"""The alias step of lungseg.registry.register against a scripted registry client: the re-check
that the champion has not moved, the retries, the lock and the challenger alias a promoted version
loses. (A real MLflow registry cannot move the champion between two reads on cue; the end-to-end
cases are in tests/test_registry.py.)"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from lungseg import registry
from lungseg.registry import TAG, RegistryError

SET_A = "sha256:" + "a" * 64
CFG = SimpleNamespace(
    metric="dice_mean", greater_is_better=True, floor=0.1, champion_alias="champion", challenger_alias="challenger"
)


def _candidate(value=0.8, run_id="run-new"):
    return registry._Candidate(
        run_id=run_id,
        model_uri="models:/m-1",
        value=value,
        fingerprint=SET_A,
        fingerprint_source="metrics.json",
        metrics={"split": "test"},
        eval_run=None,
        serving={"dataset": "synthetic"},
        label_names="background,infection",
    )


def _version(version, value=0.5, run_id="run-old"):
    tags = {TAG + "metric": "dice_mean", TAG + "metric_value": repr(value), TAG + "eval_fingerprint": SET_A}
    # what the number means, as register records it (lungseg.registry.comparable): like the candidate's
    tags.update({TAG + "label_names": "background,infection", TAG + "dataset": "synthetic", TAG + "eval_split": "test"})
    return SimpleNamespace(version=str(version), status="READY", tags=tags, run_id=run_id)


class ScriptedClient:
    """Aliases as a dict; ``champion_reads`` scripts what successive reads of the champion alias
    return (a version number or None; the last entry repeats); the lock is a registered model."""

    def __init__(self, champion_reads=(), aliases=None):
        self.champion_reads = list(champion_reads)
        self.aliases = dict(aliases or {})
        self.models: dict[str, dict] = {}
        self.calls: list[tuple] = []

    def get_model_version_by_alias(self, name, alias):
        if alias == CFG.champion_alias and self.champion_reads:
            v = self.champion_reads.pop(0) if len(self.champion_reads) > 1 else self.champion_reads[0]
            return None if v is None else _version(v)
        v = self.aliases.get(alias)
        return None if v is None else _version(v)

    def set_registered_model_alias(self, name, alias, version):
        self.calls.append(("set", alias, version))
        self.aliases[alias] = version
        if alias == CFG.champion_alias:
            self.champion_reads = []

    def delete_registered_model_alias(self, name, alias):
        self.calls.append(("delete", alias))
        self.aliases.pop(alias, None)

    def create_registered_model(self, name, tags=None, description=None):
        assert name not in self.models, "the lock is taken"
        self.models[name] = {"tags": tags or {}}

    def get_registered_model(self, name):
        return SimpleNamespace(tags=self.models[name]["tags"])

    def delete_registered_model(self, name):
        del self.models[name]


def test_no_champion_makes_the_candidate_champion():
    client = ScriptedClient()
    out = registry._move_alias(client, "m", CFG, "3", _candidate())
    assert out == registry._Outcome(True, None, "no champion yet", None, "champion")
    assert client.calls == [("set", "champion", "3")] and client.models == {}  # lock released


def test_a_champion_that_moves_after_the_read_is_read_again_before_any_alias_is_set():
    """Read v1, re-check sees v2 (another registration won): nothing is set; the next attempt
    decides against v2."""
    client = ScriptedClient(champion_reads=["1", "2", "2", "2"])
    assert registry._try_alias(client, "m", CFG, "3", _candidate()) is None
    assert client.calls == []
    out = registry._try_alias(client, "m", CFG, "3", _candidate())
    assert out.promote and out.champion_version == "2" and out.before == 0.5
    assert client.calls == [("set", "champion", "3")]


def test_a_champion_that_keeps_moving_is_an_error_and_the_lock_is_released():
    client = ScriptedClient(champion_reads=[str(v) for v in range(1, 20)])
    with pytest.raises(RegistryError, match="m: the champion kept moving during registration; run again"):
        registry._move_alias(client, "m", CFG, "30", _candidate())
    assert client.calls == [] and client.models == {}
    assert client.champion_reads[0] == "11"  # 5 attempts, two reads each


def test_an_alias_that_does_not_stick_is_tried_again():
    class Forgetful(ScriptedClient):
        def set_registered_model_alias(self, name, alias, version):
            super().set_registered_model_alias(name, alias, version)
            if len(self.calls) == 1:
                self.aliases.pop(alias)  # the first write is lost

    client = Forgetful()
    out = registry._move_alias(client, "m", CFG, "3", _candidate())
    assert out.promote and client.calls == [("set", "champion", "3"), ("set", "champion", "3")]


def test_a_promoted_challenger_loses_the_challenger_alias_and_a_loser_keeps_the_champion():
    client = ScriptedClient(champion_reads=["1"], aliases={"challenger": "3"})
    out = registry._move_alias(client, "m", CFG, "3", _candidate(value=0.9))
    assert out.reason == "beats champion v1 on the same evaluation set"
    assert client.calls == [("set", "champion", "3"), ("delete", "challenger")]

    client = ScriptedClient(champion_reads=["1"], aliases={"challenger": "2"})
    out = registry._move_alias(client, "m", CFG, "3", _candidate(value=0.4))
    assert not out.promote and out.alias == "challenger" and out.champion_version == "1"
    assert client.calls == [("set", "challenger", "3")]


def test_the_champion_itself_registered_again_stays_champion():
    client = ScriptedClient(champion_reads=["3"])
    out = registry._move_alias(client, "m", CFG, "3", _candidate(value=0.7))
    assert out == registry._Outcome(True, 0.7, "already champion (repeated run)", "3", "champion")


def test_a_candidate_within_the_margin_of_a_trivial_predictor_is_never_promoted_even_without_a_champion():
    """Issue #20, 3: Dice 0.2403 vs the all-foreground predictor's 0.2390 (margin 0.05) → challenger
    with both numbers in the reason, on an empty registry too; 0.30 passes."""
    cand = dataclasses.replace(
        _candidate(value=0.2403), best_trivial=0.2390, best_trivial_name="all_foreground", margin=0.05
    )
    client = ScriptedClient()
    out = registry._move_alias(client, "m", CFG, "1", cand)
    assert not out.promote and out.alias == "challenger"
    assert "0.2403 does not beat the best trivial predictor (all_foreground 0.2390)" in out.reason
    assert "min_margin_over_trivial 0.05 (needs ≥ 0.2890)" in out.reason
    ok = dataclasses.replace(cand, value=0.30)
    assert registry._move_alias(ScriptedClient(), "m", CFG, "2", ok).promote


def test_a_mismatch_evaluation_needs_the_permission_again():
    cand = dataclasses.replace(_candidate(value=0.9), preprocessing_mismatch=("image_size: data 32, model 64",))
    out = registry._move_alias(ScriptedClient(), "m", CFG, "1", cand)
    assert not out.promote and "`lungseg register --allow-preprocessing-mismatch`" in out.reason
    allowed = dataclasses.replace(cand, allow_preprocessing_mismatch=True)
    assert registry._move_alias(ScriptedClient(), "m", CFG, "1", allowed).promote


def test_the_champions_own_run_is_compared_on_the_same_set_and_followed_onto_another():
    client = ScriptedClient(champion_reads=["1"])  # v1: run-old, 0.5 on SET_A
    worse = registry._move_alias(client, "m", CFG, "2", _candidate(value=0.3, run_id="run-old"))
    assert not worse.promote and "does not beat champion v1" in worse.reason
    other_set = dataclasses.replace(_candidate(value=0.3, run_id="run-old"), fingerprint="sha256:" + "b" * 64)
    moved = registry._move_alias(ScriptedClient(champion_reads=["1"]), "m", CFG, "3", other_set)
    assert moved.promote and "re-evaluated on another set" in moved.reason
    assert moved.before is None  # its number on the other set is no comparison: not reported
    # another served model (other serving settings) is not followed onto another set: not comparable there
    other_serving = dataclasses.replace(other_set, serving_fingerprint="sha256:" + "c" * 64)
    kept = registry._move_alias(ScriptedClient(champion_reads=["1"]), "m", CFG, "4", other_serving)
    assert not kept.promote and "different evaluation set" in kept.reason
