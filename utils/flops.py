"""FLOPs per image (SPEC section 7), counted by PyTorch's ``FlopCounterMode``:
every convolution 2*Cin*Cout*kh*kw*Hout*Wout (per group), every linear layer
2*in*out, nothing for BN, ReLU, pooling, additions and the parameter-free
shortcuts, the policy network included by the caller."""

from __future__ import annotations

import re

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


@torch.no_grad()
def module_flops(model: nn.Module, input_size: int) -> dict[str, int]:
    """FLOPs of one image through ``model`` (in eval mode), per module: keys are
    qualified names without the root (``""`` is the total, ``"blocks.0.1"`` a block)."""
    was_training = model.training
    model.eval()
    try:
        parameter = next(model.parameters(), torch.zeros(()))  # a policy source without weights runs on the CPU
        image = torch.zeros(1, 3, input_size, input_size, device=parameter.device, dtype=parameter.dtype)
        with FlopCounterMode(display=False) as mode:
            model(image)
    finally:
        model.train(was_training)
    root = type(model).__name__
    counts = {"": mode.get_total_flops()}
    for name, ops in mode.get_flop_counts().items():
        if name.startswith(f"{root}."):
            counts[name[len(root) + 1:]] = sum(ops.values())
    return counts


_BLOCK = re.compile(r"^blocks\.(\d+)\.(\d+)$")


def resnet_flop_table(resnet: nn.Module, input_size: int) -> tuple[int, list[int]]:
    """(always-paid FLOPs, FLOPs of each block t) of one image. The always-paid
    part is the stem, the head and the conv shortcuts (which run even when
    their block is dropped). A policy u costs ``base + sum_t u_t * block[t]``."""
    counts = module_flops(resnet, input_size)
    index = {(s, i): t for t, (s, i) in enumerate(resnet.block_index)}
    blocks = [0] * len(index)
    for name, flops in counts.items():
        m = _BLOCK.match(name)
        if m:
            blocks[index[(int(m[1]), int(m[2]))]] = flops
    return counts[""] - sum(blocks), blocks


def agent_flops(agent: nn.Module, input_size: int) -> int:
    """FLOPs of one pass of the policy network on one image (logit and vnet included)."""
    return module_flops(agent, input_size)[""]


def policy_flops(table: tuple[int, list[int]], policies: torch.Tensor) -> torch.Tensor:
    """FLOPs of the ResNet under each policy (N x K, 0/1) of one image each, as float64."""
    base, blocks = table
    return base + policies.double().cpu() @ torch.tensor(blocks, dtype=torch.float64)
