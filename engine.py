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
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, DistributedSampler, Subset

from models import BlockDrop, build_agent, build_resnet, force_prefix, get_config, greedy_policy
from utils.checkpoints import (
    LAST,
    atomic_write_bytes,
    checkpoint_dict,
    load_base_on_record,
    load_blockdrop_checkpoint,
    load_policy_start,
    newest_run_state,
    remove_partial_writes,
    restore_rng,
    rng_state,
    run_files,
    same_file_atomically,
    save_args,
    save_blockdrop_checkpoint,
    save_checkpoint,
    set_aside,
    writable_folder,
)
from utils.cli import BlockDropError, progress, seed_everything
from utils.data import WithIndex, get_datasets
from utils.distributed import Processes, broadcast, gather_objects, gather_rows, main_print, setup, teardown


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
    world_size: int = 1  # processes averaging their gradients (DistributedDataParallel)
    amp: torch.dtype | None = None  # autocast dtype of the networks' forward passes (CUDA), or None


def policy_loss(keep_prob: torch.Tensor, policy: torch.Tensor, advantage: torch.Tensor,
                learned: int, cfg: RLConfig) -> torch.Tensor:
    """REINFORCE with the self-critical advantage (SPEC sections 4 and 5). Under
    DistributedDataParallel, which averages the processes' gradients, the
    finetuning sum over the batch is scaled by their number: a step then equals
    one process's step on the global batch (the curriculum's loss is a mean already)."""
    explore = exploration_prob(keep_prob, cfg.alpha)
    log_prob = Bernoulli(probs=explore).log_prob(policy)  # B x K
    if cfg.joint:
        loss = -(log_prob.sum(1) * advantage).sum()
        return loss * cfg.world_size if cfg.world_size > 1 else loss
    mask = torch.zeros_like(policy)
    mask[:, policy.shape[1] - learned:] = 1  # forced-on blocks carry no gradient
    pg = (-log_prob * advantage.unsqueeze(1) * mask).sum()
    clamped = explore.clamp(1e-15, 1 - 1e-15)
    entropy = (-clamped * torch.log(clamped)).sum()
    return (pg - cfg.beta * entropy) / policy.shape[0]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision for the networks' forward passes, or nothing."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def train_step(agent: nn.Module, resnet: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
               optimizer: torch.optim.Optimizer, learned: int, cfg: RLConfig,
               scaler: torch.amp.GradScaler | None = None) -> dict:
    """One batch: sample u, greedy baseline u_map, reward, advantage, one optimizer step.
    The keep-probabilities, samples and log-likelihoods stay in float32 under
    ``--amp`` (in float16 the 1e-15 clamps would round to 0 and 1)."""
    with autocast(inputs.device, cfg.amp):
        keep_prob, _ = agent(inputs)
    keep_prob = keep_prob.float()
    if not torch.isfinite(keep_prob).all():
        raise NonFinite("the policy network's keep-probabilities are not finite (nan)")
    policy_map = force_prefix(greedy_policy(keep_prob.detach()), learned)
    sampled = Bernoulli(probs=exploration_prob(keep_prob.detach(), cfg.alpha)).sample()
    policy = force_prefix(sampled, learned)

    with autocast(inputs.device, cfg.amp):
        with torch.no_grad():
            preds_map = resnet(inputs, policy_map, cfg.execution)
        if cfg.joint:
            preds = resnet(inputs, policy, cfg.execution)
        else:
            with torch.no_grad():
                preds = resnet(inputs, policy, cfg.execution)
    preds_map, preds = preds_map.float(), preds.float()

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
    backward_and_step(loss, optimizer, scaler)
    return {"loss": loss_value, "reward": reward_sample, "correct": correct, "policy": policy}


def backward_and_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                      scaler: torch.amp.GradScaler | None = None) -> None:
    if scaler is not None:  # float16: the loss scaled against underflow
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


def to_device(inputs: torch.Tensor, device: torch.device, memory_format=torch.contiguous_format) -> torch.Tensor:
    return inputs.to(device, non_blocking=True).contiguous(memory_format=memory_format)


def train_one_epoch(agent: nn.Module, resnet: nn.Module, loader, optimizer, device: torch.device,
                    learned: int, cfg: RLConfig, desc: str = "train", scaler=None,
                    memory_format=torch.contiguous_format) -> dict:
    """One pass over ``loader`` (batches of images, targets and the images'
    indices). Returns this process's per-image rows: ``index``, ``reward``,
    ``correct`` and the sampled ``policy``, in the order trained."""
    agent.train()
    resnet.train(cfg.joint)  # curriculum: the ResNet stays in eval mode, frozen
    rows = {"index": [], "reward": [], "correct": [], "policy": []}
    for batch, (inputs, targets, index) in enumerate(progress(loader, desc)):
        inputs, targets = to_device(inputs, device, memory_format), targets.to(device, non_blocking=True)
        try:
            out = train_step(agent, resnet, inputs, targets, optimizer, learned, cfg, scaler)
        except NonFinite as exc:
            raise NonFinite(f"{desc}, batch {batch}: {exc}") from exc
        rows["index"].append(index)
        for key in ("reward", "correct", "policy"):
            rows[key].append(out[key].cpu())
    return {key: torch.cat(values) for key, values in rows.items()}


def epoch_stats(procs: Processes, rows: dict) -> dict:
    """The figures of an epoch over the images of every process, each image
    counted once (a distributed sampler repeats a few to even the processes out)."""
    index, rewards, correct, policies = gather_rows(procs, rows["index"], rows["reward"], rows["correct"],
                                                    rows["policy"])
    if procs.distributed:
        keep = first_of_each(index)
        rewards, correct, policies = rewards[keep], correct[keep], policies[keep]
    return {**summarize(correct, rewards, policies), "images": len(policies)}


# --------------------------------------------------------------------------
# prediction: the one evaluation loop
# --------------------------------------------------------------------------
@torch.no_grad()
def predict(model: BlockDrop, loader, device: torch.device, learned: int | None = None,
            desc: str = "test", amp: torch.dtype | None = None, memory_format=torch.contiguous_format) -> dict:
    """The greedy policy and the prediction of every image of ``loader``, in
    order, in eval mode. Returns CPU tensors: ``policies`` N x K (0/1 floats),
    ``preds`` N, ``targets`` N, ``correct`` N (bool), and ``index`` N when the
    loader gives the images' indices."""
    model.eval()
    policies, preds, targets, indices = [], [], [], []
    for inputs, target, *index in progress(loader, desc):
        with autocast(device, amp):
            logits, policy = model(to_device(inputs, device, memory_format), learned)
        policies.append(policy.float().cpu())
        preds.append(logits.argmax(1).cpu())
        targets.append(target)
        indices += index
    policies, preds, targets = torch.cat(policies), torch.cat(preds), torch.cat(targets)
    out = {"policies": policies, "preds": preds, "targets": targets, "correct": preds == targets}
    return {**out, "index": torch.cat(indices)} if indices else out


def evaluate(agent: nn.Module, resnet: nn.Module, loader, device: torch.device, learned: int, penalty: float,
             desc: str = "test", procs: Processes | None = None, amp: torch.dtype | None = None,
             memory_format=torch.contiguous_format) -> dict:
    """Greedy policy (with the curriculum's forced-on prefix) on the test set:
    accuracy, mean reward, blocks used and unique policies. Under torchrun each
    process evaluates its share and the figures are those of all the images, in
    the data set's order: the same as one process's."""
    procs = procs or Processes(device=device)
    out = predict(BlockDrop(agent, resnet), loader, device, learned, desc, amp, memory_format)
    index, policies, preds, targets = gather_rows(procs, out["index"], out["policies"], out["preds"], out["targets"])
    order = index.argsort()
    policies, preds, targets = policies[order], preds[order], targets[order]
    rewards, correct = reward(preds, targets, policies, penalty)
    return {**summarize(correct, rewards, policies), "images": len(policies)}


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
    amp: bool = False  # mixed precision on CUDA
    memory_format: str = "auto"  # auto (channels-last on CUDA), channels_last or contiguous
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


# Flags that may differ when a run is resumed: they change how long it runs, or
# on what hardware and how fast, not the recipe.
RESUMABLE = {"max_epochs", "workers", "device", "parallel", "amp", "memory_format"}


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
        main_print(f"note: removed {tmp}, left by an interrupted write")
    earlier = run_files(cv_dir)
    continuing = cfg.resume or (cfg.load and Path(cfg.load).resolve().parent == cv_dir.resolve())
    if earlier and not continuing:
        if not cfg.restart:
            raise BlockDropError(
                f"--cv_dir {cv_dir} holds another run ({earlier[0].name}): continue it with --resume, start "
                f"a new one there with --restart (the earlier files are moved to {cv_dir}/earlier-<time>/), "
                "or choose another --cv_dir")
        main_print(f"note: the earlier run's files were moved to {set_aside(earlier, cv_dir)}/")
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
        path, state = resume_from if resume_from else (Path(cfg.load), None)
        checkpoint = load_blockdrop_checkpoint(path, model.name, agent, resnet if cfg.joint else None, state)
        start_epoch = int(checkpoint.get("epoch", -1)) + 1
        main_print(f"loaded agent from {path}")
    pretrained = None
    if cfg.joint and cfg.pretrained and checkpoint is None:
        pretrained = load_blockdrop_checkpoint(Path(cfg.pretrained), model.name, agent, None)
        main_print(f"loaded pretrained model from {cfg.pretrained}")
    if cfg.joint and checkpoint and checkpoint["has_resnet"]:
        base = checkpoint.get("base")  # the finetuned ResNet is in the checkpoint; its base stays on record
    else:
        recorded, source = (checkpoint, path) if checkpoint else (pretrained, cfg.pretrained) if pretrained else (None, None)
        recorded = recorded.get("base") if recorded else None
        base = load_base_on_record(resnet, model, cfg.base, recorded, source)
    if resume_from:
        policy_start = resume_from[1]["args"].get("policy_start", "")
    elif cfg.load or pretrained:
        policy_start = f"agent of {cfg.load or cfg.pretrained}"
    else:
        policy_start = agent.start if model.arch == "cifar" else load_policy_start(agent)
    return Networks(agent, resnet, start_epoch, checkpoint, path, policy_start, base)


def data_loaders(trainset, testset, procs: Processes, batch_size: int, workers: int, seed: int | None,
                 test_batch_size: int | None = None) -> tuple[DataLoader, DataLoader]:
    """Batches of (images, targets, the images' indices). One process shuffles
    as the original does; under torchrun a DistributedSampler gives each process
    its share of a shuffle seeded by ``--seed`` and the epoch (``set_epoch``),
    and the test set is dealt out image by image, with no image repeated.
    ``batch_size`` is per process. On CUDA the batches are pinned and the
    workers persist across epochs."""
    trainset, testset = WithIndex(trainset), WithIndex(testset)
    cuda = procs.device.type == "cuda"
    extra = {"num_workers": workers, "pin_memory": cuda, "persistent_workers": cuda and workers > 0}
    test_batch_size = test_batch_size or batch_size
    if not procs.distributed:
        return (DataLoader(trainset, batch_size=batch_size, shuffle=True, **extra),
                DataLoader(testset, batch_size=test_batch_size, shuffle=False, **extra))
    sampler = DistributedSampler(trainset, num_replicas=procs.world_size, rank=procs.rank, shuffle=True,
                                 seed=seed or 0)
    share = Subset(testset, range(procs.rank, len(testset), procs.world_size))
    return (DataLoader(trainset, batch_size=batch_size, sampler=sampler, **extra),
            DataLoader(share, batch_size=test_batch_size, shuffle=False, **extra))


def first_of_each(index: torch.Tensor) -> torch.Tensor:
    """Positions of the first occurrence of each index (a distributed sampler
    repeats a few images to even the processes out)."""
    first = {}
    for position, i in enumerate(index.tolist()):
        first.setdefault(i, position)
    return torch.tensor(sorted(first.values()), dtype=torch.long)


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


def parallelize(cfg: TrainConfig, procs: Processes, agent: nn.Module, resnet: nn.Module):
    """DistributedDataParallel under torchrun: the agent, and the ResNet when it
    trains (the curriculum's frozen ResNet runs as it is). Blocks that no image
    of a process's batch keeps, and the value head the loss never uses, leave
    parameters without a gradient on that process: ``find_unused_parameters``
    lets DDP still average the others, and leaves the gradient of a parameter
    unused on every process untouched (as one process would). ``--parallel``:
    nn.DataParallel over this machine's GPUs, as the original did."""
    if procs.distributed:
        ids = [procs.device.index] if procs.device.type == "cuda" else None
        agent = DDP(agent, device_ids=ids, find_unused_parameters=True)
        if cfg.joint:
            resnet = DDP(resnet, device_ids=ids, find_unused_parameters=True)
        return agent, resnet
    if not cfg.parallel:
        return agent, resnet
    if procs.device.type == "cuda" and torch.cuda.device_count() > 1:
        return nn.DataParallel(agent), nn.DataParallel(resnet)
    main_print(f"note: --parallel needs 2 or more CUDA GPUs; running on {procs.device}")
    return agent, resnet


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """``--amp``: bfloat16 on CUDA where the GPU has it, else float16 (with a gradient scaler)."""
    if not cfg.amp:
        return None
    if device.type != "cuda":
        main_print("note: --amp applies on CUDA only; this run on the CPU stays in float32")
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def memory_format(cfg: TrainConfig, device: torch.device):
    """``--memory_format``: channels-last helps convolutions on GPUs; ``auto`` uses it on CUDA only."""
    name = cfg.memory_format if cfg.memory_format != "auto" else ("channels_last" if device.type == "cuda" else
                                                                 "contiguous")
    return torch.channels_last if name == "channels_last" else torch.contiguous_format


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
    configuration's data sets (for experiments on data of one's own). Under
    torchrun every process trains its share and only the main one writes."""
    procs = setup(cfg.device)
    try:
        return _fit(cfg, datasets, procs)
    finally:
        teardown(procs)


def _fit(cfg: TrainConfig, datasets: tuple | None, procs: Processes) -> dict:
    device = procs.device
    cv_dir = Path(cfg.cv_dir)
    broadcast(procs, prepare_run_folder(cfg) if procs.is_main else None)  # the others wait for the folder
    resume_from = newest_run_state(cv_dir) if cfg.resume else None
    if resume_from:
        cfg = continue_config(cfg, *resume_from)
        main_print(f"resuming the run in {cv_dir} after epoch {resume_from[1]['epoch']} ({resume_from[0].name})")
    if cfg.penalty > 0:
        main_print(f"note: --penalty {cfg.penalty:g} is positive: a wrong prediction is then rewarded")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the original; the convolutions' shapes repeat
    seed_everything(cfg.seed)
    nets = build_networks(cfg, resume_from)
    if procs.distributed and cfg.seed is not None:
        torch.manual_seed(cfg.seed + procs.rank)  # the same networks, then each process its own samples
    trainset, testset = datasets or get_datasets(get_config(cfg.model), cfg.data_dir)
    trainloader, testloader = data_loaders(trainset, testset, procs, cfg.batch_size, cfg.workers, cfg.seed)
    layout = memory_format(cfg, device)
    nets.agent.to(device, memory_format=layout)
    nets.resnet.to(device, memory_format=layout)
    if not cfg.joint:
        nets.resnet.requires_grad_(False)
    optimizer, schedule = make_optimizer(cfg, nets)
    agent, resnet = parallelize(cfg, procs, nets.agent, nets.resnet)
    first_epoch = resume_from[1].get("first_epoch", 0) if resume_from else nets.start_epoch
    end_epoch = first_epoch + cfg.max_epochs
    if resume_from:  # the random streams go on where the run left them
        states = resume_from[1].get("rng_processes") or [resume_from[1]["rng"]]
        restore_rng(states[procs.rank] if len(states) == procs.world_size else states[0])

    args = {**cfg.flags(), "policy_start": nets.policy_start, "processes": procs.world_size}
    run = {"base": nets.base, "first_epoch": first_epoch, "end_epoch": end_epoch}
    logger = None
    if procs.is_main:
        save_args(args, cv_dir)
        logger = RunLogger(cv_dir, nets.start_epoch)
    precision = amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler("cuda") if precision == torch.float16 else None
    rl = RLConfig(alpha=cfg.alpha, penalty=cfg.penalty, beta=cfg.beta, joint=cfg.joint,
                  execution="per_image" if cfg.per_image else None, world_size=procs.world_size, amp=precision)
    num_blocks = nets.agent.num_blocks
    evaluation = {"procs": procs, "amp": precision, "memory_format": layout}
    last = {"checkpoint": None}
    try:
        for epoch in range(nets.start_epoch, end_epoch + 1):
            if epoch % cfg.epoch_step == 0:
                main_print(f"# setting learning_rate to {optimizer.param_groups[0]['lr']:.2E}")
            learned = num_blocks if cfg.joint else learned_blocks(epoch, num_blocks, cfg.cl_step)
            if not cfg.joint:
                main_print(f"training the last {learned} blocks ...")
            if isinstance(trainloader.sampler, DistributedSampler):
                trainloader.sampler.set_epoch(epoch)
            rows = train_one_epoch(agent, resnet, trainloader, optimizer, device, learned, rl,
                                   desc=f"epoch {epoch}", scaler=scaler, memory_format=layout)
            stats = epoch_stats(procs, rows)
            if logger:
                logger.log("train", epoch, stats)
            check_finite(epoch, agent=nets.agent, **({"ResNet": nets.resnet} if cfg.joint else {}))
            if epoch % cfg.test_every == 0:
                stats = evaluate(agent, resnet, testloader, device, learned, cfg.penalty, **evaluation)
            elif epoch == end_epoch:  # the last epoch is never lost; its evaluation, an addition, draws
                with torch.random.fork_rng(devices=cuda_devices(device)):  # no number the run goes on with
                    stats = evaluate(agent, resnet, testloader, device, learned, cfg.penalty, **evaluation)
            tested = epoch % cfg.test_every == 0 or epoch == end_epoch
            if logger and tested:
                logger.log("test", epoch, stats)
            rng_processes = gather_objects(procs, rng_state())
            if procs.is_main:
                state = checkpoint_dict(epoch, stats, agent, resnet if cfg.joint else None, optimizer, args,
                                        {**run, "rng_processes": rng_processes if procs.distributed else None})
                if tested:
                    path = save_blockdrop_checkpoint(cv_dir, state)
                    last = {**stats, "epoch": epoch, "checkpoint": str(path)}
                    same_file_atomically(path, cv_dir / LAST)
                else:
                    save_checkpoint(state, cv_dir / LAST)
            schedule.step()
    except NonFinite as exc:
        newest = cv_dir / LAST if (cv_dir / LAST).exists() else "none (no epoch completed)"
        raise NonFinite(f"{exc}; training stopped, and the newest complete state on disk is {newest}") from exc
    finally:
        if logger:
            logger.close()
    return last
