"""SPEC section 7: FLOPs per image (conv 2*Cin*Cout*kh*kw*Hout*Wout, linear
2*in*out, everything else 0), with the paper's reference figures."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from conftest import (
    CIFAR_BLOCK,
    CIFAR_FIRST_OF_STAGE,
    CIFAR_POLICY_NET_K54,
    CIFAR_STEM,
    cifar_block_costs,
    cifar_fc_flops,
    conv_flops,
    linear_flops,
)
from models import get_config
from utils import agent_flops, resnet_flop_table


@pytest.fixture(scope="module")
def tables(built_models):
    """(base, per-block) tables, computed once per configuration."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = resnet_flop_table(built_models(name), get_config(name).input_size)
        return cache[name]

    return get


def full_cost(table) -> int:
    base, blocks = table
    return base + sum(blocks)


# --------------------------------------------------------------------------
# the reference figures
# --------------------------------------------------------------------------
def test_full_resnet110_costs_505775360_flops_5_06e08_as_in_the_paper(tables):
    assert full_cost(tables("R110_C10")) == 505_775_360
    assert f"{505_775_360:.2E}" == "5.06E+08"  # the paper's figure, as printed


def test_full_resnet32_costs_137725184_flops_1_38e08_as_in_the_paper(tables):
    assert full_cost(tables("R32_C10")) == 137_725_184
    assert f"{137_725_184:.2E}" == "1.38E+08"


def test_cifar_policy_net_costs_2_45e07_flops(built_models):
    flops = agent_flops(built_models("R110_C10", "agent"), 32)
    assert f"{flops:.2E}" == "2.45E+07"
    assert flops == CIFAR_POLICY_NET_K54


def test_cifar_policy_net_cost_includes_logit_and_vnet(built_models):
    # ResNet-8: stem, one block per stage, then logit (64 -> K) and vnet (64 -> 1)
    features = CIFAR_STEM + CIFAR_BLOCK + 2 * CIFAR_FIRST_OF_STAGE
    for name, k in [("R32_C10", 15), ("R110_C10", 54), ("R110_C100", 54)]:
        expected = features + linear_flops(64, k) + linear_flops(64, 1)
        assert agent_flops(built_models(name, "agent"), 32) == expected


def test_imagenet_policy_net_costs_4_72e08_flops(built_models):
    assert f"{agent_flops(built_models('R101_ImgNet', 'agent'), 224):.2E}" == "4.72E+08"


def test_cifar_basic_block_costs_9437184_flops(tables):
    _, blocks = tables("R110_C10")
    assert blocks[0] == CIFAR_BLOCK
    assert f"{blocks[0]:.2E}" == "9.44E+06"


def test_first_block_of_cifar_stages_2_and_3_costs_7077888_flops(tables):
    _, blocks = tables("R110_C10")
    assert blocks[18] == CIFAR_FIRST_OF_STAGE
    assert blocks[36] == CIFAR_FIRST_OF_STAGE
    assert f"{blocks[18]:.2E}" == "7.08E+06"


@pytest.mark.parametrize("name,n", [("R32_C10", 5), ("R110_C10", 18), ("R110_C100", 18)])
def test_cifar_block_table_matches_the_layer_shapes(tables, name, n):
    base, blocks = tables(name)
    assert blocks == cifar_block_costs(n)
    assert base == CIFAR_STEM + cifar_fc_flops(get_config(name).num_classes)


def test_resnet101_always_paid_part_is_stem_conv_shortcuts_and_fc(tables):
    base, blocks = tables("R101_ImgNet")
    stem = conv_flops(3, 64, 7, 112, 112)
    shortcuts = (conv_flops(64, 256, 1, 56, 56) + conv_flops(256, 512, 1, 28, 28)
                 + conv_flops(512, 1024, 1, 14, 14) + conv_flops(1024, 2048, 1, 7, 7))
    assert base == stem + shortcuts + linear_flops(2048, 1000)
    assert len(blocks) == 33
    # a middle Bottleneck of stage 3 (256 wide at 14x14)
    assert blocks[10] == (conv_flops(1024, 256, 1, 14, 14) + conv_flops(256, 256, 3, 14, 14)
                          + conv_flops(256, 1024, 1, 14, 14))


# --------------------------------------------------------------------------
# the pinned totals (SPEC section 7), to the FLOP
# --------------------------------------------------------------------------
def test_full_resnet101_costs_15602810880_flops_1_56e10_as_in_the_paper(tables):
    assert full_cost(tables("R101_ImgNet")) == 15_602_810_880
    assert f"{15_602_810_880:.2E}" == "1.56E+10"


@pytest.mark.parametrize("name,flops", [("R32_C10", 24_479_744), ("R110_C10", 24_484_736),
                                        ("R101_ImgNet", 471_918_592), ("R8_Fashion", 24_478_208),
                                        ("R32_Fashion", 24_479_744), ("R110_Fashion", 24_484_736)])
def test_policy_networks_cost_their_pinned_flops(built_models, name, flops):
    assert agent_flops(built_models(name, "agent"), get_config(name).input_size) == flops


# --------------------------------------------------------------------------
# the shallower ResNets of the same recipe (SPEC section 9), and Fashion-MNIST's
# (its gray images padded to 32x32 in three channels: the CIFAR ResNets' figures),
# pinned like the others
# --------------------------------------------------------------------------
@pytest.mark.parametrize("name,n,flops", [
    ("R8_Digits", 1, 24_478_976), ("R14_Digits", 2, 52_790_528), ("R20_Digits", 3, 81_102_080),
    ("R26_Digits", 4, 109_413_632), ("R20_C10", 3, 81_102_080), ("R44_C10", 7, 194_348_288),
    ("R56_C10", 9, 250_971_392),
    ("R8_Fashion", 1, 24_478_976), ("R14_Fashion", 2, 52_790_528), ("R20_Fashion", 3, 81_102_080),
    ("R32_Fashion", 5, 137_725_184), ("R56_Fashion", 9, 250_971_392), ("R110_Fashion", 18, 505_775_360),
])
def test_shallower_cifar_resnets_cost_their_pinned_flops_from_the_layer_shapes(tables, name, n, flops):
    base, blocks = tables(name)
    assert blocks == cifar_block_costs(n) and base == CIFAR_STEM + cifar_fc_flops(10)
    assert full_cost(tables(name)) == flops
    assert get_config(name).num_blocks == 3 * n


def test_resnet50_costs_8178368512_flops_with_the_same_always_paid_part_as_resnet101(tables):
    base, blocks = tables("R50_ImgNet")
    assert len(blocks) == 16 and base == tables("R101_ImgNet")[0]  # stem, conv shortcuts and fc alike
    assert full_cost(tables("R50_ImgNet")) == 8_178_368_512
    assert f"{8_178_368_512:.2E}" == "8.18E+09"  # ResNet-50's usual 4.1 billion multiply-adds


# --------------------------------------------------------------------------
# a policy's cost: counted directly while only the kept blocks run
# --------------------------------------------------------------------------
def device_of(model) -> torch.device:
    return next(model.parameters()).device


class KeptBlocks(nn.Module):
    """Runs ``forward_single``, so that the counter names modules from the ResNet's root."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, policy):
        return self.net.forward_single(x, policy)


def direct_count(resnet, size: int, policy: torch.Tensor) -> dict[str, int]:
    """FLOPs per module name (``""``: the total) counted by PyTorch while only the kept blocks run."""
    with torch.no_grad(), FlopCounterMode(display=False) as mode:
        KeptBlocks(resnet)(torch.rand(1, 3, size, size, device=device_of(resnet)), policy)
    counts = {name.removeprefix("KeptBlocks.net."): sum(ops.values()) for name, ops in mode.get_flop_counts().items()}
    return {**counts, "": mode.get_total_flops()}


@pytest.mark.parametrize("name", ["R110_C10", "R101_ImgNet"])
def test_random_policy_costs_base_plus_its_kept_blocks(tables, built_models, name):
    resnet = built_models(name)
    base, blocks = tables(name)
    gen = torch.Generator().manual_seed(3)
    policy = torch.randint(0, 2, (resnet.num_blocks,), generator=gen).float()
    assert 0 < policy.sum() < resnet.num_blocks
    counts = direct_count(resnet, get_config(name).input_size, policy)
    expected = base + sum(cost for cost, keep in zip(blocks, policy.tolist()) if keep)
    assert counts[""] == expected
    # and the same figure from the layer shapes for the CIFAR network
    if name == "R110_C10":
        shapes = cifar_block_costs(18)
        assert counts[""] == CIFAR_STEM + cifar_fc_flops(10) + sum(
            c for c, keep in zip(shapes, policy.tolist()) if keep)


def test_dropped_first_block_of_an_imagenet_stage_still_pays_for_its_shortcut(tables, built_models):
    resnet = built_models("R101_ImgNet")
    base, blocks = tables("R101_ImgNet")
    first_of_stage_2 = resnet.block_index.index((1, 0))  # block 3
    policy = torch.ones(33)
    policy[first_of_stage_2] = 0
    counts = direct_count(resnet, 224, policy)
    assert counts["ds.1.0"] == conv_flops(256, 512, 1, 28, 28)
    assert not [n for n in counts if n.startswith("blocks.1.0")]
    assert counts[""] == base + sum(blocks) - blocks[first_of_stage_2]


def test_dropping_every_cifar_block_costs_only_stem_and_fc(built_models):
    resnet = built_models("R32_C10")
    assert direct_count(resnet, 32, torch.zeros(15))[""] == CIFAR_STEM + cifar_fc_flops(10)
