"""SPEC sections 1-3: configurations, state-dict keys, and running a policy."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import randomize_bn
from models import CONFIGS, build_agent, build_resnet, get_config
from models.resnet import Bottleneck, FlatResNet

ALL_MODELS = ["R32_C10", "R110_C10", "R32_C100", "R110_C100", "R101_ImgNet"]  # SPEC section 1


# --------------------------------------------------------------------------
# expected keys and shapes, written out from SPEC section 2
# --------------------------------------------------------------------------
def _bn(prefix: str, ch: int) -> dict:
    return {f"{prefix}.weight": (ch,), f"{prefix}.bias": (ch,), f"{prefix}.running_mean": (ch,),
            f"{prefix}.running_var": (ch,), f"{prefix}.num_batches_tracked": ()}


def cifar_shapes(n: int, classes: int | None, prefix: str = "") -> dict:
    shapes = {"conv1.weight": (16, 3, 3, 3), **_bn("bn1", 16)}
    in_ch = 16
    for s, width in enumerate([16, 32, 64]):
        for i in range(n):
            b = f"blocks.{s}.{i}"
            shapes[f"{b}.conv1.weight"] = (width, in_ch, 3, 3)
            shapes.update(_bn(f"{b}.bn1", width))
            shapes[f"{b}.conv2.weight"] = (width, width, 3, 3)
            shapes.update(_bn(f"{b}.bn2", width))
            in_ch = width
    if classes is not None:
        shapes["fc.weight"] = (classes, 64)
        shapes["fc.bias"] = (classes,)
    return {prefix + k: v for k, v in shapes.items()}


def imagenet_bottleneck_shapes(layers: list[int], classes: int) -> dict:
    shapes = {"conv1.weight": (64, 3, 7, 7), **_bn("bn1", 64)}
    in_ch = 64
    for s, (width, n) in enumerate(zip([64, 128, 256, 512], layers)):
        out = 4 * width
        shapes[f"ds.{s}.0.weight"] = (out, in_ch, 1, 1)
        shapes.update(_bn(f"ds.{s}.1", out))
        for i in range(n):
            b = f"blocks.{s}.{i}"
            shapes[f"{b}.conv1.weight"] = (width, in_ch, 1, 1)
            shapes.update(_bn(f"{b}.bn1", width))
            shapes[f"{b}.conv2.weight"] = (width, width, 3, 3)
            shapes.update(_bn(f"{b}.bn2", width))
            shapes[f"{b}.conv3.weight"] = (out, width, 1, 1)
            shapes.update(_bn(f"{b}.bn3", out))
            in_ch = out
    shapes["fc.weight"] = (classes, 2048)
    shapes["fc.bias"] = (classes,)
    return shapes


def imagenet_policy_shapes(num_blocks: int) -> dict:
    shapes = {"conv1.weight": (64, 3, 7, 7), **_bn("bn1", 64)}
    in_ch = 64
    for s, width in enumerate([64, 128, 256, 512]):
        if s > 0:
            shapes[f"ds.{s}.0.weight"] = (width, in_ch, 1, 1)
            shapes.update(_bn(f"ds.{s}.1", width))
        b = f"blocks.{s}.0"
        shapes[f"{b}.conv1.weight"] = (width, in_ch, 3, 3)
        shapes.update(_bn(f"{b}.bn1", width))
        shapes[f"{b}.conv2.weight"] = (width, width, 3, 3)
        shapes.update(_bn(f"{b}.bn2", width))
        in_ch = width
    shapes = {"features." + k: v for k, v in shapes.items()}
    shapes.update({"logit.weight": (num_blocks, 512), "logit.bias": (num_blocks,),
                   "vnet.weight": (1, 512), "vnet.bias": (1,)})
    return shapes


EXPECTED_RESNET = {
    "R32_C10": lambda: cifar_shapes(5, 10),
    "R110_C10": lambda: cifar_shapes(18, 10),
    "R32_C100": lambda: cifar_shapes(5, 100),
    "R110_C100": lambda: cifar_shapes(18, 100),
    "R101_ImgNet": lambda: imagenet_bottleneck_shapes([3, 4, 23, 3], 1000),
}

TABLE = {  # SPEC section 1: blocks K, classes
    "R32_C10": (15, 10), "R110_C10": (54, 10), "R32_C100": (15, 100),
    "R110_C100": (54, 100), "R101_ImgNet": (33, 1000),
}


def shapes_of(model) -> dict:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------
# section 1: the registry
# --------------------------------------------------------------------------
def test_registry_holds_the_five_spec_configurations():
    assert set(ALL_MODELS) <= set(CONFIGS)
    for name in ALL_MODELS:
        assert CONFIGS[name].name == name


@pytest.mark.parametrize("name", ALL_MODELS)
def test_configuration_has_the_spec_block_count_and_classes(name, built_models):
    blocks, classes = TABLE[name]
    cfg = get_config(name)
    resnet = built_models(name)
    assert cfg.num_blocks == blocks
    assert resnet.num_blocks == blocks
    assert cfg.num_classes == classes
    assert resnet.fc.out_features == classes
    assert built_models(name, "agent").num_blocks == blocks


def test_unknown_model_name_is_an_error_listing_every_configuration():
    with pytest.raises(ValueError) as info:
        get_config("R57_C10")
    message = str(info.value)
    assert "R57_C10" in message
    for name in CONFIGS:
        assert name in message


# --------------------------------------------------------------------------
# section 2: state-dict keys (so the authors' checkpoints load)
# --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL_MODELS)
def test_resnet_state_dict_keys_and_shapes_match_the_spec(name, built_models):
    assert shapes_of(built_models(name)) == EXPECTED_RESNET[name]()


SHALLOWER = {"R8_Digits": lambda: cifar_shapes(1, 10), "R14_Digits": lambda: cifar_shapes(2, 10),
             "R20_Digits": lambda: cifar_shapes(3, 10), "R26_Digits": lambda: cifar_shapes(4, 10),
             "R20_C10": lambda: cifar_shapes(3, 10), "R44_C10": lambda: cifar_shapes(7, 10),
             "R56_C10": lambda: cifar_shapes(9, 10),
             "R50_ImgNet": lambda: imagenet_bottleneck_shapes([3, 4, 6, 3], 1000)}


@pytest.mark.parametrize("name", SHALLOWER)
def test_the_shallower_resnets_have_the_flat_layout_of_their_depth(name, built_models):
    """The configurations added for the paper's shallower baselines follow section 2
    with fewer blocks per stage; their agents decide that many blocks."""
    assert shapes_of(built_models(name)) == SHALLOWER[name]()
    assert built_models(name, "agent").num_blocks == get_config(name).num_blocks


@pytest.mark.parametrize("name", ["R32_C10", "R110_C10", "R32_C100", "R110_C100"])
def test_cifar_resnet_shortcuts_have_no_parameters(name, built_models):
    keys = built_models(name).state_dict().keys()
    assert not [k for k in keys if k.startswith("ds.")]


def test_imagenet_resnet101_has_a_conv_shortcut_per_stage(built_models):
    keys = set(built_models("R101_ImgNet").state_dict())
    for s in range(4):
        assert f"ds.{s}.0.weight" in keys
        assert f"ds.{s}.1.running_var" in keys
        assert f"ds.{s}.0.bias" not in keys  # the shortcut conv has no bias


def cifar_policy_shapes(blocks: int) -> dict:
    """SPEC section 2: a ResNet-8 without fc under ``features.``, then logit and vnet."""
    return {**cifar_shapes(1, None, prefix="features."), "logit.weight": (blocks, 64), "logit.bias": (blocks,),
            "vnet.weight": (1, 64), "vnet.bias": (1,)}


@pytest.mark.parametrize("name", ["R32_C10", "R110_C10", "R32_C100", "R110_C100"])
def test_cifar_policy_net_is_resnet8_with_logit_and_vnet(name, built_models):
    blocks, _ = TABLE[name]
    agent = built_models(name, "agent")
    assert shapes_of(agent) == cifar_policy_shapes(blocks)
    assert "features.blocks.0.0.conv1.weight" in agent.state_dict()


FASHION = {f"R{6 * n + 2}_Fashion": n for n in (1, 2, 3, 5, 9, 18)}  # blocks per stage


@pytest.mark.parametrize("name", FASHION)
def test_fashion_networks_are_the_cifar_resnet_and_policy_net_key_for_key(name, built_models):
    """Fashion-MNIST's gray images come in three channels, so its networks are the CIFAR
    ones as they are: the 3 -> 16 stem, section 2's keys, the ResNet-8 policy network."""
    n = FASHION[name]
    assert (get_config(name).depth, get_config(name).num_blocks) == (6 * n + 2, 3 * n)
    assert shapes_of(built_models(name)) == cifar_shapes(n, 10)
    assert shapes_of(built_models(name, "agent")) == cifar_policy_shapes(3 * n)


def test_imagenet_policy_net_is_resnet10_with_logit_and_vnet(built_models):
    agent = built_models("R101_ImgNet", "agent")
    assert shapes_of(agent) == imagenet_policy_shapes(33)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_policy_net_has_no_features_fc(name, built_models):
    keys = built_models(name, "agent").state_dict().keys()
    assert not [k for k in keys if k.startswith("features.fc")]


def test_policy_net_gives_keep_probabilities_and_a_value():
    agent = build_agent(get_config("R32_C10")).eval()
    with torch.no_grad():
        keep_prob, value = agent(torch.rand(3, 3, 32, 32))
    assert keep_prob.shape == (3, 15)
    assert value.shape == (3, 1)
    assert bool(((keep_prob > 0) & (keep_prob < 1)).all())


def test_cifar_conv_init_is_normal_with_he_std():
    torch.manual_seed(0)
    resnet = build_resnet(get_config("R110_C10"))
    w = resnet.blocks[2][5].conv1.weight  # 64 x 64 x 3 x 3
    expected_std = (2.0 / (3 * 3 * 64)) ** 0.5
    assert abs(w.std().item() - expected_std) / expected_std < 0.05
    assert abs(w.mean().item()) < 0.1 * expected_std
    bn = resnet.blocks[2][5].bn1
    assert torch.equal(bn.weight, torch.ones(64)) and torch.equal(bn.bias, torch.zeros(64))


# --------------------------------------------------------------------------
# section 3: the three ways of running a policy agree
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def r32():
    torch.manual_seed(1)
    return randomize_bn(build_resnet(get_config("R32_C10")), seed=1).double().eval()


@pytest.fixture(scope="module")
def small_imagenet():
    """An ImageNet-style flat ResNet of Bottlenecks [1,1,1,1] (64x64 input, 2x2 pool)."""
    torch.manual_seed(2)
    net = FlatResNet(Bottleneck, [1, 1, 1, 1], 7, style="imagenet", pool_size=2)
    return randomize_bn(net, seed=2).double().eval()


def _images(n: int, size: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _random_policies(n: int, k: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 2, (n, k), generator=torch.Generator().manual_seed(seed)).double()


def _reference_cifar_forward(net, x: torch.Tensor, keep: list[bool]) -> torch.Tensor:
    """An independent functional CIFAR ResNet (SPEC sections 2 and 3) on net's weights."""
    sd = net.state_dict()

    def bn(t, p):
        return F.batch_norm(t, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"],
                            sd[f"{p}.bias"], training=False, eps=1e-5)

    x = F.relu(bn(F.conv2d(x, sd["conv1.weight"], padding=1), "bn1"))
    t = 0
    for s, n in enumerate(net.layers):
        for i in range(n):
            stride = 2 if (s > 0 and i == 0) else 1
            if s > 0 and i == 0:  # 2x2 average pool, then zeros double the channels
                pooled = F.avg_pool2d(x, 2)
                shortcut = torch.cat([pooled, torch.zeros_like(pooled)], 1)
            else:
                shortcut = x
            if keep[t]:
                p = f"blocks.{s}.{i}"
                h = F.relu(bn(F.conv2d(x, sd[f"{p}.conv1.weight"], stride=stride, padding=1), f"{p}.bn1"))
                h = bn(F.conv2d(h, sd[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
                x = F.relu(shortcut + h)
            else:
                x = shortcut
            t += 1
    x = F.avg_pool2d(x, 8).flatten(1)
    return F.linear(x, sd["fc.weight"], sd["fc.bias"])


@torch.no_grad()
def test_forward_full_matches_an_independent_cifar_resnet(r32):
    x = _images(2, 32, 10)
    assert torch.allclose(r32.forward_full(x), _reference_cifar_forward(r32, x, [True] * 15), atol=1e-10)


@torch.no_grad()
def test_forward_single_matches_an_independent_cifar_resnet_under_a_policy(r32):
    x = _images(1, 32, 11)
    keep = [bool(v) for v in _random_policies(1, 15, 12)[0].tolist()]
    keep[5] = False  # a dropped first block of stage 2 still applies its shortcut
    out = r32.forward_single(x, torch.tensor(keep, dtype=torch.float64))
    assert torch.allclose(out, _reference_cifar_forward(r32, x, keep), atol=1e-10)


@torch.no_grad()
def test_all_ones_policy_equals_the_full_network(r32):
    x = _images(4, 32, 13)
    ones = torch.ones(4, 15, dtype=torch.float64)
    assert torch.allclose(r32(x, ones), r32.forward_full(x), atol=1e-10)


@torch.no_grad()
def test_forward_single_with_all_ones_equals_the_full_network_per_image(r32):
    x = _images(3, 32, 14)
    full = r32.forward_full(x)
    for i in range(3):
        out = r32.forward_single(x[i:i + 1], torch.ones(15, dtype=torch.float64))
        assert torch.allclose(out, full[i:i + 1], atol=1e-10)


@torch.no_grad()
def test_masked_batch_equals_running_only_kept_blocks_per_image(r32):
    x = _images(4, 32, 15)
    policies = _random_policies(4, 15, 16)
    assert len({tuple(p.tolist()) for p in policies}) > 1  # genuinely mixed policies
    batched = r32(x, policies)
    for i in range(4):
        assert torch.allclose(batched[i:i + 1], r32.forward_single(x[i:i + 1], policies[i]), atol=1e-10)


@torch.no_grad()
def test_policy_changes_the_output(r32):
    x = _images(1, 32, 17)
    policy = torch.ones(15, dtype=torch.float64)
    policy[3] = 0
    assert not torch.allclose(r32.forward_single(x, policy), r32.forward_full(x))


@torch.no_grad()
@pytest.mark.parametrize("stage", [0, 1, 2])
def test_dropping_every_block_of_a_stage_keeps_shapes_and_agreement(r32, stage):
    x = _images(2, 32, 18)
    policies = torch.ones(2, 15, dtype=torch.float64)
    policies[:, stage * 5:(stage + 1) * 5] = 0
    batched = r32(x, policies)
    assert batched.shape == (2, 10)
    for i in range(2):
        single = r32.forward_single(x[i:i + 1], policies[i])
        assert single.shape == (1, 10)
        assert torch.allclose(batched[i:i + 1], single, atol=1e-10)
    keep = [bool(v) for v in policies[0].tolist()]
    assert torch.allclose(batched, _reference_cifar_forward(r32, x, keep), atol=1e-10)


@torch.no_grad()
def test_dropping_all_blocks_leaves_stem_shortcuts_and_head(r32):
    x = _images(2, 32, 19)
    zeros = torch.zeros(2, 15, dtype=torch.float64)
    batched = r32(x, zeros)
    assert batched.shape == (2, 10)
    for i in range(2):
        assert torch.allclose(batched[i:i + 1], r32.forward_single(x[i:i + 1], zeros[i]), atol=1e-10)
    assert torch.allclose(batched, _reference_cifar_forward(r32, x, [False] * 15), atol=1e-10)


def _block_calls(net, x: torch.Tensor, policy: torch.Tensor) -> list[int]:
    """How often each block's function runs in one masked forward pass."""
    calls = [0] * net.num_blocks
    handles = [net.blocks[s][i].register_forward_hook(lambda *_, t=t: calls.__setitem__(t, calls[t] + 1))
               for t, (s, i) in enumerate(net.block_index)]
    try:
        net(x, policy)
    finally:
        for h in handles:
            h.remove()
    return calls


@torch.no_grad()
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_masked_form_skips_a_block_no_image_keeps_in_train_and_eval_mode(mode):
    torch.manual_seed(3)
    net = randomize_bn(build_resnet(get_config("R32_C10")).double(), seed=3).train(mode == "train")
    x = _images(3, 32, 21)
    policies = torch.ones(3, 15, dtype=torch.float64)
    policies[1, ::2] = 0  # mixed policies ...
    policies[2, 1::3] = 0
    policies[:, [2, 9]] = 0  # ... and no image keeps blocks 2 and 9
    buffers = {k: v.clone() for k, v in net.named_buffers()}
    assert _block_calls(net, x, policies) == [0 if t in (2, 9) else 1 for t in range(15)]
    for name, before in buffers.items():
        moved = not torch.equal(before, dict(net.named_buffers())[name])
        # a skipped block's BN statistics and num_batches_tracked stay put; in train mode the others move
        skipped = name.startswith(("blocks.0.2.", "blocks.1.4."))
        assert moved == (mode == "train" and not skipped), name


@torch.no_grad()
def test_masked_form_gives_the_outputs_of_running_only_the_kept_blocks_and_refuses_a_policy_of_another_length():
    torch.manual_seed(3)
    net = randomize_bn(build_resnet(get_config("R32_C10")).double(), seed=3).eval()
    x = _images(3, 32, 21)
    policies = torch.ones(3, 15, dtype=torch.float64)
    policies[1, ::2] = 0
    policies[2, 1::3] = 0
    policies[:, [2, 9]] = 0
    batched = net(x, policies)
    for i in range(3):
        assert torch.allclose(batched[i:i + 1], net.forward_single(x[i:i + 1], policies[i]), atol=1e-10)
    with pytest.raises(ValueError):
        net.forward_single(x[:1], torch.ones(14, dtype=torch.float64))
    with pytest.raises(ValueError):
        net(x[:1], torch.ones(1, 54, dtype=torch.float64))


@torch.no_grad()
def test_imagenet_all_ones_policy_equals_the_full_network(small_imagenet):
    x = _images(2, 64, 20)
    ones = torch.ones(2, 4, dtype=torch.float64)
    full = small_imagenet.forward_full(x)
    assert torch.allclose(small_imagenet(x, ones), full, atol=1e-10)
    for i in range(2):
        assert torch.allclose(small_imagenet.forward_single(x[i:i + 1], ones[i]), full[i:i + 1], atol=1e-10)


@torch.no_grad()
def test_imagenet_dropped_first_blocks_still_apply_their_conv_shortcut(small_imagenet):
    x = _images(4, 64, 21)
    policies = torch.tensor([[0, 1, 0, 1], [1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 0, 1]], dtype=torch.float64)
    batched = small_imagenet(x, policies)
    assert batched.shape == (4, 7)
    for i in range(4):
        single = small_imagenet.forward_single(x[i:i + 1], policies[i])
        assert single.shape == (1, 7)
        assert torch.allclose(batched[i:i + 1], single, atol=1e-10)
    # every block dropped: stem, then the four conv shortcuts, then the head
    net = small_imagenet
    h = net.stem(x[2:3])
    for s in range(4):
        h = net.ds[s](h)
    expected = net.fc(F.avg_pool2d(h, 2).flatten(1))
    assert torch.allclose(batched[2:3], expected, atol=1e-10)


def test_train_mode_masked_form_of_one_image_equals_running_only_its_kept_blocks():
    """Train mode, one image: the masked form and the one-image path see the same
    batch, so their logits and the BN running statistics they leave agree."""
    torch.manual_seed(5)
    masked = randomize_bn(build_resnet(get_config("R32_C10")).double(), seed=5).train()
    single = copy.deepcopy(masked)
    x = _images(1, 32, 23)
    policy = torch.tensor([[1.0, 0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0, 1, 0, 1]], dtype=torch.float64)
    assert torch.allclose(masked(x, policy), single.forward_single(x, policy[0]), atol=1e-10)
    for (name, a), (_, b) in zip(masked.named_buffers(), single.named_buffers()):
        assert torch.allclose(a, b, atol=1e-12), name
