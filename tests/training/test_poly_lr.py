"""nnU-Net's poly learning rate and SGD settings (lungseg.training.poly_lr) against the formula of
nnunetv2/training/lr_scheduler/polylr.py."""

from __future__ import annotations

import pytest
import torch

from lungseg.training import poly_lr


def _nnunet_formula(initial_lr, current_step, max_steps, exponent=0.9):
    # PolyLRScheduler.step: new_lr = initial_lr * (1 - current_step / max_steps) ** exponent
    return initial_lr * (1 - current_step / max_steps) ** exponent


@pytest.mark.parametrize("num_epochs", [1, 7, 250, 1000])
def test_polynomial_lr_stepped_per_epoch_equals_nnunets_formula(num_epochs):
    p = torch.nn.Parameter(torch.zeros(3))
    opt = poly_lr.nnunet_optimizer([p])
    sched = poly_lr.poly_scheduler(opt, num_epochs)
    for epoch in range(num_epochs):
        lr = opt.param_groups[0]["lr"]
        assert lr == pytest.approx(_nnunet_formula(0.01, epoch, num_epochs), rel=1e-9, abs=1e-15)
        assert lr == pytest.approx(poly_lr.poly_lr(0.01, epoch, num_epochs), rel=1e-9, abs=1e-15)
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-15)  # (1 - 1) ** 0.9 after the last epoch


def test_values_by_hand():
    assert poly_lr.poly_lr(0.01, 0, 1000) == 0.01
    # halfway: 0.01 · 0.5^0.9 = 0.01 · exp(−0.9 · ln 2) = 0.01 · exp(−0.6238325) = 0.0053588673
    assert poly_lr.poly_lr(0.01, 500, 1000) == pytest.approx(0.0053588673, rel=1e-8)
    assert poly_lr.poly_lr(0.01, 999, 1000) == pytest.approx(0.01 * 0.001**0.9)  # the last epoch, 2.0e-5


def test_optimizer_is_nnunets_sgd():
    opt = poly_lr.nnunet_optimizer([torch.nn.Parameter(torch.zeros(1))])
    g = opt.param_groups[0]
    assert isinstance(opt, torch.optim.SGD)
    assert (g["lr"], g["momentum"], g["nesterov"], g["weight_decay"]) == (1e-2, 0.99, True, 3e-5)


def test_rebase_poly_continues_as_a_run_planned_for_the_new_total():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = poly_lr.nnunet_optimizer([p])
    sched = poly_lr.poly_scheduler(opt, 2)
    for _ in range(2):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == 0.0  # the finished plan
    assert poly_lr.rebase_poly(sched, opt, 5) == (2, pytest.approx(poly_lr.poly_lr(0.01, 2, 5)))
    for epoch in (2, 3, 4):
        assert opt.param_groups[0]["lr"] == pytest.approx(poly_lr.poly_lr(0.01, epoch, 5), rel=1e-12)
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-15)


@pytest.mark.slow
def test_resuming_a_finished_poly_run_with_more_epochs_trains_at_the_replanned_rate(tmp_path, tiny_data, caplog):
    """Review of #25: epochs 2 → 4 with --resume trained at lr 0 (weights unchanged), silently."""
    import logging

    from lungseg.artifacts.checkpoint import load_checkpoint
    from lungseg.config import load_params
    from lungseg.training import train
    from train_helpers import write_params

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    kw = {"scheduler": "poly", "optimizer": "sgd_nesterov", "lr": 0.01, "augment": False, "batch_size": 7}
    out = tmp_path / "out"
    train(load_params(write_params(tmp_path / "p.yaml", uri, epochs=2, **kw)), tiny_data, out)
    before = load_checkpoint(out / "checkpoint.pt")
    assert [r["lr"] for r in before["history"]] == pytest.approx([0.01, poly_lr.poly_lr(0.01, 1, 2)])
    with caplog.at_level(logging.WARNING):
        train(load_params(write_params(tmp_path / "q.yaml", uri, epochs=4, **kw)), tiny_data, out, resume=True)
    after = load_checkpoint(out / "checkpoint.pt")
    lrs = [r["lr"] for r in after["history"]]
    assert lrs[2:] == pytest.approx([poly_lr.poly_lr(0.01, 2, 4), poly_lr.poly_lr(0.01, 3, 4)], rel=1e-9)
    assert lrs[2] > 0.003  # not lr 0
    changed = [k for k in before["model_state"] if not torch.equal(before["model_state"][k], after["model_state"][k])]
    assert changed  # the weights trained on
    assert any("poly schedule was planned for 2 epochs and is re-planned for 4" in r.message for r in caplog.records)
