"""The BlockDrop engine, shared by ``cl_training.py``, ``finetune.py`` and ``test.py``.

Symbols as in the paper: K blocks, policy u in {0,1}^K, alpha bounds the
exploration probabilities away from 0 and 1, beta weighs the entropy bonus,
``penalty`` is the paper's gamma (the reward of a wrong prediction).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributions import Bernoulli
from tqdm import tqdm

from utils import checkpoint_name, save_checkpoint


# --------------------------------------------------------------------------
# policies and rewards
# --------------------------------------------------------------------------
def greedy_policy(keep_prob: torch.Tensor) -> torch.Tensor:
    """u_map = (p >= 0.5), as floats."""
    return (keep_prob >= 0.5).to(keep_prob.dtype)


def exploration_prob(keep_prob: torch.Tensor, alpha: float) -> torch.Tensor:
    """p' = alpha * p + (1 - alpha) * (1 - p): keeps every block's probability
    inside [1 - alpha, alpha] so sampling keeps exploring."""
    return alpha * keep_prob + (1 - alpha) * (1 - keep_prob)


def learned_blocks(epoch: int, num_blocks: int, cl_step: int = 1) -> int:
    """Curriculum: at epoch e the policy decides the last ``min(cl_step * (e + 1), K)``
    blocks; the ones before are forced on (with ``cl_step`` 1: e + 1, SPEC section 4)."""
    return max(1, min(cl_step * (epoch + 1), num_blocks))


def force_prefix(policy: torch.Tensor, learned: int) -> torch.Tensor:
    """Set the first K - learned entries of each policy to 1 (a copy)."""
    policy = policy.clone()
    policy[:, : policy.shape[1] - learned] = 1
    return policy


def reward(preds: torch.Tensor, targets: torch.Tensor, policy: torch.Tensor,
           penalty: float) -> tuple[torch.Tensor, torch.Tensor]:
    """R = 1 - (|u|_1 / K)^2 for a correct prediction, ``penalty`` for a wrong one.
    Returns (reward B, correct B as floats)."""
    block_use = policy.sum(1) / policy.shape[1]
    correct = (preds.argmax(1) == targets).to(policy.dtype)
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


# --------------------------------------------------------------------------
# one training epoch, one evaluation
# --------------------------------------------------------------------------
@dataclass
class RLConfig:
    alpha: float = 0.8
    penalty: float = -1.0
    beta: float = 0.1
    joint: bool = False  # False: curriculum (ResNet frozen); True: joint finetuning


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.DataParallel) else model


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
        preds_map = resnet(inputs, policy_map)
    if cfg.joint:
        preds = resnet(inputs, policy)
    else:
        with torch.no_grad():
            preds = resnet(inputs, policy)

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


@torch.no_grad()
def evaluate(agent: nn.Module, resnet: nn.Module, loader, device: torch.device,
             learned: int, penalty: float, desc: str = "test") -> dict:
    """Greedy policy (with the same forced-on prefix) on the test set."""
    agent.eval()
    resnet.eval()
    rewards, corrects, policies = [], [], []
    for inputs, targets in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True):
        inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        keep_prob, _ = agent(inputs)
        policy = force_prefix(greedy_policy(keep_prob), learned)
        preds = resnet(inputs, policy)
        r, correct = reward(preds, targets, policy, penalty)
        rewards.append(r.cpu())
        corrects.append(correct.cpu())
        policies.append(policy.cpu())
    return summarize(torch.cat(corrects), torch.cat(rewards), torch.cat(policies))


def summarize(correct: torch.Tensor, rewards: torch.Tensor, policies: torch.Tensor) -> dict:
    return {"acc": correct.mean().item(), "reward": rewards.mean().item(), **policy_stats(policies)}


# --------------------------------------------------------------------------
# logging and checkpoints
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
        from torch.utils.tensorboard import SummaryWriter

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


def save_blockdrop_checkpoint(cv_dir: Path, epoch: int, stats: dict, agent: nn.Module,
                              resnet: nn.Module | None, optimizer, args) -> Path:
    """Write ``ckpt_E_..._#_....t7`` with the authors' entries (``agent``,
    ``resnet`` when it was trained, ``epoch``, ``reward``, ``acc``) plus the
    figures, the run's arguments and the optimizer state for resuming."""
    name = checkpoint_name(epoch, stats["acc"], stats["reward"], stats["blocks"], stats["unique"])
    obj = {
        "agent": unwrap(agent).state_dict(),
        "epoch": epoch,
        "reward": stats["reward"],
        "acc": stats["acc"],
        "blocks": stats["blocks"],
        "blocks_std": stats["blocks_std"],
        "unique": stats["unique"],
        "optimizer": optimizer.state_dict(),
        "args": {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None)))},
    }
    if resnet is not None:
        obj["resnet"] = unwrap(resnet).state_dict()
    return save_checkpoint(obj, Path(cv_dir) / name)


# --------------------------------------------------------------------------
# the training driver shared by cl_training.py and finetune.py
# --------------------------------------------------------------------------
def add_training_flags(parser, *, lr: float, epoch_step: int, max_epochs: int, penalty: float,
                       batch_size: int = 256) -> None:
    """The original flags (SPEC sections 4 and 5) with their defaults, plus the new ones."""
    p = parser
    p.add_argument("--lr", type=float, default=lr, help="learning rate")
    p.add_argument("--beta", type=float, default=1e-1, help="entropy bonus weight (curriculum only)")
    p.add_argument("--wd", type=float, default=0.0, help="weight decay")
    p.add_argument("--model", default="R110_C10", help="R<depth>_<dataset>")
    p.add_argument("--data_dir", default="data/", help="data set folder")
    p.add_argument("--load", default=None, help="checkpoint to resume from (its epoch + 1 is the first)")
    p.add_argument("--cv_dir", default="cv/tmp/", help="folder for checkpoints and logs")
    p.add_argument("--batch_size", type=int, default=batch_size, help="batch size")
    p.add_argument("--epoch_step", type=int, default=epoch_step, help="epochs between learning-rate decays")
    p.add_argument("--max_epochs", type=int, default=max_epochs, help="epochs to run after the first")
    p.add_argument("--lr_decay_ratio", type=float, default=0.1, help="learning-rate decay factor")
    p.add_argument("--parallel", action="store_true", default=False, help="use every visible GPU")
    p.add_argument("--cl_step", type=int, default=1,
                   help="curriculum: blocks handed to the policy per epoch")
    p.add_argument("--penalty", type=float, default=penalty, help="reward of a wrong prediction (gamma)")
    p.add_argument("--alpha", type=float, default=0.8, help="probability bound for exploration")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: not seeded)")
    p.add_argument("--workers", type=int, default=4, help="data loader workers")
    p.add_argument("--test_every", type=int, default=10, help="evaluate and checkpoint every N epochs")
    p.add_argument("--base", default=None, help="pretrained base ResNet (default: cv/pretrained/<model>/...)")


def check_training_args(args) -> None:
    from utils import BlockDropError

    for name in ("batch_size", "epoch_step", "test_every", "cl_step"):
        if getattr(args, name) < 1:
            raise BlockDropError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.max_epochs < 0 or args.workers < 0:
        raise BlockDropError("--max_epochs and --workers must not be negative")
    if not 0.5 <= args.alpha <= 1.0:
        raise BlockDropError(f"--alpha must lie in [0.5, 1], got {args.alpha}")


def fit(args, joint: bool, datasets: tuple | None = None) -> dict:
    """Curriculum learning (``joint=False``: ResNet frozen, only the policy
    learns, last blocks first) or joint finetuning (``joint=True``: both
    networks, all blocks, cross-entropy added). Returns the last evaluation and
    the last checkpoint's path. ``datasets`` (train, test) replaces the
    configuration's data sets (for experiments on data of one's own)."""
    from torch.utils.data import DataLoader

    from models import build_agent, build_resnet, get_config
    from utils import (
        choose_device,
        get_datasets,
        load_blockdrop_checkpoint,
        load_default_or_given_base,
        save_args,
        seed_everything,
    )

    check_training_args(args)
    cfg = get_config(args.model)
    device = choose_device(args.device)
    seed_everything(args.seed)
    # Built in the original's order (ResNet, then agent) so that a seeded run draws
    # the same random numbers; the ImageNet agent fetches its ResNet-18 start only
    # when no checkpoint's agent replaces it.
    agent_from_file = bool(args.load or (joint and getattr(args, "pretrained", None)))
    resnet, agent = build_resnet(cfg), build_agent(cfg, resnet18_weights=not agent_from_file)
    args.policy_start = agent.start if not agent_from_file else f"agent of {args.load or args.pretrained}"
    K = cfg.num_blocks

    start_epoch, resumed = 0, None
    if args.load:
        resumed = load_blockdrop_checkpoint(Path(args.load), cfg.name, agent, resnet if joint else None)
        start_epoch = int(resumed.get("epoch", -1)) + 1
        print(f"loaded agent from {args.load}", flush=True)
    if not (joint and resumed and resumed["has_resnet"]):
        load_default_or_given_base(resnet, cfg, args.base)
    if joint and getattr(args, "pretrained", None) and not args.load:
        load_blockdrop_checkpoint(Path(args.pretrained), cfg.name, agent, None)
        print(f"loaded pretrained model from {args.pretrained}", flush=True)

    trainset, testset = datasets or get_datasets(cfg, args.data_dir)
    pin = device.type == "cuda"
    trainloader = DataLoader(trainset, batch_size=args.batch_size, shuffle=True,
                             num_workers=args.workers, pin_memory=pin)
    testloader = DataLoader(testset, batch_size=args.batch_size, shuffle=False,
                            num_workers=args.workers, pin_memory=pin)

    agent.to(device)
    resnet.to(device)
    if not joint:
        resnet.requires_grad_(False)
    params = list(agent.parameters()) + (list(resnet.parameters()) if joint else [])
    optimizer = torch.optim.Adam(params, lr=args.lr, weight_decay=args.wd)
    if resumed and isinstance(resumed.get("optimizer"), dict):
        try:
            optimizer.load_state_dict(resumed["optimizer"])
        except (ValueError, KeyError):
            print("note: the checkpoint's optimizer state does not fit this run; starting Adam afresh")
    if args.parallel:
        if device.type == "cuda" and torch.cuda.device_count() > 1:
            agent, resnet = nn.DataParallel(agent), nn.DataParallel(resnet)
        else:
            print(f"note: --parallel needs 2 or more CUDA GPUs; running on {device}")

    cv_dir = Path(args.cv_dir)
    save_args(args, cv_dir)
    logger = RunLogger(cv_dir)
    rl = RLConfig(alpha=args.alpha, penalty=args.penalty, beta=args.beta, joint=joint)
    last = {"checkpoint": None}
    try:
        for epoch in range(start_epoch, start_epoch + args.max_epochs + 1):
            lr = args.lr * args.lr_decay_ratio ** (epoch // args.epoch_step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if epoch % args.epoch_step == 0:
                print(f"# setting learning_rate to {lr:.2E}", flush=True)
            learned = K if joint else learned_blocks(epoch, K, args.cl_step)
            if not joint:
                print(f"training the last {learned} blocks ...", flush=True)
            stats = train_one_epoch(agent, resnet, trainloader, optimizer, device, learned, rl,
                                    desc=f"epoch {epoch}")
            logger.log("train", epoch, stats)
            if epoch % args.test_every == 0:
                test_stats = evaluate(agent, resnet, testloader, device, learned, args.penalty)
                logger.log("test", epoch, test_stats)
                path = save_blockdrop_checkpoint(cv_dir, epoch, test_stats, agent,
                                                 resnet if joint else None, optimizer, args)
                last = {**test_stats, "epoch": epoch, "checkpoint": str(path)}
    finally:
        logger.close()
    return last
