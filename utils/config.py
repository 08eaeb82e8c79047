"""A training run's configuration: the flags of ``cl_training.py`` and
``finetune.py`` (SPEC sections 4 and 5, plus the new ones) as one typed value."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, fields, replace

# Flags that may differ when a run is resumed: they change how long it runs, or
# on what hardware and how fast, not the recipe. ``HARDWARE``: those of every
# training script (``pretrain.py`` adds its ``--epochs``).
HARDWARE = frozenset({"workers", "device", "amp", "memory_format"})
RESUMABLE = HARDWARE | {"max_epochs", "parallel"}

# The defaults that differ between the phases, the original's: cl_training.py
# (curriculum, ``joint`` False) and finetune.py (joint finetuning). The one
# place that states them: the scripts' flags and ``TrainConfig`` take them here.
PHASE_DEFAULTS = {
    False: {"lr": 1e-3, "epoch_step": 10000, "max_epochs": 10000, "penalty": -1},
    True: {"lr": 1e-4, "epoch_step": 1600, "max_epochs": 2000, "penalty": -5},
}

# The flags of one script only: args.txt records those its script has.
CURRICULUM_ONLY = ("beta", "cl_step")
FINETUNING_ONLY = ("pretrained", "per_image", "policy", "k")


@dataclass
class TrainConfig:
    """A training run: the scripts' flags and which of the two phases it is
    (``joint``: finetuning, else curriculum learning)."""

    joint: bool
    model: str = "R110_C10"
    data_dir: str = "data/"
    train_subset: int | None = None
    cv_dir: str = "cv/tmp/"
    load: str | None = None
    pretrained: str | None = None  # finetuning only: the curriculum checkpoint's agent
    base: str | None = None
    lr: float | None = None  # None: the phase's default
    beta: float = 0.1  # curriculum only
    wd: float = 0.0
    batch_size: int = 256
    epoch_step: int | None = None  # None: the phase's default
    max_epochs: int | None = None  # None: the phase's default
    lr_decay_ratio: float = 0.1
    cl_step: int = 1  # curriculum only: blocks handed to the policy per epoch
    penalty: float | None = None  # None: the phase's default
    alpha: float = 0.8
    parallel: bool = False
    device: str | None = None
    seed: int | None = None
    workers: int = 4
    test_every: int = 10
    per_image: bool = False  # finetuning only: train with per-image execution instead of the masked form
    policy: str = "learned"  # finetuning only: the policy network, or a fixed baseline policy (firstk, randomk)
    k: int | None = None  # finetuning only: the blocks a fixed policy keeps
    amp: bool = False  # mixed precision on CUDA
    memory_format: str = "auto"  # auto (channels-last on CUDA), channels_last or contiguous
    device_data: bool = False  # the data set on the device, augmented there (other random numbers: not resumable)
    resume: bool = False  # continue the run in cv_dir from its newest complete state
    restart: bool = False  # start a new run in a cv_dir that holds one, setting the earlier one aside
    given: frozenset = frozenset()  # the flags given on the command line

    def __post_init__(self):
        self.policy = self.policy or "learned"
        for name, value in PHASE_DEFAULTS[self.joint].items():
            if getattr(self, name) is None:
                setattr(self, name, value)

    @classmethod
    def from_args(cls, args: argparse.Namespace, joint: bool) -> TrainConfig:
        names = {f.name for f in fields(cls)} - {"given"}
        return cls(joint=joint, given=frozenset(getattr(args, "_given", ())),
                   **{k: v for k, v in vars(args).items() if k in names})

    def flags(self) -> dict:
        """The run's flags, as ``args.txt`` and the checkpoints record them."""
        out = asdict(self)
        for name in ("joint", "resume", "restart", "given"):
            del out[name]
        for name in CURRICULUM_ONLY if self.joint else FINETUNING_ONLY:
            del out[name]
        return out

    def with_flags(self, values: dict) -> TrainConfig:
        return replace(self, **{k: v for k, v in values.items() if k in self.flags()})
