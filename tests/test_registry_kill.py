"""The champion decision survives a kill of ``lungseg register`` (#20, review F7; lungseg/registry/decision.py).

Killed between moving the ``champion`` alias and tagging the version, register left the champion with
no decision tags; the next register then recorded "already champion (repeated run)" and the comparison
that promoted it (against what, both numbers, why) was lost. Now the whole decision is written ahead as
a pending record before any alias moves, and the next register finishes it and says so in one line.

The kills are real: a subprocess runs ``register`` with one MlflowClient method replaced by a SIGKILL of
the process at that call, against a local sqlite store.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

from lungseg.config import params_from_dict
from lungseg.lineage import describe
from lungseg.registry import decision as journal
from lungseg.registry import register
from registry_helpers import log_tiny_model, write_candidate

SET_A = "sha256:" + "a" * 64
PENDING = "lungseg.pending_decision"

#: runs register with ``MlflowClient.<method>`` killing the process (SIGKILL) when ``key`` is among its arguments
KILLER = r"""
import json, os, signal, sys
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST
from lungseg.config import params_from_dict
from lungseg.lineage import describe
from lungseg.registry import register

a = json.loads(sys.argv[1])
original = getattr(MlflowClient, a["method"])

def killed(self, *args, **kwargs):
    if a["key"] in args:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, *args, **kwargs)

setattr(MlflowClient, a["method"], killed)
params = params_from_dict({"register": a["register"], "mlflow": {"tracking_uri": a["uri"]}})
register(params, a["model_dir"], a["eval_dir"], a["out"])
print("not killed")
"""


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return SimpleNamespace(uri=uri, client=MlflowClient(tracking_uri=uri, registry_uri=uri))


def _params(uri, name, **cfg):
    return params_from_dict({"register": {"model_name": name, **cfg}, "mlflow": {"tracking_uri": uri}})


def _killed_register(store, model_dir, eval_dir, out, method, key, **cfg) -> None:
    args = {
        "method": method,
        "key": key,
        "register": {"model_name": "lsg-kill", **cfg},
        "uri": store.uri,
        "model_dir": str(model_dir),
        "eval_dir": str(eval_dir),
        "out": str(out),
    }
    env = {**os.environ, "MLFLOW_TRACKING_URI": store.uri, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", KILLER, json.dumps(args)], env=env, capture_output=True, text=True, encoding="utf-8"
    )
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr
    assert not out.exists()


def _champion(client, name="lsg-kill"):
    return str(client.get_model_version_by_alias(name, "champion").version)


def _tags(client, version, name="lsg-kill"):
    return dict(client.get_model_version(name, version).tags)


def _aliases(client, name="lsg-kill"):
    return {k: str(v) for k, v in client.get_registered_model(name).aliases.items()}


def _pending(client, name="lsg-kill"):
    return client.get_registered_model(name).tags.get(PENDING)


@pytest.mark.slow
def test_a_kill_after_the_alias_move_is_finished_with_the_original_comparison(tmp_path, store, caplog):
    """Today: v2 champion with no decision tags, then 'already champion (repeated run)' vs itself (0.70)."""
    first = register(
        _params(store.uri, "lsg-kill"),
        *write_candidate(tmp_path / "a", log_tiny_model(store.uri), dice=0.50, fingerprint=SET_A),
        tmp_path / "a.json",
    )
    b = write_candidate(tmp_path / "b", log_tiny_model(store.uri), dice=0.70, fingerprint=SET_A)
    _killed_register(store, *b, tmp_path / "b.json", "set_model_version_tag", "lungseg.decision")

    version = str(int(first.version) + 1)
    assert _champion(store.client) == version  # the alias moved, the tags were not written
    assert "lungseg.decision" not in _tags(store.client, version)
    assert json.loads(_pending(store.client))["move"] == {
        "version": version,
        "promote": True,
        "champion_version": first.version,
        "alias": "champion",
    }

    read = describe("models:/lsg-kill@champion", store.uri).describe()  # a read of the decision says so too
    assert f"  pending:   lsg-kill v{version}: champion (dice_mean 0.7000 vs champion 0.5000 v{first.version}" in read
    assert "; a `lungseg register` was interrupted: the next one finishes it" in read

    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="lungseg.registry"):
        again = register(_params(store.uri, "lsg-kill"), *b, tmp_path / "b2.json")
    assert time.monotonic() - started < journal.LOCK_STALE_AFTER_S, "the killed holder's lock was waited out"
    lines = [r.getMessage() for r in caplog.records if "left its decision pending" in r.getMessage()]
    assert len(lines) == 1 and f"lsg-kill v{version}: a `lungseg register` interrupted at" in lines[0]
    assert "finished it: lsg-kill v" in lines[0] and f"vs champion 0.5000 v{first.version}" in lines[0]

    record = json.loads((tmp_path / "b2.json").read_text(encoding="utf-8"))
    assert record == json.loads(json.dumps(again.to_dict()))
    assert record["version"] == version and record["decision"] == "champion" and record["reused_version"]
    assert record["champion_before"] == pytest.approx(0.50) and record["champion_before_version"] == first.version
    assert record["reason"].startswith("already champion (repeated run); promoted 20")
    assert record["reason"].endswith(f": beats champion v{first.version} on the same evaluation set")
    tags = _tags(store.client, version)
    assert tags["lungseg.decision"] == "champion"
    assert tags["lungseg.decision_reason"] == f"beats champion v{first.version} on the same evaluation set"
    assert float(tags["lungseg.champion_before_value"]) == pytest.approx(0.50)
    assert tags["lungseg.champion_before_version"] == first.version
    assert f"beats champion v{first.version}" in store.client.get_model_version("lsg-kill", version).description
    assert _pending(store.client) is None and _champion(store.client) == version
    assert "pending:" not in describe("models:/lsg-kill@champion", store.uri).describe()
    assert not [m for m in store.client.search_registered_models() if m.name.endswith(".lock")]

    # a third run of the same evaluation still reports that comparison, not one against itself
    third = register(_params(store.uri, "lsg-kill"), *b, tmp_path / "b3.json")
    assert (third.champion_before, third.champion_before_version) == (pytest.approx(0.50), first.version)
    assert _tags(store.client, version)["lungseg.decided_at"] == tags["lungseg.decided_at"]


@pytest.mark.slow
def test_a_kill_before_the_alias_move_leaves_the_champion_untouched_and_is_finished_next(tmp_path, store, caplog):
    """Killed at the alias write: v1 and its tags untouched; the next register (of another model) first
    carries out the decision that was made (v2 beats v1), then decides against v2. Today: v2 stays
    undecided and the next model (0.60) is compared with v1 (0.50) and promoted over a better v2."""
    first = register(
        _params(store.uri, "lsg-kill"),
        *write_candidate(tmp_path / "a", log_tiny_model(store.uri), dice=0.50, fingerprint=SET_A),
        tmp_path / "a.json",
    )
    before = _tags(store.client, first.version)
    b = write_candidate(tmp_path / "b", log_tiny_model(store.uri), dice=0.70, fingerprint=SET_A)
    _killed_register(store, *b, tmp_path / "b.json", "set_registered_model_alias", "champion")

    assert _champion(store.client) == first.version and _tags(store.client, first.version) == before
    assert _aliases(store.client) == {"champion": first.version}
    killed_version = json.loads(_pending(store.client))["move"]["version"]
    assert "lungseg.decision" not in _tags(store.client, killed_version)

    c = write_candidate(tmp_path / "c", log_tiny_model(store.uri), dice=0.60, fingerprint=SET_A)
    with caplog.at_level(logging.WARNING, logger="lungseg.registry"):
        third = register(_params(store.uri, "lsg-kill"), *c, tmp_path / "c.json")
    assert any("left its decision pending; finished it" in r.getMessage() for r in caplog.records)
    assert _champion(store.client) == killed_version
    tags = _tags(store.client, killed_version)
    assert tags["lungseg.decision"] == "champion" and tags["lungseg.champion_before_version"] == first.version
    assert third.decision == "challenger" and third.champion_before_version == killed_version
    assert third.champion_before == pytest.approx(0.70)
    assert _tags(store.client, first.version) == before, "the old champion's tags were touched"
    assert _pending(store.client) is None


@pytest.mark.slow
def test_a_kill_inside_a_demotion_is_finished(tmp_path, store, caplog):
    """Demoting a champion is two alias writes (delete champion, set challenger): killed between them,
    the next register sets the challenger alias and records the demotion."""
    baselines = {"all_background": {"dice_mean": 0.0}, "all_foreground": {"dice_mean": 0.2380}}
    a = write_candidate(tmp_path / "a", log_tiny_model(store.uri), dice=0.2220, fingerprint=SET_A, baselines=baselines)
    loose = register(_params(store.uri, "lsg-kill", min_margin_over_trivial=None), *a, tmp_path / "1.json")
    assert loose.decision == "champion"
    _killed_register(store, *a, tmp_path / "2.json", "set_registered_model_alias", "challenger")
    assert _aliases(store.client) == {}  # half-way: no alias at all

    with caplog.at_level(logging.WARNING, logger="lungseg.registry"):
        again = register(_params(store.uri, "lsg-kill"), *a, tmp_path / "3.json")
    (line,) = [r.getMessage() for r in caplog.records if "left its decision pending" in r.getMessage()]
    assert f"finished it: lsg-kill v{loose.version}: challenger" in line
    assert f"champion v{loose.version} no longer passes the policy, demoted" in line
    assert _aliases(store.client) == {"challenger": loose.version}
    # then this run decides again (no champion now): still refused by the margin, recorded as its own decision
    assert again.decision == "challenger" and "does not beat the best trivial predictor" in again.reason
    assert _tags(store.client, loose.version)["lungseg.decision"] == "challenger"
    assert _pending(store.client) is None


# --------------------------------------------------------------- the pending record against a fake registry
class FakeRegistry:
    """Aliases, version tags and registered-model tags in dicts (one registered model)."""

    def __init__(self, aliases, versions=("1", "2", "3")):
        self.aliases = dict(aliases)
        self.versions = {v: {"tags": {}, "description": ""} for v in versions}
        self.model_tags: dict[str, str] = {}

    def get_model_version_by_alias(self, name, alias):
        v = self.aliases.get(alias)
        if v is None:
            raise MlflowException("no alias", error_code=RESOURCE_DOES_NOT_EXIST)
        return SimpleNamespace(version=v, status="READY", tags=self.versions[v]["tags"])

    def get_model_version(self, name, version):
        if version not in self.versions:
            raise MlflowException("no version", error_code=RESOURCE_DOES_NOT_EXIST)
        return SimpleNamespace(version=version, tags=self.versions[version]["tags"])

    def set_registered_model_alias(self, name, alias, version):
        self.aliases[alias] = version

    def delete_registered_model_alias(self, name, alias):
        del self.aliases[alias]

    def set_model_version_tag(self, name, version, key, value):
        self.versions[version]["tags"][key] = value

    def update_model_version(self, name, version, description):
        self.versions[version]["description"] = description

    def get_registered_model(self, name):
        return SimpleNamespace(tags=dict(self.model_tags))

    def set_registered_model_tag(self, name, key, value):
        self.model_tags[key] = value

    def delete_registered_model_tag(self, name, key):
        del self.model_tags[key]


def _record(version="2", promote=True, champion_version="1", alias="champion"):
    move = {"version": version, "promote": promote, "champion_version": champion_version, "alias": alias}
    return {
        "move": move,
        "aliases": ["champion", "challenger"],
        "decided_at": "2026-12-06T17:00:00Z",
        "tags": {"lungseg.decision": "champion" if promote else "challenger"},
        "card": "# card",
        "describe": "m v2: champion (…)",
    }


def test_a_pending_decision_is_finished_when_the_champion_is_where_it_was_decided(caplog):
    client = FakeRegistry({"champion": "1", "challenger": "2"})
    client.model_tags[PENDING] = json.dumps(_record())
    with caplog.at_level(logging.WARNING, logger="lungseg.registry"):
        line = journal.finish_pending(client, "m")
    assert line == (
        "m v2: a `lungseg register` interrupted at 2026-12-06T17:00:00Z left its decision pending; "
        "finished it: m v2: champion (…)"
    )
    assert [r.getMessage() for r in caplog.records] == [line]
    assert client.aliases == {"champion": "2"}  # the promoted challenger lost the challenger alias
    assert client.versions["2"] == {"tags": {"lungseg.decision": "champion"}, "description": "# card"}
    assert client.model_tags == {} and journal.finish_pending(client, "m") is None


def test_a_pending_decision_is_discarded_in_one_line_when_the_champion_was_moved_by_hand(caplog):
    client = FakeRegistry({"champion": "3"})
    client.model_tags[PENDING] = json.dumps(_record())
    with caplog.at_level(logging.WARNING, logger="lungseg.registry"):
        line = journal.finish_pending(client, "m")
    assert line.endswith(
        "left its decision pending; discarded, the champion is now v3 (moved by hand since): "
        "register that evaluation again to decide it"
    )
    assert client.aliases == {"champion": "3"} and client.versions["2"]["tags"] == {} and client.model_tags == {}
    gone = FakeRegistry({"champion": "1"}, versions=("1",))
    gone.model_tags[PENDING] = json.dumps(_record())
    assert "discarded, the version is gone" in journal.finish_pending(gone, "m")


def test_a_finished_challenger_decision_leaves_the_champion_where_it_is():
    client = FakeRegistry({"champion": "1"})
    client.model_tags[PENDING] = json.dumps(_record(promote=False, alias="challenger"))
    journal.finish_pending(client, "m")
    assert client.aliases == {"champion": "1", "challenger": "2"}


def test_a_pending_tag_lungseg_did_not_write_is_an_error_naming_it():
    client = FakeRegistry({"champion": "1"})
    client.model_tags[PENDING] = "{not json"
    with pytest.raises(journal.RegistryError, match=r"m: the registered model's tag lungseg\.pending_decision is not"):
        journal.finish_pending(client, "m")


def test_a_lock_holder_killed_on_this_machine_is_gone_and_others_are_not():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead = journal.lock_holder("abcd").replace(f":{os.getpid()}:", f":{child.pid}:")
    assert journal.holder_gone(dead)
    assert not journal.holder_gone(journal.lock_holder("abcd"))  # this process: alive
    assert not journal.holder_gone("elsewhere:" + dead.split(":", 1)[1])  # another machine: never judged
    host = dead.split(":", 1)[0]
    assert not journal.holder_gone(f"{host}:{child.pid}:abcd:pid:[1]")  # another PID namespace (a container)
    assert not journal.holder_gone(None) and not journal.holder_gone("old-format:123:abcd")
