"""The CT normalisation a recorded network carries is applied exactly once per call (review of #25:
UNet++ and U²-Net-P call ``self.forward_heads`` from ``forward``, and the pre-hook plus the wrapped
``forward_heads`` z-scored their input twice)."""

from __future__ import annotations

import copy
import io
import threading

import pytest
import torch

from lungseg.models import complete_options, create_model, create_recorded, list_models
from lungseg.models.input_norm import attach

RECORD = {"scheme": "ct", "mean": 0.4, "std": 0.2, "percentile_00_5": 0.1, "percentile_99_5": 0.8, "n_foreground": 9}


def _z(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0.1, 0.8) - 0.4) / 0.2  # nnU-Net's CTNormalization.run by hand


def _pair(name: str):
    kwargs = {"in_channels": 1, "num_classes": 1, "base_channels": 4}
    if name == "unetpp":
        kwargs["deep_supervision"] = True  # forward_heads returns every head
    torch.manual_seed(0)
    net = create_recorded({"name": name, "kwargs": kwargs, "input_norm": RECORD})
    bare = create_model(name, **complete_options(name, kwargs, recorded=True))
    bare.load_state_dict(net.state_dict())
    return net.eval(), bare.eval()


def _size(net) -> int:
    return max(32, int(getattr(net, "size_divisor", 1)))


@pytest.mark.parametrize("name", list_models())
def test_the_recorded_network_is_the_bare_one_fed_the_normalisation_once(name):
    net, bare = _pair(name)
    s = _size(bare)
    x = torch.rand(2, 1, s, s) * 1.2 - 0.1  # values outside the clip range too
    with torch.no_grad():
        assert torch.equal(net(x), bare(_z(x))), name
        if callable(getattr(bare, "forward_heads", None)):
            got, want = net.forward_heads(x), bare.forward_heads(_z(x))
            assert len(got) == len(want)
            for a, b in zip(got, want):
                assert torch.equal(a, b), name
        # the guard closes after each call (and after a failing one): the next call normalises again
        with pytest.raises(ValueError):
            net(torch.rand(1, 1, s + 1, s + 1))
        assert torch.equal(net(x), bare(_z(x)))
        again = torch.load(io.BytesIO(_saved(copy.deepcopy(net))), weights_only=False)  # picklable
        assert torch.equal(again(x), bare(_z(x)))


def test_each_thread_normalises_its_own_call():
    net, bare = _pair("u2net_p")
    x = torch.rand(1, 1, 32, 32)
    want = bare(_z(x)).detach()
    barrier, out = threading.Barrier(4), []

    def run():
        barrier.wait()
        with torch.no_grad():
            out.extend(net(x) for _ in range(3))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 12 and all(torch.equal(o, want) for o in out)


def test_attaching_twice_is_refused():
    net = create_recorded({"name": "unet", "kwargs": {"base_channels": 4}, "input_norm": RECORD})
    with pytest.raises(ValueError, match="already normalises"):
        attach(net, RECORD)


def _saved(net) -> bytes:
    buf = io.BytesIO()
    torch.save(net, buf)
    return buf.getvalue()


@pytest.mark.parametrize("name", ["unetpp", "u2net_p"])
def test_onnx_and_torchscript_exports_carry_the_normalisation_once(name, tmp_path):
    """The two models whose ``forward`` calls ``forward_heads``: the traced graphs hold one clip+z-score."""
    import numpy as np

    from lungseg.inference.export import _onnx_attempt, _torchscript_attempt

    net, bare = _pair(name)
    x = torch.rand(2, 1, 32, 32) * 1.2 - 0.1
    with torch.no_grad():
        want = bare(_z(x)).numpy()
    traced = _torchscript_attempt(net, x, tmp_path / "m.pt")(x.numpy())
    np.testing.assert_allclose(traced, want, rtol=0, atol=1e-5)
    onnx = _onnx_attempt(net, x, tmp_path / "m.onnx", dynamo=False, dynamic=True)(x.numpy())
    np.testing.assert_allclose(onnx, want, rtol=0, atol=1e-4)
