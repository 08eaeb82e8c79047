"""Heuristic policy sources, the paper's baselines (its Table 1): they take the
policy network's place wherever a policy is consumed (evaluation, profiling,
finetuning) and decide without looking at the image.

- ``FirstK``: the first K blocks, for every image;
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

POLICY_SOURCES = ("learned", "firstk", "randomk")


class FixedPolicy(nn.Module):
    """A policy source that is not learned: ``learnable`` is False, so training
    consumes its policy as it is and trains only the ResNet."""

    learnable = False
    name = ""

    def __init__(self, num_blocks: int, k: int, seed: int = 0):
        super().__init__()
        if not 0 <= k <= num_blocks:
            raise ValueError(f"K must be between 0 and the {num_blocks} blocks, got {k}")
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


def fixed_policy(policy: str, num_blocks: int, k: int, seed: int = 0) -> FixedPolicy:
    """``policy`` ("firstk" or "randomk") keeping ``k`` of ``num_blocks`` blocks."""
    sources = {"firstk": FirstK, "randomk": RandomK}
    if policy not in sources:
        raise ValueError(f"unknown fixed policy {policy!r}; choose one of: {', '.join(sources)}")
    return sources[policy](num_blocks, k, seed)
