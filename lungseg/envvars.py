"""Environment variables set for a while and restored exactly: one implementation for the whole package.

:class:`scoped_environ` sets (a string) or unsets (``None``) variables; leaving it — normally, on an
exception, or by :meth:`~scoped_environ.restore` for an override that outlives one block (an MLflow run
open across calls) — puts back exactly what was there before: a variable that was unset is removed
again, one that was set gets its old value back, whatever the block did to it meanwhile. Variables it
was not given are never touched. ``only_unset=True`` leaves alone any variable the user has already set
(the defaults of :data:`lungseg.tracking.HTTP_DEFAULTS` give way to the user's own values)::

    with scoped_environ({"MLFLOW_TRACKING_URI": uri}):
        ...  # subprocesses started here inherit it
"""

from __future__ import annotations

import os
from collections.abc import Mapping


class scoped_environ:  # lower case like contextlib.suppress: used as `with scoped_environ({...}):`
    """Set/unset ``values`` in ``os.environ`` until the block ends (or :meth:`restore`)."""

    def __init__(self, values: Mapping[str, str | None], *, only_unset: bool = False) -> None:
        self.values = dict(values)
        self.only_unset = only_unset
        self._saved: dict[str, str | None] | None = None

    def apply(self) -> scoped_environ:
        """Set the variables now (once); the previous values are kept for :meth:`restore`."""
        if self._saved is not None:
            raise RuntimeError("scoped_environ applied twice")
        chosen = {k: v for k, v in self.values.items() if not (self.only_unset and k in os.environ)}
        self._saved = {k: os.environ.get(k) for k in chosen}
        for key, value in chosen.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        return self

    def restore(self) -> None:
        """Put back what :meth:`apply` found (idempotent; a no-op before :meth:`apply`)."""
        saved, self._saved = self._saved, None
        for key, value in (saved or {}).items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    @property
    def active(self) -> bool:
        return self._saved is not None

    def __enter__(self) -> scoped_environ:
        return self.apply()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.restore()
