"""Every model of the registry compiles as ONE graph (#24): ``torch.compile(fullgraph=True)`` raises at
the first graph break. The attention kernels with Python loops and worker threads (the blocked /
parallel PCM and DSA) run their reference ops under compile, and the kernel choice no longer asks
torch's thread count while compiling (a graph break): LG-Net's and PR-Net's inductor compiles had
dozens of graphs and took 6–13 min at 32². The backend here is dynamo's ``eager`` (the captured graph
run as is; inductor's own code generation is tests/training/test_compile.py's): what is checked is
the capture, and that the captured graph computes what the model computes."""

from __future__ import annotations

import pytest
import torch

from lungseg.models import create_model, list_models


def _outputs(y):
    return y if isinstance(y, (tuple, list)) else (y,)


@pytest.mark.parametrize("name", list_models())
def test_the_model_compiles_as_one_graph_and_computes_the_same(name, one_torch_thread):
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = create_model(name, base_channels=4).eval()
    x = torch.rand(2, 1, 32, 32)
    compiled = torch.compile(net, backend="eager", fullgraph=True, dynamic=False)
    with torch.no_grad():
        for got, want in zip(_outputs(compiled(x)), _outputs(net(x))):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()


@pytest.mark.parametrize(
    "name, kw", [("lgnet", {"pcm_impl": "parallel", "rse_dropout": 0.0}), ("prnet", {"dsa_impl": "parallel"})]
)
def test_the_attention_models_train_step_compiles_as_one_graph_on_two_threads(name, kw):
    """The train step (forward and backward) with the multi-thread kernels asked for explicitly (no
    dropout: the compiled and the eager step draw other masks)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = create_model(name, base_channels=4, max_tokens=64, **kw).double()  # the same function, other kernels
    x = torch.rand(2, 1, 32, 32, dtype=torch.float64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        compiled = torch.compile(net, backend="eager", fullgraph=True, dynamic=False)
        compiled(x).square().mean().backward()
        grads = [p.grad.clone() for p in net.parameters()]
        net.zero_grad()
        net(x).square().mean().backward()
    finally:
        torch.set_num_threads(threads)
        torch._dynamo.reset()
    for got, p in zip(grads, net.parameters()):
        torch.testing.assert_close(got, p.grad, rtol=1e-7, atol=1e-10)
