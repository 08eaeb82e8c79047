"""The BlockDrop engine, shared by the scripts: sampling policies, the reward,
the REINFORCE loss, one training epoch, the one prediction loop, logging, and
``fit``, the training driver of ``cl_training.py`` and ``finetune.py``.

Symbols as in the paper: K blocks, policy u in {0,1}^K, alpha bounds the
exploration probabilities away from 0 and 1, beta weighs the entropy bonus,
``penalty`` is the paper's gamma (the reward of a wrong prediction).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributions import Bernoulli
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader
from tqdm import tqdm

from models import BlockDrop, build_agent, build_resnet, force_prefix, get_config, greedy_policy
from utils.checkpoints import (
    load_blockdrop_checkpoint,
    load_default_or_given_base,
    load_policy_start,
    save_args,
    save_blockdrop_checkpoint,
)
from utils.cli import BlockDropError, choose_device, seed_everything
from utils.data import get_datasets


# --------------------------------------------------------------------------
# policies and rewards
# --------------------------------------------------------------------------
def exploration_prob(keep_prob: torch.Tensor, alpha: float) -> torch.Tensor:
    """p' = alpha * p + (1 - alpha) * (1 - p): keeps every block's probability
    inside [1 - alpha, alpha] so sampling keeps exploring."""
    return alpha * keep_prob + (1 - alpha) * (1 - keep_prob)


def learned_blocks(epoch: int, num_blocks: int, cl_step: int = 1) -> int:
    """Curriculum: at epoch e the policy decides the last ``min(cl_step * (e + 1), K)``
    blocks; the ones before are forced on (with ``cl_step`` 1: e + 1, SPEC section 4)."""
    return max(1, min(cl_step * (epoch + 1), num_blocks))


def reward(preds: torch.Tensor, targets: torch.Tensor, policy: torch.Tensor,
           penalty: float) -> tuple[torch.Tensor, torch.Tensor]:
    """R = 1 - (|u|_1 / K)^2 for a correct prediction, ``penalty`` for a wrong one.
    ``preds`` are logits (B x classes) or predicted classes (B).
    Returns (reward B, correct B as floats)."""
    block_use = policy.sum(1) / policy.shape[1]
    predicted = preds.argmax(1) if preds.dim() == 2 else preds
    correct = (predicted == targets).to(policy.dtype)
    sparse = 1.0 - block_use ** 2
    return torch.where(correct.bool(), sparse, torch.full_like(sparse, penalty)), correct


def policy_stats(policies: torch.Tensor) -> dict:
    """Mean and sample std (n - 1) of blocks used per image, and the number of
    distinct policies. In float32, as the original computes them, so that the
    printed figures agree to the last digit (one image has no spread: 0)."""
    used = policies.float().sum(1)
    std = used.std().item() if len(used) > 1 else 0.0
    unique = len({tuple(row) for row in policies.to(torch.int8).tolist()})
    return {"blocks": used.mean().item(), "blocks_std": std, "unique": unique}


def summarize(correct: torch.Tensor, rewards: torch.Tensor, policies: torch.Tensor) -> dict:
    return {"acc": correct.mean().item(), "reward": rewards.mean().item(), **policy_stats(policies)}


# --------------------------------------------------------------------------
# one training step, one epoch
# --------------------------------------------------------------------------
@dataclass
class RLConfig:
    alpha: float = 0.8
    penalty: float = -1.0
    beta: float = 0.1
    joint: bool = False  # False: curriculum (ResNet frozen); True: joint finetuning
    execution: str | None = None  # the ResNet's mode (None: per image in eval mode, masked in train mode)


def policy_loss(keep_prob: torch.Tensor, policy: torch.Tensor, advantage: torch.Tensor,
                learned: int, cfg: RLConfig) -> torch.Tensor:
    """REINFORCE with the self-critical advantage (SPEC sections 4 and 5)."""
    explore = exploration_prob(keep_prob, cfg.alpha)
    log_prob = Bernoulli(probs=explore).log_prob(policy)  # B x K
    if cfg.joint:
        return -(log_prob.sum(1) * advantage).sum()
    mask = torch.zeros_like(policy)
    mask[:, policy.shape[1] - learned:] = 1  # forced-on blocks carry no gradient
    pg = (-log_prob * advantage.unsqueeze(1) * mask).sum()
    clamped = explore.clamp(1e-15, 1 - 1e-15)
    entropy = (-clamped * torch.log(clamped)).sum()
    return (pg - cfg.beta * entropy) / policy.shape[0]


def train_step(agent: nn.Module, resnet: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
               optimizer: torch.optim.Optimizer, learned: int, cfg: RLConfig) -> dict:
    """One batch: sample u, greedy baseline u_map, reward, advantage, one optimizer step."""
    keep_prob, _ = agent(inputs)
    policy_map = force_prefix(greedy_policy(keep_prob.detach()), learned)
    sampled = Bernoulli(probs=exploration_prob(keep_prob.detach(), cfg.alpha)).sample()
    policy = force_prefix(sampled, learned)

    with torch.no_grad():
        preds_map = resnet(inputs, policy_map, cfg.execution)
    if cfg.joint:
        preds = resnet(inputs, policy, cfg.execution)
    else:
        with torch.no_grad():
            preds = resnet(inputs, policy, cfg.execution)

    reward_map, _ = reward(preds_map, targets, policy_map, cfg.penalty)
    reward_sample, correct = reward(preds, targets, policy, cfg.penalty)
    advantage = (reward_sample - reward_map).detach()

    loss = policy_loss(keep_prob, policy, advantage, learned, cfg)
    if cfg.joint:
        loss = loss + F.cross_entropy(preds, targets)
    # PyTorch 0.3's zero_grad zeroed gradients in place: a block that every image
    # of this batch skips, but that ran before, still takes an Adam step with a
    # zero gradient (its moments decay); one that never ran has no gradient and
    # is left alone. ``set_to_none=False`` keeps exactly that.
    optimizer.zero_grad(set_to_none=False)
    loss.backward()
    optimizer.step()
    return {"loss": loss.item(), "reward": reward_sample, "correct": correct, "policy": policy}


def train_one_epoch(agent: nn.Module, resnet: nn.Module, loader, optimizer, device: torch.device,
                    learned: int, cfg: RLConfig, desc: str = "train") -> dict:
    agent.train()
    resnet.train(cfg.joint)  # curriculum: the ResNet stays in eval mode, frozen
    rewards, corrects, policies = [], [], []
    for inputs, targets in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True):
        inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        out = train_step(agent, resnet, inputs, targets, optimizer, learned, cfg)
        rewards.append(out["reward"].cpu())
        corrects.append(out["correct"].cpu())
        policies.append(out["policy"].cpu())
    return summarize(torch.cat(corrects), torch.cat(rewards), torch.cat(policies))


# --------------------------------------------------------------------------
# prediction: the one evaluation loop
# --------------------------------------------------------------------------
@torch.no_grad()
def predict(model: BlockDrop, loader, device: torch.device, learned: int | None = None,
            desc: str = "test") -> dict:
    """The greedy policy and the prediction of every image of ``loader``, in
    order, in eval mode. Returns CPU tensors: ``policies`` N x K (0/1 floats),
    ``preds`` N, ``targets`` N, ``correct`` N (bool)."""
    model.eval()
    policies, preds, targets = [], [], []
    for inputs, target in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True):
        logits, policy = model(inputs.to(device, non_blocking=True), learned)
        policies.append(policy.cpu())
        preds.append(logits.argmax(1).cpu())
        targets.append(target)
    policies, preds, targets = torch.cat(policies), torch.cat(preds), torch.cat(targets)
    return {"policies": policies, "preds": preds, "targets": targets, "correct": preds == targets}


def evaluate(agent: nn.Module, resnet: nn.Module, loader, device: torch.device,
             learned: int, penalty: float, desc: str = "test") -> dict:
    """Greedy policy (with the curriculum's forced-on prefix) on the test set:
    accuracy, mean reward, blocks used and unique policies."""
    out = predict(BlockDrop(agent, resnet), loader, device, learned, desc)
    rewards, correct = reward(out["preds"], out["targets"], out["policies"], penalty)
    return summarize(correct, rewards, out["policies"])


# --------------------------------------------------------------------------
# logging
# --------------------------------------------------------------------------
def _figures(stats: dict) -> str:
    return (f"A: {stats['acc']:.3f} | R: {stats['reward']:.2E} | S: {stats['blocks']:.3f} | "
            f"V: {stats['blocks_std']:.3f} | #: {stats['unique']}")


def log_line(epoch: int, stats: dict) -> str:
    """The train line ``E: %d | A: %.3f | R: %.2E | S: %.3f | V: %.3f | #: %d`` (SPEC section 6)."""
    return f"E: {epoch} | {_figures(stats)}"


def test_line(stats: dict) -> str:
    """The test line ``TS - A: %.3f | R: %.2E | S: %.3f | V: %.3f | #: %d``: as in the original, no epoch."""
    return f"TS - {_figures(stats)}"


TB_NAMES = {"acc": "accuracy", "reward": "reward", "blocks": "sparsity",
            "blocks_std": "variance", "unique": "unique_policies"}


class RunLogger:
    """Prints the log lines, writes the TensorBoard scalars under ``cv_dir/log``
    and one JSON row per epoch in ``cv_dir/metrics.jsonl``."""

    def __init__(self, cv_dir: Path):
        from torch.utils.tensorboard import SummaryWriter  # slow to import: only where training logs

        self.cv_dir = Path(cv_dir)
        self.writer = SummaryWriter(str(self.cv_dir / "log"))
        self.rows = self.cv_dir / "metrics.jsonl"

    def log(self, split: str, epoch: int, stats: dict) -> None:
        print(log_line(epoch, stats) if split == "train" else test_line(stats), flush=True)
        for key, name in TB_NAMES.items():
            self.writer.add_scalar(f"{split}_{name}", stats[key], epoch)
        self.writer.flush()
        with open(self.rows, "a") as fh:
            row = {"split": split, "epoch": epoch, **{k: _plain(v) for k, v in stats.items()}}
            fh.write(json.dumps(row) + "\n")

    def close(self) -> None:
        self.writer.close()


def _plain(value):
    return None if isinstance(value, float) and math.isnan(value) else value


# --------------------------------------------------------------------------
# the training driver shared by cl_training.py and finetune.py
# --------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """A training run: the scripts' flags (SPEC sections 4 and 5) and which of
    the two phases it is (``joint``: finetuning, else curriculum learning)."""

    joint: bool
    model: str = "R110_C10"
    data_dir: str = "data/"
    cv_dir: str = "cv/tmp/"
    load: str | None = None
    pretrained: str | None = None  # finetuning only: the curriculum checkpoint's agent
    base: str | None = None
    lr: float = 1e-3
    beta: float = 0.1
    wd: float = 0.0
    batch_size: int = 256
    epoch_step: int = 10000
    max_epochs: int = 10000
    lr_decay_ratio: float = 0.1
    cl_step: int = 1
    penalty: float = -1.0
    alpha: float = 0.8
    parallel: bool = False
    device: str | None = None
    seed: int | None = None
    workers: int = 4
    test_every: int = 10
    per_image: bool = False  # finetuning only: train with per-image execution instead of the masked form

    @classmethod
    def from_args(cls, args: argparse.Namespace, joint: bool) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(joint=joint, **{k: v for k, v in vars(args).items() if k in names})

    def flags(self) -> dict:
        """The flags of the run's script, as ``args.txt`` and the checkpoints record them."""
        out = asdict(self)
        del out["joint"]
        if not self.joint:  # flags of finetune.py only
            del out["pretrained"], out["per_image"]
        return out


@dataclass
class Networks:
    agent: nn.Module
    resnet: nn.Module
    start_epoch: int
    checkpoint: dict | None  # the --load checkpoint, when resuming
    policy_start: str


def build_networks(cfg: TrainConfig) -> Networks:
    """The ResNet and the agent, built in the original's order (so that a seeded
    run draws the same random numbers), then filled: --load (agent, and ResNet
    when finetuned), the base, --pretrained's agent, or the agent's own start."""
    model = get_config(cfg.model)
    resnet, agent = build_resnet(model), build_agent(model)
    start_epoch, checkpoint = 0, None
    if cfg.load:
        checkpoint = load_blockdrop_checkpoint(Path(cfg.load), model.name, agent, resnet if cfg.joint else None)
        start_epoch = int(checkpoint.get("epoch", -1)) + 1
        print(f"loaded agent from {cfg.load}", flush=True)
    if not (cfg.joint and checkpoint and checkpoint["has_resnet"]):
        load_default_or_given_base(resnet, model, cfg.base)
    if cfg.joint and cfg.pretrained and not cfg.load:
        load_blockdrop_checkpoint(Path(cfg.pretrained), model.name, agent, None)
        print(f"loaded pretrained model from {cfg.pretrained}", flush=True)
    if cfg.load or (cfg.joint and cfg.pretrained):
        policy_start = f"agent of {cfg.load or cfg.pretrained}"
    else:
        policy_start = agent.start if model.arch == "cifar" else load_policy_start(agent)
    return Networks(agent, resnet, start_epoch, checkpoint, policy_start)


def make_loaders(cfg: TrainConfig, datasets: tuple | None, device: torch.device) -> tuple[DataLoader, DataLoader]:
    trainset, testset = datasets or get_datasets(get_config(cfg.model), cfg.data_dir)
    pin = device.type == "cuda"
    return (DataLoader(trainset, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.workers, pin_memory=pin),
            DataLoader(testset, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.workers, pin_memory=pin))


def make_optimizer(cfg: TrainConfig, nets: Networks) -> tuple[torch.optim.Optimizer, LambdaLR]:
    """Adam over the agent (and the ResNet when finetuning), its state restored
    on --load, and the original's schedule lr * lr_decay_ratio ** (epoch // epoch_step)."""
    params = list(nets.agent.parameters()) + (list(nets.resnet.parameters()) if cfg.joint else [])
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.wd)
    saved = (nets.checkpoint or {}).get("optimizer")
    if isinstance(saved, dict):
        try:
            optimizer.load_state_dict(saved)
        except (ValueError, KeyError) as exc:
            raise BlockDropError(f"{cfg.load}: its optimizer state does not fit this run ({exc}); "
                                 "it was saved by a run of other networks or another phase") from exc
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = cfg.lr
    schedule = LambdaLR(optimizer, lambda epoch: cfg.lr_decay_ratio ** (epoch // cfg.epoch_step),
                        last_epoch=nets.start_epoch - 1)
    return optimizer, schedule


def parallelize(cfg: TrainConfig, device: torch.device, agent: nn.Module, resnet: nn.Module):
    if not cfg.parallel:
        return agent, resnet
    if device.type == "cuda" and torch.cuda.device_count() > 1:
        return nn.DataParallel(agent), nn.DataParallel(resnet)
    print(f"note: --parallel needs 2 or more CUDA GPUs; running on {device}")
    return agent, resnet


def fit(cfg: TrainConfig, datasets: tuple | None = None) -> dict:
    """Curriculum learning (``cfg.joint`` False: ResNet frozen, only the policy
    learns, last blocks first) or joint finetuning (both networks, all blocks,
    cross-entropy added). Returns the last evaluation and the last checkpoint's
    path. ``datasets`` (train, test) replaces the configuration's data sets
    (for experiments on data of one's own)."""
    device = choose_device(cfg.device)
    seed_everything(cfg.seed)
    nets = build_networks(cfg)
    trainloader, testloader = make_loaders(cfg, datasets, device)
    nets.agent.to(device)
    nets.resnet.to(device)
    if not cfg.joint:
        nets.resnet.requires_grad_(False)
    optimizer, schedule = make_optimizer(cfg, nets)
    agent, resnet = parallelize(cfg, device, nets.agent, nets.resnet)

    cv_dir = Path(cfg.cv_dir)
    args = {**cfg.flags(), "policy_start": nets.policy_start}
    save_args(args, cv_dir)
    logger = RunLogger(cv_dir)
    rl = RLConfig(alpha=cfg.alpha, penalty=cfg.penalty, beta=cfg.beta, joint=cfg.joint,
                  execution="per_image" if cfg.per_image else None)
    num_blocks = nets.agent.num_blocks
    last = {"checkpoint": None}
    try:
        for epoch in range(nets.start_epoch, nets.start_epoch + cfg.max_epochs + 1):
            if epoch % cfg.epoch_step == 0:
                print(f"# setting learning_rate to {optimizer.param_groups[0]['lr']:.2E}", flush=True)
            learned = num_blocks if cfg.joint else learned_blocks(epoch, num_blocks, cfg.cl_step)
            if not cfg.joint:
                print(f"training the last {learned} blocks ...", flush=True)
            stats = train_one_epoch(agent, resnet, trainloader, optimizer, device, learned, rl,
                                    desc=f"epoch {epoch}")
            logger.log("train", epoch, stats)
            if epoch % cfg.test_every == 0:
                test_stats = evaluate(agent, resnet, testloader, device, learned, cfg.penalty)
                logger.log("test", epoch, test_stats)
                path = save_blockdrop_checkpoint(cv_dir, epoch, test_stats, agent,
                                                 resnet if cfg.joint else None, optimizer, args)
                last = {**test_stats, "epoch": epoch, "checkpoint": str(path)}
            schedule.step()
    finally:
        logger.close()
    return last
