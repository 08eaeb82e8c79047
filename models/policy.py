"""Policy networks: look at the image once, give a keep-probability per block.

The agent is a small ResNet (``features``) whose pooled feature feeds
``logit`` (K keep-probabilities after a sigmoid) and ``vnet`` (a value head
that the loss does not use, kept because the authors' checkpoints carry it and
its cost is part of the reported FLOPs).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import ResNet18_Weights, resnet18

from .resnet import BasicBlock, FlatResNet


class PolicyNet(nn.Module):
    def __init__(self, features: FlatResNet, num_blocks: int, input_pool: int = 1, start: str = "random init"):
        super().__init__()
        self.input_pool = input_pool
        self.features = features
        self.logit = nn.Linear(features.feature_dim, num_blocks)
        self.vnet = nn.Linear(features.feature_dim, 1)
        self.start = start  # where the weights came from, recorded in the run's arguments

    @property
    def num_blocks(self) -> int:
        return self.logit.out_features

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (keep_prob: B x K in (0, 1), value: B x 1)."""
        if self.input_pool > 1:
            x = F.avg_pool2d(x, self.input_pool)
        feature = self.features.forward_features(x)
        return torch.sigmoid(self.logit(feature)), self.vnet(feature)


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


RESNET18_WEIGHTS = ResNet18_Weights.IMAGENET1K_V1


def resnet18_file() -> Path:
    """Where torchvision's weights API keeps the ResNet-18 ImageNet weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(RESNET18_WEIGHTS.url).name


def _resnet18_imagenet_state(source: bool | Path) -> tuple[dict | None, str]:
    """(state dict, description) of torchvision's ResNet-18 ImageNet weights:
    from the file ``source`` or, with ``True``, from torchvision's weights API
    (the hub cache, fetched there when absent and downloads are allowed)."""
    from utils import downloads_allowed, load_state_file  # local: utils is the loader

    if isinstance(source, Path):
        return load_state_file(source), f"ResNet-18 ImageNet weights from {source}"
    cached = resnet18_file()
    if not cached.is_file() and not downloads_allowed():
        return None, "downloads are switched off"
    try:
        state = RESNET18_WEIGHTS.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except Exception as exc:  # no network, a bad hash, a damaged cache file: the start is then random
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, f"{type(exc).__name__}: {detail}"
    return state, f"torchvision ResNet-18 {RESNET18_WEIGHTS.name} ({cached})"


def imagenet_policy(num_blocks: int, resnet18_weights: bool | Path = True) -> PolicyNet:
    """ResNet-10 (BasicBlocks [1,1,1,1]) on the image average-pooled by 2
    (224 -> 112), its last stage at 4x4, a 4x4 pool and a 512-d feature.

    As in the original, its stages start from the first block of each stage of
    torchvision's ResNet-18 ImageNet weights (``resnet18_weights``: ``True``
    asks torchvision's weights API, a path reads that file, ``False`` leaves
    the random start for an agent that a checkpoint will overwrite). When the
    weights cannot be had, one line says so and where to put the file, and the
    network starts from random weights; ``start`` records which start it got.
    torchvision's ResNet-18 is built in every case, as the original built it,
    so that a seeded run draws the same random numbers."""
    from utils import BlockDropError, to_flat_keys  # local: utils is the loader

    features = _features_without_fc(BasicBlock, [1, 1, 1, 1], 1000, style="imagenet", pool_size=4)
    tv_resnet18 = resnet18()  # drawn for the random stream only; its weights come from the file
    del tv_resnet18
    start = "random init (an agent checkpoint is loaded next)"
    if resnet18_weights is not False:
        state, how = _resnet18_imagenet_state(resnet18_weights)
        if state is None:
            start = f"random init: torchvision's ResNet-18 ImageNet weights not available ({how})"
            print(f"note: the R101 policy network starts from random weights: torchvision's ResNet-18 "
                  f"ImageNet weights are not available ({how}); put {Path(RESNET18_WEIGHTS.url).name} "
                  f"(from {RESNET18_WEIGHTS.url}) in {resnet18_file().parent}/ to start as the original does",
                  file=sys.stderr)
        else:
            flat, wanted = to_flat_keys(state), features.state_dict()
            missing = [k for k in wanted if k not in flat]
            if missing:
                raise BlockDropError(f"{how}: not torchvision's ResNet-18 weights (no {missing[0]!r})")
            features.load_state_dict({k: flat[k] for k in wanted})
            start = how
    return PolicyNet(features, num_blocks, input_pool=2, start=start)
