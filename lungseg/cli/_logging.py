"""The command line's logging: what the library logs is printed on stderr as the message text alone.

The library never prints: each module logs to ``logging.getLogger(__name__)`` (``lungseg.…``,
``pipelines.…``, ``components.…``), so code embedding lungseg (a notebook, a KFP component, a service)
can silence or route it with the standard :mod:`logging` configuration. Without any configuration
Python still shows warnings (its last-resort handler prints the message alone on stderr); the
informational lines (``resuming …``, ``MLflow logging recovered …``) are shown by the command line,
which calls :func:`configure_logging`: one handler per top-level logger of :data:`LOGGERS`, level INFO,
format ``%(message)s`` — the terminal shows the same text as when the library printed it. Records
still propagate to the root logger (a handler the embedding program put there sees them too).
"""

from __future__ import annotations

import logging
import sys

#: the top-level loggers of the packages whose messages the command line prints
LOGGERS = ("lungseg", "pipelines", "components")


class StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (a redirect, pytest's capture),
    not to the stream of the moment the handler was made."""

    def __init__(self, level: int = logging.NOTSET) -> None:
        super().__init__()
        self.setLevel(level)
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):  # the current stderr
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it: always sys.stderr
        pass


def configure_logging(level: int = logging.INFO) -> None:
    """Print the records of :data:`LOGGERS` at ``level`` and above on stderr (idempotent: a second
    call in the same process adds no second handler)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(h, StderrHandler) for h in logger.handlers):
            logger.addHandler(StderrHandler())
        logger.setLevel(level)
