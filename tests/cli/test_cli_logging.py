"""The library logs (``logging.getLogger(__name__)``), the command line prints: lungseg.cli._logging."""

from __future__ import annotations

import logging
import subprocess
import sys

from lungseg.cli import main
from lungseg.cli._logging import LOGGERS, StderrHandler, configure_logging


def test_the_command_line_prints_library_messages_as_their_text_alone(capsys):
    assert main(["models", "list"]) == 0
    capsys.readouterr()
    logging.getLogger("lungseg.tracking").info("MLflow logging recovered: 1 queued call(s) delivered")
    logging.getLogger("pipelines.ops").info("data x@HEAD = abc → /staged")
    logging.getLogger("lungseg.evaluation.report").warning("lungseg: warning: a warning")
    logging.getLogger("lungseg.tracking").debug("not shown")
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "MLflow logging recovered: 1 queued call(s) delivered",
        "data x@HEAD = abc → /staged",
        "lungseg: warning: a warning",
    ]


def test_configuring_twice_adds_no_second_handler():
    configure_logging()
    configure_logging()
    for name in LOGGERS:
        assert sum(isinstance(h, StderrHandler) for h in logging.getLogger(name).handlers) == 1


def test_the_library_alone_prints_only_warnings_and_can_be_silenced():
    """Embedded (no command line): Python's own last-resort handler shows warnings, not the
    informational lines; a standard logging setting silences lungseg entirely."""
    code = (
        "import logging, sys\n"
        "import lungseg.tracking\n"
        "log = logging.getLogger('lungseg.tracking')\n"
        "log.info('an info line'); log.warning('a warning')\n"
        "logging.getLogger('lungseg').setLevel(logging.ERROR)\n"
        "log.warning('silenced')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, encoding="utf-8")
    assert out.stderr == "a warning\n" and out.stdout == ""
