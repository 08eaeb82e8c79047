"""BlockDrop as one module: the policy network looks at the images, the ResNet
runs the blocks their greedy policies keep. The one prediction path of the
scripts (training-time evaluation, ``test.py``, ``visualize.py``, a base's
accuracy in ``pretrain.py``)."""

from __future__ import annotations

import torch
import torch.nn as nn

from .policy import PolicyNet, force_prefix, greedy_policy
from .resnet import FlatResNet


class BlockDrop(nn.Module):
    """``forward(images)`` returns ``(logits, policy)``: B x classes and the
    B x num_blocks greedy policy (0/1) each image ran. Without an agent every block runs
    (the full ResNet, policy all ones). ``decided`` (curriculum) keeps the first
    num_blocks - decided blocks on."""

    def __init__(self, agent: PolicyNet | None, resnet: FlatResNet):
        super().__init__()
        self.agent = agent
        self.resnet = resnet

    def policy(self, images: torch.Tensor, decided: int | None = None) -> torch.Tensor:
        if self.agent is None:
            return torch.ones(len(images), self.resnet.num_blocks, device=images.device)
        keep_prob, _ = self.agent(images)
        policy = greedy_policy(keep_prob.float())  # decided in float32, also under autocast
        return policy if decided is None else force_prefix(policy, decided)

    def forward(self, images: torch.Tensor, decided: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        policy = self.policy(images, decided)
        logits = self.resnet(images) if self.agent is None else self.resnet(images, policy)
        return logits, policy
