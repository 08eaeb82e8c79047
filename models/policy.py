"""Policy networks: look at the image once, give a keep-probability per block.

The agent is a small ResNet (``features``) whose pooled feature feeds
``logit`` (K keep-probabilities after a sigmoid) and ``vnet`` (a value head
that the loss does not use, kept because the authors' checkpoints carry it and
its cost is part of the reported FLOPs).
"""

from __future__ import annotations

from pathlib import Path

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

    @property
    def num_blocks(self) -> int:
        return self.logit.out_features

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (keep_prob: B x K in (0, 1), value: B x 1)."""
        if self.input_pool > 1:
            x = F.avg_pool2d(x, self.input_pool)
        feature = self.features.forward_features(x)
        return torch.sigmoid(self.logit(feature)), self.vnet(feature)


def cifar_policy(num_blocks: int) -> PolicyNet:
    """CIFAR ResNet-8 (one BasicBlock per stage) on the 32x32 image, 64-d feature."""
    return PolicyNet(FlatResNet(BasicBlock, [1, 1, 1], None, style="cifar"), num_blocks)


# torchvision's ResNet-18 ImageNet weights, where torch.hub keeps them
RESNET18_FILE = "resnet18-f37072fd.pth"


def imagenet_policy(num_blocks: int, resnet18_weights: Path | None = None) -> PolicyNet:
    """ResNet-10 (BasicBlocks [1,1,1,1]) on the image average-pooled by 2
    (224 -> 112), its last stage at 4x4, a 4x4 pool and a 512-d feature.

    Its stages start from the first block of each stage of torchvision's
    ResNet-18 ImageNet weights when that file is on disk (``torch.hub``'s
    checkpoint folder, or ``resnet18_weights``); nothing is downloaded."""
    features = FlatResNet(BasicBlock, [1, 1, 1, 1], None, style="imagenet", pool_size=4)
    path = resnet18_weights or Path(torch.hub.get_dir()) / "checkpoints" / RESNET18_FILE
    if Path(path).is_file():
        from utils import load_state_file, to_flat_keys  # local: utils is the loader

        state = to_flat_keys(load_state_file(Path(path)))
        wanted = features.state_dict()
        features.load_state_dict({k: v for k, v in state.items() if k in wanted}, strict=False)
    return PolicyNet(features, num_blocks, input_pool=2)
