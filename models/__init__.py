"""Model registry: one row per ``--model`` configuration (SPEC section 1).

``get_config(name)`` is the one way in; ``build_resnet(config)`` and
``build_agent(config)`` make the two networks of a configuration. The package
depends on torch and torchvision only.
"""

from __future__ import annotations

from dataclasses import dataclass

from .baselines import POLICY_SOURCES, DistributeK, FirstK, FixedPolicy, RandomK, distribute, fixed_policy
from .blockdrop import BlockDrop
from .keys import to_flat_keys, to_standard_keys
from .policy import PolicyNet, cifar_policy, force_prefix, greedy_policy, imagenet_policy, resnet18_weights
from .resnet import IMAGENET_LAYERS, BasicBlock, Bottleneck, FlatResNet, cifar_resnet, imagenet_resnet

__all__ = [
    "CONFIGS", "ModelConfig", "get_config", "build_resnet", "build_agent", "BlockDrop",
    "FlatResNet", "PolicyNet", "BasicBlock", "Bottleneck", "resnet18_weights",
    "greedy_policy", "force_prefix", "to_flat_keys", "to_standard_keys",
    "POLICY_SOURCES", "FixedPolicy", "FirstK", "RandomK", "DistributeK", "distribute", "fixed_policy",
]


# torchvision's ImageNet weights (IMAGENET1K_V1) that serve as the ImageNet bases, by their file's address:
# named here so that the registry does not import torchvision (the tests check them against torchvision's).
TORCHVISION_BASES = {
    "R101_ImgNet": "https://download.pytorch.org/models/resnet101-63fe2227.pth",
    "R50_ImgNet": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
}


@dataclass(frozen=True)
class ModelConfig:
    name: str
    dataset: str  # key of utils.DATASETS
    arch: str  # "cifar" or "imagenet"
    depth: int
    num_classes: int
    pretrained: str  # default base, relative to cv/pretrained/
    normalize: tuple | None = None  # (mean, std) the base was trained with, or None
    torchvision_base: str | None = None  # torchvision weights that also serve as the base, from the hub cache

    @property
    def num_blocks(self) -> int:
        return sum(self.stage_sizes)

    @property
    def stage_sizes(self) -> list[int]:
        """The blocks of each stage (the paper's residual segments)."""
        if self.arch == "cifar":
            return [(self.depth - 2) // 6] * 3
        return list(IMAGENET_LAYERS[self.depth][1])

    @property
    def input_size(self) -> int:
        return 32 if self.arch == "cifar" else 224


_R32_C10_NORM = ((125.3 / 255, 123.0 / 255, 113.9 / 255), (63.0 / 255, 62.1 / 255, 66.7 / 255))
_IMAGENET_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# Fashion-MNIST's own mean and std (its 60,000 training images, 28x28), the gray value in each of three channels.
_FASHION_NORM = ((0.2860,) * 3, (0.3530,) * 3)

CONFIGS: dict[str, ModelConfig] = {
    c.name: c
    for c in [
        ModelConfig("R32_C10", "C10", "cifar", 32, 10, "R32_C10/pk_E_164_A_0.923.t7", _R32_C10_NORM),
        ModelConfig("R110_C10", "C10", "cifar", 110, 10, "R110_C10/pk_E_130_A_0.932.t7"),
        ModelConfig("R32_C100", "C100", "cifar", 32, 100, "R32_C100/pk_E_164_A_0.693.t7"),
        ModelConfig("R110_C100", "C100", "cifar", 110, 100, "R110_C100/pk_E_160_A_0.723.t7"),
        ModelConfig("R101_ImgNet", "ImgNet", "imagenet", 101, 1000,
                    "R101_ImgNet/ImageNet_R101_224_76.464", _IMAGENET_NORM,
                    torchvision_base=TORCHVISION_BASES["R101_ImgNet"]),
        # UCI handwritten digits (scikit-learn ships them), 32x32: runs offline on a CPU.
        # No released base: pretrain.py writes pk_E_<epoch>_A_<acc>.t7 in this folder.
        ModelConfig("R32_Digits", "Digits", "cifar", 32, 10, "R32_Digits/pk_E_<epoch>_A_<acc>.t7"),
        # Shallower ResNets of the same recipe, the equal-cost baselines of BlockDrop on a
        # deeper one (1 to 4 blocks per stage on the digits; 3, 7 and 9 on CIFAR-10).
        *[ModelConfig(f"R{depth}_Digits", "Digits", "cifar", depth, 10, f"R{depth}_Digits/pk_E_<epoch>_A_<acc>.t7")
          for depth in (8, 14, 20, 26)],
        *[ModelConfig(f"R{depth}_C10", "C10", "cifar", depth, 10, f"R{depth}_C10/pk_E_<epoch>_A_<acc>.t7")
          for depth in (20, 44, 56)],
        ModelConfig("R50_ImgNet", "ImgNet", "imagenet", 50, 1000, "R50_ImgNet/pk_E_<epoch>_A_<acc>.t7", _IMAGENET_NORM,
                    torchvision_base=TORCHVISION_BASES["R50_ImgNet"]),
        # Fashion-MNIST (utils.fashion): the 28x28 gray images padded to 32x32 and repeated to three
        # channels, so these are the CIFAR ResNets as they are (keys, policy network, FLOPs). No released bases.
        *[ModelConfig(f"R{depth}_Fashion", "Fashion", "cifar", depth, 10, f"R{depth}_Fashion/pk_E_<epoch>_A_<acc>.t7",
                      _FASHION_NORM)
          for depth in (8, 14, 20, 32, 56, 110)],
    ]
}


def get_config(name: str) -> ModelConfig:
    if name not in CONFIGS:  # the scripts' --model has these choices, so this is a caller's mistake
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(CONFIGS)}")
    return CONFIGS[name]


def build_resnet(config: ModelConfig) -> FlatResNet:
    if config.arch == "cifar":
        return cifar_resnet(config.depth, config.num_classes)
    return imagenet_resnet(config.depth, config.num_classes)


def build_agent(config: ModelConfig) -> PolicyNet:
    """The policy network, from random weights (the ImageNet one's ResNet-18
    start is loaded by ``utils.bases.load_policy_start``)."""
    if config.arch == "cifar":
        return cifar_policy(config.num_blocks)
    return imagenet_policy(config.num_blocks)
