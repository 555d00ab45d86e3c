import subprocess
import sys

import pytest

from lungseg.cli import main


def test_help_imports_no_heavy_module():
    """`lungseg --help` must not import torch/mlflow/kfp/…: they take seconds to import, and --help
    answers without them (its speed itself is not asserted: a test is no benchmark)."""
    code = (
        "import sys, contextlib, io\n"
        "from lungseg.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try: main(['--help'])\n"
        "    except SystemExit: pass\n"
        "heavy = [m for m in ('torch', 'mlflow', 'kfp', 'great_expectations', 'pandas', 'monai') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, encoding="utf-8")
    assert out.stdout.strip() == "", f"heavy modules imported by --help: {out.stdout}"


def test_every_subcommand_is_listed():
    out = subprocess.run(
        [sys.executable, "-m", "lungseg.cli", "--help"], capture_output=True, text=True, check=True, encoding="utf-8"
    )
    for name in ("preprocess", "train", "evaluate", "register", "models", "pipeline"):
        assert name in out.stdout


def test_config_error_is_one_line_and_nonzero(tmp_path, capsys):
    bad = tmp_path / "params.yaml"
    bad.write_text("train: {epochs: many}\n", encoding="utf-8")
    code = main(
        [
            "preprocess",
            "--dataset",
            "medseg",
            "--input",
            str(tmp_path),
            "--output",
            str(tmp_path.parent / f"{tmp_path.name}-o"),  # beside the input: never inside it
            "--params",
            str(bad),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "train.epochs: expected an integer" in err


@pytest.mark.slow
def test_python_dash_m_lungseg_is_the_cli(tmp_path):
    """`python -m lungseg` runs the same command line as the `lungseg` script: same subcommands, and a
    user error is one `error:` line with exit status 2 (not a traceback)."""
    out = subprocess.run(
        [sys.executable, "-m", "lungseg", "--help"], capture_output=True, text=True, check=True, encoding="utf-8"
    )
    for name in ("preprocess", "train", "evaluate", "register", "models", "results", "pipeline"):
        assert name in out.stdout
    assert (
        out.stdout
        == subprocess.run(
            [sys.executable, "-m", "lungseg.cli", "--help"],
            capture_output=True,
            text=True,
            check=True,
            encoding="utf-8",
        ).stdout
    )
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "lungseg",
            "preprocess",
            "--dataset",
            "medsegg",
            "--input",
            str(tmp_path),
            "--output",
            str(tmp_path.parent / f"{tmp_path.name}-out"),  # beside the input: never inside it
        ],
        capture_output=True,
        text=True,
        encoding="utf-8",
    )
    assert bad.returncode == 2
    assert (
        bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1 and "unknown dataset 'medsegg'" in bad.stderr
    )
    assert not (tmp_path / "out").exists()
