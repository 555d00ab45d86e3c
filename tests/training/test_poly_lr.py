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
