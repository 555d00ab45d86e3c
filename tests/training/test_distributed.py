"""DDP training under ``torchrun`` on the CPU (gloo, one thread a process) on the real bundled sample:
the same per-epoch loss as one process with the same global batch, rank 0 alone writing and
logging, exact resume after a SIGKILL of the whole group, one-line errors instead of hangs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch

from lungseg.artifacts.checkpoint import load_checkpoint
from lungseg.config import TrainConfig, load_params
from lungseg.errors import ConfigError
from lungseg.training import train
from lungseg.training.distributed import SINGLE, Distributed, launched, setup
from train_helpers import cli_env, write_params

#: relative tolerance of the per-epoch train loss, DDP (2 ranks) vs one process with the same global
#: batch. Measured (unet, base 4, batch 4 = 2 × 2, 4 epochs, 32², CPU): 0.009 % in epoch 1, then
#: 0.17 %, 0.16 %, 0.23 % as the weights drift apart (10× margin). The ranks see
#: exactly the same augmented images and their loss is a mean over images, so what differs is
#: BatchNorm: each rank normalises its 2 images with their own batch statistics instead of the 4
#: of the global batch (SyncBatchNorm would remove that, but torch has it for CUDA only), and
#: that difference grows as the weights drift apart step by step. Summation order alone is ~1e-7.
LOSS_RTOL = 0.02


def _uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _torchrun(params: Path, data: Path, out: Path, *extra: str, nproc: int = 2) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "lungseg.cli",
        "train",
        "--data",
        str(data),
        "--output",
        str(out),
        "--params",
        str(params),
        *extra,
    ]
    return subprocess.Popen(
        cmd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8"
    )


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with open(task / "children", encoding="utf-8") as fh:
            kids += [int(k) for k in fh.read().split()]
    return kids


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun and every worker at once (the workers run in sessions of their own)."""
    workers = _children(proc.pid)
    for pid in [proc.pid, *workers]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.time() + 30
    while time.time() < deadline and any(Path(f"/proc/{p}").exists() and _state(p) != "Z" for p in workers):
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "X"


def _no_time(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


@pytest.mark.slow
@pytest.mark.integration
def test_torchrun_matches_one_process_and_resumes_exactly_after_sigkill(tmp_path, tiny_data):
    params = write_params(tmp_path / "p.yaml", _uri(tmp_path), epochs=4, batch_size=4)

    single = train(load_params(params), tiny_data, tmp_path / "single")
    straight = _torchrun(params, tiny_data, tmp_path / "ddp")
    log = straight.communicate(timeout=600)[0]
    assert straight.returncode == 0, log
    assert "rank 1: trained 4 epoch(s) as a DDP worker" in log and log.count("epoch 4/4") == 1  # rank 0 reports
    ddp = load_checkpoint(tmp_path / "ddp" / "checkpoint.pt")
    assert ddp["distributed"] == {"world_size": 2, "sync_batchnorm": False}
    assert sorted(ddp["model_state"]) == sorted(load_checkpoint(tmp_path / "single" / "checkpoint.pt")["model_state"])
    losses = [(a["train_loss"], b["train_loss"]) for a, b in zip(single.history, ddp["history"], strict=True)]
    for one, two in losses:
        assert two == pytest.approx(one, rel=LOSS_RTOL), losses
    assert [a == b for a, b in losses] != [True] * 4  # it did run sharded (BatchNorm per rank)

    client = mlflow.MlflowClient(_uri(tmp_path))
    run_id = json.loads((tmp_path / "ddp" / "mlflow_run.json").read_text(encoding="utf-8"))["run_id"]
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert len(runs) == 2  # the single-process run and rank 0's: no run of rank 1
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [1, 2, 3, 4]

    killed_out = tmp_path / "killed"
    killed = _torchrun(params, tiny_data, killed_out)
    ckpt = tmp_path / "killed.partial" / "checkpoint.pt"
    deadline = time.time() + 400
    while time.time() < deadline and killed.poll() is None:
        if ckpt.is_file() and load_checkpoint(ckpt)["epoch"] >= 1:
            _kill_group(killed)
            break
        time.sleep(0.05)
    killed.wait(timeout=30)
    assert killed.returncode == -signal.SIGKILL, killed.stdout.read()
    stopped_at = load_checkpoint(ckpt)["epoch"]
    assert 1 <= stopped_at < 4 and not killed_out.exists()

    resumed = _torchrun(params, tiny_data, killed_out, "--resume")
    log = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, log
    assert f"resuming {ckpt} after epoch {stopped_at}" in log
    a = load_checkpoint(killed_out / "checkpoint.pt")
    assert a["epoch"] == 4 and _no_time(a["history"]) == _no_time(ddp["history"])  # bitwise equal floats
    for key in ddp["model_state"]:
        assert torch.equal(a["model_state"][key], ddp["model_state"][key]), key
    for sa, sb in zip(a["optimizer_state"]["state"].values(), ddp["optimizer_state"]["state"].values()):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(sa[key], sb[key]), key


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.integration
def test_a_dead_rank_ends_the_others_with_one_line_error(tmp_path, tiny_data):
    """Two ranks started by hand (no torchrun to clean up): SIGKILL rank 1 in training; rank 0 must
    not hang in its next collective but exit 2 with one `error:` line naming its rank."""
    params = write_params(tmp_path / "p.yaml", _uri(tmp_path), epochs=50, batch_size=4)
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        env = cli_env(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            LUNGSEG_DDP_TIMEOUT_S="60",
        )
        cmd = [
            sys.executable,
            "-m",
            "lungseg.cli",
            "train",
            "--data",
            str(tiny_data),
            "--output",
            str(tmp_path / "out"),
            "--params",
            str(params),
        ]
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8")
        )
    ckpt = tmp_path / "out.partial" / "checkpoint.pt"
    deadline = time.time() + 300
    while time.time() < deadline and not ckpt.is_file() and procs[0].poll() is None:
        time.sleep(0.05)
    assert ckpt.is_file(), procs[0].communicate(timeout=30)
    procs[1].kill()
    _, err = procs[0].communicate(timeout=200)
    procs[1].wait(timeout=30)
    assert procs[0].returncode == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: rank 0/2: the process group broke") and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()  # nothing half-written; the .partial stays resumable
    assert load_checkpoint(ckpt)["epoch"] >= 1


def _grad_worker(rank: int, port: int, out: str) -> None:
    """One rank of :func:`test_shards_average_to_the_global_batch_gradient`."""
    env = {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    os.environ.update(env)
    torch.set_num_threads(1)
    ddp = setup(TrainConfig(device="cpu", batch_size=4))
    try:
        x, y = _batch()
        results = {}
        for heads in (False, True):
            torch.manual_seed(0)
            model = _bn_free_model()
            net = ddp.wrap(model, TrainConfig(device="cpu"), torch.device("cpu"), heads=heads)
            assert ddp.unwrap(net) is model
            for _ in range(2):  # a second step: DDP refuses it if the first left a reduction unfinished
                model.zero_grad()
                loss = _loss(net(ddp.shard(x)), ddp.shard(y))
                global_loss = ddp.mean(loss)
                loss.backward()
            results[heads] = {"loss": global_loss, "grads": [p.grad for p in model.parameters()]}
        results["many"] = ddp.mean_many(torch.tensor([1.0 + rank, 10.0 * rank]))
        results["epoch"] = _ds_epoch(ddp)
        if rank == 0:
            torch.save(results, out)
    finally:
        ddp.close()


class _TwoHeads(torch.nn.Module):
    """BatchNorm-free, with an auxiliary head that only ``forward_heads`` uses (like Inf-Net's edge head)."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU())
        self.head, self.aux = torch.nn.Conv2d(4, 1, 1), torch.nn.Conv2d(4, 1, 1)

    def forward(self, x):
        return self.head(self.body(x))

    def forward_heads(self, x):
        f = self.body(x)
        return [self.head(f), self.aux(f)]


def _bn_free_model() -> torch.nn.Module:
    return _TwoHeads()


def _ds_epoch(ddp) -> dict:
    """One epoch of the training loop itself (``train_epoch``: 2 global batches of 4, no augmentation)
    on a deep-supervised BatchNorm-free model, wrapped as ``train()`` wraps it; the row and the weights."""
    from lungseg.losses import create_loss
    from lungseg.training.epoch import train_epoch

    torch.manual_seed(0)
    model = _bn_free_model()
    model.deep_supervision_weights = (1.0, 0.5)  # as Inf-Net/AWSnet declare them
    cfg = TrainConfig(device="cpu", batch_size=4, augment=False, epochs=1, lr=0.5)
    net = ddp.wrap(model, cfg, torch.device("cpu"), heads=bool(model.deep_supervision_weights), sample_shape=(1, 8, 8))
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr)  # (Adam's first steps ≈ sign(grad): too touchy)
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(8, 1, 8, 8, generator=g), (torch.rand(8, 8, 8, generator=g) > 0.5).long()  # masks: (N, H, W)
    row = train_epoch(net, create_loss("bce_dice"), optimizer, x, y, cfg, torch.device("cpu"), 1, ddp=ddp)
    return {"row": row, "state": {k: v.clone() for k, v in model.state_dict().items()}}


def _loss(out, y):
    outs = out if isinstance(out, list) else [out]
    return sum(torch.nn.functional.binary_cross_entropy_with_logits(o, y) for o in outs)


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(4, 1, 8, 8, generator=g), (torch.rand(4, 1, 8, 8, generator=g) > 0.5).float()


@pytest.mark.slow
def test_shards_average_to_the_global_batch_gradient(tmp_path):
    """Without BatchNorm, two ranks with half a global batch each get (DDP's average) the gradient
    and the loss of one process on the whole batch — the equivalence the loss comparison rests on —
    through the plain forward (an auxiliary head unused: allowed) and through ``forward_heads``
    (deep supervision: every head's gradient synchronised)."""
    import torch.multiprocessing as mp

    out = tmp_path / "grads.pt"
    mp.spawn(_grad_worker, args=(_free_port(), str(out)), nprocs=2, join=True)
    got = torch.load(out)
    assert got["many"] == [1.5, 5.0]  # rank 0: [1, 0], rank 1: [2, 10]
    x, y = _batch()
    for heads in (False, True):
        torch.manual_seed(0)
        model = _bn_free_model()
        for _ in range(2):
            model.zero_grad()
            loss = _loss(model.forward_heads(x) if heads else model(x), y)
            loss.backward()
        assert got[heads]["loss"] == pytest.approx(loss.item(), rel=1e-6)
        for g, p in zip(got[heads]["grads"], model.parameters(), strict=True):
            if p.grad is None:
                assert g is None  # the auxiliary head of the plain forward
            else:
                torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-7)
        assert (model.aux.weight.grad is None) != heads
    # the loop under DDP (merge of deep supervision with DDP): the heads come out of the DDP module's
    # forward, so the auxiliary head trains with synchronised gradients, and the logged loss/Dice are
    # the global batches' — as one process training the same epoch on the whole batches
    one = _ds_epoch(SINGLE)
    assert got["epoch"]["row"]["train_loss"] == pytest.approx(one["row"]["train_loss"], rel=1e-6)
    assert got["epoch"]["row"]["train_dice"] == pytest.approx(one["row"]["train_dice"], rel=1e-6)
    torch.manual_seed(0)
    init = _bn_free_model().state_dict()
    for key, value in one["state"].items():
        torch.testing.assert_close(got["epoch"]["state"][key], value, rtol=1e-5, atol=1e-6)
        assert not torch.equal(value, init[key]), key  # every head trained, aux included


def test_without_torchrun_nothing_changes():
    assert not launched({}) and launched({"RANK": "0", "WORLD_SIZE": "1"})
    assert setup(TrainConfig(), environ={}) is SINGLE and not SINGLE.active and SINGLE.is_main
    batch = torch.arange(6)
    assert SINGLE.shard(batch) is batch and SINGLE.even_batches([0, 4], 6, 4) == [0, 4]
    assert SINGLE.mean(torch.tensor(2.5)) == 2.5 and SINGLE.dropout_seed(7) == 7
    assert SINGLE.mean_many(torch.tensor([1.5, 2.0])) == [1.5, 2.0]
    model = torch.nn.Linear(1, 1)
    assert SINGLE.wrap(model, TrainConfig(), torch.device("cpu")) is model and SINGLE.unwrap(model) is model


def test_global_batches_are_split_evenly_or_dropped():
    """Each rank takes a contiguous, equal part of every global batch; a batch that does not split
    evenly over the ranks (the last, short one) is left out (no process group is needed for this)."""
    ranks = [Distributed(rank=r, world_size=2, backend="gloo") for r in (0, 1)]
    batch = torch.arange(4)
    assert torch.cat([d.shard(batch) for d in ranks]).tolist() == [0, 1, 2, 3]
    assert ranks[0].even_batches([0, 4, 8, 12], 14, 4) == [0, 4, 8, 12]  # last batch 2 = 1 + 1
    assert ranks[0].even_batches([0, 4, 8, 12], 15, 4) == [0, 4, 8]  # last batch 3: dropped
    three = Distributed(rank=0, world_size=3, backend="gloo")
    assert three.even_batches([0, 6], 10, 6) == [0]
    assert ranks[1].dropout_seed(7) != ranks[0].dropout_seed(7) == 7


def test_settings_ddp_cannot_honour_are_config_errors():
    two = Distributed(rank=0, world_size=2, backend="gloo")
    with pytest.raises(ConfigError, match=r"train.batch_size: 3 does not split over 2 processes"):
        two.check(TrainConfig(batch_size=3), torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"train.sync_batchnorm: torch.nn.SyncBatchNorm runs on CUDA only"):
        two.check(TrainConfig(batch_size=4, sync_batchnorm=True), torch.device("cpu"))
    two.check(TrainConfig(batch_size=4), torch.device("cpu"))
    with pytest.raises(ConfigError, match="MASTER_ADDR, MASTER_PORT not"):
        setup(TrainConfig(device="cpu"), environ={"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match=r"RANK=2, WORLD_SIZE=2"):
        setup(
            TrainConfig(device="cpu"), environ={"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "x", "MASTER_PORT": "1"}
        )
    with pytest.raises(ConfigError, match="LUNGSEG_DDP_TIMEOUT_S='soon'"):
        setup(
            TrainConfig(device="cpu"),
            environ={
                "RANK": "0",
                "WORLD_SIZE": "1",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": "1",
                "LUNGSEG_DDP_TIMEOUT_S": "soon",
            },
        )


def test_one_image_per_rank_with_batchnorm_is_warned(caplog):
    """batch_size 2 on 2 ranks gave BatchNorm one image per rank, silently."""
    import logging

    from lungseg.config import TrainConfig
    from lungseg.models import create_model

    bn_model, in_model = create_model("unet", base_channels=4), create_model("prnet", base_channels=4)
    two = Distributed(rank=0, world_size=2, backend="gloo")
    with caplog.at_level(logging.WARNING, logger="lungseg"):
        assert two.warn_small_batchnorm(bn_model, TrainConfig(batch_size=2)) is True
        assert "each 1 image per step" in caplog.text and "sync_batchnorm" in caplog.text
        caplog.clear()
        assert two.warn_small_batchnorm(bn_model, TrainConfig(batch_size=4)) is False
        assert two.warn_small_batchnorm(bn_model, TrainConfig(batch_size=2, sync_batchnorm=True)) is False
        assert not caplog.text
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in in_model.modules())
    assert two.warn_small_batchnorm(in_model, TrainConfig(batch_size=2)) is has_bn
    assert Distributed(rank=1, world_size=2, backend="gloo").warn_small_batchnorm(bn_model, TrainConfig(batch_size=2))
