"""The runtime settings of a training step, on the CPU where PyTorch allows
them: bfloat16 autocast (``--amp``) and the channels-last memory format
(``--memory_format``), in a curriculum step, a finetuning step (masked and per
image) and a step of the base ResNet."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import constant_policy_agent
from models import build_agent, build_resnet, get_config
from pretrain import BasePhase
from rl import RLConfig, train_step
from utils.distributed import Processes
from utils.runtime import channels_layout

KEEP = [True, False, True, True, False, True, True, False, True, True, False, True, True, True, False]


def networks(seed: int = 0):
    """R32_C10 and an agent whose policy is the same for every image, up to
    one-in-20,000 samples (logits of +-10), so that two steps sample alike."""
    torch.manual_seed(seed)
    config = get_config("R32_C10")
    return build_resnet(config), constant_policy_agent(build_agent(config), KEEP)


def batch(n: int = 8, layout=torch.contiguous_format):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 3, 32, 32, generator=g).contiguous(memory_format=layout)
    return x, torch.randint(0, 10, (n,), generator=g)


def step(agent, resnet, rl: RLConfig, layout=torch.contiguous_format, seed: int = 5) -> dict:
    """One train_step on copies of the networks; returns its output and the networks after it."""
    agent, resnet = copy.deepcopy(agent).to(memory_format=layout), copy.deepcopy(resnet).to(memory_format=layout)
    agent.train()
    resnet.train(rl.joint)
    if not rl.joint:
        resnet.requires_grad_(False)
    params = list(agent.parameters()) + (list(resnet.parameters()) if rl.joint else [])
    optimizer = torch.optim.Adam(params, lr=1e-3)
    x, y = batch(layout=layout)
    dtypes = []
    resnet.blocks[2][3].conv2.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    torch.manual_seed(seed)
    out = train_step(agent, resnet, x, y, optimizer, 15, rl)
    return {**out, "agent": agent, "resnet": resnet, "dtypes": dtypes}


@pytest.mark.parametrize("joint,execution", [(False, None), (True, None), (True, "per_image")])
def test_a_step_under_bfloat16_autocast_runs_the_networks_in_bfloat16_and_keeps_the_policy_in_float32(
        joint, execution):
    resnet, agent = networks()
    full = step(agent, resnet, RLConfig(joint=joint, execution=execution, penalty=-5))
    half = step(agent, resnet, RLConfig(joint=joint, execution=execution, penalty=-5, amp=torch.bfloat16))
    assert full["dtypes"] and set(full["dtypes"]) == {torch.float32}
    assert half["dtypes"] and set(half["dtypes"]) == {torch.bfloat16}  # the ResNet ran in bfloat16
    assert half["policy"].dtype == torch.float32 and torch.equal(half["policy"], full["policy"])
    assert half["reward"].dtype == torch.float32
    assert torch.isfinite(torch.tensor(half["loss"]))
    assert half["loss"] == pytest.approx(full["loss"], rel=0.05, abs=0.05)  # bfloat16 has 8 bits of mantissa
    for name, p in half["agent"].named_parameters():
        assert p.dtype == torch.float32 and torch.isfinite(p).all(), name  # the weights stay float32
    moved = [n for n, p in half["resnet"].named_parameters() if not torch.equal(p, dict(resnet.named_parameters())[n])]
    assert bool(moved) == joint  # finetuning trains the ResNet, the curriculum leaves it frozen


@pytest.mark.parametrize("joint,execution", [(False, None), (True, None), (True, "per_image")])
def test_a_channels_last_step_equals_the_contiguous_one(joint, execution):
    resnet, agent = networks()
    layouts = []
    resnet.blocks[1][3].register_forward_hook(
        lambda m, i, out: layouts.append(out.is_contiguous(memory_format=torch.channels_last)))
    plain = step(agent, resnet, RLConfig(joint=joint, execution=execution, penalty=-5))
    layouts.clear()
    last = step(agent, resnet, RLConfig(joint=joint, execution=execution, penalty=-5), layout=torch.channels_last)
    assert layouts and all(layouts)  # the blocks ran on channels-last tensors
    assert torch.equal(last["policy"], plain["policy"])
    assert last["loss"] == pytest.approx(plain["loss"], rel=1e-4, abs=1e-5)
    for (name, a), b in zip(plain["agent"].named_parameters(), last["agent"].parameters()):
        assert torch.allclose(a, b, atol=1e-5), name


def test_memory_format_auto_is_channels_last_on_cuda_only():
    assert channels_layout("auto", torch.device("cpu")) == torch.contiguous_format
    assert channels_layout("auto", torch.device("cuda", 0)) == torch.channels_last
    assert channels_layout("channels_last", torch.device("cpu")) == torch.channels_last
    assert channels_layout("contiguous", torch.device("cuda", 0)) == torch.contiguous_format


@pytest.mark.parametrize("precision,layout", [(torch.bfloat16, torch.contiguous_format),
                                              (None, torch.channels_last)])
def test_a_base_resnet_step_runs_under_bfloat16_and_channels_last(precision, layout):
    torch.manual_seed(0)
    resnet = build_resnet(get_config("R32_C10")).to(memory_format=layout)
    optimizer = torch.optim.SGD(resnet.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 1.0)
    phase = BasePhase(resnet, Processes(), None, layout, precision, optimizer, scheduler)
    dtypes = []
    resnet.blocks[0][0].conv1.register_forward_hook(lambda m, i, out: dtypes.append((out.dtype, out.is_contiguous(
        memory_format=torch.channels_last))))
    x, y = batch(16, layout)
    phase.begin_epoch(1)
    losses = [phase.train_batch(x, y)["loss"].mean().item() for _ in range(8)]  # the same batch, 8 steps
    assert dtypes[0] == (precision or torch.float32, layout == torch.channels_last)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert all(p.dtype == torch.float32 for p in resnet.parameters())
