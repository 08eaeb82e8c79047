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
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributions import Bernoulli
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader

from models import BlockDrop, build_agent, build_resnet, force_prefix, get_config, greedy_policy
from utils.checkpoints import (
    LAST,
    atomic_write_bytes,
    base_record,
    checkpoint_dict,
    load_blockdrop_checkpoint,
    load_default_or_given_base,
    load_policy_start,
    newest_run_state,
    remove_partial_writes,
    restore_rng,
    run_files,
    save_args,
    save_blockdrop_checkpoint,
    save_checkpoint,
    set_aside,
    writable_folder,
)
from utils.cli import BlockDropError, choose_device, progress, seed_everything
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
class NonFinite(BlockDropError):
    """A loss, reward or weight that is nan or infinite: training stops."""


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
    if not torch.isfinite(keep_prob).all():
        raise NonFinite("the policy network's keep-probabilities are not finite (nan)")
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
    loss_value = loss.item()
    if not math.isfinite(loss_value):  # stop before the step spreads it into the weights
        raise NonFinite(f"the loss is {loss_value}")
    # PyTorch 0.3's zero_grad zeroed gradients in place: a block that every image
    # of this batch skips, but that ran before, still takes an Adam step with a
    # zero gradient (its moments decay); one that never ran has no gradient and
    # is left alone. ``set_to_none=False`` keeps exactly that.
    optimizer.zero_grad(set_to_none=False)
    loss.backward()
    optimizer.step()
    return {"loss": loss_value, "reward": reward_sample, "correct": correct, "policy": policy}


def train_one_epoch(agent: nn.Module, resnet: nn.Module, loader, optimizer, device: torch.device,
                    learned: int, cfg: RLConfig, desc: str = "train") -> dict:
    agent.train()
    resnet.train(cfg.joint)  # curriculum: the ResNet stays in eval mode, frozen
    rewards, corrects, policies = [], [], []
    for batch, (inputs, targets) in enumerate(progress(loader, desc)):
        inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        try:
            out = train_step(agent, resnet, inputs, targets, optimizer, learned, cfg)
        except NonFinite as exc:
            raise NonFinite(f"{desc}, batch {batch}: {exc}") from exc
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
    for inputs, target in progress(loader, desc):
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
    and one JSON row per epoch in ``cv_dir/metrics.jsonl``. A run that continues
    at ``first_epoch`` drops what an interrupted run logged from that epoch on,
    so that every epoch is logged once."""

    def __init__(self, cv_dir: Path, first_epoch: int = 0):
        from torch.utils.tensorboard import SummaryWriter  # slow to import: only where training logs

        self.cv_dir = Path(cv_dir)
        self.rows = self.cv_dir / "metrics.jsonl"
        if first_epoch > 0 and self.rows.exists():
            kept = [ln for ln in self.rows.read_text().splitlines(keepends=True)
                    if json.loads(ln).get("epoch", -1) < first_epoch]
            atomic_write_bytes(self.rows, "".join(kept).encode())
        self.writer = SummaryWriter(str(self.cv_dir / "log"), purge_step=first_epoch or None)

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
    resume: bool = False  # continue the run in cv_dir from its newest complete state
    restart: bool = False  # start a new run in a cv_dir that holds one, setting the earlier one aside
    given: frozenset = frozenset()  # the flags given on the command line

    @classmethod
    def from_args(cls, args: argparse.Namespace, joint: bool) -> TrainConfig:
        names = {f.name for f in fields(cls)} - {"given"}
        return cls(joint=joint, given=frozenset(getattr(args, "_given", ())),
                   **{k: v for k, v in vars(args).items() if k in names})

    def flags(self) -> dict:
        """The run's flags, as ``args.txt`` and the checkpoints record them."""
        out = asdict(self)
        for name in ("joint", "resume", "restart", "given"):
            del out[name]
        if not self.joint:  # flags of finetune.py only
            del out["pretrained"], out["per_image"]
        return out


# Flags that may differ when a run is resumed: they change how long it runs or
# on what hardware, not what it computes.
RESUMABLE = {"max_epochs", "workers", "device", "parallel"}


def continue_config(cfg: TrainConfig, path: Path, state: dict) -> TrainConfig:
    """The configuration of the run saved in ``state``, with the flags of
    ``RESUMABLE`` that were given again; any other flag given again must agree."""
    saved = state["args"]
    for name in sorted(cfg.given - RESUMABLE - {"resume", "cv_dir"}):
        if name in saved and getattr(cfg, name) != saved[name]:
            raise BlockDropError(
                f"--resume: --{name} {getattr(cfg, name)} contradicts the run's {saved[name]} ({path}); "
                f"only {', '.join('--' + n for n in sorted(RESUMABLE))} may change when a run is resumed")
    values = {f.name: saved[f.name] for f in fields(TrainConfig) if f.name in saved}
    values.update({name: getattr(cfg, name) for name in cfg.given & RESUMABLE})
    return replace(cfg, **values)


def prepare_run_folder(cfg: TrainConfig) -> Path:
    """``--cv_dir`` checked, a killed write's temporary files removed, and a new
    run refused where another one is, unless it continues it (``--resume``, or
    ``--load`` of one of its checkpoints, the original's way) or ``--restart``
    sets the earlier one aside."""
    cv_dir = writable_folder(Path(cfg.cv_dir), "--cv_dir")
    for tmp in remove_partial_writes(cv_dir):
        print(f"note: removed {tmp}, left by an interrupted write", flush=True)
    earlier = run_files(cv_dir)
    continuing = cfg.resume or (cfg.load and Path(cfg.load).resolve().parent == cv_dir.resolve())
    if earlier and not continuing:
        if not cfg.restart:
            raise BlockDropError(
                f"--cv_dir {cv_dir} holds another run ({earlier[0].name}): continue it with --resume, start "
                f"a new one there with --restart (the earlier files are moved to {cv_dir}/earlier-<time>/), "
                "or choose another --cv_dir")
        print(f"note: the earlier run's files were moved to {set_aside(earlier, cv_dir)}/", flush=True)
    return cv_dir


@dataclass
class Networks:
    agent: nn.Module
    resnet: nn.Module
    start_epoch: int
    checkpoint: dict | None  # the checkpoint continued (--load or --resume)
    checkpoint_path: Path | None
    policy_start: str
    base: dict | None  # the base the ResNet was trained from: path and SHA-256


def build_networks(cfg: TrainConfig, resume_from: tuple[Path, dict] | None = None) -> Networks:
    """The ResNet and the agent, built in the original's order (so that a seeded
    run draws the same random numbers), then filled: from the checkpoint
    continued (--resume's state or --load: agent, and ResNet when finetuned),
    the base (the one a checkpoint records, else --base or the default),
    --pretrained's agent, or the agent's own start."""
    model = get_config(cfg.model)
    resnet, agent = build_resnet(model), build_agent(model)
    start_epoch, checkpoint, path = 0, None, None
    if resume_from or cfg.load:
        path = resume_from[0] if resume_from else Path(cfg.load)
        checkpoint = load_blockdrop_checkpoint(path, model.name, agent, resnet if cfg.joint else None)
        start_epoch = int(checkpoint.get("epoch", -1)) + 1
        print(f"loaded agent from {path}", flush=True)
    pretrained = None
    if cfg.joint and cfg.pretrained and checkpoint is None:
        pretrained = load_blockdrop_checkpoint(Path(cfg.pretrained), model.name, agent, None)
        print(f"loaded pretrained model from {cfg.pretrained}", flush=True)
    if cfg.joint and checkpoint and checkpoint["has_resnet"]:
        base = checkpoint.get("base")  # the finetuned ResNet is in the checkpoint; its base stays on record
    else:
        recorded, source = (checkpoint, path) if checkpoint else (pretrained, cfg.pretrained) if pretrained else (None, None)
        recorded = recorded.get("base") if recorded else None
        base = base_record(load_default_or_given_base(resnet, model, cfg.base, recorded, source))
    if resume_from:
        policy_start = resume_from[1]["args"].get("policy_start", "")
    elif cfg.load or pretrained:
        policy_start = f"agent of {cfg.load or cfg.pretrained}"
    else:
        policy_start = agent.start if model.arch == "cifar" else load_policy_start(agent)
    return Networks(agent, resnet, start_epoch, checkpoint, path, policy_start, base)


def make_loaders(cfg: TrainConfig, datasets: tuple | None, device: torch.device) -> tuple[DataLoader, DataLoader]:
    trainset, testset = datasets or get_datasets(get_config(cfg.model), cfg.data_dir)
    pin = device.type == "cuda"
    return (DataLoader(trainset, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.workers, pin_memory=pin),
            DataLoader(testset, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.workers, pin_memory=pin))


def make_optimizer(cfg: TrainConfig, nets: Networks) -> tuple[torch.optim.Optimizer, LambdaLR]:
    """Adam over the agent (and the ResNet when finetuning), its state restored
    from the checkpoint continued, and the original's schedule
    lr * lr_decay_ratio ** (epoch // epoch_step), at the epoch the run starts."""
    params = list(nets.agent.parameters()) + (list(nets.resnet.parameters()) if cfg.joint else [])
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.wd)
    saved = (nets.checkpoint or {}).get("optimizer")
    if isinstance(saved, dict):
        try:
            optimizer.load_state_dict(saved)
        except (ValueError, KeyError) as exc:
            raise BlockDropError(f"{nets.checkpoint_path}: its optimizer state does not fit this run ({exc}); "
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


def cuda_devices(device: torch.device) -> list[int]:
    return [device.index or 0] if device.type == "cuda" else []


def check_finite(epoch: int, **models: nn.Module) -> None:
    for what, model in models.items():
        bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise NonFinite(f"epoch {epoch}: the {what} has weights that are not finite, such as {bad[0]}")


def fit(cfg: TrainConfig, datasets: tuple | None = None) -> dict:
    """Curriculum learning (``cfg.joint`` False: ResNet frozen, only the policy
    learns, last blocks first) or joint finetuning (both networks, all blocks,
    cross-entropy added). After every epoch the run's state is saved as
    ``cv_dir/last.t7``; at every ``test_every``-th epoch and the last one the
    test set is evaluated and ``ckpt_E_...t7`` written. Returns the last
    evaluation and checkpoint. ``datasets`` (train, test) replaces the
    configuration's data sets (for experiments on data of one's own)."""
    cv_dir = prepare_run_folder(cfg)
    resume_from = newest_run_state(cv_dir) if cfg.resume else None
    if resume_from:
        cfg = continue_config(cfg, *resume_from)
        print(f"resuming the run in {cv_dir} after epoch {resume_from[1]['epoch']} ({resume_from[0].name})", flush=True)
    if cfg.penalty > 0:
        print(f"note: --penalty {cfg.penalty:g} is positive: a wrong prediction is then rewarded", flush=True)
    device = choose_device(cfg.device)
    seed_everything(cfg.seed)
    nets = build_networks(cfg, resume_from)
    trainloader, testloader = make_loaders(cfg, datasets, device)
    nets.agent.to(device)
    nets.resnet.to(device)
    if not cfg.joint:
        nets.resnet.requires_grad_(False)
    optimizer, schedule = make_optimizer(cfg, nets)
    agent, resnet = parallelize(cfg, device, nets.agent, nets.resnet)
    first_epoch = resume_from[1].get("first_epoch", 0) if resume_from else nets.start_epoch
    end_epoch = first_epoch + cfg.max_epochs
    if resume_from:
        restore_rng(resume_from[1]["rng"])  # the random stream goes on where the run left it

    args = {**cfg.flags(), "policy_start": nets.policy_start}
    save_args(args, cv_dir)
    run = {"base": nets.base, "first_epoch": first_epoch, "end_epoch": end_epoch}
    logger = RunLogger(cv_dir, nets.start_epoch)
    rl = RLConfig(alpha=cfg.alpha, penalty=cfg.penalty, beta=cfg.beta, joint=cfg.joint,
                  execution="per_image" if cfg.per_image else None)
    num_blocks = nets.agent.num_blocks
    last = {"checkpoint": None}
    try:
        for epoch in range(nets.start_epoch, end_epoch + 1):
            if epoch % cfg.epoch_step == 0:
                print(f"# setting learning_rate to {optimizer.param_groups[0]['lr']:.2E}", flush=True)
            learned = num_blocks if cfg.joint else learned_blocks(epoch, num_blocks, cfg.cl_step)
            if not cfg.joint:
                print(f"training the last {learned} blocks ...", flush=True)
            stats = train_one_epoch(agent, resnet, trainloader, optimizer, device, learned, rl,
                                    desc=f"epoch {epoch}")
            logger.log("train", epoch, stats)
            check_finite(epoch, agent=nets.agent, **({"ResNet": nets.resnet} if cfg.joint else {}))
            if epoch % cfg.test_every == 0:
                stats = evaluate(agent, resnet, testloader, device, learned, cfg.penalty)
                logger.log("test", epoch, stats)
            elif epoch == end_epoch:  # the last epoch is never lost; its evaluation, an addition, draws
                with torch.random.fork_rng(devices=cuda_devices(device)):  # no number the run goes on with
                    stats = evaluate(agent, resnet, testloader, device, learned, cfg.penalty)
                logger.log("test", epoch, stats)
            state = checkpoint_dict(epoch, stats, agent, resnet if cfg.joint else None, optimizer, args, run)
            if epoch % cfg.test_every == 0 or epoch == end_epoch:
                path = save_blockdrop_checkpoint(cv_dir, state)
                last = {**stats, "epoch": epoch, "checkpoint": str(path)}
            save_checkpoint(state, cv_dir / LAST)
            schedule.step()
    except NonFinite as exc:
        newest = cv_dir / LAST if (cv_dir / LAST).exists() else "none (no epoch completed)"
        raise NonFinite(f"{exc}; training stopped, and the newest complete state on disk is {newest}") from exc
    finally:
        logger.close()
    return last
