"""Training (SPEC sections 4-6): reward, advantage, curriculum, finetuning, and learning end to end."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli
from torch.utils.data import TensorDataset

import cl_training
import finetune
import pretrain
from conftest import ROOT, assert_one_line_error, run_main, script_env, write_cifar10
from models import build_agent, build_resnet, force_prefix, get_config
from rl import RLConfig, exploration_prob, learned_blocks, policy_loss, reward, train_step
from training import Networks, build_networks, fit, make_optimizer
from utils import BlockDropError, parse_base_checkpoint_name, parse_checkpoint_name, to_standard_keys
from utils.config import TrainConfig

NOOP_BLOCKS = [1, 2, 3, 6, 7, 8, 11, 12, 13]  # R32: 15 blocks, these made exact no-ops


def run_script(script: str, *args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=str(cwd),
                          env=script_env(), capture_output=True, text=True, timeout=600)


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
    assert [learned_blocks(e, 15) for e in (0, 1, 13, 14, 99)] == [1, 2, 14, 15, 15]
    assert learned_blocks(2, 54, cl_step=5) == 15
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
    learned = 6
    seen = {}
    real_forward = resnet.forward

    def spy(inputs, policy=None, mode=None):
        seen.setdefault("policies", []).append(policy.clone())
        seen.setdefault("modes", []).append(mode)
        return real_forward(inputs, policy, mode)

    resnet.forward = spy
    opt = torch.optim.SGD(agent.parameters(), lr=0.0)  # lr 0: inspect the gradient only
    out = train_step(agent, resnet, x, y, opt, learned, RLConfig(beta=0.0))
    greedy_policy, sampled_policy = seen["policies"]
    assert seen["modes"] == [None, None] and not resnet.training  # the frozen ResNet runs per image
    for policy in (greedy_policy, sampled_policy, out["policy"]):
        assert torch.all(policy[:, : 15 - learned] == 1)
    # with no entropy bonus the forced-on blocks get no gradient, the learned ones do
    assert torch.all(agent.logit.weight.grad[: 15 - learned] == 0)
    assert torch.all(agent.logit.bias.grad[: 15 - learned] == 0)
    assert agent.logit.bias.grad[15 - learned:].abs().sum() > 0
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


# ---------------------------------------------------------------- the scripts chain
@pytest.mark.slow
def test_pretrain_then_curriculum_then_finetune_then_test(tmp_path):
    data = tmp_path / "data"
    write_cifar10(data, n_train=10, n_test=12)
    common = ["--model", "R32_C10", "--data_dir", str(data), "--workers", "0", "--device", "cpu",
              "--batch_size", "16"]

    pre = run_script("pretrain.py", *common, "--epochs", "2", cwd=tmp_path)
    assert pre.returncode == 0, pre.stderr
    bases = list((tmp_path / "cv/pretrained/R32_C10").glob("pk_E_*_A_*.t7"))
    assert len(bases) == 1 and parse_base_checkpoint_name(bases[0])["epoch"] == 2
    assert set(torch.load(bases[0], weights_only=True)["state_dict"]) >= {"conv1.weight", "layer1.0.conv1.weight"}

    # cl_training finds the base that pretrain.py wrote, without --base
    cl = run_script("cl_training.py", *common, "--max_epochs", "2", "--test_every", "1",
                    "--cv_dir", "cv/cl", cwd=tmp_path)
    assert cl.returncode == 0, cl.stderr
    assert [ln.split(" | ")[0] for ln in cl.stdout.splitlines() if ln.startswith("E: ")] == ["E: 0", "E: 1", "E: 2"]
    assert sum(ln.startswith("TS - A: ") for ln in cl.stdout.splitlines()) == 3
    cl_ckpts = sorted((tmp_path / "cv/cl").glob("ckpt_E_*.t7"), key=lambda p: parse_checkpoint_name(p)["epoch"])
    assert [parse_checkpoint_name(p)["epoch"] for p in cl_ckpts] == [0, 1, 2]
    cl_ckpt = cl_ckpts[-1]
    saved = torch.load(cl_ckpt, weights_only=True)
    assert {"agent", "epoch", "reward", "acc"} <= set(saved) and "resnet" not in saved
    fig = parse_checkpoint_name(cl_ckpt)
    assert fig["acc"] == pytest.approx(saved["acc"], abs=5e-4)
    assert (tmp_path / "cv/cl/args.txt").read_text().count("penalty: -1") == 1
    rows = [json.loads(ln) for ln in (tmp_path / "cv/cl/metrics.jsonl").read_text().splitlines()]
    assert [r["split"] for r in rows].count("test") == 3
    assert list((tmp_path / "cv/cl/log").glob("events.out.tfevents.*"))

    ft = run_script("finetune.py", *common, "--max_epochs", "1", "--test_every", "1",
                    "--pretrained", str(cl_ckpt), "--cv_dir", "cv/ft", cwd=tmp_path)
    assert ft.returncode == 0, ft.stderr
    ft_ckpt = max((tmp_path / "cv/ft").glob("ckpt_E_*.t7"), key=lambda p: parse_checkpoint_name(p)["epoch"])
    ft_fig = parse_checkpoint_name(ft_ckpt)
    assert ft_fig["epoch"] == 1
    assert {"agent", "resnet", "epoch", "reward", "acc"} <= set(torch.load(ft_ckpt, weights_only=True))

    out = run_script("test.py", "--model", "R32_C10", "--data_dir", str(data), "--device", "cpu",
                     "--load", str(ft_ckpt), "--json", "report.json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    # one image at a time with only the kept blocks gives the figures the checkpoint's name promised
    assert round(report["accuracy"], 3) == ft_fig["acc"]
    assert round(report["block_usage"], 2) == ft_fig["blocks"]
    assert report["unique_policies"] == ft_fig["unique"]

    # resuming continues at the next epoch
    resumed = run_script("finetune.py", *common, "--max_epochs", "0", "--test_every", "1",
                         "--load", str(ft_ckpt), "--cv_dir", "cv/ft", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert [ln.split(" | ")[0] for ln in resumed.stdout.splitlines() if ln.startswith("E: ")] == ["E: 2"]


def test_training_without_a_base_says_where_it_is_expected_and_that_pretrain_makes_it(tmp_path):
    write_cifar10(tmp_path / "data", n_train=2, n_test=2)
    res = run_script("cl_training.py", "--model", "R32_C10", "--data_dir", "data", "--device", "cpu",
                     cwd=tmp_path)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr
    assert "cv/pretrained/R32_C10/pk_E_164_A_0.923.t7" in lines[0] and "pretrain.py" in lines[0]


@pytest.mark.parametrize("flags,named", [
    (["--batch_size", "0"], "--batch_size"), (["--alpha", "0.2"], "--alpha"), (["--max_epochs", "x"], "--max_epochs"),
    (["--model", "R57_C10"], "R57_C10"), (["--lr", "nan"], "--lr"), (["--workers", "-1"], "--workers"),
])
@pytest.mark.parametrize("script", [cl_training, finetune])
def test_training_bad_flags_are_one_line_and_exit_2(tmp_path, script, flags, named):
    assert named in assert_one_line_error(run_main(script, *flags, cwd=tmp_path))


def test_finetune_rejects_a_curriculum_checkpoint_of_another_configuration(tmp_path):
    write_cifar10(tmp_path / "data", n_train=2, n_test=2)
    resnet = build_resnet(get_config("R32_C10"))
    torch.save({"state_dict": to_standard_keys(resnet.state_dict())}, tmp_path / "base.t7")
    torch.save({"agent": build_agent(get_config("R110_C10")).state_dict(), "epoch": 3}, tmp_path / "cl.t7")
    res = run_script("finetune.py", "--model", "R32_C10", "--data_dir", "data", "--device", "cpu",
                     "--base", "base.t7", "--pretrained", "cl.t7", cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "54" in res.stderr and "15" in res.stderr


def test_scripts_import_without_running():
    scripts = ["cl_training", "finetune", "pretrain", "sweep", "visualize", "demo", "convert_base"]
    code = f"import {', '.join(scripts)}; from utils.pipeline import load_script; load_script('test')"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=script_env(), capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout == "" and res.stderr == "", res.stderr


def test_parallel_without_two_gpus_says_so_and_trains_on_the_one_device(tmp_path, capsys):
    cfg = get_config("R32_C10")
    torch.manual_seed(0)
    base = tmp_path / "base.t7"
    torch.save({"state_dict": to_standard_keys(build_resnet(cfg).state_dict())}, base)
    images, labels = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    args = cl_training.get_args_parser().parse_args(
        ["--model", "R32_C10", "--base", str(base), "--cv_dir", str(tmp_path / "cv"), "--batch_size", "4",
         "--max_epochs", "0", "--workers", "0", "--device", "cpu", "--parallel"])
    result = fit(TrainConfig.from_args(args, joint=False), datasets=(TensorDataset(images, labels),) * 2)
    out = capsys.readouterr().out
    assert "--parallel needs 2 or more CUDA GPUs; running on cpu" in out
    assert result["epoch"] == 0 and parse_checkpoint_name(result["checkpoint"])["epoch"] == 0


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


def _tiny_run(tmp_path, *extra: str, joint: bool = False, name: str = "cv") -> tuple[dict, TrainConfig]:
    """A run of R32_C10 on 24 random images, in this process."""
    cfg = get_config("R32_C10")
    torch.manual_seed(0)
    base = tmp_path / "base.t7"
    if not base.exists():
        torch.save({"state_dict": to_standard_keys(build_resnet(cfg).state_dict())}, base)
    g = torch.Generator().manual_seed(1)
    data = (TensorDataset(torch.rand(24, 3, 32, 32, generator=g), torch.randint(0, 10, (24,), generator=g)),
            TensorDataset(torch.rand(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)))
    script = finetune if joint else cl_training
    args = script.get_args_parser().parse_args(
        ["--model", "R32_C10", "--base", str(base), "--cv_dir", str(tmp_path / name), "--batch_size", "8",
         "--workers", "0", "--device", "cpu", "--test_every", "1", *extra])
    config = TrainConfig.from_args(args, joint=joint)
    return fit(config, datasets=data), config


def _tensors_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_same_seed_repeats_a_run_exactly(tmp_path):
    first, _ = _tiny_run(tmp_path, "--seed", "3", "--max_epochs", "1", joint=True, name="a")
    second, _ = _tiny_run(tmp_path, "--seed", "3", "--max_epochs", "1", joint=True, name="b")
    a, b = (torch.load(r["checkpoint"], weights_only=True) for r in (first, second))
    assert Path(first["checkpoint"]).name == Path(second["checkpoint"]).name
    assert _tensors_equal(a["agent"], b["agent"]) and _tensors_equal(a["resnet"], b["resnet"])
    assert (tmp_path / "a" / "metrics.jsonl").read_text() == (tmp_path / "b" / "metrics.jsonl").read_text()


def test_load_restores_agent_resnet_optimizer_and_the_epoch(tmp_path):
    first, _ = _tiny_run(tmp_path, "--seed", "0", "--max_epochs", "0", "--lr", "1e-3", joint=True)
    saved = torch.load(first["checkpoint"], weights_only=True)
    config = TrainConfig(joint=True, model="R32_C10", load=first["checkpoint"], lr=1e-3, base=None)
    nets = build_networks(config)
    assert nets.start_epoch == 1
    assert _tensors_equal(nets.agent.state_dict(), saved["agent"])
    assert _tensors_equal(nets.resnet.state_dict(), saved["resnet"])
    optimizer, _ = make_optimizer(config, nets)
    state = optimizer.state_dict()["state"]
    assert state.keys() == saved["optimizer"]["state"].keys() and len(state) > 0
    for index, entry in saved["optimizer"]["state"].items():
        assert all(torch.equal(state[index][k], v) for k, v in entry.items())


def test_an_optimizer_state_that_does_not_fit_is_an_error_naming_the_file(tmp_path):
    first, _ = _tiny_run(tmp_path, "--seed", "0", "--max_epochs", "0", joint=True)
    ckpt = torch.load(first["checkpoint"], weights_only=True)
    ckpt["optimizer"]["param_groups"][0]["params"] = ckpt["optimizer"]["param_groups"][0]["params"][:5]
    bad = tmp_path / "bad_optimizer.t7"
    torch.save(ckpt, bad)
    config = TrainConfig(joint=True, model="R32_C10", load=str(bad))
    with pytest.raises(BlockDropError, match="bad_optimizer.t7.*optimizer state does not fit"):
        make_optimizer(config, build_networks(config))


def test_learning_rate_follows_the_originals_step_schedule_from_any_start_epoch():
    agent = build_agent(get_config("R32_C10"))
    for start in (0, 4):
        config = TrainConfig(joint=False, model="R32_C10", lr=3e-3, lr_decay_ratio=0.1, epoch_step=3)
        nets = Networks(agent, build_resnet(get_config("R32_C10")), start, None, None, "random init", None)
        optimizer, schedule = make_optimizer(config, nets)
        for epoch in range(start, 10):
            assert optimizer.param_groups[0]["lr"] == 3e-3 * 0.1 ** (epoch // 3), epoch  # the original's formula
            optimizer.step()  # no gradients: nothing moves, but the schedule sees the usual order
            schedule.step()


def test_pretrain_learning_rate_warms_up_then_drops_at_each_milestone():
    args = pretrain.get_args_parser().parse_args(["--lr", "0.1", "--warmup", "1", "--milestones", "3", "5"])
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=args.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: pretrain.lr_factor(args, e + 1))
    seen = []
    for _ in range(6):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert seen == pytest.approx([0.01, 0.1, 0.01, 0.01, 0.001, 0.001], rel=1e-12)


def test_finetuning_with_per_image_runs_each_block_on_the_images_that_keep_it(tmp_path):
    torch.manual_seed(0)
    cfg = get_config("R32_C10")
    resnet, agent = build_resnet(cfg).train(), build_agent(cfg).train()
    optimizer = torch.optim.Adam(list(agent.parameters()) + list(resnet.parameters()), lr=1e-3)
    calls = {}
    for t, (s, i) in enumerate(resnet.block_index):
        resnet.blocks[s][i].register_forward_hook(lambda m, inp, out, t=t: calls.setdefault(t, []).append(len(inp[0])))
    x, y = _small_batch(8)
    out = train_step(agent, resnet, x, y, optimizer, 15, RLConfig(penalty=-5, joint=True, execution="per_image"))
    kept = out["policy"].sum(0).long().tolist()
    assert any(0 < n < 8 for n in kept)  # some blocks run on some of the images only
    for t, n in enumerate(kept):
        if n:  # the sampled pass (the last call) ran the block on its images only
            assert calls[t][-1] == n, (t, calls[t], n)
    result, _ = _tiny_run(tmp_path, "--per_image", "--max_epochs", "0", "--seed", "0", joint=True)
    assert "per_image: True\n" in (tmp_path / "cv" / "args.txt").read_text() and result["checkpoint"]
