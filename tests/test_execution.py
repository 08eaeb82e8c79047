"""Per-image execution (each block runs on the images that keep it, in batches):
the masked form's logits and gradients, the blocks' batch sizes, the memory layout."""

from __future__ import annotations

import pytest
import torch

from conftest import randomize_bn
from models import build_resnet, get_config
from models.resnet import Bottleneck, FlatResNet

SPEC_MODELS = ["R32_C10", "R110_C10", "R32_C100", "R110_C100", "R101_ImgNet"]


# --------------------------------------------------------------------------
# per-image execution in batches
# --------------------------------------------------------------------------
def _per_image_case(name: str):
    """A network of the configuration (R101 at 64 x 64 with a 2 x 2 pool, to be quick),
    images, and random policies with an all-kept and a none-kept block."""
    torch.manual_seed(7)
    if name == "R101_ImgNet":
        net, size = FlatResNet(Bottleneck, [3, 4, 23, 3], 10, style="imagenet", pool_size=2), 64
    else:
        net, size = build_resnet(get_config(name)), 32
    net = randomize_bn(net, seed=7).eval()
    k = net.num_blocks
    policies = (torch.rand(5, k) < 0.5).float()
    policies[:, 0] = 1  # every image keeps block 0
    policies[:, k // 2] = 0  # no image keeps the middle block
    policies[0] = 0  # and one image drops every block
    return net, torch.rand(5, 3, size, size), policies


@torch.no_grad()
@pytest.mark.parametrize("name", SPEC_MODELS)
def test_per_image_execution_gives_the_masked_forms_logits(name):
    net, x, policies = _per_image_case(name)
    masked = net(x, policies, execution="masked")
    per_image = net(x, policies, execution="per_image")
    assert torch.allclose(per_image, masked, rtol=1e-4, atol=1e-5)
    assert torch.equal(net(x, policies), per_image)  # the default in eval mode
    for i in range(len(x)):
        assert torch.allclose(per_image[i:i + 1], net.forward_single(x[i:i + 1], policies[i]), rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_per_image_execution_runs_each_block_on_the_images_that_keep_it_only():
    net, x, policies = _per_image_case("R32_C10")
    sizes = {}
    handles = [net.blocks[s][i].register_forward_hook(lambda m, inp, out, t=t: sizes.__setitem__(t, len(inp[0])))
               for t, (s, i) in enumerate(net.block_index)]
    try:
        net(x, policies)
    finally:
        for h in handles:
            h.remove()
    kept = policies.sum(0).long().tolist()
    assert sizes == {t: n for t, n in enumerate(kept) if n > 0}


def test_per_image_execution_gives_the_masked_forms_gradients():
    net, x, policies = _per_image_case("R32_C10")
    net, x, policies = net.double(), x.double(), policies.double()
    grads = {}
    for execution in ("masked", "per_image"):
        net.zero_grad(set_to_none=True)
        net(x, policies, execution=execution).square().sum().backward()
        grads[execution] = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    assert grads["masked"].keys() == grads["per_image"].keys()
    for name, grad in grads["masked"].items():
        assert torch.allclose(grads["per_image"][name], grad, rtol=1e-9, atol=1e-9), name


@pytest.mark.parametrize("grad", [False, True])
def test_per_image_execution_keeps_a_channels_last_layout_and_the_logits(grad):
    net, x, policies = _per_image_case("R32_C10")
    with torch.set_grad_enabled(grad):
        expected = net(x, policies, execution="masked")
        net = net.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
        seen = []
        net.blocks[0][1].register_forward_hook(
            lambda m, inp, out: seen.append(inp[0].is_contiguous(memory_format=torch.channels_last)))
        got = net(x, policies)
    assert 0 < policies[:, 1].sum() < len(x) and seen == [True]  # a gathered sub-batch, still channels-last
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5)
