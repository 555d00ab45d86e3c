"""Progress inside an epoch when stderr is not a terminal (KFP/DVC logs, nohup): lines with the step,
images/s and ETA; loss values read back from the device in batches, non-finite ones named by step."""

from __future__ import annotations

import re
import subprocess

import pytest
import torch

from lungseg.errors import TrainingError
from lungseg.training.epoch import NonFiniteLoss, read_back
from lungseg.training.progress import Progress, clock
from train_helpers import cli_env, lungseg_cmd, write_params

LINE = re.compile(
    r"^epoch (\d+)/2  step (\d+)/(\d+)  loss \d+\.\d{4}  dice \d\.\d{3}  (\d+\.\d) img/s  ETA (\d+:\d\d)$"
)


@pytest.mark.slow
def test_progress_lines_when_stderr_is_not_a_terminal(tmp_path, tiny_data):
    params = write_params(tmp_path / "p.yaml", f"sqlite:///{tmp_path / 'mlflow.db'}", epochs=2, progress_every_s=1e-6)
    proc = subprocess.run(
        lungseg_cmd("train", "--data", str(tiny_data), "--output", str(tmp_path / "out"), "--params", str(params)),
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
        encoding="utf-8",
    )
    assert proc.returncode == 0, proc.stderr
    lines = [m for m in map(LINE.match, proc.stderr.splitlines()) if m]
    # 14 training slices, batch 4: steps of 4, 4, 4, 2 images; a line after every step but the last
    # (the epoch's own line follows it), in both epochs
    assert [(int(m[1]), int(m[2]), int(m[3])) for m in lines] == [(e, s, 4) for e in (1, 2) for s in (1, 2, 3)]
    assert all(float(m[4]) > 0 for m in lines)
    assert "\r" not in proc.stderr  # no progress bar drawn into a log


@pytest.mark.slow
def test_no_progress_line_before_the_interval(tmp_path, tiny_data, capsys):
    """The default interval (30 s) is longer than this epoch: only the epoch line (stderr is not a
    terminal under pytest either)."""
    from lungseg.config import load_params
    from lungseg.training import train

    train(
        load_params(write_params(tmp_path / "p.yaml", f"sqlite:///{tmp_path / 'mlflow.db'}", epochs=1)),
        tiny_data,
        tmp_path / "out",
    )
    err = capsys.readouterr().err
    assert "epoch 1/1  loss" in err and " step " not in err


def test_values_read_back_together_name_the_first_non_finite_step():
    """On CUDA the losses of several steps are read back at once (no per-step host sync): a NaN among
    them is still reported at the step where it occurred."""
    pending = [(torch.tensor(v), torch.tensor(0.5)) for v in (0.7, 0.6, float("nan"), 0.4)]
    losses, dices = [0.9], [0.1]
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    with pytest.raises(NonFiniteLoss, match=r"^loss became nan at epoch 3, step 7 \(lr 0.01\)$") as err:
        read_back(pending, losses, dices, epoch=3, step=8, optimizer=optimizer)
    assert isinstance(err.value, TrainingError) and (err.value.epoch, err.value.step) == (3, 7)
    ok = [(torch.tensor(v), torch.tensor(d)) for v, d in ((0.7, 0.25), (0.6, 0.5))]
    losses, dices = [], []
    read_back(ok, losses, dices, epoch=1, step=2, optimizer=optimizer)
    assert losses == [torch.tensor(0.7).item(), torch.tensor(0.6).item()] and dices == [0.25, 0.5] and ok == []


def test_clock():
    assert [clock(s) for s in (0, 75.4, 3725)] == ["0:00", "1:15", "1:02:05"]


def test_under_ddp_the_read_back_does_not_follow_the_clock(capsys):
    """A read-back is a collective under DDP: every rank must do it at the same step, so it cannot
    depend on each rank's clock — every step on the CPU, only at the epoch end on CUDA — and only
    rank 0 prints."""
    import time

    from lungseg.config import TrainConfig

    cfg = TrainConfig(epochs=1, progress_every_s=1e-9)  # a line would be due at every step
    single = Progress(1, cfg, 5, 20, sync_every_step=False)  # one process on CUDA: follows the clock
    cuda_ddp = Progress(1, cfg, 5, 20, sync_every_step=False, sync_on_clock=False)
    cpu_ddp = Progress(1, cfg, 5, 20, sync_every_step=True, sync_on_clock=False, show=False)
    time.sleep(0.01)
    assert single.sync_due(1)
    assert not any(cuda_ddp.sync_due(step) for step in range(1, 6))  # the loop reads back after the last step
    assert all(cpu_ddp.sync_due(step) for step in range(1, 6))
    cpu_ddp.show(1, 4, [0.5], [0.25])
    assert capsys.readouterr().err == ""  # a rank other than 0 shows nothing
    cuda_ddp.show(1, 4, [0.5], [0.25])
    assert "epoch 1/1  step 1/5  loss 0.5000  dice 0.250" in capsys.readouterr().err  # rank 0 does


def test_read_back_averages_over_the_ranks_in_one_collective():
    """Under DDP the values read back are the global batch's: each rank's losses and Dice go through
    one ``mean_many`` (an all-reduce); a non-finite mean is named by its step on every rank."""
    calls = []

    class TwoRanks:  # what Distributed.mean_many computes, with the other rank's values given
        def mean_many(self, values):
            calls.append(values.clone())
            return ((values + torch.tensor([0.5, 0.25, float("nan"), 0.25][: len(values)])) / 2).tolist()

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    losses, dices = [], []
    pending = [(torch.tensor(0.25), torch.tensor(0.75))]
    read_back(pending, losses, dices, epoch=1, step=1, optimizer=optimizer, ddp=TwoRanks())
    assert (losses, dices, len(calls)) == ([0.375], [0.5], 1) and not pending
    pending = [(torch.tensor(0.25), torch.tensor(0.75)), (torch.tensor(0.5), torch.tensor(0.5))]
    with pytest.raises(TrainingError, match="loss became nan at epoch 2, step 5"):
        read_back(pending, losses, dices, epoch=2, step=5, optimizer=optimizer, ddp=TwoRanks())
    assert len(calls) == 2 and calls[1].numel() == 4  # both steps' loss and Dice in one collective
