"""``params.yaml`` is read as DVC reads and writes it (YAML 1.2 numbers) and a key written twice is refused
(:func:`lungseg.config.read_params_file`, used by every reader of the file)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from lungseg.config import load_params, read_params_file
from lungseg.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "text, value",
    [
        ("1e-3", 0.001),  # PyYAML's YAML 1.1 reads this as the string '1e-3'
        ("1e-09", 1e-9),  # how `dvc exp run -S train.lr=1e-9` writes it
        ("-1E+4", -10000.0),
        ("1.0e-3", 0.001),
        (".5", 0.5),
        ("2", 2),
        ("1_000", 1000),
        ("'1e-3'", "1e-3"),  # quoted: a string, as written
        ("1e5x", "1e5x"),
    ],
)
def test_numbers_are_read_as_yaml_1_2_reads_them(tmp_path, text, value):
    f = tmp_path / "params.yaml"
    f.write_text(f"x: {text}\n", encoding="utf-8")
    got = read_params_file(f)["x"]
    assert got == value and type(got) is type(value)


def test_inf_is_a_float(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("x: .inf\n", encoding="utf-8")
    assert math.isinf(read_params_file(f)["x"])


def test_a_learning_rate_in_exponent_form_trains_at_that_rate(tmp_path):
    """The sweep the README suggests (``dvc exp run -S train.lr=1e-9``) writes ``lr: 1e-09``."""
    text = (ROOT / "params.yaml").read_text(encoding="utf-8").replace("lr: 0.002", "lr: 1e-09", 1)
    assert "lr: 1e-09" in text
    f = tmp_path / "params.yaml"
    f.write_text(text, encoding="utf-8")
    assert load_params(f).train.lr == 1e-9


@pytest.mark.parametrize(
    "text, key, lines",
    [
        ("train:\n  lr: 0.1\n  epochs: 2\n  lr: 0.2\n", "lr", (4, 2)),
        ("train:\n  lr: 0.1\nevaluate:\n  threshold: 0.5\ntrain:\n  lr: 0.2\n", "train", (5, 1)),
    ],
)
def test_a_key_written_twice_is_refused_naming_both_lines(tmp_path, text, key, lines):
    f = tmp_path / "params.yaml"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_params(f)
    msg = str(err.value)
    assert msg.startswith(f"{f}: line {lines[0]}: key {key!r} is written twice") and f"line {lines[1]}" in msg


def test_yaml_merge_keys_still_work(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("base: &b {lr: 0.1, epochs: 2}\ntrain:\n  <<: *b\n  lr: 0.2\n", encoding="utf-8")
    assert read_params_file(f)["train"] == {"lr": 0.2, "epochs": 2}


def test_the_store_stage_reads_the_file_the_same_way(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("mlflow:\n  experiment: a\nmlflow:\n  experiment: b\n", encoding="utf-8")
    out = subprocess.run(
        [sys.executable, "-m", "lungseg", "store", "--params", str(f), "--output", str(tmp_path / "store.json")],
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=tmp_path,
    )
    assert out.returncode != 0
    assert out.stderr.strip().splitlines()[-1].startswith(f"error: {f}: line 3: key 'mlflow' is written twice")
    assert not (tmp_path / "store.json").exists()
