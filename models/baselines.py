"""Heuristic policy sources, the paper's baselines (its Table 1): they take the
policy network's place wherever a policy is consumed (evaluation, profiling,
finetuning) and decide without looking at the image.

- ``FirstK``: the first K blocks, for every image;
- ``DistributeK``: K blocks spread as evenly as possible over the stages (the
  paper's residual segments), the first blocks of each stage, for every image;
- ``RandomK``: K blocks drawn uniformly at random, a new draw per image, from
  the policy's own seeded generators (so it never disturbs the run's random
  stream): in training one stream that goes on (saved with the policy's state,
  so a resumed run draws on), and for evaluation one that starts again from
  the seed whenever the policy is put in eval mode (every evaluation draws
  the same policies for the same images).

Like ``PolicyNet`` they return (keep probabilities, value); their
probabilities are the policy itself (0 or 1), so the greedy policy is the
same, and they have no weights and cost no FLOPs.
"""

from __future__ import annotations

import torch
import torch.nn as nn

POLICY_SOURCES = ("learned", "firstk", "randomk", "distributek")


class FixedPolicy(nn.Module):
    """A policy source that is not learned: ``learnable`` is False, so training
    consumes its policy as it is and trains only the ResNet."""

    learnable = False
    name = ""

    def __init__(self, num_blocks: int, k: int, seed: int = 0):
        super().__init__()
        if not 1 <= k <= num_blocks:
            raise ValueError(f"K must be between 1 and the {num_blocks} blocks, got {k}")
        self.num_blocks, self.k, self.seed = num_blocks, k, seed
        self.start = f"{self.name} with K={k}" + (f", seed {seed}" if self.name == "randomk" else "")

    def record(self) -> dict:
        """What a checkpoint records of this policy (``fixed_policy(**record)`` builds it again)."""
        return {"policy": self.name, "k": self.k, "seed": self.seed}

    def policies(self, n: int) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.policies(len(images)).to(images.device), None


class FirstK(FixedPolicy):
    name = "firstk"

    def policies(self, n: int) -> torch.Tensor:
        policy = torch.zeros(n, self.num_blocks)
        policy[:, : self.k] = 1
        return policy


class RandomK(FixedPolicy):
    name = "randomk"

    def __init__(self, num_blocks: int, k: int, seed: int = 0):
        super().__init__(num_blocks, k, seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.eval_generator = torch.Generator().manual_seed(seed)

    def train(self, mode: bool = True) -> RandomK:
        if not mode:
            self.eval_generator.manual_seed(self.seed)
        return super().train(mode)

    def policies(self, n: int) -> torch.Tensor:
        """Each image's K blocks: those with the K smallest of one uniform number
        per block, drawn image after image (the same policies at any batch size)."""
        generator = self.generator if self.training else self.eval_generator
        order = torch.rand(n, self.num_blocks, generator=generator).argsort(dim=1)
        return torch.zeros(n, self.num_blocks).scatter_(1, order[:, : self.k], 1.0)

    def get_extra_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


def distribute(k: int, stage_sizes: list[int]) -> list[int]:
    """How many blocks of each stage DistributeK keeps: ``k`` spread as evenly as
    possible, no stage given more blocks than it has (what a full stage cannot
    take goes to the others). When ``k`` does not divide, the deepest stages get
    the extra block: the policies BlockDrop learns keep the blocks of the later
    stages most often (the paper's and ours), and in a CIFAR ResNet every block
    but a stage's first costs the same FLOPs in every stage, so where the extra
    block goes does not change the cost. Every stage gets at least one block."""
    if not len(stage_sizes) <= k <= sum(stage_sizes):
        raise ValueError(f"DistributeK spreads K over {len(stage_sizes)} stages of {sum(stage_sizes)} blocks: "
                         f"K must be between {len(stage_sizes)} and {sum(stage_sizes)}, got {k}")
    counts = [0] * len(stage_sizes)
    left = k
    while left:
        room = [s for s, size in enumerate(stage_sizes) if counts[s] < size]
        share = left // len(room)
        for s in room[::-1][: left if share == 0 else len(room)]:  # the deepest first
            given = min(max(share, 1), stage_sizes[s] - counts[s])
            counts[s] += given
            left -= given
    return counts


class DistributeK(FixedPolicy):
    name = "distributek"

    def __init__(self, num_blocks: int, k: int, seed: int = 0, stage_sizes: list[int] | None = None):
        super().__init__(num_blocks, k, seed)
        stage_sizes = list(stage_sizes or [num_blocks])
        if sum(stage_sizes) != num_blocks:
            raise ValueError(f"stages of {stage_sizes} blocks do not make {num_blocks} blocks")
        self.split = distribute(k, stage_sizes)
        self.start = f"{self.name} with K={k} ({' + '.join(map(str, self.split))} blocks by stage)"
        keep, first = torch.zeros(num_blocks), 0
        for size, kept in zip(stage_sizes, self.split):
            keep[first: first + kept] = 1
            first += size
        self.register_buffer("keep", keep, persistent=False)

    def policies(self, n: int) -> torch.Tensor:
        return self.keep.cpu().expand(n, -1).clone()


def fixed_policy(policy: str, num_blocks: int, k: int, seed: int = 0,
                 stage_sizes: list[int] | None = None) -> FixedPolicy:
    """``policy`` ("firstk", "randomk" or "distributek") keeping ``k`` of
    ``num_blocks`` blocks; DistributeK needs the blocks of each stage."""
    sources = {"firstk": FirstK, "randomk": RandomK, "distributek": DistributeK}
    if policy not in sources:
        raise ValueError(f"unknown fixed policy {policy!r}; choose one of: {', '.join(sources)}")
    if policy == "distributek":
        return DistributeK(num_blocks, k, seed, stage_sizes)
    return sources[policy](num_blocks, k, seed)
