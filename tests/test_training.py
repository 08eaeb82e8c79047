"""The method (rl.py, SPEC sections 4 and 5): reward, advantage, curriculum, one
curriculum and one finetuning step, the REINFORCE direction, and learning end to end."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli
from torch.utils.data import TensorDataset

import cl_training
from models import build_agent, build_resnet, force_prefix, get_config
from rl import RLConfig, decided_blocks, exploration_prob, policy_loss, reward, train_step
from training import fit
from utils import parse_checkpoint_name, to_standard_keys
from utils.config import TrainConfig

NOOP_BLOCKS = [1, 2, 3, 6, 7, 8, 11, 12, 13]  # R32: 15 blocks, these made exact no-ops


# ---------------------------------------------------------------- reward, advantage
def test_reward_is_one_minus_squared_usage_when_correct_and_penalty_when_wrong():
    preds = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    targets = torch.tensor([1, 1, 1])  # right, wrong, right
    policy = torch.tensor([[1.0, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    r, correct = reward(preds, targets, policy, penalty=-5.0)
    assert correct.tolist() == [1.0, 0.0, 1.0]
    assert torch.allclose(r, torch.tensor([1 - 0.5 ** 2, -5.0, 1.0]))


def test_self_critical_advantage_compares_sample_with_greedy_baseline():
    targets = torch.tensor([0, 0])
    greedy = torch.tensor([[1.0, 1, 1, 1], [1, 1, 1, 1]])
    sample = torch.tensor([[1.0, 0, 0, 0], [1, 0, 0, 0]])
    right, wrong = torch.tensor([[5.0, 0.0]]), torch.tensor([[0.0, 5.0]])
    r_map, _ = reward(torch.cat([right, right]), targets, greedy, penalty=-1)
    r_sample, _ = reward(torch.cat([right, wrong]), targets, sample, penalty=-1)
    advantage = r_sample - r_map
    # image 0: same answer, fewer blocks -> positive; image 1: wrong -> penalty - 0
    assert torch.allclose(advantage, torch.tensor([1 - 1 / 16, -1.0]))


def test_curriculum_hands_the_last_blocks_to_the_policy_one_per_epoch():
    assert [decided_blocks(e, 15) for e in (0, 1, 13, 14, 99)] == [1, 2, 14, 15, 15]
    assert decided_blocks(2, 54, cl_step=5) == 15
    assert force_prefix(torch.zeros(2, 5), 2).tolist() == [[1, 1, 1, 0, 0]] * 2


# ---------------------------------------------------------------- one step
def _small_batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_curriculum_step_forces_prefix_masks_its_gradient_and_freezes_the_resnet():
    resnet, x, y = noop_base(16)  # predictions that change when real blocks drop
    agent = build_agent(get_config("R32_C10"))
    resnet.requires_grad_(False)
    before = copy.deepcopy(resnet.state_dict())
    decided = 6
    seen = {}
    real_forward = resnet.forward

    def spy(inputs, policy=None, execution=None):
        seen.setdefault("policies", []).append(policy.clone())
        seen.setdefault("executions", []).append(execution)
        return real_forward(inputs, policy, execution)

    resnet.forward = spy
    opt = torch.optim.SGD(agent.parameters(), lr=0.0)  # lr 0: inspect the gradient only
    out = train_step(agent, resnet, x, y, opt, decided, RLConfig(beta=0.0))
    greedy_policy, sampled_policy = seen["policies"]
    assert seen["executions"] == [None, None] and not resnet.training  # the frozen ResNet runs per image
    for policy in (greedy_policy, sampled_policy, out["policy"]):
        assert torch.all(policy[:, : 15 - decided] == 1)
    # with no entropy bonus the forced-on blocks get no gradient, the decided ones do
    assert torch.all(agent.logit.weight.grad[: 15 - decided] == 0)
    assert torch.all(agent.logit.bias.grad[: 15 - decided] == 0)
    assert agent.logit.bias.grad[15 - decided:].abs().sum() > 0
    after = resnet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # bitwise, BN statistics included


def test_finetuning_step_changes_both_networks():
    torch.manual_seed(0)
    cfg = get_config("R32_C10")
    resnet, agent = build_resnet(cfg).train(), build_agent(cfg).train()
    r0, a0 = copy.deepcopy(resnet.state_dict()), copy.deepcopy(agent.state_dict())
    opt = torch.optim.Adam(list(agent.parameters()) + list(resnet.parameters()), lr=1e-3)
    x, y = _small_batch()
    train_step(agent, resnet, x, y, opt, 15, RLConfig(penalty=-5, joint=True))
    assert not torch.equal(r0["blocks.0.0.conv1.weight"], resnet.state_dict()["blocks.0.0.conv1.weight"])
    assert not torch.equal(r0["fc.weight"], resnet.state_dict()["fc.weight"])
    assert not torch.equal(a0["logit.weight"], agent.state_dict()["logit.weight"])
    assert not torch.equal(a0["features.conv1.weight"], agent.state_dict()["features.conv1.weight"])


def _fix_policy(agent, keep: list[bool]) -> None:
    """Logit weights 0, biases +-30: with alpha 1 every image samples exactly this policy."""
    with torch.no_grad():
        agent.logit.weight.zero_()
        agent.logit.bias.copy_(torch.tensor([30.0 if k else -30.0 for k in keep]))


def test_a_block_the_whole_batch_skips_keeps_its_bn_statistics_and_takes_adams_zero_gradient_step():
    torch.manual_seed(0)
    cfg = get_config("R32_C10")
    resnet, agent = build_resnet(cfg).train(), build_agent(cfg).train()
    optimizer = torch.optim.Adam(list(agent.parameters()) + list(resnet.parameters()), lr=1e-2)
    x, y = _small_batch(8)
    rl = RLConfig(alpha=1.0, penalty=-5, joint=True)
    skipped, never = 3, 11  # block 3 runs in step 1 only; block 11 never runs
    block = resnet.blocks[0][3]
    idle = resnet.blocks[2][1]
    idle_before = copy.deepcopy(idle.state_dict())

    _fix_policy(agent, [t != never for t in range(15)])
    out = train_step(agent, resnet, x, y, optimizer, 15, rl)
    assert out["policy"][:, skipped].all() and not out["policy"][:, never].any()
    buffers = {k: v.clone() for k, v in block.named_buffers()}
    params = {k: v.detach().clone() for k, v in block.named_parameters()}
    reference = {k: (v.detach().clone().requires_grad_(), copy.deepcopy(optimizer.state[v]))
                 for k, v in block.named_parameters()}

    _fix_policy(agent, [t not in (skipped, never) for t in range(15)])
    out = train_step(agent, resnet, x, y, optimizer, 15, rl)
    assert not out["policy"][:, skipped].any() and not out["policy"][:, never].any()
    # the skipped block did not run: BN running statistics and num_batches_tracked stay put ...
    for name, value in block.named_buffers():
        assert torch.equal(value, buffers[name]), name
    # ... and, its gradient zeroed in place (PyTorch 0.3), Adam moved it with a zero gradient
    for name, param in block.named_parameters():
        assert param.grad is not None and not param.grad.any(), name
        ref_param, ref_state = reference[name]
        ref_opt = torch.optim.Adam([ref_param], lr=1e-2)
        ref_opt.state[ref_param] = ref_state
        ref_param.grad = torch.zeros_like(ref_param)
        ref_opt.step()
        assert not torch.equal(param.detach(), params[name]), name
        assert torch.allclose(param.detach(), ref_param.detach(), rtol=0, atol=1e-7), name
    # a block that never ran has no gradient and no Adam state: untouched
    for name, param in idle.named_parameters():
        assert param.grad is None and param not in optimizer.state, name
    for name, value in idle.state_dict().items():
        assert torch.equal(value, idle_before[name]), name


@pytest.mark.parametrize("joint", [False, True])
def test_reinforce_step_raises_the_probability_of_an_action_with_positive_advantage(joint):
    torch.manual_seed(0)
    agent = build_agent(get_config("R32_C10"))
    x, _ = _small_batch(4)
    policy = torch.bernoulli(torch.full((4, 15), 0.5))
    advantage = torch.ones(4)
    cfg = RLConfig(beta=0.0, joint=joint)

    def log_prob_of_policy():
        p = agent(x)[0]
        p = cfg.alpha * p + (1 - cfg.alpha) * (1 - p)
        return (policy * p.log() + (1 - policy) * (1 - p).log()).sum().item()

    before = log_prob_of_policy()
    opt = torch.optim.SGD(agent.parameters(), lr=1e-2)
    loss = policy_loss(agent(x)[0], policy, advantage, 15, cfg)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert log_prob_of_policy() > before
    # and a negative advantage lowers it
    agent2 = copy.deepcopy(agent)
    before2 = log_prob_of_policy()
    opt = torch.optim.SGD(agent.parameters(), lr=1e-2)
    loss = policy_loss(agent(x)[0], policy, -advantage, 15, cfg)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert log_prob_of_policy() < before2
    del agent2


# ---------------------------------------------------------------- learning, end to end
def noop_base(n_images: int, seed: int = 0):
    """An R32_C10 base in which the blocks NOOP_BLOCKS are exact no-ops (last BN
    weight and bias zero, so relu(x + 0) = x on post-ReLU x) and images labelled
    by the base's own full-network predictions; the fc is centred on these
    images so that the labels spread over the classes."""
    torch.manual_seed(seed)
    cfg = get_config("R32_C10")
    resnet = build_resnet(cfg).eval()
    with torch.no_grad():
        for t in NOOP_BLOCKS:
            s, i = resnet.block_index[t]
            resnet.blocks[s][i].bn2.weight.zero_()
            resnet.blocks[s][i].bn2.bias.zero_()
        images = F.interpolate(torch.rand(n_images, 3, 4, 4), size=32, mode="bilinear")
        feats = resnet.forward_features(images)
        resnet.fc.weight.div_(feats.std(0) + 1e-6)
        resnet.fc.bias.copy_(-(resnet.fc.weight @ feats.mean(0)))
        labels = resnet.forward_full(images).argmax(1)
    return resnet, images, labels


@pytest.mark.slow
def test_curriculum_learns_to_drop_the_no_op_blocks_and_keep_the_others(tmp_path):
    n_train, n_test = 512, 128
    resnet, images, labels = noop_base(n_train + n_test)
    assert len(labels.unique()) >= 5  # the labels are not one class
    base = tmp_path / "base.t7"
    torch.save({"state_dict": to_standard_keys(resnet.state_dict())}, base)
    args = cl_training.get_args_parser().parse_args(
        ["--model", "R32_C10", "--base", str(base), "--cv_dir", str(tmp_path / "cv"),
         "--batch_size", "64", "--max_epochs", "20", "--cl_step", "3", "--lr", "1e-2",
         "--test_every", "10", "--workers", "0", "--seed", "0", "--device", "cpu"])
    data = (TensorDataset(images[:n_train], labels[:n_train]), TensorDataset(images[n_train:], labels[n_train:]))
    result = fit(TrainConfig.from_args(args, joint=False), datasets=data)

    assert result["acc"] == 1.0
    ckpt = torch.load(result["checkpoint"], weights_only=True, map_location="cpu")
    agent = build_agent(get_config("R32_C10")).eval()
    agent.load_state_dict(ckpt["agent"])
    with torch.no_grad():
        keep_rate = (agent(images[n_train:])[0] >= 0.5).float().mean(0)
    real = [t for t in range(15) if t not in NOOP_BLOCKS]
    assert torch.all(keep_rate[real] == 1.0), keep_rate.tolist()
    assert torch.all(keep_rate[NOOP_BLOCKS] <= 0.1), keep_rate.tolist()
    assert parse_checkpoint_name(result["checkpoint"])["blocks"] == pytest.approx(result["blocks"], abs=0.005)


# ---------------------------------------------------------------- the pieces of the recipe
def test_exploration_probabilities_stay_within_one_minus_alpha_and_alpha():
    keep_prob = torch.linspace(0, 1, 101)
    for alpha in (0.5, 0.8, 0.95, 1.0):
        explore = exploration_prob(keep_prob, alpha)
        assert explore.min() >= 1 - alpha - 1e-7 and explore.max() <= alpha + 1e-7
        assert explore[0].item() == pytest.approx(1 - alpha) and explore[-1].item() == pytest.approx(alpha)
    assert torch.allclose(exploration_prob(keep_prob, 0.5), torch.full_like(keep_prob, 0.5))
    # a block the agent is sure to drop is still sampled about 1 - alpha of the time
    torch.manual_seed(0)
    samples = Bernoulli(probs=exploration_prob(torch.zeros(20000), 0.8)).sample()
    assert samples.mean().item() == pytest.approx(0.2, abs=0.01)


def test_entropy_bonus_has_the_papers_sign_and_scale():
    keep_prob = torch.tensor([[0.1, 0.6, 0.9], [0.5, 0.3, 0.7]], requires_grad=True)
    policy = torch.tensor([[0.0, 1, 1], [1, 0, 1]])
    cfg = RLConfig(alpha=0.8, beta=0.25)
    # with no advantage the loss is the entropy term alone: -beta * sum(-p' log p') / B
    loss = policy_loss(keep_prob, policy, torch.zeros(2), 3, cfg)
    explore = 0.8 * keep_prob.detach() + 0.2 * (1 - keep_prob.detach())
    entropy = (-explore * explore.log()).sum()
    assert loss.item() == pytest.approx(-0.25 * entropy.item() / 2, rel=1e-6)
    # minimising it raises the entropy (SPEC's sum of -p' log p', largest at p' = 1/e)
    loss.backward()
    with torch.no_grad():
        stepped = keep_prob - 0.05 * keep_prob.grad
    explore_after = 0.8 * stepped + 0.2 * (1 - stepped)
    assert (-explore_after * explore_after.log()).sum() > entropy
    # and it counts every block, the curriculum's forced-on ones too
    loss_one_learned = policy_loss(keep_prob.detach(), policy, torch.zeros(2), 1, cfg)
    assert loss_one_learned.item() == pytest.approx(loss.item())
    # joint finetuning has no entropy term
    assert policy_loss(keep_prob.detach(), policy, torch.zeros(2), 3, RLConfig(beta=0.25, joint=True)).item() == 0
