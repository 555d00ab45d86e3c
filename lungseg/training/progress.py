"""Progress inside an epoch, and the clock it prints (see ``docs/training.md``, "Progress")."""

from __future__ import annotations

import logging
import sys
import time

import numpy as np
from tqdm import tqdm

from lungseg.config import TrainConfig

log = logging.getLogger(__name__)


class Progress:
    """Progress inside an epoch: a tqdm bar (images, img/s, ETA, mean loss and Dice) when stderr is a
    terminal; otherwise — KFP and DVC logs, ``nohup`` — one line at most every ``train.progress_every_s``
    seconds: ``epoch 3/30  step 120/500  loss 0.4321  dice 0.812  41.2 img/s  ETA 1:32``.

    :meth:`sync_due` says when the loop should read its device values back: every step when
    ``sync_every_step`` (CPU), else only when a line (or, on a terminal, a bar refresh each second) is due
    — unless ``sync_on_clock`` is false (DDP: the ranks' clocks differ, and a read-back is a collective
    every rank must reach at the same step), then only at the end of the epoch. ``show`` false (DDP
    ranks other than 0): no bar, no lines."""

    def __init__(
        self,
        epoch: int,
        cfg: TrainConfig,
        steps: int,
        images: int,
        *,
        sync_every_step: bool,
        sync_on_clock: bool = True,
        show: bool = True,
    ):
        self.epoch, self.epochs, self.steps, self.images = epoch, cfg.epochs, steps, images
        self.every_s, self.sync_every_step = float(cfg.progress_every_s), sync_every_step
        self.sync_on_clock, self.shown = sync_on_clock, show
        self.done = 0
        self.t0 = self.last = time.monotonic()
        self.bar = None
        if show and sys.stderr.isatty():
            self.bar = tqdm(total=images, unit="img", desc=f"epoch {epoch}/{cfg.epochs}", leave=False)

    def _line_due(self, now: float) -> bool:
        return now - self.last >= (1.0 if self.bar is not None else self.every_s)

    def sync_due(self, step: int) -> bool:
        if self.sync_every_step:
            return True
        return self.sync_on_clock and step < self.steps and self._line_due(time.monotonic())

    def count(self, images: int) -> None:
        self.done += images
        if self.bar is not None:
            self.bar.update(images)

    def show(self, step: int, images: int, losses: list[float], dices: list[float]) -> None:
        """Count ``images`` and, when due, show the running means (the values are read back)."""
        self.count(images)
        now = time.monotonic()
        if self.bar is not None:
            self.last = now
            self.bar.set_postfix(loss=f"{np.mean(losses):.4f}", dice=f"{np.mean(dices):.3f}", refresh=False)
            return
        if not self.shown or step >= self.steps or not self._line_due(now):
            return  # the epoch line follows at the end
        self.last = now
        rate = self.done / max(now - self.t0, 1e-9)
        eta = clock((self.images - self.done) / rate) if rate > 0 else "?"
        log.info(
            f"epoch {self.epoch}/{self.epochs}  step {step}/{self.steps}  loss {np.mean(losses):.4f}  "
            f"dice {np.mean(dices):.3f}  {rate:.1f} img/s  ETA {eta}"
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def clock(seconds: float) -> str:
    """``75.4`` → ``1:15``; ``3725`` → ``1:02:05``."""
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


__all__ = ["Progress", "clock"]
