"""Flat ResNets: the blocks are kept as a flat list so any subset can run.

A network is a stem, ``blocks[stage][i]`` residual functions f_t (without the
final ReLU), one shortcut ``ds[stage]`` per stage (applied at the first block
of that stage) and a head. Block t of the flat order runs as

    x = relu(shortcut(x) + f_t(x))   if it is kept,
    x = shortcut(x)                  if it is dropped,

where ``shortcut`` is ``ds[stage]`` for the first block of a stage and the
identity otherwise (BlockDrop, SPEC section 3). One block loop,
``run_blocks``, runs a policy in each execution: every block, the batched
masked form of training, each block on the images that keep it (per image, in
batches), and the kept blocks of one shared policy.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """3x3 conv, BN, ReLU, 3x3 conv, BN. The residual ReLU is applied by the caller."""

    expansion = 1

    def __init__(self, in_ch: int, width: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(in_ch, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(x))


class Bottleneck(nn.Module):
    """1x1, 3x3 (with the stride), 1x1 with expansion 4; ReLU after the first two only."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int = 1):
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.bn3(self.conv3(x))


class PadShortcut(nn.Module):
    """CIFAR's parameter-free shortcut: 2x2 average pool, then double the
    channels by concatenating zeros ("option A" of He et al.)."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)
        return torch.cat([x, torch.zeros_like(x)], dim=1)


def conv_shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    """ImageNet's projection shortcut: 1x1 conv (with the stride) and BN.
    Its keys are ``ds.{stage}.0.weight`` and ``ds.{stage}.1.*``."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_ch),
    )


def _channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def take_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The images ``rows`` of a batch, in the batch's memory layout (channels-last stays so)."""
    if _channels_last(x):
        return x.permute(0, 2, 3, 1).index_select(0, rows).permute(0, 3, 1, 2)
    return x.index_select(0, rows)


def put_rows(x: torch.Tensor, rows: torch.Tensor, values: torch.Tensor, in_place: bool) -> torch.Tensor:
    """``x`` with its images ``rows`` replaced by ``values`` (in place, or a copy for autograd)."""
    if _channels_last(x):
        return put_rows(x.permute(0, 2, 3, 1), rows, values.permute(0, 2, 3, 1), in_place).permute(0, 3, 1, 2)
    return x.index_copy_(0, rows, values) if in_place else x.index_copy(0, rows, values)


class FlatResNet(nn.Module):
    """A ResNet whose residual blocks form one flat, individually skippable list.

    ``style="cifar"``: 3x3 stem (3 -> 16), stages of widths 16/32/64 with
    parameter-free shortcuts, 8x8 average pool.
    ``style="imagenet"``: 7x7/2 stem (3 -> 64) and 3x3/2 max pool, stages of
    widths 64/128/256/512 with conv shortcuts, ``pool_size`` average pool.
    ``num_classes=None`` leaves out the fc layer; ``forward_features`` then
    gives the pooled feature (how the policy networks use it).
    """

    def __init__(
        self,
        block: type[nn.Module],
        layers: list[int],
        num_classes: int | None,
        style: str = "cifar",
        pool_size: int | None = None,
    ):
        super().__init__()
        if style not in ("cifar", "imagenet"):
            raise ValueError(f"unknown ResNet style {style!r}")
        self.style = style
        self.layers = list(layers)
        if style == "cifar":
            widths, stem_ch = [16, 32, 64], 16
            self.conv1 = conv3x3(3, stem_ch)
            self.maxpool = nn.Identity()
            pool_size = pool_size or 8
        else:
            widths, stem_ch = [64, 128, 256, 512], 64
            self.conv1 = nn.Conv2d(3, stem_ch, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            pool_size = pool_size or 7
        if len(layers) != len(widths):
            raise ValueError(f"a {style} ResNet has {len(widths)} stages, got layers={layers}")
        self.bn1 = nn.BatchNorm2d(stem_ch)

        blocks, shortcuts = [], []
        in_ch = stem_ch
        for stage, (width, n) in enumerate(zip(widths, layers)):
            stride = 1 if stage == 0 else 2
            out_ch = width * block.expansion
            if stride == 1 and in_ch == out_ch:
                shortcuts.append(nn.Identity())
            elif style == "cifar":
                shortcuts.append(PadShortcut())
            else:
                shortcuts.append(conv_shortcut(in_ch, out_ch, stride))
            stage_blocks = []
            for i in range(n):
                stage_blocks.append(block(in_ch, width, stride if i == 0 else 1))
                in_ch = out_ch
            blocks.append(nn.ModuleList(stage_blocks))
        self.blocks = nn.ModuleList(blocks)
        self.ds = nn.ModuleList(shortcuts)
        self.avgpool = nn.AvgPool2d(pool_size)
        self.feature_dim = in_ch
        self.fc = nn.Linear(in_ch, num_classes) if num_classes is not None else None
        # flat order of (stage, index) for blocks 0..K-1
        self.block_index = [(s, i) for s, n in enumerate(layers) for i in range(n)]
        self._init_weights()

    def _init_weights(self) -> None:
        """Convolutions from normal(0, sqrt(2 / (k * k * out_channels))) (He et
        al.'s fan-out initialisation), BatchNorm at weight 1 and bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def num_blocks(self) -> int:
        return len(self.block_index)

    # --- pieces -----------------------------------------------------------
    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(F.relu(self.bn1(self.conv1(x))))

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return self.avgpool(x).flatten(1)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)
        return self.fc(x) if self.fc is not None else x

    # --- the block loop ---------------------------------------------------
    def run_blocks(self, x: torch.Tensor, policy: torch.Tensor | None, execution: str) -> torch.Tensor:
        """The residual blocks on the stem's output ``x``, under one ``execution``:

        - ``"full"``: every block (``policy`` is None);
        - ``"masked"``: ``policy`` is B x num_blocks (0/1); a block that any image keeps
          runs on the whole batch and ``x = u * relu(shortcut + f(x)) + (1 - u) * shortcut``
          per image, the training form of the paper;
        - ``"per_image"``: ``policy`` is B x num_blocks; each block runs only on the
          images that keep it (their rows are gathered, run and put back), the
          shortcut applies to every image: the masked form's result for the
          compute of the kept blocks alone;
        - ``"kept"``: ``policy`` is one num_blocks-long vector shared by the batch and
          only its kept blocks run (profiling one image at a time).

        In every execution a block that no image keeps is not run at all, in train
        mode as in eval mode, as the original does: its BN running statistics
        stay as they were and it gets no new gradient. With gradients off,
        ``x`` may be updated in place."""
        if execution == "full":
            runs = [True] * self.num_blocks
        elif execution in ("masked", "per_image", "kept"):
            self._check_policy(policy, batched=execution != "kept")
            keep = policy.detach().bool().cpu()  # the one host synchronisation
            runs = (keep.any(0) if execution != "kept" else keep).tolist()
        else:
            raise ValueError(f"unknown execution {execution!r}")
        rows = self._kept_rows(keep, x.device) if execution == "per_image" else [None] * self.num_blocks
        for t, (s, i) in enumerate(self.block_index):
            shortcut = self._shortcut(x, s, i)
            if not runs[t]:
                x = shortcut
            elif execution == "masked":
                u = policy[:, t].to(x.dtype).view(-1, 1, 1, 1)
                x = u * F.relu(shortcut + self.blocks[s][i](x)) + (1 - u) * shortcut
            elif rows[t] is not None:  # per image, and some images drop this block
                r = rows[t]
                out = F.relu(take_rows(shortcut, r) + self.blocks[s][i](take_rows(x, r)))
                x = put_rows(shortcut, r, out, in_place=not torch.is_grad_enabled())
            else:
                x = F.relu(shortcut + self.blocks[s][i](x))
        return x

    @staticmethod
    def _kept_rows(keep: torch.Tensor, device: torch.device) -> list[torch.Tensor | None]:
        """For each block, the indices of the images that keep it, or None when
        all of them or none of them do (then no gathering is needed)."""
        counts = keep.sum(0).tolist()
        return [keep[:, t].nonzero().squeeze(1).to(device) if 0 < c < len(keep) else None
                for t, c in enumerate(counts)]

    def _shortcut(self, x: torch.Tensor, stage: int, i: int) -> torch.Tensor:
        return self.ds[stage](x) if i == 0 else x

    def forward(self, x: torch.Tensor, policy: torch.Tensor | None = None, execution: str | None = None) -> torch.Tensor:
        """Logits. Without a policy the plain ResNet. With a B x num_blocks policy the
        ``execution`` of ``run_blocks``: by default ``"per_image"`` in eval mode (where
        BatchNorm uses running statistics and it gives the masked form's logits)
        and ``"masked"``, the paper's form, in train mode."""
        if policy is None:
            return self.head(self.run_blocks(self.stem(x), None, "full"))
        execution = execution or ("masked" if self.training else "per_image")
        return self.head(self.run_blocks(self.stem(x), policy, execution))

    def forward_full(self, x: torch.Tensor) -> torch.Tensor:
        """Every block runs: the plain ResNet (kept: the original's public API, as ``forward_single``)."""
        return self.forward(x)

    def forward_single(self, x: torch.Tensor, policy: torch.Tensor) -> torch.Tensor:
        """Only the kept blocks of one length-K ``policy`` shared by the batch run."""
        return self.head(self.run_blocks(self.stem(x), policy, "kept"))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled feature of the full network (no fc): how the policy networks use it."""
        return self.pool(self.run_blocks(self.stem(x), None, "full"))

    def _check_policy(self, policy: torch.Tensor, batched: bool) -> None:
        want = 2 if batched else 1
        if policy.dim() != want or policy.shape[-1] != self.num_blocks:
            shape = "B x K" if batched else "K"
            raise ValueError(
                f"policy must have shape {shape} with K={self.num_blocks}, got {tuple(policy.shape)}"
            )


def cifar_resnet(depth: int, num_classes: int | None) -> FlatResNet:
    """CIFAR ResNet of depth 6n+2 (32 -> [5,5,5], 110 -> [18,18,18])."""
    if (depth - 2) % 6:
        raise ValueError(f"a CIFAR ResNet has depth 6n+2, got {depth}")
    n = (depth - 2) // 6
    return FlatResNet(BasicBlock, [n, n, n], num_classes, style="cifar")


IMAGENET_LAYERS = {18: (BasicBlock, [2, 2, 2, 2]), 34: (BasicBlock, [3, 4, 6, 3]),
                   50: (Bottleneck, [3, 4, 6, 3]), 101: (Bottleneck, [3, 4, 23, 3]),
                   152: (Bottleneck, [3, 8, 36, 3])}


def imagenet_resnet(depth: int, num_classes: int = 1000) -> FlatResNet:
    if depth not in IMAGENET_LAYERS:
        raise ValueError(f"no ImageNet ResNet of depth {depth}; known: {sorted(IMAGENET_LAYERS)}")
    block, layers = IMAGENET_LAYERS[depth]
    return FlatResNet(block, layers, num_classes, style="imagenet")
