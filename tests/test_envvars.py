"""lungseg.envvars.scoped_environ: the one environment save/restore of the package (tracking's HTTP
retries and URIs, the pipeline's trial store, predict's download bars all go through it)."""

from __future__ import annotations

import os

import pytest

from lungseg.envvars import scoped_environ

A, B, C = "LUNGSEG_TEST_ENV_A", "LUNGSEG_TEST_ENV_B", "LUNGSEG_TEST_ENV_C"


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.setenv(A, "old-a")
    monkeypatch.delenv(B, raising=False)
    monkeypatch.setenv(C, "untouched")


def test_sets_unsets_and_restores_exactly():
    with scoped_environ({A: "new-a", B: "new-b"}):
        assert os.environ[A] == "new-a" and os.environ[B] == "new-b"
        os.environ[A] = "changed in the block"
        os.environ.pop(B)
        os.environ[C] = "changed too"  # not given: the block's change stays
    assert os.environ[A] == "old-a" and B not in os.environ and os.environ[C] == "changed too"
    with scoped_environ({A: None}):
        assert A not in os.environ
    assert os.environ[A] == "old-a"


def test_restores_on_an_exception():
    with pytest.raises(KeyError), scoped_environ({A: None, B: "set"}):
        assert A not in os.environ and os.environ[B] == "set"
        raise KeyError("boom")
    assert os.environ[A] == "old-a" and B not in os.environ


def test_only_unset_keeps_what_the_user_set():
    with scoped_environ({A: "default-a", B: "default-b"}, only_unset=True):
        assert os.environ[A] == "old-a" and os.environ[B] == "default-b"
        os.environ[A] = "changed in the block"  # not overridden, so not restored either
    assert os.environ[A] == "changed in the block" and B not in os.environ


def test_apply_and_restore_outside_one_block():
    env = scoped_environ({B: "open"}).apply()
    assert env.active and os.environ[B] == "open"
    with pytest.raises(RuntimeError, match="applied twice"):
        env.apply()
    env.restore()
    env.restore()  # idempotent: a second close restores nothing
    assert not env.active and B not in os.environ
