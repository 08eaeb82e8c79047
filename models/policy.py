"""Policy networks: look at the image once, give a keep-probability per block.

The agent is a small ResNet (``features``) whose pooled feature feeds
``logit`` (num_blocks keep-probabilities after a sigmoid) and ``vnet`` (a value head
that the loss does not use, kept because the authors' checkpoints carry it and
its cost is part of the reported FLOPs). A policy u in {0,1}^num_blocks says which
blocks run; the greedy policy keeps a block when its probability is >= 0.5.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .resnet import BasicBlock, FlatResNet


class PolicyNet(nn.Module):
    def __init__(self, features: FlatResNet, num_blocks: int, input_pool: int = 1):
        super().__init__()
        self.input_pool = input_pool
        self.features = features
        self.logit = nn.Linear(features.feature_dim, num_blocks)
        self.vnet = nn.Linear(features.feature_dim, 1)
        self.start = "random init"  # where the weights came from, recorded in the run's arguments

    @property
    def num_blocks(self) -> int:
        return self.logit.out_features

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (keep_prob: B x num_blocks in (0, 1), value: B x 1)."""
        if self.input_pool > 1:
            x = F.avg_pool2d(x, self.input_pool)
        feature = self.features.forward_features(x)
        return torch.sigmoid(self.logit(feature)), self.vnet(feature)


def greedy_policy(keep_prob: torch.Tensor) -> torch.Tensor:
    """u_map = (p >= 0.5), as floats."""
    return (keep_prob >= 0.5).to(keep_prob.dtype)


def force_prefix(policy: torch.Tensor, decided: int) -> torch.Tensor:
    """Set the first num_blocks - decided entries of each policy to 1 (a copy): the
    curriculum's blocks that the policy does not decide yet."""
    policy = policy.clone()
    policy[:, : policy.shape[1] - decided] = 1
    return policy


def _features_without_fc(*args, **kwargs) -> FlatResNet:
    """A feature ResNet built *with* its classifier, which is then dropped. The
    original did so; building the fc draws random numbers, and drawing the same
    ones keeps a seeded run on the original's random stream (data order,
    sampled policies). The state-dict keys do not change."""
    features = FlatResNet(*args, **kwargs)
    features.fc = None
    return features


def cifar_policy(num_blocks: int) -> PolicyNet:
    """CIFAR ResNet-8 (one BasicBlock per stage) on the 32x32 image, 64-d feature."""
    return PolicyNet(_features_without_fc(BasicBlock, [1, 1, 1], 10, style="cifar"), num_blocks)


def resnet18_weights():
    """torchvision's ResNet-18 ImageNet weights, from which the ImageNet policy
    network's stages start (see utils.bases.load_policy_start); torchvision is
    imported here, where the ImageNet policy needs it, and not by the registry."""
    from torchvision.models import ResNet18_Weights

    return ResNet18_Weights.IMAGENET1K_V1


def imagenet_policy(num_blocks: int) -> PolicyNet:
    """ResNet-10 (BasicBlocks [1,1,1,1]) on the image average-pooled by 2
    (224 -> 112), its last stage at 4x4, a 4x4 pool and a 512-d feature.

    The original built torchvision's ResNet-18 here to take its ImageNet
    weights; it is built here too, in the same place, so that a seeded run
    draws the same random numbers. The weights themselves are loaded by
    ``utils.bases.load_policy_start``."""
    features = _features_without_fc(BasicBlock, [1, 1, 1, 1], 1000, style="imagenet", pool_size=4)
    from torchvision.models import resnet18

    resnet18()  # for the random stream only
    return PolicyNet(features, num_blocks, input_pool=2)
