"""BlockDrop's metrics: the greedy policy's predictions over a data set
(``predict``, the one evaluation loop), the blocks it keeps (``policy_stats``),
and a run's metrics, on the training batches (``summarize``) or the test set
(``evaluate``). Used by the training runs, ``pretrain.py`` (a base alone is a
BlockDrop model with every block), ``test.py``, ``visualize.py`` and ``reproduce.py``."""

from __future__ import annotations

import torch
import torch.nn as nn

from models import BlockDrop
from rl import reward
from utils.distributed import Processes, gather_rows
from utils.runtime import autocast, progress, to_device


def policy_stats(policies: torch.Tensor) -> dict:
    """Mean and sample std (n - 1) of blocks used per image, and the number of
    distinct policies. In float32, as the original computes them, so that the
    printed metrics agree to the last digit (one image has no spread: 0)."""
    used = policies.float().sum(1)
    std = used.std().item() if len(used) > 1 else 0.0
    unique = len(torch.unique(policies.to(torch.int8), dim=0)) if len(policies) else 0
    return {"blocks": used.mean().item(), "blocks_std": std, "unique": unique}


def summarize(correct: torch.Tensor, rewards: torch.Tensor, policies: torch.Tensor) -> dict:
    return {"acc": correct.mean().item(), "reward": rewards.mean().item(), **policy_stats(policies),
            "images": len(policies)}


@torch.no_grad()
def predict(model: BlockDrop, loader, device: torch.device, decided: int | None = None,
            desc: str = "test", amp: torch.dtype | None = None, layout=torch.contiguous_format) -> dict:
    """The greedy policy and the prediction of every image of ``loader``, in
    order, in eval mode. Returns CPU tensors: ``policies`` N x num_blocks (0/1 floats),
    ``preds`` N, ``targets`` N, ``correct`` N (bool), and ``index`` N when the
    loader gives the images' indices."""
    model.eval()
    policies, preds, targets, indices = [], [], [], []
    for inputs, target, *index in progress(loader, desc):
        with autocast(device, amp):
            logits, policy = model(to_device(inputs, device, layout), decided)
        policies.append(policy.float().cpu())
        preds.append(logits.argmax(1).cpu())
        targets.append(target)
        indices += index
    policies, preds, targets = torch.cat(policies), torch.cat(preds), torch.cat(targets)
    out = {"policies": policies, "preds": preds, "targets": targets, "correct": preds == targets}
    return {**out, "index": torch.cat(indices)} if indices else out


def evaluate(agent: nn.Module, resnet: nn.Module, loader, device: torch.device, decided: int, penalty: float,
             desc: str = "test", procs: Processes | None = None, amp: torch.dtype | None = None,
             layout=torch.contiguous_format) -> dict:
    """Greedy policy (with the curriculum's forced-on prefix) on the test set:
    accuracy, mean reward, blocks used and unique policies. Under torchrun each
    process evaluates its share and the metrics are those of all the images, in
    the data set's order: the same as one process's."""
    procs = procs or Processes(device=device)
    out = predict(BlockDrop(agent, resnet), loader, device, decided, desc, amp, layout)
    index, policies, preds, targets = gather_rows(procs, out["index"], out["policies"], out["preds"], out["targets"])
    order = index.argsort()
    policies, preds, targets = policies[order], preds[order], targets[order]
    rewards, correct = reward(preds, targets, policies, penalty)
    return summarize(correct, rewards, policies)
