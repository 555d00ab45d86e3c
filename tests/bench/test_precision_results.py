"""bench/precision_results.py (review of #24, F10): given the same folder twice, or a side mixing precisions,
it printed "bf16 − fp32: +0.000". Two sides that are not fp32 against bf16 of otherwise equal settings are
refused in one line (exit 1); fp32 against bf16 of equal settings is compared."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench_helpers import load_bench
from lungseg.io import atomic_write_json

TABLE, PROFILE = "lgnet-table1", "cpu"


@pytest.fixture(scope="module")
def bench():
    return load_bench("precision_results")


def _write(folder: Path, seed: int, precision: str, dice: float, epochs: int = 1) -> Path:
    """A record of row unet that trained in ``precision`` (asked with ``--precision``)."""
    rec = {
        "table": TABLE,
        "profile": PROFILE,
        "row": "unet",
        "model": "unet",
        "seed": seed,
        "settings": {
            "image_size": 32,
            "base_channels": 4,
            "epochs": epochs,
            "batch_size": 4,
            "lr": 0.001,
            "extra_train": {"precision": precision},
            "model": "unet",
            "model_kwargs": {},
        },  # fmt: skip
        "overrides": {"precision": precision},
        "identity": {"status": "recorded", "train": {"precision": precision}},
        "metrics": {"dice_mean": dice, "n_images": 1},
        "per_image": [{"id": "a", "dice": dice, "sen": dice}],
        "wall_time_s": {"train": 10.0, "evaluate": 1.0, "total": 11.0},
        "device": {"type": "cpu", "name": "Test CPU", **({"bf16": "emulated"} if precision == "bf16" else {})},
        "git": {"commit": "0123456789abcdef", "dirty": False},
    }
    path = folder / TABLE / PROFILE / f"unet-seed{seed}.json"
    atomic_write_json(path, rec)
    return path


def _run(bench, capsys, fp32: Path, bf16: Path) -> tuple[int, str, str]:
    try:
        bench.main(str(fp32), str(bf16), TABLE, PROFILE, "unet")
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_fp32_against_bf16_of_equal_settings_is_compared(bench, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    for seed in (0, 1):
        _write(a, seed, "fp32", 0.5)
        _write(b, seed, "bf16", 0.4)
    code, out, err = _run(bench, capsys, a, b)
    assert (code, err) == (0, "")
    assert "paired dice, bf16 − fp32: -0.100" in out


def test_the_same_folder_twice_is_refused(bench, tmp_path, capsys):
    _write(tmp_path, 0, "fp32", 0.5)
    _write(tmp_path, 1, "bf16", 0.4)
    code, out, err = _run(bench, capsys, tmp_path, tmp_path)
    assert (code, out) == (1, "")
    assert err == f"error: {tmp_path}: the fp32 side holds records that did not train in fp32 (unet-seed1.json bf16)\n"


def test_a_side_mixing_precisions_is_refused(bench, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    _write(a, 0, "fp32", 0.5)
    _write(b, 0, "bf16", 0.4)
    _write(b, 1, "fp32", 0.5)
    code, _, err = _run(bench, capsys, a, b)
    assert code == 1
    assert err == f"error: {b}: the bf16 side holds records that did not train in bf16 (unet-seed1.json fp32)\n"


def test_sides_differing_in_more_than_the_precision_are_refused(bench, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    _write(a, 0, "fp32", 0.5, epochs=1)
    _write(b, 0, "bf16", 0.4, epochs=2)
    code, _, err = _run(bench, capsys, a, b)
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(f"error: {b}: its records and those of {a} differ in more than the precision")


def test_no_seed_in_common_is_refused(bench, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    _write(a, 0, "fp32", 0.5)
    _write(b, 1, "bf16", 0.4)
    code, _, err = _run(bench, capsys, a, b)
    assert (code, err) == (1, f"error: {b}: no seed in common with {a}\n")
    code, _, err = _run(bench, capsys, tmp_path / "none", b)
    assert (code, err) == (1, f"error: {tmp_path / 'none'}: no records of this row\n")
