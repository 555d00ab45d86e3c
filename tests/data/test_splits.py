import pytest

from lungseg.data.splits import assign_splits
from lungseg.errors import ConfigError, DataError


def _plan(hints, pids, seed=0, val=0.15, test=0.15):
    ids = [f"s{i}" for i in range(len(hints))]
    return assign_splits(hints, pids, ids, val_fraction=val, test_fraction=test, seed=seed)


def test_patient_level_never_splits_a_patient():
    pids = [f"p{i // 7}" for i in range(70)]  # 10 patients, 7 slices each
    for seed in range(5):
        plan = _plan([None] * 70, pids, seed=seed)
        assert plan.level == "patient" and not plan.warnings
        by_patient = {}
        for pid, split in zip(pids, plan.splits):
            by_patient.setdefault(pid, set()).add(split)
        assert all(len(s) == 1 for s in by_patient.values())
        assert set(plan.splits) == {"train", "val", "test"}


def test_seeded_and_deterministic():
    pids = [None] * 40
    a, b, c = _plan([None] * 40, pids, seed=1), _plan([None] * 40, pids, seed=1), _plan([None] * 40, pids, seed=2)
    assert a.splits == b.splits and a.splits != c.splits
    assert a.level == "slice" and a.warnings and a.warnings[0].startswith("slice-level")
    # documented rule: round-half-up of fraction · units, test first, then val from the rest
    assert a.counts == {"test": 6, "val": 5, "train": 29}  # 0.15·40 = 6; 0.15·34 = 5.1 → 5


def test_published_test_kept_and_pool_split():
    hints = ["test"] * 20 + ["pool"] * 80
    plan = _plan(hints, [None] * 100)
    assert plan.splits[:20] == ["test"] * 20
    assert set(plan.splits[20:]) == {"train", "val"} and plan.counts["val"] == 12  # 0.15·80


def test_patient_in_published_train_and_test_is_an_error():
    with pytest.raises(DataError, match="p1 are in both"):
        _plan(["pool", "test", "pool", "test"], ["p0", "p1", "p1", "p2"])


def test_too_few_units_and_bad_fractions():
    with pytest.raises(DataError, match="too few patients"):
        _plan([None] * 6, ["a"] * 3 + ["b"] * 3)
    with pytest.raises(DataError, match="no slices"):
        _plan([], [])
    with pytest.raises(ConfigError, match="val_fraction"):
        _plan([None] * 10, [None] * 10, val=0.0)
