"""Curriculum learning of the policy network (BlockDrop, SPEC section 4).

    python cl_training.py --model R110_C10 --cv_dir cv/R110_C10_cl/ --lr 1e-3 --batch_size 2048 --max_epochs 5000

The pretrained ResNet stays frozen; at epoch e the policy decides only the last
e + 1 blocks and the ones before are kept.
"""

from __future__ import annotations

from training import fit
from utils.cli import ArgumentParser, add_curriculum_flags, add_training_flags, run_cli
from utils.config import PHASE_DEFAULTS, TrainConfig


def get_args_parser() -> ArgumentParser:
    p = ArgumentParser(prog="cl_training.py", description="BlockDrop curriculum learning")
    add_training_flags(p, **PHASE_DEFAULTS[False])
    add_curriculum_flags(p)
    return p


def main(args) -> dict:
    return fit(TrainConfig.from_args(args, joint=False))


if __name__ == "__main__":
    run_cli(main, get_args_parser())
