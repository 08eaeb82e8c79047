"""BlockDrop's method, in one place: the policy's exploration, the curriculum,
the reward, the REINFORCE loss and one training step (SPEC sections 4 and 5).

Symbols as in the paper, but for its K, the number of blocks, which is
``num_blocks`` here (K is ``--k``, the blocks a heuristic keeps): a policy u in
{0,1}^num_blocks per image, p the policy network's keep-probabilities, alpha
bounds the exploration probabilities away from 0 and 1, beta weighs the
entropy bonus, ``penalty`` is gamma, the reward of a wrong prediction. In the
curriculum the policy decides the last ``decided`` blocks; the ones before are
forced on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributions import Bernoulli

from models import force_prefix, greedy_policy
from utils.config import PHASE_DEFAULTS
from utils.errors import NonFinite
from utils.runtime import autocast, backward_and_step


def exploration_prob(keep_prob: torch.Tensor, alpha: float) -> torch.Tensor:
    """p' = alpha * p + (1 - alpha) * (1 - p): keeps every block's probability
    inside [1 - alpha, alpha] so sampling keeps exploring."""
    return alpha * keep_prob + (1 - alpha) * (1 - keep_prob)


def decided_blocks(epoch: int, num_blocks: int, cl_step: int = 1) -> int:
    """The curriculum: at epoch e the policy decides the last ``min(cl_step * (e + 1), num_blocks)``
    blocks; the ones before are forced on (with ``cl_step`` 1: e + 1, SPEC section 4;
    with ``cl_step`` num_blocks: every block from the first epoch, no curriculum)."""
    return max(1, min(cl_step * (epoch + 1), num_blocks))


def reward(preds: torch.Tensor, targets: torch.Tensor, policy: torch.Tensor,
           penalty: float) -> tuple[torch.Tensor, torch.Tensor]:
    """R = 1 - (|u|_1 / num_blocks)^2 for a correct prediction, ``penalty`` for a wrong one.
    ``preds`` are logits (B x classes) or predicted classes (B).
    Returns (reward B, correct B as floats)."""
    block_use = policy.sum(1) / policy.shape[1]
    predicted = preds.argmax(1) if preds.dim() == 2 else preds
    correct = (predicted == targets).to(policy.dtype)
    sparse = 1.0 - block_use ** 2
    return torch.where(correct.bool(), sparse, torch.full_like(sparse, penalty)), correct


@dataclass
class RLConfig:
    alpha: float = 0.8
    penalty: float = PHASE_DEFAULTS[False]["penalty"]  # the curriculum's
    beta: float = 0.1
    joint: bool = False  # False: curriculum (ResNet frozen); True: joint finetuning
    execution: str | None = None  # FlatResNet's execution (None: per image in eval mode, masked in train mode)
    world_size: int = 1  # processes averaging their gradients (DistributedDataParallel)
    amp: torch.dtype | None = None  # autocast dtype of the networks' forward passes, or None


def policy_loss(keep_prob: torch.Tensor, policy: torch.Tensor, advantage: torch.Tensor,
                decided: int, cfg: RLConfig) -> torch.Tensor:
    """REINFORCE with the self-critical advantage. Curriculum: the mean over the
    batch of the log-likelihood terms of the decided blocks, minus beta times
    the entropy. Finetuning: the sum over the batch, no entropy; under
    DistributedDataParallel, which averages the processes' gradients, it is
    scaled by their number so that a step equals one process's step on the
    global batch."""
    explore = exploration_prob(keep_prob, cfg.alpha)
    log_prob = Bernoulli(probs=explore).log_prob(policy)  # B x num_blocks
    if cfg.joint:
        loss = -(log_prob.sum(1) * advantage).sum()
        return loss * cfg.world_size if cfg.world_size > 1 else loss
    mask = torch.zeros_like(policy)
    mask[:, policy.shape[1] - decided:] = 1  # forced-on blocks carry no gradient
    pg = (-log_prob * advantage.unsqueeze(1) * mask).sum()
    clamped = explore.clamp(1e-15, 1 - 1e-15)
    entropy = (-clamped * torch.log(clamped)).sum()
    return (pg - cfg.beta * entropy) / policy.shape[0]


def train_step(agent: nn.Module, resnet: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
               optimizer: torch.optim.Optimizer, decided: int, cfg: RLConfig,
               scaler: torch.amp.GradScaler | None = None) -> dict:
    """One batch: sample u, greedy baseline u_map, reward, advantage, one optimizer step.
    The keep-probabilities, samples and log-likelihoods stay in float32 under
    ``--amp`` (in float16 the 1e-15 clamps would round to 0 and 1). Returns the
    loss and, per image, the sampled policy, its reward and correctness. A
    policy source that is not learned (FirstK, RandomK) goes to ``fixed_policy_step``."""
    if not getattr(agent, "learnable", True):
        return fixed_policy_step(agent, resnet, inputs, targets, optimizer, cfg, scaler)
    with autocast(inputs.device, cfg.amp):
        keep_prob, _ = agent(inputs)
    keep_prob = keep_prob.float()
    if not torch.isfinite(keep_prob).all():
        raise NonFinite("the policy network's keep-probabilities are not finite (nan)")
    policy_map = force_prefix(greedy_policy(keep_prob.detach()), decided)
    sampled = Bernoulli(probs=exploration_prob(keep_prob.detach(), cfg.alpha)).sample()
    policy = force_prefix(sampled, decided)

    with autocast(inputs.device, cfg.amp):
        with torch.no_grad():
            preds_map = resnet(inputs, policy_map, cfg.execution)
        with torch.set_grad_enabled(cfg.joint):  # the sampled pass trains the ResNet when finetuning
            preds = resnet(inputs, policy, cfg.execution)
    preds_map, preds = preds_map.float(), preds.float()

    reward_map, _ = reward(preds_map, targets, policy_map, cfg.penalty)
    reward_sample, correct = reward(preds, targets, policy, cfg.penalty)
    advantage = (reward_sample - reward_map).detach()
    loss = policy_loss(keep_prob, policy, advantage, decided, cfg)
    if cfg.joint:
        loss = loss + F.cross_entropy(preds, targets)
    return {"loss": optimizer_step(loss, optimizer, scaler), "reward": reward_sample, "correct": correct, "policy": policy}


def fixed_policy_step(agent: nn.Module, resnet: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                      optimizer: torch.optim.Optimizer, cfg: RLConfig,
                      scaler: torch.amp.GradScaler | None = None) -> dict:
    """Finetuning under a fixed policy (the paper's baselines): the ResNet alone
    learns, on the cross-entropy of its predictions under the policy the source
    gives (the reward is computed for the log only)."""
    policy, _ = agent(inputs)
    with autocast(inputs.device, cfg.amp):
        preds = resnet(inputs, policy, cfg.execution).float()
    reward_sample, correct = reward(preds.detach(), targets, policy, cfg.penalty)
    loss = F.cross_entropy(preds, targets)
    return {"loss": optimizer_step(loss, optimizer, scaler), "reward": reward_sample, "correct": correct, "policy": policy}


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> float:
    """One optimizer step, unless the loss is not finite: training stops before
    the step spreads it into the weights. Returns the loss."""
    value = loss.item()
    if not math.isfinite(value):
        raise NonFinite(f"the loss is {value}")
    # PyTorch 0.3's zero_grad zeroed gradients in place: a block that every image
    # of this batch skips, but that ran before, still takes an Adam step with a
    # zero gradient (its moments decay); one that never ran has no gradient and
    # is left alone. ``set_to_none=False`` keeps exactly that.
    optimizer.zero_grad(set_to_none=False)
    backward_and_step(loss, optimizer, scaler)
    return value
